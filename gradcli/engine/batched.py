"""The one compiled GradientTape: per-sample objective gradients w.r.t. inputs, layers, weights.

Every command and method feeds this function; it knows nothing of paths or printing.

Sparse (Embedding) gradient sums are in sparse.py, the diagnosis of inputs that hold token
ids in tokens.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.engine.batching import default_batch_size
from gradcli.engine.objective import Objective
from gradcli.engine.sparse import GradientSum, SparseGradient
from gradcli.engine.tokens import (
    input_dtype,
    input_gradient_error,
    inputs_gradient_error,
    missing_input_gradient,
    token_input_error,
    token_uses,
)
from gradcli.errors import GradientError, InputError, UsageError, first_line
from gradcli.io.arrays import ArraySource
from gradcli.load.backend import keras, tf
from gradcli.load.handles import LayerInfo, ModelHandle
from gradcli.present.figures import Sensitivity

_VALID_SPEC = tf.TensorSpec((), tf.int32)  # rows of a call that are not padding


@dataclass
class Batch:
    """Rows [start, stop) of the input, with the matching targets."""

    start: int
    stop: int
    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    prepared: Any = None  # a method's tape inputs for the batch (Method.prepare), if made


@dataclass
class StepResult:
    """One call of the compiled tape, as NumPy. None marks a disconnected tensor."""

    objective: np.ndarray  # (B,)
    inputs: list[np.ndarray | None]
    layers: list[np.ndarray | None]
    weights: list[np.ndarray | SparseGradient | None]
    activations: list[np.ndarray] | None = None  # the watched layers' outputs, when asked


def _square_sum(t: Any, valid: Any) -> Any:
    """The sum of squares of a tensor's first `valid` rows (float32 at least), as float64."""
    t = t[:valid] if t.dtype == tf.float64 else tf.cast(t[:valid], tf.float32)
    return tf.cast(tf.reduce_sum(tf.square(t)), tf.float64)


def _numpy(x: Any) -> np.ndarray | None:
    if isinstance(x, tf.IndexedSlices):  # a sparse gradient where dense was asked for
        return tf.convert_to_tensor(x).numpy()
    return None if x is None else x.numpy()


def weight_numpy(x: Any, variable: Any) -> np.ndarray | SparseGradient | None:
    if isinstance(x, tf.IndexedSlices):
        shape = x.dense_shape
        shape = tuple(variable.shape) if shape is None else tuple(int(d) for d in shape.numpy())
        return SparseGradient(x.values.numpy(), x.indices.numpy(), shape)
    return _numpy(x)


def target_dtype(source: ArraySource) -> np.dtype:
    """Integer labels stay integers (sparse losses need them); everything else is float32."""
    return np.dtype("int32") if source.dtype.kind in "iub" else np.dtype("float32")


def read_batches(
    inputs: Sequence[ArraySource],
    input_dtypes: Sequence[np.dtype],
    targets: Sequence[ArraySource],
    n: int,
    batch_size: int,
) -> Iterator[Batch]:
    """Stream batches from the (memory-mapped) sources."""
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        yield Batch(
            start,
            stop,
            [s.read(start, stop, d) for s, d in zip(inputs, input_dtypes, strict=True)],
            [t.read(start, stop, target_dtype(t)) for t in targets],
        )


class LayerCapture:
    """Wraps layers' `call` while the model runs so their outputs can be watched by the tape."""

    def __init__(self, layers: Sequence[LayerInfo]) -> None:
        self.layers = list(layers)
        self.captured: list[list[Any]] = [[] for _ in self.layers]

    def install(self, tape: Any) -> None:
        for slot, info in enumerate(self.layers):
            layer = info.layer
            original = layer.call

            def wrapped(*args, __original=original, __slot=slot, **kwargs):
                out = __original(*args, **kwargs)
                tape.watch(out)
                self.captured[__slot].append(out)
                return out

            object.__setattr__(layer, "call", wrapped)

    def remove(self) -> None:
        for info in self.layers:
            info.layer.__dict__.pop("call", None)

    def outputs(self, xs: list, input_names: list[str]) -> list[Any]:
        result = []
        for info, outs in zip(self.layers, self.captured, strict=True):
            if not outs and info.class_name == "InputLayer" and info.layer.name in input_names:
                # an input layer is not called: its activation is the model input itself
                result.append(xs[input_names.index(info.layer.name)])
                continue
            if not outs:
                raise GradientError(
                    f"layer {info.path!r} did not run when the model was called, so it has "
                    f"no activation to differentiate"
                )
            if len(outs) > 1:
                raise GradientError(
                    f"layer {info.path!r} is called {len(outs)} times in the model (a shared "
                    f"layer), so its activation is ambiguous"
                )
            result.append(outs[0])
        return result


