"""Per-sample weight gradients g_i = d o_i / d theta in one compiled tape call per batch.

Fast path (ghostnorm.py): for Dense, Conv1D/Conv2D and Embedding layers, the layer's input
activation and the gradient of the summed objective at its pre-activation output (both
captured while the model runs) give each sample's kernel and bias gradient, or its squared
norm without materializing it. This is exact because d(sum_j o_j)/dz_i = d o_i/dz_i when
samples do not interact, which holds in inference mode (BatchNormalization uses its moving
statistics).

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.engine.batched import weight_numpy
from gradcli.engine.capture import hooked
from gradcli.engine.core import Step, TapeCore, tf_variable
from gradcli.engine.ghostnorm import (
    RULES,
    Capture,
    Slot,
    f32,
    layer_kind,
    layer_weights,
    squared_norms,
)
from gradcli.engine.objective import Objective
from gradcli.engine.sparse import SparseGradient
from gradcli.errors import UsageError, param
from gradcli.load.backend import keras, tf
from gradcli.load.handles import ModelHandle


@dataclass
class PerSampleStep:
    """One batch, as NumPy: the objective, the batch-summed gradient G (None: disconnected),
    each sample's squared gradient norm per variable, and (if asked) the g_i themselves."""

    objective: np.ndarray  # (B,)
    weights: list[np.ndarray | SparseGradient | None]
    squares: np.ndarray  # (B, V) float32
    arrays: list[np.ndarray | None]  # (B, *shape) per variable, with arrays=True


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
        self.core = TapeCore(handle, objective, training=training, jit=jit)
        if training and handle.has_layers:
            mixing = batch_interacting_layers(handle)
            if mixing:
                raise UsageError(
                    f"{param('per_sample')} with {param('training')}: {', '.join(mixing)} "
                    "normalize with batch statistics in training mode, so samples interact and "
                    f"a per-sample gradient is not defined; leave out {param('training')} "
                    "(inference mode uses the moving statistics)"
                )
        self.variable_names, self.variables = self.core.variables()
        self.input_dtypes = self.core.input_dtypes
        self.slots = [] if general_only else self._plan()
        self._fn: Step | None = None
        # known once traced: the variables (indices) that took the general path
        self.general_variables: list[int] = []

    def _plan(self) -> list[Slot]:
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
                holders.setdefault(id(tf_variable(w)), set()).add(id(row.layer))
        slots = []
        seen: set[int] = set()
        for row in self.handle.layers:
            kind = layer_kind(row.layer)
            if kind is None or id(row.layer) in seen:  # listed twice: wrapped once
                continue
            seen.add(id(row.layer))
            positions = {}
            weights = [(role, tf_variable(var)) for role, var in layer_weights(row.layer, kind)]
            if any(len(holders.get(id(var), ())) > 1 for _, var in weights):
                continue
            for role, var in weights:
                k = index.get(id(var))
                if k is not None:
                    positions[role] = k
            if positions:
                slots.append(Slot(row, kind, positions))
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

        def step(xs, ys, valid):
            xs, ys = list(xs), list(ys)
            capture = Capture(slots)
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(variables)
                with hooked(capture.hooks(tape)):
                    outputs = self.objective.model_outputs(self.handle, xs, self.training)
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
            zero = tf.zeros_like(f32(o))
            squares: list[Any] = [None] * len(variables)
            per_sample: list[Any] = [None] * len(variables)
            for slot, dz in zip(usable, grads["z"], strict=True):
                if dz is None:
                    continue
                figures = RULES[slot.kind](slot, slot.inputs[0], dz, arrays)
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
                    squares[k] = squared_norms(j)
                    per_sample[k] = j if arrays else None
            del tape
            squares = [zero if s is None else s for s in squares]
            stacked = tf.stack(squares, axis=1) if squares else zero[:, None][:, :0]
            return o, weights, stacked, per_sample if arrays else []

        # no --jit padding here yet: per-row outputs and G would need the mask (issue 28)
        self._fn = self.core.step(
            step, what="the per-sample gradients cannot be computed", targets=targets, pad=False
        )

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
        self.objective.check_first_batch(self.handle, inputs)
        o, gw, squares, arrays = self._fn(list(inputs), list(targets)).outputs
        weights = [weight_numpy(g, v) for g, v in zip(gw, self.variables, strict=True)]
        per_sample = [None if a is None else a.numpy() for a in arrays] if self.arrays else []
        return PerSampleStep(o.numpy(), weights, squares.numpy(), per_sample)
