"""Per-tensor gradient figures, accumulated batch by batch, and health-gate statuses (NumPy)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradcli.present.gates import Gates, Status


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
    """Per layer, in model order: the L2 norm of its weight gradient over its variables (for
    the flow chart), its status, and the L2 norm of its parameters `param_l2` over the same
    variables (so |g|/|theta| of the layer is l2 / param_l2)."""
    order: list[str] = []
    sums: dict[str, float] = {}
    params: dict[str, float] = {}
    statuses: dict[str, str] = {}
    for rec, layer in zip(records, variable_layers, strict=True):
        if layer not in sums:
            order.append(layer)
            sums[layer] = params[layer] = 0.0
            statuses[layer] = "ok"
        if rec.get("param_l2") is not None:
            params[layer] += rec["param_l2"] ** 2
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
        out.append(
            {"layer": layer, "l2": norm, "status": status, "param_l2": math.sqrt(params[layer])}
        )
    return out