def check_training(handle: ModelHandle, training: bool) -> None:
    """--training runs Keras layers in training mode; an exported function has no such mode."""
    if training and not handle.supports_training:
        raise UsageError(
            "--training needs a Keras model; a SavedModel export runs its "
            "serving function in inference mode"
        )


class Compiled:
    """A tf.function traced once for any batch size, without AutoGraph.

    gradcli's own code has no tensor-dependent Python control flow, and converting it costs
    about a second per trace; a model whose own Python code needs AutoGraph (`if tensor:`)
    gets a second trace with it.
    """

    def __init__(self, fn: Any, signature: list, jit: bool = False) -> None:
        self.fn = fn
        self.signature = signature
        self.jit = jit
        self.autograph = False
        self.function = self._make()
        self.traced = False

    def _make(self) -> Any:
        return tf.function(
            self.fn,
            input_signature=self.signature,
            jit_compile=self.jit,
            reduce_retracing=True,
            autograph=self.autograph,
        )

    def __call__(self, *args: Any) -> Any:
        if self.traced:
            return self.function(*args)
        try:
            out = self.function(*args)
        except tf.errors.OperatorNotAllowedInGraphError:
            self.autograph = True
            self.function = self._make()
            out = self.function(*args)
        self.traced = True
        return out

    def tracing_count(self) -> int:
        return self.function.experimental_get_tracing_count()


