"""PNG pictures: saliency heatmaps, CAM overlays and strips, and the gradient-flow chart
(matplotlib, imported lazily).

One file on purpose: every picture shares its style constants, the three-panel layout, the
input normalization and the atomic save, and this is the only module that draws.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .escaping import plot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEATMAP_CMAP = "inferno"
HEATMAP_SIZE_INCHES = (9.0, 3.0)
FLOW_WIDTH_INCHES = 8.0
DPI = 100
CLIP_PERCENTILE = 99.0
OVERLAY_ALPHA = 0.5
OK_COLOR = "#1f77b4"
BAD_COLOR = "#d62728"
MAX_LABEL_CHARS = 40


def saliency_map(g: np.ndarray) -> np.ndarray:
    """One sample's gradient (H, W) or (H, W, C) as a saliency map (H, W) in [0, 1].

    The map is max over channels of |g|, divided by its 99th percentile and clipped, so that
    a handful of outlier pixels do not turn everything else black. NaN counts as 0 and
    +-Inf as the maximum (1). An all-zero gradient gives an all-zero map.
    """
    a = np.abs(np.asarray(g, dtype=np.float64))
    if a.ndim == 3:
        a = np.where(np.isnan(a), 0.0, a).max(axis=-1)
    elif a.ndim != 2:
        raise ValueError(f"expected a gradient of shape (H, W) or (H, W, C), got {a.shape}")
    a = np.where(np.isnan(a), 0.0, a)
    finite = np.isfinite(a)
    values = a[finite]
    hi = float(np.percentile(values, CLIP_PERCENTILE)) if values.size else 0.0
    if not hi > 0.0 and values.size:
        # Fewer than 1% of the pixels are nonzero: scale by the largest one instead.
        hi = float(values.max())
    out = np.zeros(a.shape, dtype=np.float64)
    if hi > 0.0:
        np.divide(a, hi, out=out, where=finite)
        np.clip(out, 0.0, 1.0, out=out)
    out[~finite] = 1.0
    return out


def write_heatmaps(
    directory: str | os.PathLike[str],
    prefix: str,
    x: np.ndarray,
    g: np.ndarray,
    start_index: int = 0,
    title: str | None = None,
) -> list[pathlib.Path]:
    """Write one PNG per sample: input, |gradient| heatmap, and the two overlaid.

    `x` and `g` have the same shape, (n, H, W) or (n, H, W, C). Sample i goes to
    `directory/{prefix}_{start_index + i:04d}.png`, written atomically. Returns the paths.
    """
    x = np.asarray(x)
    g = np.asarray(g)
    if x.shape != g.shape:
        raise ValueError(f"input and gradient shapes differ: {x.shape} vs {g.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W) or (N, H, W, C), got {x.shape}")
    return _write_figures(
        directory,
        prefix,
        start_index,
        x.shape[0],
        lambda i, index: _heatmap_figure(x[i], g[i], index, title),
    )


def _write_figures(
    directory: str | os.PathLike[str],
    prefix: str,
    start_index: int,
    count: int,
    figure: Callable[[int, int], Figure],
) -> list[pathlib.Path]:
    """`figure(i, index)` for each of `count` samples, saved atomically as
    `directory/{prefix}_{index:04d}.png` (index = start_index + i)."""
    out_dir = pathlib.Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)

    import matplotlib.style

    paths: list[pathlib.Path] = []
    with matplotlib.style.context("default"):  # a user's matplotlibrc must not change the files
        for i in range(count):
            index = start_index + i
            path = out_dir / f"{prefix}_{index:04d}.png"
            _save_atomic(figure(i, index), path)
            paths.append(path)
    return paths


def write_cam_pictures(
    directory: str | os.PathLike[str],
    prefix: str,
    x: np.ndarray,
    cam: np.ndarray,
    start_index: int = 0,
    title: str | None = None,
) -> list[pathlib.Path]:
    """Write one PNG per sample of a class activation map resized to its input.

    Images: `x` (n, H, W) or (n, H, W, C) with `cam` (n, H, W): input, map, map over the input.
    1-D inputs: `x` (n, T) or (n, T, C) with `cam` (n, T): the signal above the map as a strip
    on the same time axis. Sample i goes to `directory/{prefix}_{start_index + i:04d}.png`.
    """
    x = np.asarray(x)
    cam = np.asarray(cam)
    if x.shape[: cam.ndim] != cam.shape or x.ndim not in (cam.ndim, cam.ndim + 1):
        raise ValueError(f"input {x.shape} and map {cam.shape} do not line up")
    if cam.ndim not in (2, 3):
        raise ValueError(f"expected maps of shape (N, T) or (N, H, W), got {cam.shape}")
    draw = _cam_image_figure if cam.ndim == 3 else _cam_strip_figure
    return _write_figures(
        directory,
        prefix,
        start_index,
        x.shape[0],
        lambda i, index: draw(x[i], cam[i], index, title),
    )


def _cam_scaled(cam: np.ndarray) -> tuple[np.ndarray, float]:
    """A map in [0, 1] (divided by its maximum; non-finite values count as 0), and the max."""
    a = np.where(np.isfinite(cam), np.asarray(cam, np.float64), 0.0)
    peak = float(a.max()) if a.size else 0.0
    return (a / peak if peak > 0 else np.zeros_like(a)), peak


def _cam_image_figure(x: np.ndarray, cam: np.ndarray, index: int, title: str | None) -> Figure:
    scaled, peak = _cam_scaled(cam)
    label = f"CAM (max {peak:.2e})" if peak > 0 else "CAM (all zero)"
    return _three_panels(x, scaled, label, "relative to the map's max", index, title)


def _cam_strip_figure(x: np.ndarray, cam: np.ndarray, index: int, title: str | None) -> Figure:
    signal = np.asarray(x, np.float64)
    if signal.ndim == 1:
        signal = signal[:, None]
    if signal.shape[1] > 8:  # many channels: their mean, not an unreadable tangle
        signal = signal.mean(axis=1, keepdims=True)
    scaled, peak = _cam_scaled(cam)
    steps = len(cam)
    fig = _new_figure(HEATMAP_SIZE_INCHES[0], 3.2)
    ax_sig, ax_cam = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    t = np.arange(steps) + 0.5
    for c in range(signal.shape[1]):
        ax_sig.plot(t, signal[:, c], linewidth=1)
    ax_sig.set_xlim(0, steps)
    ax_sig.set_title("input", fontsize=10)
    ax_sig.tick_params(labelsize=8)
    ax_cam.imshow(
        scaled[None, :],
        cmap=HEATMAP_CMAP,
        aspect="auto",
        extent=(0, steps, 0, 1),
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    ax_cam.set_yticks([])
    ax_cam.tick_params(labelsize=8)
    ax_cam.set_xlabel(
        f"position; CAM relative to its max ({peak:.2e})" if peak > 0 else "CAM all zero",
        fontsize=9,
    )
    fig.suptitle(plot(f"{title} - sample {index}" if title else f"sample {index}"), fontsize=11)
    return fig


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
        _save_atomic(fig, out)
    return out


def _status_of(norm: float) -> str:
    if not math.isfinite(norm):
        return "nonfinite"
    return "zero" if norm == 0 else "ok"


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot, no GUI backend, no global figure registry
    return fig


def _save_atomic(fig: Figure, path: pathlib.Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a picture is for sharing
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _normalized_input(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image to show, gray version for the overlay), both min-max scaled to [0, 1]."""
    a = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(a)
    if finite.any():
        lo, hi = float(a[finite].min()), float(a[finite].max())
    else:
        lo = hi = 0.0
    scaled = np.zeros(a.shape, dtype=np.float64)
    if hi > lo:
        np.divide(a - lo, hi - lo, out=scaled, where=finite)
    if scaled.ndim == 2:
        return scaled, scaled
    channels = scaled.shape[-1]
    if channels == 1:
        gray = scaled[..., 0]
        return gray, gray
    if channels in (3, 4):
        rgb = scaled[..., :3]  # alpha dropped: a transparent input would hide the picture
        return rgb, rgb.mean(axis=-1)
    gray = scaled.mean(axis=-1)
    return gray, gray


