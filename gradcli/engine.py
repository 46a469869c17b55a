"""The one compiled GradientTape: per-sample objective gradients w.r.t. inputs, layers, weights.

Every command and method feeds this function; it knows nothing of paths or printing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import ArraySource
from .backend import keras, tf
from .errors import GradientError, InputError, UsageError
from .loading import LayerInfo, ModelHandle
from .objective import Objective


@dataclass
class Batch:
    """Rows [start, stop) of the input, with the matching targets."""

    start: int
    stop: int
    inputs: list[np.ndarray]
    targets: list[np.ndarray]


@dataclass
class StepResult:
    """One call of the compiled tape, as NumPy. None marks a disconnected tensor."""

    objective: np.ndarray  # (B,)
    inputs: list[np.ndarray | None]
    layers: list[np.ndarray | None]
    weights: list[np.ndarray | None]


def _numpy(x: Any) -> np.ndarray | None:
    return None if x is None else x.numpy()


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
    ) -> None:
        self.handle = handle
        self.objective = objective
        self.wrt_inputs = wrt_inputs
        self.layers = list(layers)
        self.wrt_weights = wrt_weights
        self.training = training
        if training and not hasattr(handle, "model"):
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
            for info, dt in zip(handle.inputs, self.input_dtypes, strict=True):
                if dt.kind != "f":
                    raise GradientError(
                        f"input {info.name!r} is {dt.name}: there is no gradient with respect "
                        f"to integer inputs (use wrt-layer on the layer that consumes it)"
                    )
        self._input_specs = [
            tf.TensorSpec((None, *info.shape), tf.as_dtype(dt))
            for info, dt in zip(handle.inputs, self.input_dtypes, strict=True)
        ]
        self._jit = jit
        self._grad_fn = None
        self._forward_fn = None

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
        try:
            o, gi, gl, gw = self._grad_fn(list(inputs), list(targets))
        except (GradientError, UsageError, InputError):
            raise
        except (tf.errors.OpError, ValueError, TypeError, LookupError, NotImplementedError) as exc:
            raise GradientError(f"the gradient cannot be computed: {_first_line(exc)}") from exc
        return StepResult(
            o.numpy(), [_numpy(g) for g in gi], [_numpy(g) for g in gl], [_numpy(g) for g in gw]
        )

    def objective_values(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> np.ndarray:
        """The per-sample objective only (a forward pass)."""
        if self._forward_fn is None:

            def forward(xs, ys):
                return self._objective(list(xs), list(ys))

            self._forward_fn = Compiled(
                forward, [self._input_specs, self._target_specs(targets)], self._jit
            )
        try:
            return self._forward_fn(list(inputs), list(targets)).numpy()
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise GradientError(f"the model cannot be evaluated: {_first_line(exc)}") from exc


def jacobian_function(
    handle: ModelHandle, output_index: int, training: bool = False, jit: bool = False
) -> Any:
    """A compiled per-sample Jacobian d y_i / d x_i of one output, for each input."""
    specs = [
        tf.TensorSpec((None, *info.shape), tf.as_dtype(_input_dtype(info.dtype)))
        for info in handle.inputs
    ]

    def jac(xs):
        xs = list(xs)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xs)
            y = handle.call(xs, training=training)[output_index]
            if y.shape.rank == 1:
                y = y[:, None]
        out = [
            tape.batch_jacobian(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            for x in xs
        ]
        del tape
        return out

    return Compiled(jac, [specs], jit)


def _first_line(exc: BaseException) -> str:
    from .errors import first_line

    return first_line(exc)


__all__ = [
    "Batch",
    "GradientEngine",
    "StepResult",
    "default_batch_size",
    "jacobian_function",
    "read_batches",
]
