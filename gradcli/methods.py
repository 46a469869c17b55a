"""Attribution methods on the engine: vanilla, gradient x input, SmoothGrad, Integrated Gradients.

SmoothGrad copies and IG steps are stacked on the batch axis and go through the same compiled
tape as vanilla gradients, in calls of at most `rows_per_call` rows: no Python loop per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .engine import Batch, GradientEngine

METHODS = ("vanilla", "gradxinput", "smoothgrad", "integrated")


@dataclass
class MethodOptions:
    method: str = "vanilla"
    samples: int = 25
    noise: float = 0.15
    seed: int = 0
    steps: int = 50
    baseline: list[np.ndarray] | None = None  # per input: (N, ...) rows, or None for zeros

    @property
    def expansion(self) -> int:
        """How many tape rows one input sample costs."""
        if self.method == "smoothgrad":
            return self.samples
        if self.method == "integrated":
            return self.steps
        return 1


@dataclass
class Attribution:
    """Per-input attributions of a batch, and the objective where the method reports it."""

    values: list[np.ndarray]
    objective: np.ndarray | None = None
    completeness: dict = field(default_factory=dict)  # IG: per-sample gaps


def _tape_in_chunks(
    engine: GradientEngine, inputs: list[np.ndarray], targets: list[np.ndarray], rows_per_call: int
) -> list[np.ndarray]:
    rows = len(inputs[0])
    if rows <= rows_per_call:
        return engine.gradients(inputs, targets).inputs
    parts: list[list[np.ndarray]] = [[] for _ in inputs]
    for start in range(0, rows, rows_per_call):
        stop = min(rows, start + rows_per_call)
        got = engine.gradients(
            [x[start:stop] for x in inputs], [t[start:stop] for t in targets]
        ).inputs
        for part, g in zip(parts, got, strict=True):
            part.append(g)
    return [np.concatenate(p) for p in parts]


def attribute(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    """Attributions for one batch of samples under the chosen method."""
    method = options.method
    if method in ("vanilla", "gradxinput"):
        result = engine.gradients(batch.inputs, batch.targets)
        values = result.inputs
        if method == "gradxinput":
            values = [x * g for x, g in zip(batch.inputs, values, strict=True)]
        return Attribution(values, result.objective)
    if method == "smoothgrad":
        return _smoothgrad(engine, batch, options, rows_per_call)
    if method == "integrated":
        return _integrated(engine, batch, options, rows_per_call)
    raise ValueError(f"unknown method {method!r}")


def smoothgrad_noise(
    x: np.ndarray, index: int, input_number: int, options: MethodOptions
) -> np.ndarray:
    """Noise for one sample: depends on (seed, sample index, input), never on the batch."""
    rng = np.random.default_rng([options.seed, index, input_number])
    spread = float(np.max(x) - np.min(x)) if x.size else 0.0
    sigma = options.noise * spread
    return rng.standard_normal((options.samples, *x.shape), dtype=np.float32) * sigma


def _smoothgrad(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    s = options.samples
    noisy = []
    for k, x in enumerate(batch.inputs):
        rows = np.empty((len(x), s, *x.shape[1:]), dtype=x.dtype)
        for i in range(len(x)):
            rows[i] = x[i] + smoothgrad_noise(x[i], batch.start + i, k, options)
        noisy.append(rows.reshape(len(x) * s, *x.shape[1:]))
    targets = [np.repeat(t, s, axis=0) for t in batch.targets]
    grads = _tape_in_chunks(engine, noisy, targets, rows_per_call)
    values = [
        g.reshape(len(x), s, *x.shape[1:]).mean(axis=1, dtype=np.float64).astype(x.dtype)
        for g, x in zip(grads, batch.inputs, strict=True)
    ]
    return Attribution(values)


def _integrated(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    m = options.steps
    # midpoint rule: second-order accurate with exactly `steps` gradient evaluations
    alphas = ((np.arange(m, dtype=np.float64) + 0.5) / m).astype(np.float32)
    baselines = []
    for k, x in enumerate(batch.inputs):
        if options.baseline is None or options.baseline[k] is None:
            baselines.append(np.zeros_like(x))
        else:
            b = options.baseline[k]
            baselines.append(
                np.broadcast_to(b[batch.start : batch.stop] if len(b) > 1 else b, x.shape).astype(
                    x.dtype
                )
            )
    path_inputs = []
    for x, b in zip(batch.inputs, baselines, strict=True):
        shape = (1,) * (x.ndim - 1)
        a = alphas.reshape(1, m, *shape)
        rows = b[:, None] + a * (x - b)[:, None]
        path_inputs.append(rows.reshape(len(x) * m, *x.shape[1:]).astype(x.dtype))
    targets = [np.repeat(t, m, axis=0) for t in batch.targets]
    grads = _tape_in_chunks(engine, path_inputs, targets, rows_per_call)
    values = []
    for g, x, b in zip(grads, batch.inputs, baselines, strict=True):
        mean = g.reshape(len(x), m, *x.shape[1:]).mean(axis=1, dtype=np.float64)
        values.append(((x - b) * mean).astype(x.dtype))
    o_x = engine.objective_values(batch.inputs, batch.targets)
    o_b = engine.objective_values(baselines, batch.targets)
    total = sum(v.reshape(len(v), -1).sum(axis=1, dtype=np.float64) for v in values)
    delta = o_x.astype(np.float64) - o_b.astype(np.float64)
    gap = np.abs(total - delta)
    return Attribution(values, o_x, {"gap": gap, "delta": delta})
