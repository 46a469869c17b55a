"""Hessian-vector products of the objective on the engine core (core.TapeCore), compiled once:
w.r.t. the trainable weights, as the full-batch mean over batches exactly as wrt-weights'
gradient (`WeightHessian`), or w.r.t. each sample's input, where one call gives every sample's
own H_i v_i (`InputHessian`; in inference mode samples do not interact, so the Hessian of
the batch's summed objective w.r.t. the batch is block diagonal, one block per sample).

Two modes, exact to float rounding (tests/test_hessian.py against tape.jacobian):
- double-backward (default): a tape around the gradient's tape, H v = d <g, v> / d theta;
  measured as fast or faster here (bench/hvp_modes.py: 1.5x a gradient on the bench MLP,
  2.2-2.9x on the CNN, against 2.0x and 2.4-2.9x);
- forward-over-backward: `tf.autodiff.ForwardAccumulator(theta, v)` around the gradient's
  tape, H v = its JVP of the gradient.

Products come back as float64 NumPy arrays, one per variable (input), checked finite per
variable so that a NaN names its variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.engine.batched import Batch
from gradcli.engine.core import Step, TapeCore, to_numpy
from gradcli.engine.lanczos import NonFiniteProduct
from gradcli.engine.objective import Objective
from gradcli.engine.tokens import inputs_gradient_error, missing_input_gradient
from gradcli.errors import GradientError
from gradcli.load.backend import tf
from gradcli.load.handles import ModelHandle

MODES = ("double-backward", "forward-over-backward")
WHAT = "the Hessian cannot be computed"
_NO_SECOND = re.compile(r"gradient registry has no entry for: (\w+)")
Batches = Callable[[], Iterable[Batch]]


class NonFiniteVariable(NonFiniteProduct):
    """A Hessian-vector product (or the gradient) with NaN or infinity in one variable."""

    def __init__(self, name: str, what: str = "Hessian-vector product") -> None:
        super().__init__(f"{name}: the {what} is not finite")
        self.name = name
        self.what = what


def _dense(g: Any) -> Any:
    """An embedding table's gradient arrives as rows (IndexedSlices): a product needs it whole."""
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def hvp_body(mode: str, total_of: Callable[[], Any], wrt: list, vectors: list) -> tuple:
    """(total, gradient, H v) of the scalar `total_of()` w.r.t. the tensors `wrt`, along
    `vectors`, in `mode`; disconnected ones give zeros."""
    zero = tf.UnconnectedGradients.ZERO
    if mode == "forward-over-backward":
        with tf.autodiff.ForwardAccumulator(wrt, vectors) as acc:
            with tf.GradientTape() as tape:
                tape.watch(wrt)
                total = total_of()
            grads = [_dense(g) for g in tape.gradient(total, wrt, unconnected_gradients=zero)]
        return total, grads, list(acc.jvp(grads, unconnected_gradients=zero))
    with tf.GradientTape() as outer:
        outer.watch(wrt)
        with tf.GradientTape() as tape:
            tape.watch(wrt)
            total = total_of()
        grads = [_dense(g) for g in tape.gradient(total, wrt, unconnected_gradients=zero)]
        dot = tf.add_n(
            [tf.reduce_sum(g * tf.cast(v, g.dtype)) for g, v in zip(grads, vectors, strict=True)]
        )
    hv = [_dense(h) for h in outer.gradient(dot, wrt, unconnected_gradients=zero)]
    return total, grads, hv


def second_derivative_error(exc: GradientError) -> GradientError:
    """An op whose gradient has no gradient of its own, named in one line."""
    found = _NO_SECOND.search(str(exc.__cause__ or exc))
    if found is None:
        return exc
    op = found.group(1)
    base = op[: -len("Grad")] if op.endswith("Grad") else op
    return GradientError(
        f"{WHAT}: TensorFlow defines no second derivative through the op {base} (no gradient "
        f"is registered for {op}); this objective is not twice differentiable as TensorFlow "
        "builds it"
    )


def _call(step: Step, *args: Any) -> Any:
    try:
        return step(*args)
    except GradientError as exc:
        raise second_derivative_error(exc) from exc


def finite(name: str, a: np.ndarray, what: str = "Hessian-vector product") -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise NonFiniteVariable(name, what)
    return a


@dataclass
class GradientPass:
    """The objective's mean and gradient over every sample (float64), and which variables
    the objective reaches (the Hessian is over those)."""

    n: int
    objective_mean: float
    gradients: list[np.ndarray | None]  # None: disconnected

    @property
    def connected(self) -> list[bool]:
        return [g is not None for g in self.gradients]


