"""PNG pictures of attributions: per sample, the input, the method's map and the two overlaid
(heatmaps of gradients and attributions, CAM overlays and 1-D strips); the figure and atomic
save helpers the gradient-flow chart (flowchart.py) shares. matplotlib is imported lazily.

What a map shows is the method's quantity, named in its panel title: a gradient, an
attribution, a CAM. Signed quantities (gradients, gradient x input, Integrated Gradients) can
be drawn signed, with a diverging colormap centred on zero, or as magnitudes; a map at float
noise is drawn blank and said to be so, never stretched to full contrast.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gradcli.present.escape import plot
from gradcli.present.map_values import (
    CLIP_PERCENTILE,
    below,
    near_zero,
    peak_of,
    saliency_map,
    signed_map,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEATMAP_CMAP = "inferno"  # magnitudes and CAMs: dark is nothing, bright is most
SIGNED_CMAP = "RdBu_r"  # signed maps: red positive, blue negative, white zero
HEATMAP_SIZE_INCHES = (9.0, 3.0)
DPI = 100
OVERLAY_ALPHA = 0.5
TITLE_SIZE = 11
TITLE_CHARS = 92  # characters of an 11 pt title line that fit the 9-inch figure
TITLE_LINES = 2


@dataclass(frozen=True)
class MapStyle:
    """How a method's map is drawn: what it is (the panel title) and whether signed."""

    quantity: str  # "gradient", "Integrated Gradients", "Grad-CAM", ...
    signed: bool = False  # True: diverging colormap centred on zero; False: magnitude
    absolute: bool = True  # drawn as |value| (False: a quantity that is never negative)

    @property
    def label(self) -> str:
        return f"|{self.quantity}|" if self.absolute and not self.signed else self.quantity


def fit_title(text: str, chars: int = TITLE_CHARS, lines: int = TITLE_LINES) -> str:
    """A title wrapped to the figure's width; what would need more lines is shortened in the
    middle (the start names the model, the end the sample)."""
    wrapped = textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=False)
    if len(wrapped) <= lines:
        return "\n".join(wrapped)
    keep = chars * lines - 1
    head, tail = keep // 2, keep - keep // 2
    return fit_title(text[:head] + "\u2026" + text[-tail:], chars, lines + 1)


def write_heatmaps(
    directory: str | os.PathLike[str],
    prefix: str,
    x: np.ndarray,
    g: np.ndarray,
    start_index: int = 0,
    title: str | None = None,
    style: MapStyle | None = None,
    faint: bool = False,
) -> list[pathlib.Path]:
    """Write one PNG per sample: the input, the map (its quantity in the panel title), and the
    two overlaid. `style`: what the map is and whether it is drawn signed (default: a
    gradient's magnitude); `faint`: the maps are float noise (drawn blank and said to be).

    `x` and `g` have the same shape, (n, H, W) or (n, H, W, C). Sample i goes to
    `directory/{prefix}_{start_index + i:04d}.png`, written atomically. Returns the paths.
    """
    x = np.asarray(x)
    g = np.asarray(g)
    if x.shape != g.shape:
        raise ValueError(f"input and gradient shapes differ: {x.shape} vs {g.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N, H, W) or (N, H, W, C), got {x.shape}")
    style = style or MapStyle("gradient")
    noise = near_zero(g, faint)
    return _write_figures(
        directory,
        prefix,
        start_index,
        x.shape[0],
        lambda i, index: _heatmap_figure(x[i], g[i], index, title, style, noise[i]),
    )


def write_cam_pictures(
    directory: str | os.PathLike[str],
    prefix: str,
    x: np.ndarray,
    cam: np.ndarray,
    start_index: int = 0,
    title: str | None = None,
    quantity: str = "CAM",
    faint: bool = False,
) -> list[pathlib.Path]:
    """Write one PNG per sample of a class activation map resized to its input.

    Images: `x` (n, H, W) or (n, H, W, C) with `cam` (n, H, W): input, map, map over the input.
    1-D inputs: `x` (n, T) or (n, T, C) with `cam` (n, T): the signal above the map as a strip
    on the same time axis. Sample i goes to `directory/{prefix}_{start_index + i:04d}.png`.
    `quantity` names the map (Grad-CAM, ...); `faint`: the maps are float noise.
    """
    x = np.asarray(x)
    cam = np.asarray(cam)
    if x.shape[: cam.ndim] != cam.shape or x.ndim not in (cam.ndim, cam.ndim + 1):
        raise ValueError(f"input {x.shape} and map {cam.shape} do not line up")
    if cam.ndim not in (2, 3):
        raise ValueError(f"expected maps of shape (N, T) or (N, H, W), got {cam.shape}")
    draw = _cam_image_figure if cam.ndim == 3 else _cam_strip_figure
    noise = near_zero(cam, faint)
    return _write_figures(
        directory,
        prefix,
        start_index,
        x.shape[0],
        lambda i, index: draw(x[i], cam[i], index, title, quantity, noise[i]),
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
            save_atomic(figure(i, index), path)
            paths.append(path)
    return paths


def _cam_scaled(cam: np.ndarray) -> tuple[np.ndarray, float]:
    """A map in [0, 1] (divided by its maximum; non-finite values count as 0), and the max."""
    a = np.where(np.isfinite(cam), np.asarray(cam, np.float64), 0.0)
    peak = float(a.max()) if a.size else 0.0
    return (a / peak if peak > 0 else np.zeros_like(a)), peak


def _cam_label(quantity: str, peak: float, noise: bool) -> str:
    if noise and peak > 0:
        return f"{quantity} ({below(peak)}: noise, not drawn)"
    return f"{quantity} (max {peak:.2e})" if peak > 0 else f"{quantity} (all zero)"


def _cam_image_figure(
    x: np.ndarray, cam: np.ndarray, index: int, title: str | None, quantity: str, noise: bool
) -> Figure:
    scaled, peak = _cam_scaled(cam)
    if noise:
        scaled = np.zeros_like(scaled)
    panel = Panel(scaled, _cam_label(quantity, peak, noise), "relative to the map's max")
    return _three_panels(x, panel, index, title)


def _cam_strip_figure(
    x: np.ndarray, cam: np.ndarray, index: int, title: str | None, quantity: str, noise: bool
) -> Figure:
    signal = np.asarray(x, np.float64)
    if signal.ndim == 1:
        signal = signal[:, None]
    if signal.shape[1] > 8:  # many channels: their mean, not an unreadable tangle
        signal = signal.mean(axis=1, keepdims=True)
    scaled, peak = _cam_scaled(cam)
    if noise:
        scaled = np.zeros_like(scaled)
    steps = len(cam)
    fig = new_figure(HEATMAP_SIZE_INCHES[0], 3.2)
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
    label = _cam_label(quantity, peak, noise)
    if peak > 0 and not noise:
        label += ", relative to its max"
    ax_cam.set_xlabel(f"position; {label}", fontsize=9)
    _suptitle(fig, title, index)
    return fig


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot, no GUI backend, no global figure registry
    return fig


def save_atomic(fig: Figure, path: pathlib.Path) -> None:
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


def _detail(g: np.ndarray, noise: bool) -> str:
    """What the map's panel says about its values: max, non-finite, all zero or noise."""
    a = np.abs(np.asarray(g, dtype=np.float64))
    nonfinite = int((~np.isfinite(a)).sum())
    if nonfinite == a.size:
        return "no finite value"
    peak = peak_of(a)
    if peak == 0:
        detail = "all zero"
    elif noise:
        detail = f"{below(peak)}: noise, not drawn"
    else:
        detail = f"max {peak:.2e}"
    return detail + (f", {nonfinite} non-finite" if nonfinite else "")


@dataclass
class Panel:
    """The middle panel of a three-panel picture: a map, its title and colour-bar label."""

    values: np.ndarray  # in [0, 1], or [-1, 1] when signed
    label: str
    scale: str
    signed: bool = False


def _heatmap_figure(
    x: np.ndarray, g: np.ndarray, index: int, title: str | None, style: MapStyle, noise: bool
) -> Figure:
    detail = _detail(g, noise)
    if style.signed:
        values, level = signed_map(g)
        scale = f"relative to ±{level:.2e} (p{CLIP_PERCENTILE:g} of |value|)"
    else:
        values = saliency_map(g)
        scale = f"relative, clipped at p{CLIP_PERCENTILE:g}"
    if noise:
        values = np.zeros_like(values)
    panel = Panel(values, f"{style.label} ({detail})", scale, style.signed)
    return _three_panels(x, panel, index, title)


def _three_panels(x: np.ndarray, panel: Panel, index: int, title: str | None) -> Figure:
    """Input | the map (with its colour bar) | the map over the input in gray. A signed map
    uses the diverging colormap on [-1, 1] (white at zero) and is overlaid with opacity
    growing with its magnitude, so the input shows through where the map is zero."""
    shown, gray = _normalized_input(x)
    fig = new_figure(*HEATMAP_SIZE_INCHES)
    ax_in, ax_map, ax_over = fig.subplots(1, 3)
    image_kw = {"interpolation": "antialiased", "vmin": 0.0, "vmax": 1.0}
    if shown.ndim == 3:
        ax_in.imshow(shown, interpolation="antialiased")
    else:
        ax_in.imshow(shown, cmap="gray", **image_kw)
    ax_in.set_title("input", fontsize=10)
    lo, cmap = (-1.0, SIGNED_CMAP) if panel.signed else (0.0, HEATMAP_CMAP)
    map_kw = {"interpolation": "antialiased", "vmin": lo, "vmax": 1.0, "cmap": cmap}
    heat = ax_map.imshow(panel.values, **map_kw)
    ax_map.set_title(panel.label, fontsize=10)
    ticks = [lo, (lo + 1.0) / 2, 1.0]
    cbar = fig.colorbar(heat, ax=ax_map, fraction=0.046, pad=0.03, ticks=ticks)
    cbar.ax.tick_params(labelsize=8)
    cbar.set_label(panel.scale, fontsize=8)
    ax_over.imshow(gray, cmap="gray", **image_kw)
    if panel.signed:
        from matplotlib import colormaps

        rgba = colormaps[SIGNED_CMAP]((panel.values + 1.0) / 2.0)
        rgba[..., 3] = np.clip(np.abs(panel.values), 0.0, 1.0) * 0.85
        ax_over.imshow(rgba, interpolation="antialiased")
    else:
        ax_over.imshow(panel.values, alpha=OVERLAY_ALPHA, **map_kw)
    ax_over.set_title("overlay", fontsize=10)
    for ax in (ax_in, ax_map, ax_over):
        ax.set_xticks([])
        ax.set_yticks([])
    _suptitle(fig, title, index)
    return fig


def _suptitle(fig: Figure, title: str | None, index: int) -> None:
    # non-breaking spaces: "- sample N" stays with the word before it when the title wraps;
    # added after the title (a name from a file) is made printable, so they stay spaces
    if title:
        text = plot(title, fit=lambda shown: fit_title(f"{shown}\xa0-\xa0sample\xa0{index}"))
    else:
        text = f"sample {index}"
    fig.suptitle(text, fontsize=TITLE_SIZE)
