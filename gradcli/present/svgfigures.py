"""Figures of the HTML report drawn from a record's numbers as inline SVG: the per-sample
spread of `wrt-weights --per-sample` (each layer's per-sample gradient norms against the norm
of their mean) and a comparison's figures (cosine and relative difference per tensor, with
the gates' limits). Each says what it shows in its axis captions; the page adds a caption.
"""

from __future__ import annotations

from gradcli.present.htmlkit import esc
from gradcli.present.records import Record
from gradcli.present.svgkit import (
    WIDTH,
    Bar,
    LinearAxis,
    LogAxis,
    bar_panel,
    name_column,
    panel_height,
    svg,
)
from gradcli.present.table import figure
from gradcli.present.trajectory import finite

LABEL_WIDTH = 210
TOP = 8


def spread_chart(per_sample: dict) -> str | None:
    """Per layer (and the model), a bar over the per-sample gradient norms ‖g_i‖ from their
    median to their max, ticks at p90 and p99, and the mean gradient's norm ‖G‖ as a diamond;
    on a log scale. None when there is nothing to draw."""
    rows = [(str(r.get("layer", "")), r) for r in per_sample.get("layers") or []]
    rows.append(("(model)", per_sample.get("model") or {}))
    bars, names = [], []
    for name, row in rows:
        dist = row.get("sample_norm") or {}
        median, top = finite(dist.get("median")), finite(dist.get("max"))
        g = finite(row.get("g_norm"))
        marks = tuple(v for v in (finite(dist.get("p90")), finite(dist.get("p99"))) if v)
        ratio = f" · \u2016G\u2016/median {g / median:.2g}" if g and median else ""
        tip = (
            f"{name}: \u2016g_i\u2016 median {_g(median)}, p90 {_g(dist.get('p90'))}, "
            f"p99 {_g(dist.get('p99'))}, max {_g(top)}; \u2016G\u2016 {_g(g)}{ratio}"
        )
        text = f"\u2016G\u2016 {_g(g)}" if g is not None else ""
        bars.append(
            Bar(top, esc(text), tip, start=median, marks=marks, point=g, missing="no figures")
        )
        names.append(name)
    if not any(b.end for b in bars):
        return None
    values = [v for b in bars for v in (b.start, b.end, b.point, *b.marks)]
    axis = LogAxis(values, LABEL_WIDTH + 8, WIDTH - 110)
    body = name_column(names, LABEL_WIDTH, TOP)
    body += bar_panel(
        bars,
        axis,
        TOP,
        "per-sample gradient norm \u2016g_i\u2016: bar from median to max, ticks at p90 and "
        "p99; \u25c6 \u2016G\u2016 (log scale)",
    )
    return svg(WIDTH, panel_height(len(bars), TOP), "per-sample gradient spread per layer", body)


def diff_chart(rec: Record) -> str | None:
    """Per tensor of a comparison, its cosine (linear, up to 1) and its relative L2 difference
    ‖A - B‖ / ‖B‖ (log), each with its gate's limit when one was given. None when no tensor
    has a figure."""
    tensors = [t for t in rec.get("tensors") or [] if t.get("status") != "shape-mismatch"]
    if not any(figure(t, "cosine") is not None for t in tensors):
        return None
    limits = rec.get("limits") or {}
    middle = LABEL_WIDTH + 8 + (WIDTH - LABEL_WIDTH - 8) / 2
    lowest = min([c for t in tensors if (c := figure(t, "cosine")) is not None] + [0.0])
    cosine_axis = LinearAxis(-1.0 if lowest < 0 else 0.0, 1.0, 0.5, LABEL_WIDTH + 8, middle - 60)
    rel = [figure(t, "rel_diff") for t in tensors]
    rel_axis = LogAxis([*rel, limits.get("high-rel-diff")], middle + 10, WIDTH - 70)
    cosines, diffs = [], []
    for t in tensors:
        name, status = str(t.get("name", "")), str(t.get("status", ""))
        c, r = figure(t, "cosine"), figure(t, "rel_diff")
        bad = bool(t.get("tripped"))
        missing = status if status != "ok" else "-"
        cosines.append(
            Bar(c, _g(c, 4), f"{name}: cosine {_g(c, 6)} ({status})", bad, missing=missing)
        )
        diffs.append(Bar(r, _g(r), f"{name}: rel diff {_g(r)} ({status})", bad, missing=missing))
    body = name_column([str(t.get("name", "")) for t in tensors], LABEL_WIDTH, TOP)
    body += bar_panel(cosines, cosine_axis, TOP, "cosine(A, B)", _limit(limits, "low-cosine"))
    body += bar_panel(
        diffs, rel_axis, TOP, "\u2016A \u2212 B\u2016 / \u2016B\u2016 (log scale)",
        _limit(limits, "high-rel-diff"),
    )  # fmt: skip
    return svg(WIDTH, panel_height(len(tensors), TOP), "comparison per tensor", body)


def _limit(limits: dict, status: str) -> tuple[float, str] | None:
    value = finite(limits.get(status))
    return None if value is None else (value, f"gate {status}: limit {value:g}")


def _g(x: object, digits: int = 3) -> str:
    value = finite(x)
    return "-" if value is None else f"{value:.{digits}g}"
