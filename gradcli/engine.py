"""The one compiled GradientTape: per-sample objective gradients w.r.t. inputs, layers, weights.

Every command and method feeds this function; it knows nothing of paths or printing.

Over 400 lines on purpose for now: the tape (GradientEngine), the Jacobian function and the
token-input diagnosis (which embedding an integer input feeds) share the tracing helpers
here; the diagnosis (token_uses .. input_gradient_error, ~170 lines) is the part to move
to its own module next, once the loaders' capability probes (another change) have landed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import ArraySource
from .backend import keras, tf
from .errors import GradientError, InputError, UsageError, first_line
from .loading import LayerInfo, ModelHandle
from .objective import Objective, ObjectiveKind


@dataclass
class Batch:
    """Rows [start, stop) of the input, with the matching targets."""

    start: int
    stop: int
    inputs: list[np.ndarray]
    targets: list[np.ndarray]


@dataclass
class SparseGradient:
    """A gradient that touches only some rows of a variable (TensorFlow's IndexedSlices).

    Embedding tables get these: `values[j]` is added to row `indices[j]` (indices repeat
    when a token occurs twice); every other row's gradient is zero.
    """

    values: np.ndarray  # (k, *row_shape)
    indices: np.ndarray  # (k,)
    shape: tuple[int, ...]  # the dense variable's shape

    def dense(self) -> np.ndarray:
        """The dense gradient, in the values' dtype (one table-sized array)."""
        out = np.zeros(self.shape, dtype=self.values.dtype)
        np.add.at(out, self.indices, self.values)
        return out


@dataclass
class StepResult:
    """One call of the compiled tape, as NumPy. None marks a disconnected tensor."""

    objective: np.ndarray  # (B,)
    inputs: list[np.ndarray | None]
    layers: list[np.ndarray | None]
    weights: list[np.ndarray | SparseGradient | None]


def _numpy(x: Any) -> np.ndarray | None:
    if isinstance(x, tf.IndexedSlices):  # a sparse gradient where dense was asked for
        return tf.convert_to_tensor(x).numpy()
    return None if x is None else x.numpy()


def _weight_numpy(x: Any, variable: Any) -> np.ndarray | SparseGradient | None:
    if isinstance(x, tf.IndexedSlices):
        shape = x.dense_shape
        shape = tuple(variable.shape) if shape is None else tuple(int(d) for d in shape.numpy())
        return SparseGradient(x.values.numpy(), x.indices.numpy(), shape)
    return _numpy(x)


class GradientSum:
    """The float64 sum of one variable's batch gradients, dense or sparse.

    Sparse batch gradients are scatter-added into the one accumulator row by row (their
    repeated indices summed first), so no table-sized array is made per batch; the rows
    they touched are counted for the report.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.total: np.ndarray | None = None
        self.batches = 0
        self.sparse_batches = 0
        self._touched: np.ndarray | None = None

    def add(self, g: np.ndarray | SparseGradient) -> None:
        if self.total is None:
            self.total = np.zeros(self.shape, dtype=np.float64)
        self.batches += 1
        if isinstance(g, SparseGradient):
            self.sparse_batches += 1
            if self._touched is None:
                self._touched = np.zeros(self.shape[0], dtype=bool)
            rows, where = np.unique(g.indices, return_inverse=True)
            summed = np.zeros((len(rows), *self.shape[1:]), dtype=np.float64)
            np.add.at(summed, where.reshape(-1), g.values)
            self.total[rows] += summed
            self._touched[rows] = True
        else:
            self.total += np.asarray(g, dtype=np.float64).reshape(self.shape)

    @property
    def sparse(self) -> bool:
        """Every batch gradient came as rows (an embedding table): say so in the report."""
        return self.batches > 0 and self.sparse_batches == self.batches

    @property
    def rows_touched(self) -> int:
        return 0 if self._touched is None else int(np.count_nonzero(self._touched))


def _input_dtype(info_dtype: str) -> np.dtype:
    try:
        return np.dtype(info_dtype)
    except TypeError:
        return np.dtype("float32")


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


def default_batch_size(handle: ModelHandle) -> int:
    """About 4M input values a tape call, between 1 and 1024 rows, a power of two."""
    per_sample = 0
    for info in handle.inputs:
        per_sample += int(np.prod([d or 32 for d in info.shape], dtype=np.int64)) or 1
    rows = max(1, (1 << 22) // max(1, per_sample))
    rows = min(1024, rows)
    return 1 << (rows.bit_length() - 1)


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
    ) -> None:
        self.handle = handle
        # True: embedding-table gradients come back as SparseGradient (rows), else dense
        self.sparse_weights = sparse_weights
        self.objective = objective
        self.wrt_inputs = wrt_inputs
        self.layers = list(layers)
        self.wrt_weights = wrt_weights
        self.training = training
        if training and not handle.supports_training:
            raise UsageError(
                "--training needs a Keras model; a SavedModel export runs its "
                "serving function in inference mode"
            )
        named = handle.named_variables() if wrt_weights else []
        self.variable_names = [name for name, _ in named]
        # Keras 3 variables wrap a tf.Variable; the tape wants the latter
        self.variables = [v.value if isinstance(v, keras.Variable) else v for _, v in named]
        self.input_dtypes = [_input_dtype(i.dtype) for i in handle.inputs]
        if wrt_inputs:
            for k, dt in enumerate(self.input_dtypes):
                if dt.kind != "f":
                    raise input_gradient_error(handle, k)
        self._input_specs = [
            tf.TensorSpec((None, *info.shape), tf.as_dtype(dt))
            for info, dt in zip(handle.inputs, self.input_dtypes, strict=True)
        ]
        self._jit = jit
        self._grad_fn = None
        self._forward_fn = None
        self._class_checked = False

    def _target_specs(self, targets: Sequence[np.ndarray]) -> list[Any]:
        return [tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)) for t in targets]

    def _objective(self, xs: list, ys: list) -> Any:
        outputs = self.handle.call(xs, training=self.training)
        return self.objective.per_sample(outputs, ys)

    def _build(self, targets: Sequence[np.ndarray]) -> None:
        layer_capture = self.layers
        variables = self.variables

        def step(xs, ys):
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
                total = tf.reduce_sum(o)
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
            return o, grads["inputs"], grads["layers"], grads["weights"]

        self._grad_fn = Compiled(step, [self._input_specs, self._target_specs(targets)], self._jit)

    def gradients(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> StepResult:
        """One tape call over a batch (any size)."""
        if self._grad_fn is None:
            self._build(targets)
        self._check_class(inputs)
        try:
            o, gi, gl, gw = self._grad_fn(list(inputs), list(targets))
        except (GradientError, UsageError, InputError):
            raise
        except (tf.errors.OpError, ValueError, TypeError, LookupError, NotImplementedError) as exc:
            raise GradientError(f"the gradient cannot be computed: {first_line(exc)}") from exc
        for k, g in enumerate(gi):
            if g is None:  # the objective does not reach it: token ids are the usual reason
                raise missing_input_gradient(self.handle, k)
        if self.sparse_weights:
            weights = [_weight_numpy(g, v) for g, v in zip(gw, self.variables, strict=True)]
        else:
            weights = [_numpy(g) for g in gw]
        return StepResult(o.numpy(), [_numpy(g) for g in gi], [_numpy(g) for g in gl], weights)

    def _check_class(self, inputs: Sequence[np.ndarray]) -> None:
        """--class against the real class axis, where the declared shape leaves it open."""
        if self._class_checked or self.objective.kind != ObjectiveKind.CLASS:
            return
        self._class_checked = True
        index = self.objective.outputs[0]
        shape = self.handle.outputs[index].shape
        if shape and shape[-1] is None and len(inputs[0]):
            try:  # one sample's forward pass gives the real size
                y = self.handle.call([x[:1] for x in inputs], training=False)[index]
            except Exception:  # noqa: BLE001 - the gradient call reports model errors itself
                return
            self.objective.check_class_range(self.handle, tuple(y.shape[1:]))

    def objective_values(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> np.ndarray:
        """The per-sample objective only (a forward pass)."""
        self._check_class(inputs)
        if self._forward_fn is None:

            def forward(xs, ys):
                return self._objective(list(xs), list(ys))

            self._forward_fn = Compiled(
                forward, [self._input_specs, self._target_specs(targets)], self._jit
            )
        try:
            return self._forward_fn(list(inputs), list(targets)).numpy()
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise GradientError(f"the model cannot be evaluated: {first_line(exc)}") from exc


def jacobian_function(
    handle: ModelHandle, output_index: int, training: bool = False, jit: bool = False
) -> Any:
    """A compiled per-sample Jacobian d y_i / d x_i of one output, for each input.

    The returned callable's `disconnected` lists, once it has run, the inputs the output
    does not reach (their Jacobian is zeros), as `GradientEngine` reports None for them.
    """
    specs = [
        tf.TensorSpec((None, *info.shape), tf.as_dtype(_input_dtype(info.dtype)))
        for info in handle.inputs
    ]
    disconnected: list[int] = []

    def jac(xs):
        xs = list(xs)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xs)
            y = handle.call(xs, training=training)[output_index]
            if y.shape.rank == 1:
                y = y[:, None]
            total = tf.reduce_sum(y)
        # known while tracing: whether the output reaches each input at all
        reached = tape.gradient(total, xs, unconnected_gradients=tf.UnconnectedGradients.NONE)
        disconnected[:] = [k for k, g in enumerate(reached) if g is None]
        out = []
        for k, x in enumerate(xs):
            if k in disconnected:  # zeros, without tracing a Jacobian loop for nothing
                shape = tf.concat([tf.shape(y), tf.shape(x)[1:]], axis=0)
                out.append(tf.zeros(shape, dtype=y.dtype))
            else:
                out.append(
                    tape.batch_jacobian(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                )
        del tape
        return out

    compiled = Compiled(jac, [specs], jit)
    compiled.disconnected = disconnected
    return compiled


# ---------------------------------------------------------------- inputs that hold token ids

# ops that carry ids from a model input to a lookup: re-typed, re-shaped, sliced, clipped,
# or wrapped (Keras 3's `take` maps negative ids with where(ids < 0, ids + n, ids))
_PASS_THROUGH = frozenset(
    {
        "Add",
        "AddV2",
        "Sub",
        "Select",
        "SelectV2",
        "Maximum",
        "Minimum",
        "ClipByValue",
        "FloorMod",
        "Identity",
        "IdentityN",
        "Cast",
        "Reshape",
        "ExpandDims",
        "Squeeze",
        "StridedSlice",
        "Slice",
        "Transpose",
        "StopGradient",
        "Floor",
        "Round",
        "Rint",
    }
)
_GATHERS = frozenset({"GatherV2", "Gather", "ResourceGather", "GatherNd", "ResourceGatherNd"})
_READS = frozenset({"Identity", "IdentityN", "ReadVariableOp", "Cast"})


@dataclass
class TokenUse:
    """How a model consumes one input as integer ids."""

    tables: list[str]  # layers (or, without layers, variables) whose table the ids index
    lookup: bool  # the ids index a table (a gather), found in the graph
    cast: str | None  # the op that casts a float input to integers, if any


def token_uses(handle: ModelHandle) -> dict[int, TokenUse]:
    """Inputs the model reads as integer ids, found in its graph, not only by declared dtype.

    Traces the forward pass once and follows each input through casts and reshapes: an
    input that reaches the indices of a gather (an embedding lookup) or a cast to integers
    has no gradient. Best effort: a model that cannot be traced here gives {}.
    """
    specs = [
        tf.TensorSpec((None, *info.shape), tf.as_dtype(_input_dtype(info.dtype)))
        for info in handle.inputs
    ]
    graph = None
    for autograph in (False, True):
        try:
            fn = tf.function(
                lambda xs: handle.call(list(xs), training=False),
                input_signature=[specs],
                autograph=autograph,
            )
            graph = fn.get_concrete_function().graph
            break
        except Exception:  # noqa: BLE001, S112 - retried with AutoGraph, else no answer
            continue
    if graph is None:
        return {}
    owners = _table_owners(handle)
    captured = {internal.name: owners.get(id(external)) for external, internal in graph.captures}
    found = {}
    for k, placeholder in enumerate(graph.inputs[: len(specs)]):
        use = _follow_ids(placeholder, captured)
        if use is not None:
            found[k] = use
    return found


def _table_owners(handle: ModelHandle) -> dict[int, str]:
    """id of each variable's resource handle -> the innermost layer path owning it."""
    owners: dict[int, str] = {}

    def key(v: Any) -> int | None:
        inner = v.value if isinstance(v, keras.Variable) else v
        resource = getattr(inner, "handle", None)
        return None if resource is None else id(resource)

    for name, v in handle.named_variables():
        if (k := key(v)) is not None:
            owners[k] = name
    for row in handle.layers:  # outer models first: inner layers overwrite them
        for v in getattr(row.layer, "weights", []):
            if (k := key(v)) is not None:
                owners[k] = row.path
    return owners


def _follow_ids(start: Any, captured: dict[str, str | None]) -> TokenUse | None:
    tables: list[str] = []
    lookup = False
    cast = None
    stack, seen = [start], {start.name}
    while stack:
        t = stack.pop()
        for op in t.consumers():
            if op.type in _GATHERS:
                if len(op.inputs) > 1 and op.inputs[1].name == t.name:
                    lookup = True
                    owner = _table_owner(op.inputs[0], captured)
                    if owner and owner not in tables:
                        tables.append(owner)
                continue
            if op.type not in _PASS_THROUGH:
                continue
            out_dtype = op.outputs[0].dtype if op.outputs else None
            if op.type == "Cast" and t.dtype.is_floating and out_dtype.is_integer:
                cast = cast or op.name
            for out in op.outputs:
                if out.name not in seen:
                    seen.add(out.name)
                    stack.append(out)
    return TokenUse(tables, lookup, cast) if lookup or cast else None


def _table_owner(t: Any, captured: dict[str, str | None]) -> str | None:
    for _ in range(8):
        if t.op.type == "Placeholder":
            return captured.get(t.name)
        if t.op.type not in _READS or not t.op.inputs:
            return None
        t = t.op.inputs[0]
    return None


def token_input_error(handle: ModelHandle, index: int) -> GradientError | None:
    """The clear error for an input the model reads as token ids; None if it does not."""
    use = token_uses(handle).get(index)
    if use is None:
        return None
    name = handle.inputs[index].name
    layers = {row.path: row.class_name for row in handle.layers}
    if use.tables:
        described = ", ".join(
            f"{layers[t]} layer {t!r}" if t in layers else f"the table {t!r}" for t in use.tables
        )
        what = f"it feeds {described}"
    elif use.lookup:
        what = "it indexes a lookup table"
    else:
        what = f"the model casts it to integers at {use.cast}"
    if use.tables and use.tables[0] in layers:
        hint = (
            f"use `wrt-layer --layer {use.tables[0]}` for the gradient at the embedded "
            f"vectors (wrt-weights gives the table's)"
        )
    elif handle.layers:
        hint = "use wrt-layer on the layer that consumes it"
    else:
        hint = "this SavedModel has no layers; wrt-weights gives the table's gradient"
    return GradientError(
        f"input {name!r} holds token ids ({what}): there is no gradient with respect to "
        f"integer ids; {hint}"
    )


def _integer_input_error(handle: ModelHandle, index: int) -> GradientError:
    info = handle.inputs[index]
    return GradientError(
        f"input {info.name!r} is {_input_dtype(info.dtype).name}: there is no gradient with "
        f"respect to integer inputs (use wrt-layer on the layer that consumes it)"
    )


def _disconnected_input_error(handle: ModelHandle, index: int) -> GradientError:
    name = handle.inputs[index].name
    where = (
        "wrt-weights, or wrt-layer on the layer that consumes it"
        if handle.layers
        else "wrt-weights (a SavedModel function hides which op consumes it)"
    )
    return GradientError(
        f"input {name!r} has no gradient: the objective does not depend on it "
        f"differentiably (token ids cast to integers, or an unused input); use {where}"
    )


def missing_input_gradient(handle: ModelHandle, index: int) -> GradientError:
    """Why input `index` got no gradient: token ids (naming the layer), else disconnected."""
    return token_input_error(handle, index) or _disconnected_input_error(handle, index)


def input_gradient_error(handle: ModelHandle, index: int) -> GradientError | None:
    """Why input `index` has no gradient (integer dtype or token ids), or None if it has."""
    if _input_dtype(handle.inputs[index].dtype).kind != "f":
        return token_input_error(handle, index) or _integer_input_error(handle, index)
    return token_input_error(handle, index)


__all__ = [
    "Batch",
    "GradientEngine",
    "GradientSum",
    "SparseGradient",
    "StepResult",
    "default_batch_size",
    "input_gradient_error",
    "jacobian_function",
    "missing_input_gradient",
    "read_batches",
    "token_input_error",
    "token_uses",
]