class WeightHessian:
    """H v for the Hessian of (1/N) sum_i o_i w.r.t. the trainable weights."""

    def __init__(
        self,
        handle: ModelHandle,
        objective: Objective,
        *,
        mode: str = MODES[0],
        training: bool = False,
        jit: bool = False,
    ) -> None:
        self.handle = handle
        self.objective = objective
        self.mode = mode
        self.core = TapeCore(handle, objective, training=training, jit=jit)
        self.input_dtypes = self.core.input_dtypes
        self.all_names, self.all_variables = self.core.variables()
        self.names, self.variables = list(self.all_names), list(self.all_variables)
        self._gradient: Step | None = None
        self._product: Step | None = None
        self.products = 0  # full-data products computed

    def gradient(self, batches: Batches) -> GradientPass:
        """One pass over the data: the mean objective and gradient, and what is connected;
        the products are then over the connected variables only."""
        variables = self.all_variables
        sums: list[np.ndarray | None] = [None] * len(variables)
        connected: list[bool] | None = None
        total = 0.0
        n = 0
        for batch in batches():
            self.objective.check_first_batch(self.handle, batch.inputs)
            if self._gradient is None:
                self._gradient = self.core.step(
                    self._gradient_step,
                    what="the gradient cannot be computed",
                    targets=batch.targets,
                )
            call = self._gradient(batch.inputs, batch.targets)
            o, grads = call.outputs
            connected = [g is not None for g in grads] if connected is None else connected
            for k, g in enumerate(grads):
                if g is not None:
                    a = to_numpy(g).astype(np.float64)
                    sums[k] = a if sums[k] is None else sums[k] + a
            total += float(np.sum(call.rows(o), dtype=np.float64))
            n += batch.stop - batch.start
        means = [None if s is None else s / n for s in sums]
        keep = [k for k, ok in enumerate(connected or []) if ok]
        self.names = [self.all_names[k] for k in keep]
        self.variables = [self.all_variables[k] for k in keep]
        return GradientPass(n, total / n, means)

    def _gradient_step(self, xs, ys, valid):
        with tf.GradientTape() as tape:
            tape.watch(self.all_variables)
            o = self.core.objective_of(list(xs), list(ys))
            total = self.core.masked_total(o, valid)
        none = tf.UnconnectedGradients.NONE
        return o, tape.gradient(total, self.all_variables, unconnected_gradients=none)

    def _product_step(self, xs, ys, valid, *vectors):
        def total_of():
            return self.core.masked_total(self.core.objective_of(list(xs), list(ys)), valid)

        _, _, hv = hvp_body(self.mode, total_of, self.variables, list(vectors))
        return hv

    def product(self, batches: Batches, vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """H v, one float64 array per (connected) variable: the batch products summed and
        divided by the number of samples, as one tape over all of them would give."""
        sums = [np.zeros(v.shape, np.float64) for v in vectors]
        args = [
            tf.constant(np.asarray(v), dtype=var.dtype)
            for v, var in zip(vectors, self.variables, strict=True)
        ]
        n = 0
        for batch in batches():
            if self._product is None:
                specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.variables]
                self._product = self.core.step(
                    self._product_step, what=WHAT, targets=batch.targets, extra_specs=specs
                )
            call = _call(self._product, batch.inputs, batch.targets, *args)
            for k, h in enumerate(call.outputs):
                sums[k] += to_numpy(h)
            n += batch.stop - batch.start
        self.products += 1
        return [finite(name, s / n) for name, s in zip(self.names, sums, strict=True)]


class InputHessian:
    """Per-sample products H_i v_i of d^2 o_i / d x_i^2 (every input of the sample at once),
    one compiled call per batch; models in inference mode (samples independent)."""

    def __init__(
        self,
        handle: ModelHandle,
        objective: Objective,
        *,
        mode: str = MODES[0],
        jit: bool = False,
    ) -> None:
        if (error := inputs_gradient_error(handle)) is not None:
            raise error  # token ids: no derivative w.r.t. them, the layer named
        self.handle = handle
        self.objective = objective
        self.mode = mode
        self.core = TapeCore(handle, objective, training=False, jit=jit)
        self.input_dtypes = self.core.input_dtypes
        self.names = [i.name for i in handle.inputs]
        self.disconnected: list[int] = []  # known once traced
        self._step: Step | None = None

    def _body(self, xs, ys, valid, *vectors):
        xs = list(xs)
        with tf.GradientTape() as probe:
            probe.watch(xs)
            reach = self.core.masked_total(self.core.objective_of(xs, list(ys)), valid)
        reached = probe.gradient(reach, xs, unconnected_gradients=tf.UnconnectedGradients.NONE)
        self.disconnected[:] = [k for k, g in enumerate(reached) if g is None]
        outputs: list = []

        def total_of():
            o = self.core.objective_of(xs, list(ys))
            outputs.append(o)
            return self.core.masked_total(o, valid)

        _, _, hv = hvp_body(self.mode, total_of, xs, list(vectors))
        return outputs[0], hv

    def product(
        self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], vectors: list
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The batch's objective (B,) and each input's H_i v_i (B, *shape), float64."""
        if self._step is None:
            self.objective.check_first_batch(self.handle, inputs)
            specs = [tf.TensorSpec(s.shape, s.dtype) for s in self.core.input_specs]
            self._step = self.core.step(
                self._body, what=WHAT, targets=targets, extra_specs=specs, pad=False
            )
        args = [np.asarray(v, dtype=d) for v, d in zip(vectors, self.input_dtypes, strict=True)]
        call = _call(self._step, list(inputs), list(targets), *args)
        if self.disconnected:
            raise missing_input_gradient(self.handle, self.disconnected[0])
        o, hv = call.outputs
        out = [to_numpy(h).astype(np.float64) for h in hv]
        return to_numpy(o), [finite(name, h) for name, h in zip(self.names, out, strict=True)]
