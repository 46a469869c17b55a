"""Spread of per-sample gradients around their mean: norms, tr Sigma, SNR, B_simple (NumPy only).

With g_i the gradient of sample i's objective, G = (1/N) sum_i g_i the mean gradient (what
`wrt-weights` reports), over any set of parameters (one variable, one layer, the model):
  tr Sigma = (sum_i ||g_i||^2 - N ||G||^2) / (N - 1)   trace of the per-sample covariance
  SNR      = ||G||^2 / (tr Sigma / N)                   signal-to-noise of the mean gradient
  B_simple = tr Sigma / ||G||^2                         simple gradient noise scale
                                                        (McCandlish et al. 2018)
Only the per-sample squared norms are needed: summed in float64 as batches arrive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# the relative precision of float32 per-sample squared norms summed in float64
RESOLUTION = 1e-6
PERCENTILES = (("median", 50.0), ("p90", 90.0), ("p99", 99.0))


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class PerSampleNorms:
    """Per-sample squared gradient norms per variable, streamed in batch by batch.

    Keeps each sample's norm per variable (N x V float32, for the distributions and the
    .npz), its objective value, and the float64 sums of squares per variable; never a
    per-sample gradient.
    """

    def __init__(self, n: int, variables: int) -> None:
        self.n = n
        self.norms = np.zeros((n, variables), dtype=np.float32)
        self.total_sq = np.zeros(n, dtype=np.float64)
        self.sum_sq = np.zeros(variables, dtype=np.float64)
        self.objective = np.zeros(n, dtype=np.float32)

    def add(self, start: int, squares: np.ndarray, objective: np.ndarray) -> None:
        sq = np.asarray(squares, dtype=np.float64)
        stop = start + len(sq)
        self.sum_sq += sq.sum(axis=0)
        self.total_sq[start:stop] = sq.sum(axis=1)
        self.norms[start:stop] = np.sqrt(sq)
        self.objective[start:stop] = objective

    @property
    def norm(self) -> np.ndarray:
        """Each sample's gradient norm over all variables, (N,)."""
        return np.sqrt(self.total_sq)

    def group_norm(self, columns: Sequence[int]) -> np.ndarray:
        """Each sample's gradient norm over some variables (a layer), (N,)."""
        part = self.norms[:, list(columns)].astype(np.float64)
        return np.sqrt(np.square(part).sum(axis=1))


def spread(sum_sq: float, g_sq: float, n: int) -> dict:
    """||G||, tr Sigma, SNR and B_simple of one parameter set (None where undefined)."""
    out = {"g_norm": _num(math.sqrt(g_sq)) if math.isfinite(g_sq) else None}
    trace = None
    if n >= 2 and math.isfinite(sum_sq) and math.isfinite(g_sq):
        trace = (sum_sq - n * g_sq) / (n - 1)
        # below the float32 resolution of the squared norms it is rounding (every g_i the
        # same, e.g. the bias of a class score): zero, not a hair either side of it
        if trace < RESOLUTION * sum_sq / (n - 1):
            trace = 0.0
    out["trace_cov"] = _num(trace)
    out["snr"] = _num(g_sq / (trace / n)) if trace else None
    out["b_simple"] = _num(trace / g_sq) if trace is not None and g_sq > 0 else None
    return out


def distribution(values: np.ndarray) -> dict:
    """Median, p90, p99, max and mean of per-sample norms; non-finite ones are counted."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    out: dict = {}
    for name, q in PERCENTILES:
        out[name] = _num(np.percentile(finite, q)) if finite.size else None
    out["max"] = _num(finite.max()) if finite.size else None
    out["mean"] = _num(finite.mean()) if finite.size else None
    out["nonfinite"] = int(values.size - finite.size)
    return out


def top_samples(norm: np.ndarray, objective: np.ndarray, k: int) -> list[dict]:
    """The k samples with the largest gradient norm (non-finite first: they exploded)."""
    key = np.where(np.isfinite(norm), norm, np.inf)
    order = np.argsort(-key, kind="stable")[:k]
    return [
        {"index": int(i), "norm": _num(norm[i]), "objective": _num(objective[i])} for i in order
    ]


def summarize(
    acc: PerSampleNorms,
    names: list[str],
    layers: list[str],
    g_sq: list[float | None],
    top: int,
) -> dict:
    """The `per_sample` block of a wrt-weights record.

    `g_sq[k]` is ||G||^2 of variable k, None when it is disconnected; `layers[k]` the layer
    owning it.
    """
    n = acc.n
    connected = [k for k, g in enumerate(g_sq) if g is not None]

    def block(columns: list[int]) -> dict:
        live = [k for k in columns if g_sq[k] is not None]
        if not live:
            return {"g_norm": None, "trace_cov": None, "snr": None, "b_simple": None}
        out = spread(float(sum(acc.sum_sq[k] for k in live)), float(sum(g_sq[k] for k in live)), n)
        out["sample_norm"] = distribution(acc.group_norm(live))
        return out

    variables = []
    for k, name in enumerate(names):
        variables.append({"name": name, "layer": layers[k], **block([k])})
    by_layer: dict[str, list[int]] = {}
    for k, layer in enumerate(layers):
        by_layer.setdefault(layer, []).append(k)
    summary = {
        "n": n,
        "variables": names,
        "sample_norm": distribution(acc.norm),
        "top": top_samples(acc.norm, acc.objective, top),
        "model": block(connected),
        "layers": [{"layer": layer, **block(cols)} for layer, cols in by_layer.items()],
        "per_variable": variables,
    }
    if n < 2:
        summary["note"] = (
            "one sample: the per-sample covariance (tr Sigma, SNR, B_simple) needs N >= 2"
        )
    return summary
