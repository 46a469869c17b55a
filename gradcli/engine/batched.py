"""The batched tape on the core (core.py): per-sample objective gradients w.r.t. inputs,
layers and weights, in one compiled call per batch. Every wrt- command and method feeds it,
and the finite-difference check drives it; it knows nothing of paths or printing.

Sparse (Embedding) gradient sums are in sparse.py, the diagnosis of inputs that hold token
ids in tokens.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.engine.capture import LayerOutputs, hooked
from gradcli.engine.core import Step, TapeCore, to_numpy
from gradcli.engine.objective import Objective
from gradcli.engine.sensitivity import Sensitivity
from gradcli.engine.sparse import SparseGradient
from gradcli.engine.tokens import inputs_gradient_error, missing_input_gradient
from gradcli.io.arrays import ArraySource
from gradcli.load.backend import tf
from gradcli.load.handles import LayerInfo, ModelHandle


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


def weight_numpy(x: Any, variable: Any) -> np.ndarray | SparseGradient | None:
    if isinstance(x, tf.IndexedSlices):
        shape = x.dense_shape
        shape = tuple(variable.shape) if shape is None else tuple(int(d) for d in shape.numpy())
        return SparseGradient(x.values.numpy(), x.indices.numpy(), shape)
    return to_numpy(x)


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
        times_input: bool = False,
    ) -> None:
        self.handle = handle
        # True: input gradients come back multiplied by their inputs (gradient x input), one
        # multiply in the compiled call instead of a NumPy pass over every batch
        self.times_input = times_input
        # True: a step also returns the watched layers' activations (CAM methods need both)
        self.activations = activations
        # True: embedding-table gradients come back as SparseGradient (rows), else dense
        self.sparse_weights = sparse_weights
        self.objective = objective
        self.wrt_inputs = wrt_inputs
        self.layers = list(layers)
        self.wrt_weights = wrt_weights
        self.training = training
        self.core = TapeCore(handle, objective, training=training, jit=jit)
        self.variable_names, self.variables = self.core.variables() if wrt_weights else ([], [])
        self.input_dtypes = self.core.input_dtypes
        if wrt_inputs and (error := inputs_gradient_error(handle)) is not None:
            raise error
        self._grad_fn: Step | None = None
        self._forward_fn: Step | None = None
        # gradients against their tensors and the objective, over every call (vanishing)
        self.sensitivity = Sensitivity()

    @property
    def padded_rows(self) -> int:
        """Rows of padding (--jit) computed and dropped, over every call."""
        return self.core.padded_rows

    def _build(self, targets: Sequence[np.ndarray]) -> None:
        layer_capture = self.layers
        variables = self.variables

        def step(xs, ys, valid):
            xs, ys = list(xs), list(ys)
            capture = LayerOutputs(layer_capture)
            with tf.GradientTape(watch_accessed_variables=bool(variables)) as tape:
                if variables:
                    tape.watch(variables)
                tape.watch(xs)
                with hooked(capture.hooks(tape)):
                    o = self.core.objective_of(xs, ys)
                total = self.core.masked_total(o, valid)
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
            # the float-noise check (engine.sensitivity); None for a disconnected one
            squares = [
                None if g is None else tf.stack([_square_sum(g, valid), _square_sum(t, valid)])
                for g, t in zip(
                    [*grads["inputs"], *grads["layers"]], [*sources["inputs"], *acts], strict=True
                )
            ]
            inputs = grads["inputs"]
            if self.times_input:
                inputs = [
                    None if g is None else g * tf.cast(x, g.dtype)
                    for g, x in zip(inputs, sources["inputs"], strict=True)
                ]
            return (
                o,
                inputs,
                grads["layers"],
                grads["weights"],
                acts if self.activations else [],
                squares,
            )

        self._grad_fn = self.core.step(
            step, what="the gradient cannot be computed", targets=targets
        )

    def gradients(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] = ()
    ) -> StepResult:
        """One tape call over a batch (any size)."""
        if self._grad_fn is None:
            self._build(targets)
        self.objective.check_first_batch(self.handle, inputs)
        call = self._grad_fn(inputs, targets)
        o, gi, gl, gw, acts, squares = call.outputs
        rows = call.rows
        for k, g in enumerate(gi):
            if g is None:  # the objective does not reach it: token ids are the usual reason
                raise missing_input_gradient(self.handle, k)
        if self.sparse_weights:
            weights = [weight_numpy(g, v) for g, v in zip(gw, self.variables, strict=True)]
        else:
            weights = [to_numpy(g) for g in gw]
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

            def forward(xs, ys, valid):
                return self.core.objective_of(list(xs), list(ys))

            self._forward_fn = self.core.step(
                forward,
                what="the model cannot be evaluated",
                targets=targets,
                catch=(tf.errors.OpError, ValueError, TypeError),
            )
        call = self._forward_fn(inputs, targets)
        return call.rows(call.outputs)
