"""Attribution maps as the values a picture shows: magnitudes in [0, 1] or signed values in
[-1, 1], scaled to the 99th percentile of |value| so that a few outliers do not darken the
rest; and which maps are noise (NumPy only)."""

from __future__ import annotations

import math

import numpy as np

CLIP_PERCENTILE = 99.0
# a sample whose map peaks below this fraction of the largest map drawn is "near zero"
NEAR_ZERO = 1e-6


def saliency_map(g: np.ndarray) -> np.ndarray:
    """One sample's map (H, W) or (H, W, C) as magnitudes (H, W) in [0, 1].

    The map is max over channels of |g|, divided by its 99th percentile and clipped, so that
    a handful of outlier pixels do not turn everything else black. NaN counts as 0 and
    +-Inf as the maximum (1). An all-zero map gives an all-zero map.
    """
    a = np.abs(_image_values(g))
    if a.ndim == 3:
        a = np.where(np.isnan(a), 0.0, a).max(axis=-1)
    a = np.where(np.isnan(a), 0.0, a)
    finite = np.isfinite(a)
    hi = _clip_level(a[finite])
    out = np.zeros(a.shape, dtype=np.float64)
    if hi > 0.0:
        np.divide(a, hi, out=out, where=finite)
        np.clip(out, 0.0, 1.0, out=out)
    out[~finite] = 1.0
    return out


def signed_map(g: np.ndarray) -> tuple[np.ndarray, float]:
    """One sample's map (H, W) or (H, W, C) summed over channels (an attribution per pixel),
    divided by the 99th percentile of its magnitude and clipped to [-1, 1]; and that level.
    NaN counts as 0, +-Inf as +-1."""
    a = _image_values(g)
    if a.ndim == 3:
        a = np.where(np.isnan(a), 0.0, a).sum(axis=-1)
    a = np.where(np.isnan(a), 0.0, a)
    finite = np.isfinite(a)
    hi = _clip_level(np.abs(a[finite]))
    out = np.zeros(a.shape, dtype=np.float64)
    if hi > 0.0:
        np.divide(a, hi, out=out, where=finite)
        np.clip(out, -1.0, 1.0, out=out)
    out[~finite] = np.sign(a[~finite])
    return out, hi


def _image_values(g: np.ndarray) -> np.ndarray:
    a = np.asarray(g, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a gradient of shape (H, W) or (H, W, C), got {a.shape}")
    return a


def _clip_level(values: np.ndarray) -> float:
    """The 99th percentile of magnitudes; the largest one when fewer than 1% are nonzero."""
    hi = float(np.percentile(values, CLIP_PERCENTILE)) if values.size else 0.0
    if not hi > 0.0 and values.size:
        hi = float(values.max())
    return hi


def peak_of(a: np.ndarray) -> float:
    """The largest finite magnitude of a map (0 for none)."""
    finite = np.abs(a[np.isfinite(a)])
    return float(finite.max()) if finite.size else 0.0


def below(peak: float) -> str:
    """`all below 1e-12` for a map whose largest magnitude is 1.3e-13."""
    return f"all below 1e{math.ceil(math.log10(peak)) if peak > 0 else 0:d}"


def near_zero(maps: np.ndarray, faint: bool) -> list[bool]:
    """Which samples' maps are noise: all of them when `faint` (the tensor is at float-noise
    level), else those peaking below NEAR_ZERO of the largest peak."""
    peaks = [peak_of(m) for m in maps]
    top = max(peaks, default=0.0)
    return [faint or (0 < p <= NEAR_ZERO * top) for p in peaks]
