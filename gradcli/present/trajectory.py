"""The trajectory of a directory run: each layer's gradient norm (and |g|/|θ|) at every
checkpoint, in directory order, with each checkpoint's gate verdict.

Pure: it reads the records in their JSON form (what `--json` prints, one dict per model) and
draws nothing. The HTML page (svgcharts.py) and `wrt-weights DIR --png FILE`
(trajectory_png.py) draw the same figures from it.

Where the figures come from:
- a record with a `layer_summary` (wrt-weights): each layer's L2 norm, as in its flow chart,
  and |g|/|θ| = ‖g‖ / ‖θ‖ over its variables (the summary's `l2` and `param_l2`).
- any other record with tensors (gradients of inputs or layer activations, and the rows of
  other kinds): each tensor's L2 norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

# how the charts (SVG and PNG) tell series apart: 9 colours (no red: red means a tripped
# gate), then the same colours dashed
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
)  # fmt: skip
DASHES = ((), (6, 3), (2, 2))
VERDICT_OK = "ok"
VERDICT_TRIPPED = "tripped"
VERDICT_ERROR = "error"


@dataclass(frozen=True)
class Checkpoint:
    """One model of the directory: its label on the chart and its verdict."""

    label: str  # its path below the directory the models share
    model: str  # its path as the record gives it
    verdict: str  # VERDICT_OK, VERDICT_TRIPPED or VERDICT_ERROR
    gates: tuple[str, ...] = ()  # the gates it tripped
    error: str | None = None


@dataclass(frozen=True)
class Series:
    """One layer (or tensor) across the checkpoints; None where a checkpoint has no figure."""

    name: str
    norms: tuple[float | None, ...]
    statuses: tuple[str | None, ...]
    ratios: tuple[float | None, ...]  # |g|/|θ|


@dataclass(frozen=True)
class Trajectory:
    checkpoints: tuple[Checkpoint, ...]
    series: tuple[Series, ...]
    per_layer: bool  # True: weight-gradient norms per layer; False: per tensor

    @property
    def quantity(self) -> str:
        return "weight-gradient L2 per layer" if self.per_layer else "gradient L2 per tensor"

    @property
    def has_ratios(self) -> bool:
        return any(r is not None for s in self.series for r in s.ratios)


def trajectory(records: Iterable[dict]) -> Trajectory | None:
    """The trajectory over a directory run's records (directory order), or None when there
    is nothing to draw: no model with gradient norms."""
    recs = list(records)
    per_layer = any(r.get("layer_summary") for r in recs)
    rows = [_figures(r, per_layer) for r in recs]
    names = _ordered(name for row in rows for name in row)
    if not names:
        return None
    labels = checkpoint_labels([str(r.get("model", "")) for r in recs])
    checkpoints = tuple(_checkpoint(r, label) for r, label in zip(recs, labels, strict=True))
    series = tuple(
        Series(
            name,
            tuple(row[name][0] if name in row else None for row in rows),
            tuple(row[name][1] if name in row else None for row in rows),
            tuple(row[name][2] if name in row else None for row in rows),
        )
        for name in names
    )
    return Trajectory(checkpoints, series, per_layer)


def line_style(index: int) -> tuple[str, tuple[int, ...]]:
    """The colour and dash pattern (on, off lengths; empty: solid) of the index-th series."""
    return PALETTE[index % len(PALETTE)], DASHES[(index // len(PALETTE)) % len(DASHES)]


def checkpoint_labels(models: Sequence[str]) -> list[str]:
    """Each model's path below the directories all of them share (`epoch_03.keras`)."""
    parts = [PurePath(m).parts for m in models]
    shared = 0
    if parts:
        shortest = min(len(p) for p in parts) - 1  # the file name itself is never shared
        while shared < shortest and len({p[shared] for p in parts}) == 1:
            shared += 1
    return [str(PurePath(*p[shared:])) if p else m for p, m in zip(parts, models, strict=True)]


def _checkpoint(rec: dict, label: str) -> Checkpoint:
    model = str(rec.get("model", ""))
    if rec.get("error"):
        return Checkpoint(label, model, VERDICT_ERROR, error=str(rec["error"]))
    gates = tuple(str(g) for g in rec.get("gates") or ())
    return Checkpoint(label, model, VERDICT_TRIPPED if gates else VERDICT_OK, gates)


def _ordered(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


Figure = tuple[float | None, str | None, float | None]  # norm, status, |g|/|θ|


def _figures(rec: dict, per_layer: bool) -> dict[str, Figure]:
    if rec.get("error"):
        return {}
    if per_layer:
        summary = rec.get("layer_summary") or []
        ratios = layer_ratios(rec)
        return {
            str(s["layer"]): (finite(s.get("l2")), s.get("status"), ratios.get(str(s["layer"])))
            for s in summary
        }
    return {
        str(t["name"]): (finite(t.get("l2")), t.get("status"), None)
        for t in rec.get("tensors") or []
        if "l2" in t
    }


def layer_ratios(rec: dict) -> dict[str, float | None]:
    """|g|/|θ| of each layer of a record's `layer_summary`: its `l2` over its `param_l2`
    (None where either is missing, θ is zero, or the layer is not ok)."""
    return {
        str(s["layer"]): _ratio(s.get("l2"), s.get("param_l2"), s.get("status"))
        for s in rec.get("layer_summary") or []
    }


def _ratio(l2: object, param_l2: object, status: object) -> float | None:
    g, p = finite(l2), finite(param_l2)
    if g is None or p is None or p == 0 or status not in (None, "ok"):
        return None
    return g / p


def finite(x: object) -> float | None:
    """A figure as a float, None when it is none, not a number, NaN or infinite."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None
