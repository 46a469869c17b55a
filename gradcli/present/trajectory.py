"""The trajectory of a directory run: each layer's gradient norm (and |g|/|θ|) at every
checkpoint, in directory order, with each checkpoint's gate verdict.

Pure: it reads the records in their JSON form (what `--json` prints, one dict per model) and
draws nothing. The HTML page (present/svgcharts.py) and `wrt-weights DIR --png FILE`
(trajectory_png.py) draw the same figures from it.

Where the figures come from:
- a record with a `layer_summary` (wrt-weights): each layer's L2 norm, as in its flow chart.
  |g|/|θ| of a layer is ‖g‖ / ‖θ‖ over its variables: the summary's `param_l2` when the
  record carries it; else the variables' own rows (`l2`, `param_l2`), each variable given to
  the layer its path names (`hidden1/kernel` to `hidden1`, `a/kernel` to `block/a`, from
  `per_sample.per_variable` when the record has it). A layer's |g|/|θ| is kept only where its
  variables' norms add up to the summary's norm, so a path read wrongly leaves a gap.
- any other gradient record (wrt-input, wrt-layer, jacobian): each tensor's L2 norm.
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
_SUM_RTOL = 1e-9  # float64 sums of the same squares in the same order agree far closer


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
    is nothing to draw: fewer than two models, or no model with gradient norms."""
    recs = list(records)
    if len(recs) < 2:
        return None
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
    """|g|/|θ| of each layer of a record's `layer_summary` (None where it is not known)."""
    summary = rec.get("layer_summary") or []
    layers = [str(s["layer"]) for s in summary]
    if summary and all("param_l2" in s for s in summary):
        return {
            str(s["layer"]): _ratio(s.get("l2"), s.get("param_l2"), s.get("status"))
            for s in summary
        }
    owners = _owners(rec, layers)
    grad2 = dict.fromkeys(layers, 0.0)
    param2: dict[str, float] = {}
    for t in rec.get("tensors") or []:
        layer = owners.get(str(t.get("name")))
        if layer is None:
            continue
        if t.get("status") != "disconnected" and t.get("l2") is not None:
            grad2[layer] += float(t["l2"]) ** 2
        if t.get("param_l2") is not None:
            param2[layer] = param2.get(layer, 0.0) + float(t["param_l2"]) ** 2
    out: dict[str, float | None] = {}
    for s in summary:
        layer, l2 = str(s["layer"]), finite(s.get("l2"))
        adds_up = l2 is not None and math.isclose(math.sqrt(grad2[layer]), l2, rel_tol=_SUM_RTOL)
        if not adds_up or layer not in param2:
            out[layer] = None
        else:
            out[layer] = _ratio(l2, math.sqrt(param2[layer]), s.get("status"))
    return out


def _owners(rec: dict, layers: list[str]) -> dict[str, str]:
    """Variable name -> layer: as --per-sample recorded it, else by the variable's path."""
    per_variable = (rec.get("per_sample") or {}).get("per_variable") or []
    known = {str(v["name"]): str(v["layer"]) for v in per_variable if "layer" in v}
    if known:
        return known
    owners = {}
    for t in rec.get("tensors") or []:
        owner = owner_of(str(t.get("name", "")), layers)
        if owner is not None:
            owners[str(t["name"])] = owner
    return owners


def owner_of(variable: str, layers: Sequence[str]) -> str | None:
    """The layer a variable path names: the layer whose own name is the deepest folder of
    the path (`seqni/d1/kernel` -> `d1`, `lstm/lstm_cell/kernel` -> `lstm`, `a/kernel` ->
    `block/a`); None when no layer or two layers fit equally."""
    folders = variable.split("/")[:-1]
    best: str | None = None
    depth, tie = -1, False
    for layer in layers:
        own = layer.rsplit("/", 1)[-1]
        where = max((i for i, f in enumerate(folders) if f == own), default=-1)
        if where < 0 or where < depth:
            continue
        tie = where == depth
        best, depth = layer, where
    return None if tie else best


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
