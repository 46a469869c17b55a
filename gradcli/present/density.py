"""The Hessian eigenvalue density of `hessian --png`: the stochastic Lanczos quadrature
histogram on a log scale, with the top eigenvalues marked (matplotlib, imported lazily;
figures and the atomic save from pictures.py)."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from gradcli.present.escape import plot
from gradcli.present.pictures import fit_title, new_figure, save_atomic

BAR_COLOR = "#1f77b4"
MARK_COLOR = "#d62728"


def write_density(
    path: str | os.PathLike[str],
    edges: Sequence[float],
    mass: Sequence[float],
    marks: Sequence[float] = (),
    title: str | None = None,
) -> pathlib.Path:
    """Write the density: bar heights are each bin's share of the eigenvalues (log scale, so
    the few outliers that set the sharpness show beside the bulk near zero); `marks` are the
    top eigenvalues found by Lanczos, drawn as dashed lines."""
    edges = np.asarray(edges, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    if edges.ndim != 1 or len(edges) != len(mass) + 1 or not len(mass):
        raise ValueError(f"{len(edges)} edges for {len(mass)} bins")
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    import matplotlib.style

    with matplotlib.style.context("default"):
        fig = new_figure(8.0, 4.5)
        ax = fig.subplots()
        # six decades below the highest bin: the Gaussian broadening's far tails are not news
        floor = max(float(mass.max()) * 1e-6, 1e-12)
        heights = np.maximum(mass, floor / 10)
        ax.bar(edges[:-1], heights, width=np.diff(edges), align="edge", color=BAR_COLOR)
        ax.set_yscale("log")
        ax.set_ylim(floor / 10, max(1.0, float(heights.max()) * 2))
        for i, value in enumerate(v for v in marks if math.isfinite(v)):
            ax.axvline(value, color=MARK_COLOR, linestyle="--", linewidth=1)
            if i == 0:
                ax.annotate(
                    plot(f"λ = {value:.4g}"),
                    (value, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(-4, -12),
                    textcoords="offset points",
                    ha="right",
                    fontsize=8,
                    color=MARK_COLOR,
                )
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("share of eigenvalues per bin (log scale)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(plot(title or "Hessian eigenvalue density", fit_title), fontsize=10)
        save_atomic(fig, out)
    return out
