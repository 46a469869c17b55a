"""The gradient-flow chart of `wrt-weights --png`: one bar per layer, log10 of the L2 norm of
its weight gradient (matplotlib, imported lazily; figures and the atomic save from pictures.py)."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gradcli.present.escape import plot
from gradcli.present.pictures import new_figure, save_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FLOW_WIDTH_INCHES = 8.0
OK_COLOR = "#1f77b4"
BAD_COLOR = "#d62728"
MAX_LABEL_CHARS = 40


def write_flow_chart(
    path: str | os.PathLike[str],
    layers: Sequence[str],
    norms: Sequence[float | None],
    statuses: Sequence[str] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Write the gradient-flow chart of `wrt-weights`: one bar per layer, log10 L2 norm.

    Layers are drawn top to bottom in model order. A layer whose norm is 0, NaN, Inf or None
    cannot be a bar on a log axis: it gets a marker and its status text at the left edge.
    Bars of layers whose status is not "ok" (e.g. too-large) are red and carry the status.
    """
    names = list(layers)
    values = [math.nan if v is None else float(v) for v in norms]
    if len(values) != len(names):
        raise ValueError(f"{len(names)} layers but {len(values)} norms")
    if statuses is None:
        labels = [_status_of(v) for v in values]
    else:
        labels = list(statuses)
        if len(labels) != len(names):
            raise ValueError(f"{len(names)} layers but {len(labels)} statuses")
    if not names:
        raise ValueError("no layers to chart")
    if any(v < 0 for v in values if math.isfinite(v)):
        raise ValueError("gradient norms cannot be negative")
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    import matplotlib.style

    with matplotlib.style.context("default"):
        fig = _flow_figure(names, values, labels, title)
        save_atomic(fig, out)
    return out


def _status_of(norm: float) -> str:
    if not math.isfinite(norm):
        return "nonfinite"
    return "zero" if norm == 0 else "ok"


def _short(name: str) -> str:
    if len(name) <= MAX_LABEL_CHARS:
        return name
    keep = MAX_LABEL_CHARS - 1
    # The end of a nested path names the layer; keep more of it than of the start.
    return name[: keep // 3] + "\u2026" + name[-(keep - keep // 3) :]


def _flow_figure(
    names: list[str], values: list[float], statuses: list[str], title: str | None
) -> Figure:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(names)
    drawable = [math.isfinite(v) and v > 0 for v in values]
    positive = [v for v, ok in zip(values, drawable, strict=True) if ok]
    label_size = 9 if n <= 30 else 8
    if positive:
        lo = 10.0 ** math.floor(math.log10(min(positive)) - 0.5)
        top = math.log10(max(positive))
        # The value text after the longest bar must stay inside the axes: reserve the share
        # of the (at least ~4.5 inch wide) axes that the longest text needs, in decades.
        texts = [
            len(f"{v:.2e}") + (0 if s == "ok" else 2 + len(s))
            for v, s, ok in zip(values, statuses, drawable, strict=True)
            if ok
        ]
        share = min(0.6, (max(texts) * 0.62 * (label_size - 1) + 8) / (4.5 * 72))
        span = top - math.log10(lo)
        hi = 10.0 ** math.ceil(top + max(1.0, span * share / (1 - share)))
    else:
        lo, hi = 1e-8, 1.0
    fig = new_figure(FLOW_WIDTH_INCHES, max(3.0, 1.6 + 0.22 * n))
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(n - 0.5, -0.5)  # first layer at the top

    for y, (value, status, ok) in enumerate(zip(values, statuses, drawable, strict=True)):
        good = status == "ok"
        color = OK_COLOR if good else BAD_COLOR
        if ok:
            ax.barh(y, value - lo, left=lo, height=0.7, color=color)
            text = f"{value:.2e}" if good else f"{value:.2e}  {status}"
            ax.annotate(
                text,
                (value, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=label_size - 1,
                color="black" if good else BAD_COLOR,
            )
        else:
            if good:  # status says ok but there is nothing to draw: say what the value is
                status = "0" if value == 0 else f"{value}"
            marker_x = lo * 10**0.12
            ax.plot([marker_x], [y], marker="x", color=BAD_COLOR, markersize=7, mew=2)
            ax.annotate(
                status,
                (marker_x, y),
                xytext=(7, 0),
                textcoords="offset points",
                va="center",
                fontsize=label_size - 1,
                color=BAD_COLOR,
                fontstyle="italic",
            )

    ax.set_yticks(range(n), [plot(_short(s)) for s in names], fontsize=label_size)
    ax.tick_params(axis="x", labelsize=9)
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_xlabel("L2 norm of weight gradient (log scale)")
    ax.set_title(plot(title or "gradient flow: weight-gradient norm per layer"), fontsize=11)
    # The legend names only what is in the picture, so red in it always means a problem.
    handles = []
    if any(ok and s == "ok" for s, ok in zip(statuses, drawable, strict=True)):
        handles.append(Patch(color=OK_COLOR, label="ok"))
    if any(ok and s != "ok" for s, ok in zip(statuses, drawable, strict=True)):
        handles.append(Patch(color=BAD_COLOR, label="flagged (status shown)"))
    if not all(drawable):
        handles.append(
            Line2D(
                [],
                [],
                marker="x",
                color=BAD_COLOR,
                mew=2,
                linestyle="none",
                label="no bar: zero, non-finite or disconnected",
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig
