"""Whether a gradient is at float-noise level against the tensor it flows through
(`vanishing`), accumulated over a run's tape calls (NumPy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# a gradient whose first-order share of the objective (below) is under this many units of
# float rounding is float noise: "vanishing"
VANISHING_ULPS = 1024


class Sensitivity:
    """Whether gradients are at float-noise level, relative to the tensors they flow through.

    For a watched tensor t (an input, a layer's activation, a variable) with gradient g, the
    first-order share s = ||g|| ||t|| / sum_i |o_i| bounds how much of the objective a
    first-order change of t accounts for (sum_i |<g_i, t_i>| <= ||g|| ||t||, Cauchy-Schwarz
    over all samples). On a healthy model s is of order 0.1 to 10; a gradient of an objective
    that does not depend on the input, or of a saturated softmax/sigmoid, has s at the level
    of float rounding: below VANISHING_ULPS x eps of the objective's dtype (1.2e-4 for
    float32). Accumulated over every tape call of a run (SmoothGrad copies, IG path points
    included); a tensor of zeros (||t|| = 0) gets no verdict.
    """

    def __init__(self) -> None:
        self.objective_abs = 0.0
        self.eps = float(np.finfo(np.float32).eps)
        self.squares: dict[tuple[str, int], list[float]] = {}

    def add_objective(self, o: np.ndarray) -> None:
        o = np.asarray(o)
        if o.dtype.kind == "f":
            self.eps = float(np.finfo(o.dtype).eps)
        self.objective_abs += float(np.nansum(np.abs(o), dtype=np.float64))

    def add(self, key: tuple[str, int], g_sq: float, t_sq: float) -> None:
        """One tape call's sums of squares of a tensor's gradient and of the tensor."""
        total = self.squares.setdefault(key, [0.0, 0.0])
        total[0] += float(g_sq)
        total[1] += float(t_sq)

    def share(self, key: tuple[str, int]) -> float | None:
        g_sq, t_sq = self.squares.get(key, (0.0, 0.0))
        return self.share_of(math.sqrt(g_sq), math.sqrt(t_sq))

    def share_of(self, g_l2: float, t_l2: float, samples: int = 1) -> float | None:
        """s for gradient and tensor norms; `samples`: N when g is a mean over N samples."""
        if not t_l2 > 0 or not math.isfinite(g_l2 * t_l2):
            return None
        if self.objective_abs <= 0:
            return math.inf if g_l2 > 0 else None
        return g_l2 * t_l2 * samples / self.objective_abs

    def apply(self, stats: Any, share: float | None) -> None:
        """Mark `stats` (present.figures.TensorStats) vanishing when its share is at
        float-noise level, and record the share."""
        if share is None:
            return
        stats.extra["sensitivity"] = float(share) if math.isfinite(share) else None
        stats.vanishing = share < VANISHING_ULPS * self.eps
