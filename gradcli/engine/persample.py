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

The batch-summed gradient G comes from the same tape, as `GradientEngine` computes it, except
for the fast path's Dense and Conv layers, whose G is the sum of the g_i their rule computes
anyway (the same numbers to float rounding, without a second weight gradient), so that
`wrt-weights --per-sample` reports the G of plain `wrt-weights`.

Streams (data attribution, `GradientStream`): the same step over a subset of the variables
(by name: a layer, the last layer), its per-sample gradients reduced inside the compiled step
(flattened into one vector per sample, or projected by a seeded CountSketch) so that only
(B, P) or (B, dim) numbers leave it, with each sample's exact squared norm over the subset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.engine.batched import weight_numpy
from gradcli.engine.capture import hooked
from gradcli.engine.core import Step, TapeCore, tf_variable
from gradcli.engine.ghostnorm import (
    EMBEDDING,
    RULES,
    Capture,
    Slot,
    f32,
    layer_kind,
    layer_weights,
    row_values,
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
    reduced: np.ndarray | None = None  # what the engine's `reduce` made of them in the step


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
        variables: Sequence[str] | None = None,
        reduce: Callable[[list], Any] | None = None,
    ) -> None:
        """`variables`: the names of the trainable variables to differentiate (default all);
        `reduce(per_sample, rows)`: runs inside the compiled step on the per-sample gradients,
        one (B, *shape) tensor per variable (None: disconnected) and B, and its tensor is
        returned instead of them (`PerSampleStep.reduced`); it implies `arrays`."""
        self.handle = handle
        self.objective = objective
        self.training = training
        self.arrays = arrays or reduce is not None
        self.reduce = reduce
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
        self.variable_names, self.variables = self.core.variables(variables)
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

    def fast_path_size(self) -> int | None:
        """Values one sample adds in the fast path's rules beyond the model's activations:
        the largest layer's (the executor frees a layer's windows once its blocks are
        computed). None when a layer's shapes are not known before tracing."""
        sizes = [row_values(s) for s in self.slots]
        if any(v is None for v in sizes):
            return None
        return max(sizes, default=0)

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
            # G of a covered Dense or Conv is the sum of its g_i, which its rule computes
            # anyway: the tape leaves out those variables (no second weight gradient)
            summed = {k for s in usable if s.kind != EMBEDDING for k in s.positions.values()}
            taped = [k for k in range(len(variables)) if k not in summed]
            grads = tape.gradient(
                total,
                {"weights": [variables[k] for k in taped], "z": [s.zs[0] for s in usable]},
                unconnected_gradients=tf.UnconnectedGradients.NONE,
            )
            weights: list[Any] = [None] * len(variables)
            for k, g in zip(taped, grads["weights"], strict=True):
                weights[k] = g
            zero = tf.zeros_like(f32(o))
            squares: list[Any] = [None] * len(variables)
            per_sample: list[Any] = [None] * len(variables)
            for slot, dz in zip(usable, grads["z"], strict=True):
                if dz is None:  # the layer does not reach the objective
                    continue
                parts = RULES[slot.kind](slot, slot.inputs[0], dz, arrays)
                for role, k in slot.positions.items():
                    part = parts.get(role)
                    if part is None:
                        continue
                    if k in summed:
                        weights[k] = tf.cast(part.total, variables[k].dtype)
                    if weights[k] is not None:
                        squares[k], per_sample[k] = part.squares, part.per_sample
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
            if self.reduce is not None:
                return o, weights, stacked, self.reduce(per_sample, tf.shape(o)[0])
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
        if self.reduce is not None:
            return PerSampleStep(o.numpy(), weights, squares.numpy(), [], arrays.numpy())
        per_sample = [None if a is None else a.numpy() for a in arrays] if self.arrays else []
        return PerSampleStep(o.numpy(), weights, squares.numpy(), per_sample)


# ------------------------------------------------------------------ streams


@dataclass
class StreamBatch:
    """One batch of a stream: the objective (B,), each sample's squared gradient norm over
    the stream's variables (B,) in float64, and the per-sample vectors (B, P or dim), if asked."""

    objective: np.ndarray
    squared_norms: np.ndarray
    vectors: np.ndarray | None


@dataclass(frozen=True)
class Projection:
    """A seeded CountSketch to `dim` numbers (engine.projection is its NumPy reference)."""

    seed: int
    dim: int
    blocks: int = 1


class GradientStream:
    """Per-sample gradients of `names` (variables of the model), one compiled step per batch:
    the exact squared norms always (the fast path's ghost norms where it applies, nothing
    materialized for them when no vectors are asked), and with `vectors` each sample's
    gradient reduced in the step: flattened in variable order (B, P), or with `projection`
    its CountSketch (B, dim), whose buckets and signs are those of engine.projection.entries
    for each variable's index among all the model's trainable variables."""

    def __init__(
        self,
        handle: ModelHandle,
        objective: Objective,
        names: Sequence[str] | None = None,
        *,
        vectors: bool = False,
        projection: Projection | None = None,
    ) -> None:
        named = handle.named_variables()
        all_names = [n for n, _ in named]
        chosen = list(all_names if names is None else names)
        sizes = [int(np.prod(named[all_names.index(n)][1].shape, dtype=np.int64)) for n in chosen]
        reduce = None
        if vectors and projection is None:
            reduce = flat_vectors(sizes)
        elif vectors:
            reduce = count_sketch(projection, [all_names.index(n) for n in chosen], sizes)
        self.engine = PerSampleEngine(handle, objective, variables=chosen, reduce=reduce)
        self.names = self.engine.variable_names
        self.parameters = sum(sizes)  # numbers in one sample's gradient over `names`
        self.width = 0 if not vectors else projection.dim if projection else sum(sizes)

    @property
    def input_dtypes(self) -> list:
        return self.engine.input_dtypes

    def per_sample_size(self) -> int:
        return self.engine.per_sample_size()

    def fast_path_size(self) -> int | None:
        return self.engine.fast_path_size()

    def batch(self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> StreamBatch:
        step = self.engine.gradients(inputs, targets)
        squares = np.asarray(step.squares, np.float64).sum(axis=1)
        return StreamBatch(step.objective, squares, step.reduced)


def flat_vectors(sizes: Sequence[int]) -> Callable:
    """(B, P): each sample's gradients flattened and concatenated in variable order (a
    disconnected variable's part is zeros)."""

    def reduce(per_sample: list, rows: Any) -> Any:
        parts = [
            tf.zeros([rows, size]) if g is None else _flat(g)
            for g, size in zip(per_sample, sizes, strict=True)
        ]
        return tf.concat(parts, axis=1) if parts else tf.zeros([rows, 0])

    return reduce


def _flat(g: Any) -> Any:
    return tf.reshape(tf.cast(g, tf.float32), [tf.shape(g)[0], -1])


def count_sketch(projection: Projection, indices: Sequence[int], sizes: Sequence[int]) -> Callable:
    """The in-step CountSketch of per-sample gradients: coordinate j of variable number v (its
    index among all the model's trainable variables) goes, with its sign, to its bucket of each
    block, scaled by 1/sqrt(blocks). The buckets and signs are computed once, here, by the
    NumPy reference (engine.projection.entries) and live in the graph as constants (8 bytes
    per parameter and block)."""
    from gradcli.engine.projection import entries

    dim, scale = projection.dim, 1.0 / np.sqrt(projection.blocks)
    tables = []
    for v, size in zip(indices, sizes, strict=True):
        columns, signs = entries(projection.seed, v, size, dim, projection.blocks)
        tables.append(
            [
                (
                    tf.constant(columns[r].astype(np.int32)),
                    tf.constant(signs[r] * scale, tf.float32),
                )
                for r in range(projection.blocks)
            ]
        )

    def reduce(per_sample: list, rows: Any) -> Any:
        total = tf.zeros([dim, rows])
        for g, blocks in zip(per_sample, tables, strict=True):
            if g is None:
                continue
            flat = tf.transpose(_flat(g))  # (n, B): rows of coordinates, summed per bucket
            for columns, signs in blocks:
                total += tf.math.unsorted_segment_sum(flat * signs[:, None], columns, dim)
        return tf.transpose(total)

    return reduce