class GradientEngine:
    """One compiled tape per model, objective and set of watched tensors."""

    def __init__(
        self,
        handle: ModelHandle,
        objective: Objective,
        *,
        wrt_inputs: bool = False,
        layers: Sequence[LayerInfo] = (),
        wrt_weights: bool = False,
        training: bool = False,
        jit: bool = False,
        sparse_weights: bool = False,
        activations: bool = False,
    ) -> None:
        self.handle = handle
        # True: a step also returns the watched layers' activations (CAM methods need both)
        self.activations = activations
        # True: embedding-table gradients come back as SparseGradient (rows), else dense
        self.sparse_weights = sparse_weights
        self.objective = objective
        self.wrt_inputs = wrt_inputs
        self.layers = list(layers)
        self.wrt_weights = wrt_weights
        self.training = training
        check_training(handle, training)
        named = handle.named_variables() if wrt_weights else []
        self.variable_names = [name for name, _ in named]
        # Keras 3 variables wrap a tf.Variable; the tape wants the latter
        self.variables = [v.value if isinstance(v, keras.Variable) else v for _, v in named]
        self.input_dtypes = [input_dtype(i.dtype) for i in handle.inputs]
        if wrt_inputs and (error := inputs_gradient_error(handle)) is not None:
            raise error
        self._input_specs = [
            tf.TensorSpec((None, *info.shape), tf.as_dtype(dt))
            for info, dt in zip(handle.inputs, self.input_dtypes, strict=True)
        ]
        self._jit = jit
        self._grad_fn = None
        self._forward_fn = None
        # rows of the longest call so far, per compiled function (--jit pads shorter ones)
        self._longest = {"gradients": 0, "forward": 0}
        self.padded_rows = 0  # rows of padding computed and dropped, in all
        # gradients against their tensors and the objective, over every call (vanishing)
        self.sensitivity = Sensitivity()

    def _target_specs(self, targets: Sequence[np.ndarray]) -> list[Any]:
        return [tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)) for t in targets]

    def _objective(self, xs: list, ys: list) -> Any:
        outputs = self.objective.model_outputs(self.handle, xs, self.training)
        return self.objective.per_sample(outputs, ys)

    def _build(self, targets: Sequence[np.ndarray]) -> None:
        layer_capture = self.layers
        variables = self.variables

        def step(xs, ys, valid):
            xs, ys = list(xs), list(ys)
            capture = LayerCapture(layer_capture)
            with tf.GradientTape(watch_accessed_variables=bool(variables)) as tape:
                if variables:
                    tape.watch(variables)
                tape.watch(xs)
                capture.install(tape)
                try:
                    o = self._objective(xs, ys)
                finally:
                    capture.remove()
                # rows from `valid` on are padding (see _pad): out of the sum, so out of
                # every gradient; without padding the mask is all ones and changes nothing
                keep = tf.cast(tf.range(tf.shape(o)[0]) < valid, o.dtype)
                total = tf.reduce_sum(o * keep)
            acts = (
                capture.outputs(xs, [i.name for i in self.handle.inputs]) if layer_capture else []
            )
            sources = {
                "inputs": xs if self.wrt_inputs else [],
                "layers": acts,
                "weights": variables,
            }
            grads = tape.gradient(
                total, sources, unconnected_gradients=tf.UnconnectedGradients.NONE
            )
            # sums of squares of each gradient and of its tensor over the real rows, for
            # the float-noise check (stats.Sensitivity); None for a disconnected one
            squares = [
                None if g is None else tf.stack([_square_sum(g, valid), _square_sum(t, valid)])
                for g, t in zip(
                    [*grads["inputs"], *grads["layers"]], [*sources["inputs"], *acts], strict=True
                )
            ]
            return (
                o,
                grads["inputs"],
                grads["layers"],
                grads["weights"],
                acts if self.activations else [],
                squares,
            )

        self._grad_fn = Compiled(
            step, [self._input_specs, self._target_specs(targets), _VALID_SPEC], self._jit
        )

    def _pad(self, fn: str, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> tuple:
        """Under XLA (--jit), a batch shorter than the longest that compiled function `fn`
        ("gradients" or "forward") has run so far, usually the last one, is padded to that
        length with copies of its last row, so that XLA does not compile the function again
        for one more shape (1.4 s for the bench Transformer, where a call takes 0.07 s),
        and IG's short forward passes are not padded to the tape's rows. The copies are
        masked out of the objective's sum, and their rows are dropped from the results. Not
        in training mode, where copies would change the batch statistics (BatchNorm); not
        without XLA, where a new shape costs nothing.
        Returns (inputs, targets, valid rows)."""
        rows = len(inputs[0]) if len(inputs) else 0
        longest = self._longest[fn] = max(self._longest[fn], rows)
        if not self._jit or self.training or rows == 0 or rows == longest:
            return list(inputs), list(targets), rows
        extra = longest - rows

        def pad(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])

        self.padded_rows += extra
        return [pad(x) for x in inputs], [pad(t) for t in targets], rows

    def gradients(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> StepResult:
        """One tape call over a batch (any size)."""
        if self._grad_fn is None:
            self._build(targets)
        self.objective.check_first_batch(self.handle, inputs)
        inputs, targets, valid = self._pad("gradients", inputs, targets)
        padded = bool(inputs) and len(inputs[0]) != valid
        try:
            o, gi, gl, gw, acts, squares = self._grad_fn(inputs, targets, np.int32(valid))
        except (GradientError, UsageError, InputError):
            raise
        except (tf.errors.OpError, ValueError, TypeError, LookupError, NotImplementedError) as exc:
            raise GradientError(f"the gradient cannot be computed: {first_line(exc)}") from exc
        for k, g in enumerate(gi):
            if g is None:  # the objective does not reach it: token ids are the usual reason
                raise missing_input_gradient(self.handle, k)
        if self.sparse_weights:
            weights = [weight_numpy(g, v) for g, v in zip(gw, self.variables, strict=True)]
        else:
            weights = [_numpy(g) for g in gw]

        def rows(x: Any) -> np.ndarray | None:
            a = _numpy(x)
            return a[:valid] if padded and a is not None else a

        objective = rows(o)
        self.sensitivity.add_objective(objective)
        keys = [("input", k) for k in range(len(gi))] + [("layer", j) for j in range(len(gl))]
        for key, sq in zip(keys, squares, strict=True):
            if sq is not None:
                self.sensitivity.add(key, *sq.numpy())
        return StepResult(
            objective,
            [rows(g) for g in gi],
            [rows(g) for g in gl],
            weights,
            [rows(a) for a in acts] if self.activations else None,
        )

    def objective_values(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> np.ndarray:
        """The per-sample objective only (a forward pass)."""
        self.objective.check_first_batch(self.handle, inputs)
        if self._forward_fn is None:

            def forward(xs, ys):
                return self._objective(list(xs), list(ys))

            self._forward_fn = Compiled(
                forward, [self._input_specs, self._target_specs(targets)], self._jit
            )
        inputs, targets, valid = self._pad("forward", inputs, targets)
        try:
            return self._forward_fn(inputs, targets).numpy()[:valid]
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise GradientError(f"the model cannot be evaluated: {first_line(exc)}") from exc


__all__ = [
    "Batch",
    "GradientEngine",
    "GradientSum",
    "SparseGradient",
    "StepResult",
    "default_batch_size",
    "input_gradient_error",
    "inputs_gradient_error",
    "missing_input_gradient",
    "read_batches",
    "token_input_error",
    "token_uses",
]
