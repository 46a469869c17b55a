"""Charts as inline SVG for the HTML report: one model's gradient flow (a bar per layer) and
the trajectory over a directory's checkpoints (a line per layer). Log scales, drawn here in a
few KB, crisp at any zoom; every name is escaped text, with the full name as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .htmlkit import esc
from .trajectory import VERDICT_ERROR, VERDICT_TRIPPED, Trajectory, finite, line_style

WIDTH = 760
OK_COLOR = "#1f77b4"
BAD_COLOR = "#c62828"
ERROR_COLOR = "#6e7781"
LABEL_CHARS = 30
MAX_TICKS = 8
STRIP = 44  # px above the first panel: the verdict markers and the panel's title
PANEL_HEIGHT = 210
PANEL_GAP = 36
POINT_TOOLTIPS = 2500  # series x checkpoints above this: points without their own tooltip
MAX_POINTS = 6000  # above this: lines only


def _drawable(v: float | None) -> bool:
    return v is not None and math.isfinite(v) and v > 0


class LogAxis:
    """A log10 axis over whole decades from the values' smallest to their largest."""

    def __init__(self, values: Sequence[float | None], start: float, end: float) -> None:
        logs = [math.log10(v) for v in values if _drawable(v)]  # type: ignore[arg-type]
        self.lo = math.floor(min(logs)) if logs else -1
        self.hi = max(math.ceil(max(logs)) if logs else 0, self.lo + 1)
        self.start, self.end = start, end

    def __call__(self, v: float) -> float:
        frac = (math.log10(v) - self.lo) / (self.hi - self.lo)
        return self.start + frac * (self.end - self.start)

    def decades(self) -> list[int]:
        step = max(1, math.ceil((self.hi - self.lo) / MAX_TICKS))
        return list(range(self.lo, self.hi + 1, step))


def decade_text(k: int) -> str:
    return {-2: "0.01", -1: "0.1", 0: "1", 1: "10", 2: "100"}.get(k, f"1e{k}")


def _short(name: str, chars: int = LABEL_CHARS) -> str:
    """The end of a long name (the end of a nested path names the layer)."""
    return name if len(name) <= chars else "\u2026" + name[-(chars - 1) :]


def _svg(width: float, height: float, label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">'
        + "".join(body)
        + "</svg>"
    )


def _cross(x: float, y: float, color: str, size: float = 4.0) -> str:
    return (
        f'<path d="M{x - size:.1f} {y - size:.1f}L{x + size:.1f} {y + size:.1f}'
        f'M{x - size:.1f} {y + size:.1f}L{x + size:.1f} {y - size:.1f}" stroke="{color}" '
        'stroke-width="2" fill="none"/>'
    )


# ------------------------------------------------------------------ gradient flow


def flow_chart(summary: Sequence[dict]) -> str:
    """One model's `layer_summary`: a bar per layer (model order, top to bottom), the log10
    of its weight-gradient L2 norm; layers not ok in red with their status; a layer with no
    bar (zero, non-finite, disconnected) gets a cross and its status."""
    n = len(summary)
    label_w, row_h, top = 210, 18, 8
    x0, x1 = label_w + 8, WIDTH - 110  # room for the value text after the longest bar
    height = top + n * row_h + 40
    axis = LogAxis([finite(s.get("l2")) for s in summary], x0, x1)
    body = []
    bottom = top + n * row_h
    for k in axis.decades():
        x = axis(10.0**k)
        body.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}"/>')
        body.append(
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{decade_text(k)}</text>'
        )
    for i, s in enumerate(summary):
        y = top + i * row_h
        mid = y + row_h / 2
        name, l2, status = str(s.get("layer", "")), finite(s.get("l2")), str(s.get("status", ""))
        good = status == "ok"
        figure = "-" if l2 is None else f"{l2:.3g}"
        tip = esc(f"{name}: L2 {figure}" + ("" if good else f" ({status})"))
        body.append(f"<g><title>{tip}</title>")
        body.append(
            f'<text x="{label_w}" y="{mid + 4:.1f}" text-anchor="end">{esc(_short(name))}</text>'
        )
        if _drawable(l2):
            end = axis(l2)
            color = OK_COLOR if good else BAD_COLOR
            body.append(
                f'<rect x="{x0}" y="{y + 3}" width="{max(end - x0, 1):.1f}" height="{row_h - 6}" '
                f'fill="{color}"/>'
            )
            text = f"{l2:.2e}" if good else f"{l2:.2e} {esc(status)}"
            body.append(f'<text x="{end + 4:.1f}" y="{mid + 4:.1f}">{text}</text>')
        else:
            body.append(_cross(x0 + 6, mid, BAD_COLOR))
            shown = status if not good else figure
            body.append(
                f'<text x="{x0 + 16}" y="{mid + 4:.1f}" fill="{BAD_COLOR}">{esc(shown)}</text>'
            )
        body.append("</g>")
    body.append(f'<line class="axis" x1="{x0}" y1="{bottom}" x2="{x1}" y2="{bottom}"/>')
    body.append(
        f'<text x="{(x0 + x1) / 2:.0f}" y="{bottom + 32}" text-anchor="middle">'
        "L2 norm of the weight gradient (log scale)</text>"
    )
    return _svg(WIDTH, height, "gradient flow: weight-gradient L2 norm per layer", body)


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
    longest = max(len(_short(c.label, 24)) for c in t.checkpoints)
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
            f'text-anchor="end"><title>{esc(c.model)}</title>{esc(_short(c.label, 24))}</text>'
        )
    width = (right - left) / columns
    for k, s in enumerate(t.series):
        lx = left + (k % columns) * width
        ly = legend_top + 16 * (k // columns)
        color, dash = line_style(k)
        body.append(
            f'<g><title>{esc(s.name)}</title><line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 22:.1f}" '
            f'y2="{ly - 4}" stroke="{color}" stroke-width="2"{_dash(dash)}/>'
            f'<text x="{lx + 28:.1f}" y="{ly}">{esc(_short(s.name, 34))}</text></g>'
        )
    return _svg(WIDTH, height, f"trajectory: {t.quantity} over {n} checkpoints", body)


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
            mark = _cross(cx, 11, color, 5)
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
            if _drawable(v) and points <= MAX_POINTS:
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
                    f"<g><title>{tip}</title>{_cross(x(i), top + height - 6, BAD_COLOR, 3.5)}</g>"
                )
    return "".join(out)


def _runs(figures: Sequence[float | None]) -> list[list[int]]:
    """Indices of consecutive drawable figures (a gap where a checkpoint has none)."""
    runs: list[list[int]] = []
    current: list[int] = []
    for i, v in enumerate(figures):
        if _drawable(v):
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs
