"""Per-tensor gradient figures, accumulated batch by batch, and health-gate statuses (NumPy)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradcli.present.gates import FAIL_ON_CHOICES, GATES, Gates, Status

__all__ = [
    "FAIL_ON_CHOICES",
    "GATES",
    "Gates",
    "Sensitivity",
    "TensorStats",
    "TopFeatures",
    "layer_summary",
]

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

    def apply(self, stats: TensorStats, share: float | None) -> None:
        """Mark `stats` vanishing when its share is at float-noise level (and record it)."""
        if share is None:
            return
        stats.extra["sensitivity"] = _num(share)
        stats.vanishing = share < VANISHING_ULPS * self.eps


@dataclass
class TensorStats:
    """Streaming figures of one gradient tensor (all of its samples)."""

    name: str
    shape: tuple[int, ...] = ()
    count: int = 0
    sum_sq: float = 0.0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    zeros: int = 0
    nonfinite: int = 0
    disconnected: bool = False
    vanishing: bool = False  # at float-noise level (Sensitivity)
    param_norm: float | None = None  # |theta| for weights
    extra: dict = field(default_factory=dict)

    def update(self, g: np.ndarray) -> None:
        g = np.asarray(g)
        finite = np.isfinite(g)
        bad = int(g.size - np.count_nonzero(finite))
        self.nonfinite += bad
        clean = np.where(finite, g, 0) if bad else g
        # |g| in the gradient's own dtype; the sums accumulate in float64 without a copy
        a = np.abs(clean)
        self.count += g.size
        self.sum_sq += float(np.square(a).sum(dtype=np.float64))
        self.sum_abs += float(a.sum(dtype=np.float64))
        if a.size:
            self.max_abs = max(self.max_abs, float(a.max()))
        self.zeros += int(a.size - np.count_nonzero(a)) - bad

    @property
    def l2(self) -> float:
        return math.sqrt(self.sum_sq)

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.count if self.count else 0.0

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.count if self.count else 0.0

    def status(self, gates: Gates) -> Status:
        if self.disconnected:
            return Status.DISCONNECTED
        if self.nonfinite:
            return Status.NONFINITE
        if self.count and self.zeros == self.count:
            return Status.ZERO
        if self.vanishing:
            return Status.VANISHING
        if gates.max_norm is not None and self.l2 > gates.max_norm:
            return Status.TOO_LARGE
        if gates.min_norm is not None and self.l2 < gates.min_norm:
            return Status.TOO_SMALL
        return Status.OK

    def record(self, gates: Gates) -> dict:
        status = self.status(gates)
        rec = {
            "name": self.name,
            "shape": list(self.shape),
            "status": status.value,
            "tripped": gates.tripped(status) if status != Status.OK else False,
        }
        if self.disconnected:
            rec.update(l2=None, mean_abs=None, max_abs=None, zero_fraction=None, nonfinite=None)
        else:
            rec.update(
                l2=_num(self.l2),
                mean_abs=_num(self.mean_abs),
                max_abs=_num(self.max_abs),
                zero_fraction=_num(self.zero_fraction),
                nonfinite=self.nonfinite,
            )
        if self.param_norm is not None:
            rec["param_l2"] = _num(self.param_norm)
            rec["relative"] = (
                None
                if self.disconnected or self.param_norm == 0
                else _num(self.l2 / self.param_norm)
            )
        rec.update(self.extra)
        return rec


def _num(x: float) -> float | None:
    """JSON has no NaN/Inf: those become null."""
    x = float(x)
    return x if math.isfinite(x) else None


class TopFeatures:
    """Mean |g| per feature over samples, for --top on flat inputs."""

    def __init__(self, n_features: int) -> None:
        self.sum = np.zeros(n_features, dtype=np.float64)
        self.count = 0

    def update(self, g: np.ndarray) -> None:
        flat = np.abs(np.nan_to_num(np.asarray(g, dtype=np.float64).reshape(len(g), -1)))
        self.sum += flat.sum(axis=0)
        self.count += len(g)

    def top(self, k: int) -> list[dict]:
        mean = self.sum / max(1, self.count)
        order = np.argsort(-mean, kind="stable")[:k]
        return [{"feature": int(i), "mean_abs": float(mean[i])} for i in order]


def layer_summary(records: list[dict], variable_layers: list[str]) -> list[dict]:
    """Sum of squares over each layer's variables, in model order, for the flow chart."""
    order: list[str] = []
    sums: dict[str, float] = {}
    statuses: dict[str, str] = {}
    for rec, layer in zip(records, variable_layers, strict=True):
        if layer not in sums:
            order.append(layer)
            sums[layer] = 0.0
            statuses[layer] = "ok"
        if rec["status"] == "disconnected" or rec["l2"] is None:
            if statuses[layer] == "ok":
                statuses[layer] = rec["status"]
            continue
        sums[layer] += rec["l2"] ** 2
        if rec["status"] in ("nonfinite", "zero") and statuses[layer] == "ok":
            statuses[layer] = rec["status"]
    out = []
    for layer in order:
        status = statuses[layer]
        norm = math.sqrt(sums[layer])
        if status == "ok" and norm == 0:
            status = "zero"
        out.append({"layer": layer, "l2": norm, "status": status})
    return out
