"""Charts as inline SVG for the HTML report: one model's gradient flow (a bar per layer) and
the trajectory over a directory's checkpoints (a line per layer). Log scales, drawn here in a
few KB, crisp at any zoom; every name is escaped text, with the full name as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcli.present.htmlkit import esc
from gradcli.present.svgkit import (
    BAD_COLOR,
    ERROR_COLOR,
    WIDTH,
    Bar,
    LogAxis,
    bar_panel,
    cross,
    decade_text,
    drawable,
    name_column,
    panel_height,
    short,
    svg,
)
from gradcli.present.trajectory import (
    VERDICT_ERROR,
    VERDICT_TRIPPED,
    Trajectory,
    finite,
    line_style,
)

STRIP = 44  # px above the first panel: the verdict markers and the panel's title
PANEL_HEIGHT = 210
PANEL_GAP = 36
POINT_TOOLTIPS = 2500  # series x checkpoints above this: points without their own tooltip
MAX_POINTS = 6000  # above this: lines only
LABEL_WIDTH = 210  # px: the names' column of the bar charts


# ------------------------------------------------------------------ gradient flow


def flow_chart(summary: Sequence[dict]) -> str:
    """One model's `layer_summary`: a bar per layer (model order, top to bottom), the log10
    of its weight-gradient L2 norm; layers not ok in red with their status; a layer with no
    bar (zero, non-finite, disconnected) gets a cross and its status."""
    top = 8
    bars = []
    for s in summary:
        name, l2, status = str(s.get("layer", "")), finite(s.get("l2")), str(s.get("status", ""))
        good = status == "ok"
        figure = "-" if l2 is None else f"{l2:.3g}"
        text = "" if l2 is None else f"{l2:.2e}" + ("" if good else f" {esc(status)}")
        tip = f"{name}: L2 {figure}" + ("" if good else f" ({status})")
        bars.append(Bar(l2, text, tip, bad=not good, missing=status if not good else figure))
    axis = LogAxis([b.end for b in bars], LABEL_WIDTH + 8, WIDTH - 110)
    body = name_column([str(s.get("layer", "")) for s in summary], LABEL_WIDTH, top)
    body += bar_panel(bars, axis, top, "L2 norm of the weight gradient (log scale)")
    height = panel_height(len(bars), top)
    return svg(WIDTH, height, "gradient flow: weight-gradient L2 norm per layer", body)


# ------------------------------------------------------------------ trajectory


def trajectory_chart(t: Trajectory) -> str:
    """Each series' norm (and |g|/|θ| below it, when known) at each checkpoint, on log
    scales; each checkpoint's verdict as a marker above (tripped gates and errors also as a
    band across the panels); a legend of the series below."""
    n = len(t.checkpoints)
    left, right = 64, WIDTH - 16
    slot = (right - left) / n
    panels = [("norms", t.quantity)]
    if t.has_ratios:
        panels.append(("ratios", "|g|/|\u03b8| per layer"))
    tops = [STRIP + k * (PANEL_HEIGHT + PANEL_GAP) for k in range(len(panels))]
    bottom = tops[-1] + PANEL_HEIGHT
    longest = max(len(short(c.label, 24)) for c in t.checkpoints)
    label_h = 20 + 5.5 * longest
    columns = 3
    legend_top = bottom + label_h + 10
    height = legend_top + 16 * math.ceil(len(t.series) / columns) + 8

    def x(i: int) -> float:
        return left + slot * (i + 0.5)

    body = [_verdicts(t, x, slot, bottom)]
    for (attr, title), top in zip(panels, tops, strict=True):
        body.append(_panel(t, attr, title, x, left, right, top, PANEL_HEIGHT))
    step = max(1, math.ceil(n / 30))
    for i, c in enumerate(t.checkpoints):
        if i % step:
            continue
        body.append(
            f'<text transform="translate({x(i):.1f},{bottom + 12}) rotate(-35)" '
            f'text-anchor="end"><title>{esc(c.model)}</title>{esc(short(c.label, 24))}</text>'
        )
    width = (right - left) / columns
    for k, s in enumerate(t.series):
        lx = left + (k % columns) * width
        ly = legend_top + 16 * (k // columns)
        color, dash = line_style(k)
        body.append(
            f'<g><title>{esc(s.name)}</title><line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 22:.1f}" '
            f'y2="{ly - 4}" stroke="{color}" stroke-width="2"{_dash(dash)}/>'
            f'<text x="{lx + 28:.1f}" y="{ly}">{esc(short(s.name, 34))}</text></g>'
        )
    return svg(WIDTH, height, f"trajectory: {t.quantity} over {n} checkpoints", body)


def _dash(dash: tuple[int, ...]) -> str:
    return f' stroke-dasharray="{" ".join(map(str, dash))}"' if dash else ""


def _verdicts(t: Trajectory, x, slot: float, bottom: float) -> str:
    out = []
    for i, c in enumerate(t.checkpoints):
        cx = x(i)
        if c.verdict == VERDICT_ERROR:
            tip, color = f"{c.label}: error: {c.error}", ERROR_COLOR
            mark = f'<rect x="{cx - 5:.1f}" y="6" width="10" height="10" fill="{color}"/>'
        elif c.verdict == VERDICT_TRIPPED:
            tip, color = f"{c.label}: gates tripped: {', '.join(c.gates)}", BAD_COLOR
            mark = cross(cx, 11, color, 5)
        else:
            tip, color = f"{c.label}: ok", ""
            mark = f'<circle cx="{cx:.1f}" cy="11" r="4.5" fill="#1a7f37"/>'
        band = ""
        if color:
            band = (
                f'<rect x="{cx - slot / 2:.1f}" y="20" width="{slot:.1f}" '
                f'height="{bottom - 20:.1f}" fill="{color}" fill-opacity="0.09"/>'
            )
        out.append(f'<g class="verdict"><title>{esc(tip)}</title>{band}{mark}</g>')
    return "".join(out)


def _panel(t: Trajectory, attr: str, title: str, x, left, right, top, height) -> str:
    values = [v for s in t.series for v in getattr(s, attr)]
    axis = LogAxis(values, top + height, top)  # up is larger
    out = []
    for k in axis.decades():
        y = axis(10.0**k)
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{decade_text(k)}</text>'
        )
    out.append(f'<text x="{left}" y="{top - 7}">{esc(title)} (log scale)</text>')
    out.append(
        f'<rect class="axis" x="{left}" y="{top}" width="{right - left}" height="{height}" '
        'fill="none"/>'
    )
    points = len(t.series) * len(t.checkpoints)
    for k, s in enumerate(t.series):
        color, dash = line_style(k)
        figures = getattr(s, attr)
        for run in _runs(figures):
            coords = " ".join(f"{x(i):.1f},{axis(figures[i]):.1f}" for i in run)
            out.append(
                f'<polyline class="series" points="{coords}" fill="none" stroke="{color}" '
                f'stroke-width="1.8"{_dash(dash)}><title>{esc(s.name)}</title></polyline>'
            )
        for i, v in enumerate(figures):
            status = s.statuses[i]
            if drawable(v) and points <= MAX_POINTS:
                tip = ""
                if points <= POINT_TOOLTIPS:
                    tip = f"<title>{esc(f'{s.name} @ {t.checkpoints[i].label}: {v:.3g}')}</title>"
                out.append(
                    f'<circle cx="{x(i):.1f}" cy="{axis(v):.1f}" r="2.6" fill="{color}">'
                    f"{tip}</circle>"
                )
            elif attr == "norms" and status not in (None, "ok"):
                tip = esc(f"{s.name} @ {t.checkpoints[i].label}: {status}")
                out.append(
                    f"<g><title>{tip}</title>{cross(x(i), top + height - 6, BAD_COLOR, 3.5)}</g>"
                )
    return "".join(out)


def _runs(figures: Sequence[float | None]) -> list[list[int]]:
    """Indices of consecutive drawable figures (a gap where a checkpoint has none)."""
    runs: list[list[int]] = []
    current: list[int] = []
    for i, v in enumerate(figures):
        if drawable(v):
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs
