"""What the HTML report's inline SVG charts share: axes (log and linear), short labels, crosses,
and a panel of horizontal bars, one row per name (svgcharts.py, svgfigures.py draw with them).

Every text from a file is escaped (htmlkit.esc); a long name is shortened from its start (the
end of a nested path names the layer), with the full name in its row's tooltip (`<title>`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradcli.present.htmlkit import esc

WIDTH = 760
OK_COLOR = "#1f77b4"
BAD_COLOR = "#c62828"
ERROR_COLOR = "#6e7781"
LABEL_CHARS = 30
MAX_TICKS = 8
ROW_HEIGHT = 18


def drawable(v: float | None) -> bool:
    """A figure a log axis can place (finite and positive)."""
    return v is not None and math.isfinite(v) and v > 0


class LogAxis:
    """A log10 axis over whole decades from the values' smallest to their largest."""

    def __init__(self, values: Sequence[float | None], start: float, end: float) -> None:
        logs = [math.log10(v) for v in values if drawable(v)]  # type: ignore[arg-type]
        self.lo = math.floor(min(logs)) if logs else -1
        self.hi = max(math.ceil(max(logs)) if logs else 0, self.lo + 1)
        self.start, self.end = start, end

    def __call__(self, v: float) -> float:
        frac = (math.log10(v) - self.lo) / (self.hi - self.lo)
        return self.start + frac * (self.end - self.start)

    def places(self, v: float | None) -> bool:
        return drawable(v)

    def decades(self) -> list[int]:
        step = max(1, math.ceil((self.hi - self.lo) / MAX_TICKS))
        return list(range(self.lo, self.hi + 1, step))

    def ticks(self) -> list[tuple[float, str]]:
        return [(10.0**k, decade_text(k)) for k in self.decades()]


class LinearAxis:
    """A linear axis from `lo` to `hi`, ticks every `step`."""

    def __init__(self, lo: float, hi: float, step: float, start: float, end: float) -> None:
        self.lo, self.hi, self.step = lo, hi, step
        self.start, self.end = start, end

    def __call__(self, v: float) -> float:
        frac = (min(max(v, self.lo), self.hi) - self.lo) / (self.hi - self.lo)
        return self.start + frac * (self.end - self.start)

    def places(self, v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    def ticks(self) -> list[tuple[float, str]]:
        count = round((self.hi - self.lo) / self.step)
        values = [self.lo + k * self.step for k in range(count + 1)]
        return [(v, f"{v:g}") for v in values]


def decade_text(k: int) -> str:
    return {-2: "0.01", -1: "0.1", 0: "1", 1: "10", 2: "100"}.get(k, f"1e{k}")


def short(name: str, chars: int = LABEL_CHARS) -> str:
    """The end of a long name (the end of a nested path names the layer)."""
    return name if len(name) <= chars else "\u2026" + name[-(chars - 1) :]


def svg(width: float, height: float, label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">'
        + "".join(body)
        + "</svg>"
    )


def cross(x: float, y: float, color: str, size: float = 4.0) -> str:
    return (
        f'<path d="M{x - size:.1f} {y - size:.1f}L{x + size:.1f} {y + size:.1f}'
        f'M{x - size:.1f} {y + size:.1f}L{x + size:.1f} {y - size:.1f}" stroke="{color}" '
        'stroke-width="2" fill="none"/>'
    )


@dataclass(frozen=True)
class Bar:
    """One row of a bar panel: a bar from `start` (None: the axis start) to `end`, its text
    after it, ticks at `marks` and a diamond at `point`; `missing` is shown with a cross when
    `end` has no place."""

    end: float | None
    text: str  # HTML (escaped by the caller)
    tip: str  # plain text: escaped here
    bad: bool = False
    start: float | None = None
    marks: tuple[float, ...] = ()
    point: float | None = None
    missing: str = ""


def name_column(names: Sequence[str], right: float, top: float) -> list[str]:
    """Each row's name, right-aligned at `right`, its full name as the tooltip."""
    out = []
    for i, name in enumerate(names):
        mid = top + i * ROW_HEIGHT + ROW_HEIGHT / 2
        out.append(
            f'<g><title>{esc(name)}</title><text x="{right}" y="{mid + 4:.1f}" '
            f'text-anchor="end">{esc(short(name))}</text></g>'
        )
    return out


def bar_panel(
    bars: Sequence[Bar],
    axis: LogAxis | LinearAxis,
    top: float,
    caption: str,
    limit: tuple[float, str] | None = None,
) -> list[str]:
    """A panel of horizontal bars on `axis` (its start and end are the panel's x range), one
    row per bar from `top` down; grid lines and tick labels below, the caption under them, a
    gate's `limit` (value, label) as a dashed red line."""
    bottom = top + len(bars) * ROW_HEIGHT
    x0, x1 = axis.start, axis.end
    out = []
    for value, text in axis.ticks():
        x = axis(value)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{text}</text>')
    for i, bar in enumerate(bars):
        y = top + i * ROW_HEIGHT
        mid = y + ROW_HEIGHT / 2
        color = BAD_COLOR if bar.bad else OK_COLOR
        out.append(f"<g><title>{esc(bar.tip)}</title>")
        if axis.places(bar.end):
            begin = axis(bar.start) if axis.places(bar.start) else x0
            end = axis(bar.end)  # type: ignore[arg-type]
            left, width = min(begin, end), max(abs(end - begin), 1)
            out.append(
                f'<rect x="{left:.1f}" y="{y + 3}" width="{width:.1f}" '
                f'height="{ROW_HEIGHT - 6}" fill="{color}"/>'
            )
            for mark in bar.marks:
                if axis.places(mark):
                    mx = axis(mark)
                    out.append(
                        f'<line x1="{mx:.1f}" y1="{y + 1}" x2="{mx:.1f}" y2="{y + ROW_HEIGHT - 1}" '
                        'stroke="#1f2328" stroke-width="1.5"/>'
                    )
            if axis.places(bar.point):
                px = axis(bar.point)  # type: ignore[arg-type]
                out.append(
                    f'<path class="point" d="M{px:.1f} {mid - 5:.1f}L{px + 5:.1f} {mid:.1f}'
                    f'L{px:.1f} {mid + 5:.1f}L{px - 5:.1f} {mid:.1f}Z" fill="#1f2328"/>'
                )
            right = max(begin, end, axis(bar.point) if axis.places(bar.point) else x0)
            out.append(f'<text x="{right + 7:.1f}" y="{mid + 4:.1f}">{bar.text}</text>')
        else:
            out.append(cross(x0 + 6, mid, BAD_COLOR))
            out.append(
                f'<text x="{x0 + 16}" y="{mid + 4:.1f}" fill="{BAD_COLOR}">'
                f"{esc(bar.missing)}</text>"
            )
        out.append("</g>")
    if limit is not None and axis.places(limit[0]):
        lx = axis(limit[0])
        out.append(
            f'<g><title>{esc(limit[1])}</title><line x1="{lx:.1f}" y1="{top - 4}" x2="{lx:.1f}" '
            f'y2="{bottom + 2}" stroke="{BAD_COLOR}" stroke-width="1.5" '
            'stroke-dasharray="4 3"/></g>'
        )
    out.append(f'<line class="axis" x1="{x0}" y1="{bottom}" x2="{x1}" y2="{bottom}"/>')
    out.append(
        f'<text x="{(x0 + x1) / 2:.0f}" y="{bottom + 32}" text-anchor="middle">{caption}</text>'
    )
    return out


def panel_height(rows: int, top: float) -> float:
    """The height of an SVG holding a bar panel of `rows` rows from `top` (with its axis)."""
    return top + rows * ROW_HEIGHT + 40
