"""The noise tunnel: SmoothGrad, SquareGrad and VarGrad reduce the gradients at the same
noisy copies of each sample (mean, mean of squares, variance), in float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gradcli.methods.common import Attribute, Attribution, MethodOptions, prepared, tape_in_chunks

if TYPE_CHECKING:
    from gradcli.engine.batched import Batch, GradientEngine


def smoothgrad_noise(
    x: np.ndarray, index: int, input_number: int, options: MethodOptions
) -> np.ndarray:
    """Noise for one sample: depends on (seed, sample index, input), never on the batch."""
    rng = np.random.default_rng([options.seed, index, input_number])
    spread = float(np.max(x) - np.min(x)) if x.size else 0.0
    sigma = options.noise * spread
    return rng.standard_normal((options.samples, *x.shape), dtype=np.float32) * sigma


def noisy_copies(batch: Batch, options: MethodOptions) -> tuple[list, list]:
    """The tape's rows for a batch: `samples` noisy copies of each row, and the targets."""
    s = options.samples
    noisy = []
    for k, x in enumerate(batch.inputs):
        rows = np.empty((len(x), s, *x.shape[1:]), dtype=x.dtype)
        for i in range(len(x)):
            rows[i] = x[i] + smoothgrad_noise(x[i], batch.start + i, k, options)
        noisy.append(rows.reshape(len(x) * s, *x.shape[1:]))
    return noisy, [np.repeat(t, s, axis=0) for t in batch.targets]


def _noisy_gradients(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> list[np.ndarray]:
    """Per input, the gradients at the `samples` noisy copies of each row: (B, samples, ...)."""
    noisy, targets = prepared(batch, options, noisy_copies)
    grads = tape_in_chunks(engine, noisy, targets, rows_per_call)
    s = options.samples
    return [g.reshape(len(x), s, *x.shape[1:]) for g, x in zip(grads, batch.inputs, strict=True)]


def _noise_tunnel(reduce: Callable[[np.ndarray], np.ndarray]) -> Attribute:
    """A method reducing the gradients at the noisy copies (axis 1) in float64."""

    def attribute_noisy(
        engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
    ) -> Attribution:
        grads = _noisy_gradients(engine, batch, options, rows_per_call)
        values = [reduce(g).astype(x.dtype) for g, x in zip(grads, batch.inputs, strict=True)]
        return Attribution(values)

    return attribute_noisy


def _mean(g: np.ndarray) -> np.ndarray:
    return g.mean(axis=1, dtype="float64")


def _mean_square(g: np.ndarray) -> np.ndarray:
    return (g.astype("float64") ** 2).mean(axis=1)


def _variance(g: np.ndarray) -> np.ndarray:
    # the population variance (ddof 0) over the noisy copies, as Captum's NoiseTunnel
    return g.var(axis=1, dtype="float64")


smoothgrad = _noise_tunnel(_mean)
squaregrad = _noise_tunnel(_mean_square)
vargrad = _noise_tunnel(_variance)


def extras(options: MethodOptions, completeness: list[dict]) -> dict[str, Any]:
    return {"samples": options.samples, "noise": options.noise, "seed": options.seed}