def _heatmap_figure(x: np.ndarray, g: np.ndarray, index: int, title: str | None) -> Figure:
    sal = saliency_map(g)
    a = np.abs(np.asarray(g, dtype=np.float64))
    nonfinite = int((~np.isfinite(a)).sum())
    finite_vals = a[np.isfinite(a)]
    peak = float(finite_vals.max()) if finite_vals.size else 0.0
    if not finite_vals.size:
        detail = "no finite value"
    else:
        detail = f"max {peak:.2e}" if peak > 0 else "all zero"
        if nonfinite:
            detail += f", {nonfinite} non-finite"
    return _three_panels(
        x, sal, f"|gradient| ({detail})", f"relative, clipped at p{CLIP_PERCENTILE:g}", index, title
    )


def _three_panels(
    x: np.ndarray, map01: np.ndarray, label: str, scale: str, index: int, title: str | None
) -> Figure:
    """Input | a map in [0, 1] (with its colour bar) | the map over the input in gray."""
    shown, gray = _normalized_input(x)
    fig = _new_figure(*HEATMAP_SIZE_INCHES)
    ax_in, ax_map, ax_over = fig.subplots(1, 3)
    image_kw = {"interpolation": "antialiased", "vmin": 0.0, "vmax": 1.0}
    if shown.ndim == 3:
        ax_in.imshow(shown, interpolation="antialiased")
    else:
        ax_in.imshow(shown, cmap="gray", **image_kw)
    ax_in.set_title("input", fontsize=10)
    heat = ax_map.imshow(map01, cmap=HEATMAP_CMAP, **image_kw)
    ax_map.set_title(label, fontsize=10)
    cbar = fig.colorbar(heat, ax=ax_map, fraction=0.046, pad=0.03, ticks=[0.0, 0.5, 1.0])
    cbar.ax.tick_params(labelsize=8)
    cbar.set_label(scale, fontsize=8)
    ax_over.imshow(gray, cmap="gray", **image_kw)
    ax_over.imshow(map01, cmap=HEATMAP_CMAP, alpha=OVERLAY_ALPHA, **image_kw)
    ax_over.set_title("overlay", fontsize=10)
    for ax in (ax_in, ax_map, ax_over):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(plot(f"{title} - sample {index}" if title else f"sample {index}"), fontsize=11)
    return fig


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
    fig = _new_figure(FLOW_WIDTH_INCHES, max(3.0, 1.6 + 0.22 * n))
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
