"""The trajectory chart as a PNG (`wrt-weights DIR --png FILE.png`): each layer's
weight-gradient norm (and |g|/|θ| below it) over a directory's checkpoints, the same figure
the HTML report draws in SVG (svgcharts.py), from the same data (trajectory.py). matplotlib
is imported lazily; the figure and its atomic save are pictures.py's.
"""

from __future__ import annotations

import math
import os
import pathlib
from pathlib import Path
from typing import TYPE_CHECKING

from gradcli.io.outputs import Outputs
from gradcli.present.escape import plot
from gradcli.present.pictures import fit_title, new_figure, save_atomic
from gradcli.present.trajectory import (
    VERDICT_ERROR,
    VERDICT_TRIPPED,
    Trajectory,
    line_style,
    trajectory,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_INCHES = 9.0
PANEL_INCHES = 3.0
OK_COLOR = "#1a7f37"
BAD_COLOR = "#c62828"
ERROR_COLOR = "#6e7781"
LABEL_CHARS = 28
MAX_TICK_LABELS = 30


def write_trajectory_report(records: list[dict], dest: Path, directory: str) -> None:
    """The trajectory over a directory run's records to `dest`, staged and committed in an
    output transaction of its own (nothing when no model gave figures)."""
    drawn = trajectory(records)
    if drawn is None:
        return
    title = f"{directory}: {drawn.quantity} over {len(records)} models"
    with Outputs() as outputs:
        write_trajectory_chart(outputs.stage_file(dest), drawn, title)
        outputs.commit()


def write_trajectory_chart(
    path: str | os.PathLike[str], trajectory: Trajectory, title: str | None = None
) -> pathlib.Path:
    """Write the trajectory chart to `path` (a PNG, written atomically); returns the path."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.style

    with matplotlib.style.context("default"):
        fig = _figure(trajectory, title)
        save_atomic(fig, out)
    return out


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else "\u2026" + name[-(LABEL_CHARS - 1) :]


def _figure(t: Trajectory, title: str | None) -> Figure:
    panels = [("norms", f"{t.quantity}")]
    if t.has_ratios:
        panels.append(("ratios", "|g|/|\u03b8| per layer"))
    legend_rows = math.ceil(len(t.series) / 3)
    height = 1.6 + PANEL_INCHES * len(panels) + 0.2 * legend_rows
    fig = new_figure(WIDTH_INCHES, height)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    n = len(t.checkpoints)
    for ax, (attr, label) in zip(axes, panels, strict=True):
        _panel(ax, t, attr)
        ax.set_ylabel(f"{label}\n(log scale)", fontsize=9)
    _verdicts(axes[0], t)
    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    ticks = list(range(0, n, step))
    axes[-1].set_xticks(
        ticks,
        [plot(_short(t.checkpoints[i].label)) for i in ticks],
        rotation=35,
        ha="right",
        fontsize=8,
    )
    axes[-1].set_xlim(-0.5, n - 0.5)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    heading = title or f"trajectory over {n} checkpoints"
    fig.suptitle(plot(heading, fit=lambda shown: fit_title(shown, 80)), fontsize=11)
    return fig


def _panel(ax: Axes, t: Trajectory, attr: str) -> None:
    ax.set_yscale("log")
    xs = list(range(len(t.checkpoints)))
    drawn = False
    for k, s in enumerate(t.series):
        color, dash = line_style(k)
        ys = [
            v if v is not None and math.isfinite(v) and v > 0 else math.nan
            for v in getattr(s, attr)
        ]
        drawn = drawn or any(not math.isnan(y) for y in ys)
        ax.plot(
            xs,
            ys,
            color=color,
            linestyle=(0, dash) if dash else "-",
            linewidth=1.6,
            marker="o",
            markersize=3,
            label=plot(_short(s.name)) if attr == "norms" else None,
        )
        if attr == "norms":
            for i, status in enumerate(s.statuses):
                if status not in (None, "ok") and math.isnan(ys[i]):
                    ax.plot(
                        [i],
                        [0.04],
                        transform=ax.get_xaxis_transform(),
                        marker="x",
                        color=BAD_COLOR,
                        mew=2,
                    )
    if not drawn:
        ax.set_ylim(0.1, 1.0)
    ax.grid(axis="y", which="major", alpha=0.3)
    for i, c in enumerate(t.checkpoints):
        if c.verdict in (VERDICT_TRIPPED, VERDICT_ERROR):
            shade = BAD_COLOR if c.verdict == VERDICT_TRIPPED else ERROR_COLOR
            ax.axvspan(i - 0.5, i + 0.5, color=shade, alpha=0.09, linewidth=0)


def _verdicts(ax: Axes, t: Trajectory) -> None:
    """A marker per checkpoint above the first panel: its gates passed, tripped, or error."""
    styles = {
        VERDICT_TRIPPED: ("x", BAD_COLOR, "gates tripped"),
        VERDICT_ERROR: ("s", ERROR_COLOR, "error"),
    }
    shown = set()
    for i, c in enumerate(t.checkpoints):
        marker, color, label = styles.get(c.verdict, ("o", OK_COLOR, "gates passed"))
        ax.plot(
            [i],
            [1.05],
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            marker=marker,
            color=color,
            markersize=7,
            mew=2,
            linestyle="none",
            label=None if label in shown else label,
        )
        shown.add(label)
