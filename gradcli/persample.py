"""Per-sample weight gradients g_i = d o_i / d theta in one compiled tape call per batch.

Fast path (Goodfellow 2015, the "ghost norm" of DP-SGD libraries): for Dense, Conv1D/Conv2D
and Embedding layers the layer's input activation a and the gradient dz of the summed
objective at its pre-activation output z (both captured while the model runs) give each
sample's kernel and bias gradient, or its squared norm without materializing it:
  Dense, a_i (d_in,):          ||a_i||^2 ||dz_i||^2
  Dense, a_i (T, d_in):        sum_{t,s} (a_t . a_s)(dz_t . dz_s), or ||a_i^T dz_i||^2
  Conv:                        the same on unfolded patches (tf.image.extract_patches)
  Embedding:                   ||rows of dz summed per distinct id||^2
This is exact because d(sum_j o_j)/dz_i = d o_i/dz_i when samples do not interact, which
holds in inference mode (BatchNormalization uses its moving statistics).

General path: every other variable (normalization scales, recurrent cells, custom layers,
shared layers, tied weights, SavedModel exports) gets single-sample tapes vectorized over
the batch with pfor (`tf.vectorized_map`); with --training, where a second forward pass
would draw other dropout masks, the Jacobian of the per-sample objective vector of the same
pass. Either gives (B, *shape) per variable: callers bound B so that B x (size of those
variables) stays small.

Not detected: a variable read outside its layer without Keras tracking it (a closure over
another layer's weights, which only `--unsafe` Lambda layers can do).

The mean-gradient sum G over the batch comes from the same tape, exactly as `GradientEngine`
computes it, so `wrt-weights --per-sample` reports the same G as plain `wrt-weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import keras, tf
from .engine import Compiled, check_training
from .errors import GradientError, InputError, UsageError, first_line
from .loading import LayerInfo, ModelHandle
from .objective import Objective, ObjectiveKind
from .sparse import SparseGradient
from .tokens import input_dtype

# fast-path layer kinds
DENSE, CONV, EMBEDDING = "dense", "conv", "embedding"


def _tf_variable(v: Any) -> Any:
    return v.value if isinstance(v, keras.Variable) else v


def _kind(layer: Any) -> str | None:
    """The fast-path kind of a Keras 3 layer whose `call` is Keras's own, else None."""
    cls = type(layer)
    quantized = getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False)
    if quantized:
        return None
    if cls.call is keras.layers.Dense.call:
        return DENSE
    if cls.call in (keras.layers.Conv2D.call, keras.layers.Conv1D.call) and isinstance(
        layer, keras.layers.Conv1D | keras.layers.Conv2D
    ):
        if layer.groups != 1 or layer.data_format != "channels_last":
            return None
        return CONV
    if cls.call is keras.layers.Embedding.call and not getattr(layer, "sparse", False):
        return EMBEDDING
    return None


def _weights(layer: Any, kind: str) -> list[tuple[str, Any]]:
    """(role, keras variable) of a fast-path layer."""
    if kind == EMBEDDING:
        return [("kernel", layer.embeddings)]
    out = [("kernel", layer.kernel)]
    if getattr(layer, "bias", None) is not None:
        out.append(("bias", layer.bias))
    return out


@dataclass
class _Slot:
    """A fast-path layer: where its variables sit in the variable list, and what it saw."""

    info: LayerInfo
    kind: str
    positions: dict[str, int]  # role -> index in the variable list
    inputs: list = field(default_factory=list)
    zs: list = field(default_factory=list)
    activation: Any = None


class _Capture:
    """Records each fast-path layer's input and pre-activation output while the model runs
    (wrapping the instance's `call`, and its `activation` for Dense and Conv)."""

    def __init__(self, slots: Sequence[_Slot]) -> None:
        self.slots = list(slots)

    def install(self, tape: Any) -> None:
        for slot in self.slots:
            slot.inputs, slot.zs = [], []
            layer = slot.info.layer
            original = layer.call

            def call(*args, __original=original, __slot=slot, **kwargs):
                __slot.inputs.append(args[0] if args else kwargs.get("inputs"))
                out = __original(*args, **kwargs)
                if __slot.kind == EMBEDDING:
                    tape.watch(out)
                    __slot.zs.append(out)
                return out

            object.__setattr__(layer, "call", call)
            if slot.kind != EMBEDDING:
                slot.activation = layer.activation

                def activation(z, __act=slot.activation, __slot=slot):
                    tape.watch(z)
                    __slot.zs.append(z)
                    return __act(z) if __act is not None else z

                object.__setattr__(layer, "activation", activation)

    def remove(self) -> None:
        for slot in self.slots:
            layer = slot.info.layer
            layer.__dict__.pop("call", None)
            if slot.kind != EMBEDDING:
                object.__setattr__(layer, "activation", slot.activation)


@dataclass
class PerSampleStep:
    """One batch, as NumPy: the objective, the batch-summed gradient G (None: disconnected),
    each sample's squared gradient norm per variable, and (if asked) the g_i themselves."""

    objective: np.ndarray  # (B,)
    weights: list[np.ndarray | SparseGradient | None]
    squares: np.ndarray  # (B, V) float32
    arrays: list[np.ndarray | None]  # (B, *shape) per variable, with arrays=True


def _f32(x: Any) -> Any:
    return tf.cast(x, tf.float32)


def _sq(x: Any) -> Any:
    """Per-sample sum of squares of a (B, ...) tensor."""
    x = _f32(x)
    return tf.reduce_sum(tf.reshape(tf.square(x), [tf.shape(x)[0], -1]), axis=1)


def _static(n: Any) -> int | None:
    return None if n is None else int(n)


def _dense(slot: _Slot, a: Any, dz: Any, arrays: bool) -> dict[str, tuple[Any, Any]]:
    """role -> (squared norms (B,), per-sample gradients or None) of a Dense layer."""
    a, dz = _f32(a), _f32(dz)
    d_in, d_out = int(a.shape[-1]), int(dz.shape[-1])
    b = tf.shape(a)[0]
    out: dict[str, tuple[Any, Any]] = {}
    if a.shape.rank == 2:
        kernel = tf.einsum("bi,bj->bij", a, dz) if arrays else None
        out["kernel"] = (tf.reduce_sum(a * a, 1) * tf.reduce_sum(dz * dz, 1), kernel)
        out["bias"] = (tf.reduce_sum(dz * dz, 1), dz if arrays else None)
        return out
    a3 = tf.reshape(a, [b, -1, d_in])
    dz3 = tf.reshape(dz, [b, -1, d_out])
    steps = 1
    for d in a.shape[1:-1]:
        steps = None if d is None or steps is None else steps * int(d)
    # the Gram form costs T^2 (d_in + d_out) a sample, the materialized one T d_in d_out
    gram = (steps * (d_in + d_out) < d_in * d_out) if steps else d_in * d_out > 4096
    g = None
    if arrays or not gram:
        g = tf.einsum("bti,btj->bij", a3, dz3)
        sq = _sq(g)
    else:
        sq = tf.reduce_sum(
            tf.einsum("bti,bsi->bts", a3, a3) * tf.einsum("btj,bsj->bts", dz3, dz3), [1, 2]
        )
    out["kernel"] = (sq, g)
    bias = tf.reduce_sum(dz3, 1)
    out["bias"] = (_sq(bias), bias if arrays else None)
    return out


def _conv(slot: _Slot, a: Any, dz: Any, arrays: bool) -> dict[str, tuple[Any, Any]]:
    """role -> (squared norms, per-sample gradients or None) of a Conv1D/Conv2D layer,
    through the unfolded input patches."""
    layer = slot.info.layer
    a, dz = _f32(a), _f32(dz)
    kernel_shape = tuple(int(d) for d in layer.kernel.shape)
    padding = layer.padding.upper()
    if len(kernel_shape) == 3:  # Conv1D: one image row
        (k,), (s,), (d,) = layer.kernel_size, layer.strides, layer.dilation_rate
        if padding == "CAUSAL":
            a = tf.pad(a, [[0, 0], [d * (k - 1), 0], [0, 0]])
            padding = "VALID"
        a = a[:, None]
        dz = dz[:, None]
        sizes, strides, rates = [1, 1, k, 1], [1, 1, s, 1], [1, 1, d, 1]
    else:
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        sizes, strides, rates = [1, kh, kw, 1], [1, sh, sw, 1], [1, dh, dw, 1]
    patches = tf.image.extract_patches(a, sizes, strides, rates, padding)
    b = tf.shape(a)[0]
    depth, filters = int(np.prod(kernel_shape[:-1])), kernel_shape[-1]
    u = tf.reshape(patches, [b, -1, depth])
    dz3 = tf.reshape(dz, [b, -1, filters])
    positions = 1
    for n in dz.shape[1:-1]:
        positions = None if n is None or positions is None else positions * int(n)
    gram = positions is not None and positions * (depth + filters) < depth * filters
    out: dict[str, tuple[Any, Any]] = {}
    g = None
    if arrays or not gram:
        g = tf.einsum("bpk,bpc->bkc", u, dz3)
        sq = _sq(g)
        if arrays:
            g = tf.reshape(g, [b, *kernel_shape])
    else:
        sq = tf.reduce_sum(
            tf.einsum("bpk,bqk->bpq", u, u) * tf.einsum("bpc,bqc->bpq", dz3, dz3), [1, 2]
        )
    out["kernel"] = (sq, g)
    bias = tf.reduce_sum(dz3, 1)
    out["bias"] = (_sq(bias), bias if arrays else None)
    return out


def _embedding(slot: _Slot, ids: Any, dz: Any, arrays: bool) -> dict[str, tuple[Any, Any]]:
    """The table's per-sample gradient: dz rows added at their ids, repeated ids summed
    before squaring."""
    layer = slot.info.layer
    vocab, dim = int(layer.embeddings.shape[0]), int(layer.embeddings.shape[1])
    dz = _f32(dz)
    b = tf.shape(dz)[0]
    ids = tf.reshape(tf.cast(ids, tf.int64), [b, -1])
    ids = tf.where(ids < 0, ids + vocab, ids)  # as Keras's `take` maps negative ids
    rows = tf.reshape(dz, [-1, dim])
    keys = tf.reshape(tf.range(tf.cast(b, tf.int64), dtype=tf.int64)[:, None] * vocab + ids, [-1])
    unique, where = tf.unique(keys)
    summed = tf.math.unsorted_segment_sum(rows, where, tf.size(unique))
    sq = tf.math.unsorted_segment_sum(
        tf.reduce_sum(summed * summed, 1), unique // vocab, tf.cast(b, tf.int64)
    )
    g = None
    if arrays:
        g = tf.reshape(
            tf.math.unsorted_segment_sum(rows, keys, tf.cast(b, tf.int64) * vocab),
            [b, vocab, dim],
        )
    return {"kernel": (sq, g)}


_RULES = {DENSE: _dense, CONV: _conv, EMBEDDING: _embedding}


def batch_interacting_layers(handle: ModelHandle) -> list[str]:
    """Layers that mix samples in training mode (batch statistics)."""
    return [row.path for row in handle.layers if "BatchNormalization" in row.class_name]


class PerSampleEngine:
    """One compiled tape per model and objective giving G, per-sample squared norms and,
    with `arrays`, the per-sample gradients of every trainable variable."""

    def __init__(
        self,
        handle: ModelHandle,
        objective: Objective,
        *,
        training: bool = False,
        jit: bool = False,
        arrays: bool = False,
        general_only: bool = False,
    ) -> None:
        self.handle = handle
        self.objective = objective
        self.training = training
        self.arrays = arrays
        check_training(handle, training)
        if training and handle.has_layers:
            mixing = batch_interacting_layers(handle)
            if mixing:
                raise UsageError(
                    f"--per-sample with --training: {', '.join(mixing)} normalize with batch "
                    "statistics in training mode, so samples interact and a per-sample "
                    "gradient is not defined; leave out --training (inference mode uses the "
                    "moving statistics)"
                )
        named = handle.named_variables()
        self.variable_names = [name for name, _ in named]
        self.variables = [_tf_variable(v) for _, v in named]
        self.input_dtypes = [input_dtype(i.dtype) for i in handle.inputs]
        self._input_specs = [
            tf.TensorSpec((None, *info.shape), tf.as_dtype(dt))
            for info, dt in zip(handle.inputs, self.input_dtypes, strict=True)
        ]
        self.slots = [] if general_only else self._plan()
        self.jit = jit
        self._fn: Compiled | None = None
        self._class_checked = False
        # known once traced: the variables (indices) that took the general path
        self.general_variables: list[int] = []

    def _plan(self) -> list[_Slot]:
        if not self.handle.has_layers:
            return []
        index = {id(v): k for k, v in enumerate(self.variables)}
        # a variable that another (non-model) layer also holds, e.g. an embedding table tied
        # to an output projection, gets gradient from outside its layer: general path
        holders: dict[int, set[int]] = {}
        for row in self.handle.layers:
            if isinstance(row.layer, keras.Model):
                continue
            for w in getattr(row.layer, "trainable_weights", []):
                holders.setdefault(id(_tf_variable(w)), set()).add(id(row.layer))
        slots = []
        seen: set[int] = set()
        for row in self.handle.layers:
            kind = _kind(row.layer)
            if kind is None or id(row.layer) in seen:  # listed twice: wrapped once
                continue
            seen.add(id(row.layer))
            positions = {}
            weights = [(role, _tf_variable(var)) for role, var in _weights(row.layer, kind)]
            if any(len(holders.get(id(var), ())) > 1 for _, var in weights):
                continue
            for role, var in weights:
                k = index.get(id(var))
                if k is not None:
                    positions[role] = k
            if positions:
                slots.append(_Slot(row, kind, positions))
        return slots

    def per_sample_size(self) -> int:
        """Values of one sample's materialized gradients (arrays) or Jacobian rows (general
        path, an upper bound before tracing): what a batch row costs in memory."""
        if self.arrays:
            chosen = range(len(self.variables))
        else:
            covered = {k for s in self.slots for k in s.positions.values()}
            chosen = [k for k in range(len(self.variables)) if k not in covered]
        return sum(int(np.prod(self.variables[k].shape, dtype=np.int64)) for k in chosen)

    def _build(self, targets: Sequence[np.ndarray]) -> None:
        variables, slots, arrays = self.variables, self.slots, self.arrays

        def step(xs, ys):
            xs, ys = list(xs), list(ys)
            capture = _Capture(slots)
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(variables)
                capture.install(tape)
                try:
                    outputs = self.objective.model_outputs(self.handle, xs, self.training)
                finally:
                    capture.remove()
                o = self.objective.per_sample(outputs, ys)
                total = tf.reduce_sum(o)
            # a layer called once is covered; a shared one (or one that did not run) is not
            usable = [s for s in slots if len(s.inputs) == 1 and len(s.zs) == 1]
            grads = tape.gradient(
                total,
                {"weights": variables, "z": [s.zs[0] for s in usable]},
                unconnected_gradients=tf.UnconnectedGradients.NONE,
            )
            weights = grads["weights"]
            zero = tf.zeros_like(_f32(o))
            squares: list[Any] = [None] * len(variables)
            per_sample: list[Any] = [None] * len(variables)
            for slot, dz in zip(usable, grads["z"], strict=True):
                if dz is None:
                    continue
                figures = _RULES[slot.kind](slot, slot.inputs[0], dz, arrays)
                for role, k in slot.positions.items():
                    if role in figures and weights[k] is not None:
                        squares[k], per_sample[k] = figures[role]
            general = [
                k for k in range(len(variables)) if squares[k] is None and weights[k] is not None
            ]
            self.general_variables[:] = general
            if general and self.training:
                # the same forward pass as G (same dropout masks): the Jacobian of o, B
                # backward passes vectorized, each through the whole batch (B^2 work)
                jac = tape.jacobian(
                    o,
                    [variables[k] for k in general],
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                    experimental_use_pfor=True,
                )
            elif general:
                jac = self._vectorized([variables[k] for k in general], xs, ys)
            if general:
                for k, j in zip(general, jac, strict=True):
                    squares[k] = _sq(j)
                    per_sample[k] = j if arrays else None
            del tape
            squares = [zero if s is None else s for s in squares]
            stacked = tf.stack(squares, axis=1) if squares else zero[:, None][:, :0]
            return o, weights, stacked, per_sample if arrays else []

        specs = [tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)) for t in targets]
        self._fn = Compiled(step, [self._input_specs, specs], self.jit)

    def _vectorized(self, variables: list, xs: list, ys: list) -> list:
        """Per-sample gradients of `variables`: one single-sample tape, vectorized over the
        batch with pfor (what N single-sample tapes give, at about the batch's cost)."""

        def one(sample):
            x1 = [x[None] for x in sample[0]]
            y1 = [y[None] for y in sample[1]]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(variables)
                outputs = self.objective.model_outputs(self.handle, x1, False)
                o = self.objective.per_sample(outputs, y1)
                total = tf.reduce_sum(o)
            grads = tape.gradient(
                total, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return [tf.convert_to_tensor(g) for g in grads]  # rows of a table become dense

        return tf.vectorized_map(one, (xs, ys), fallback_to_while_loop=True)

    def gradients(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> PerSampleStep:
        """One tape call over a batch (any size)."""
        if self._fn is None:
            self._build(targets)
        self._check_class(inputs)
        try:
            o, gw, squares, arrays = self._fn(list(inputs), list(targets))
        except (GradientError, UsageError, InputError):
            raise
        except (tf.errors.OpError, ValueError, TypeError, LookupError, NotImplementedError) as exc:
            raise GradientError(
                f"the per-sample gradients cannot be computed: {first_line(exc)}"
            ) from exc
        weights = [_weight_numpy(g, v) for g, v in zip(gw, self.variables, strict=True)]
        per_sample = [None if a is None else a.numpy() for a in arrays] if self.arrays else []
        return PerSampleStep(o.numpy(), weights, squares.numpy(), per_sample)

    def _check_class(self, inputs: Sequence[np.ndarray]) -> None:
        """--class against the real class axis where the declared shape leaves it open."""
        if self._class_checked or self.objective.kind != ObjectiveKind.CLASS:
            return
        self._class_checked = True
        index = self.objective.outputs[0]
        shape = self.handle.outputs[index].shape
        if shape and shape[-1] is None and len(inputs[0]):
            try:
                y = self.handle.call([x[:1] for x in inputs], training=False)[index]
            except Exception:  # noqa: BLE001 - the gradient call reports model errors itself
                return
            self.objective.check_class_range(self.handle, tuple(y.shape[1:]))


def _weight_numpy(x: Any, variable: Any) -> np.ndarray | SparseGradient | None:
    if x is None:
        return None
    if isinstance(x, tf.IndexedSlices):
        shape = x.dense_shape
        shape = tuple(variable.shape) if shape is None else tuple(int(d) for d in shape.numpy())
        return SparseGradient(x.values.numpy(), x.indices.numpy(), shape)
    return x.numpy()
