"""Pictures for the HTML page: a run's PNG files read back, scaled down to the page's width
and inlined as data: URIs (the full-resolution files stay where --png wrote them).

A picture no wider than the page and within its byte budget is inlined as it is. Any other
is read with matplotlib's image module (already a dependency; it decodes through Pillow),
scaled to the page's width by area averaging (every source pixel counts in proportion to its
overlap: no aliasing on text and fine lines) and written back as PNG; one still over budget
(noisy, photo-like inputs compress badly as PNG) becomes a JPEG, narrower until it fits or
reaches a floor width. Only PNG files of a bounded size and pixel count are read; anything
else is reported on the page, not inlined.
"""

from __future__ import annotations

import base64
import io
import os
import struct
from dataclasses import dataclass

import numpy as np

PAGE_WIDTH = 900  # px: the width pictures get on the page at most (gradcli's heatmaps: 900)
MIN_WIDTH = 360  # px: never smaller than this to meet the byte budget
IMAGE_BUDGET = 80 * 1024  # bytes of PNG per picture (16 pictures: 1.75 MB of base64)
JPEG_QUALITY = 85
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 40_000_000
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Thumbnail:
    uri: str  # data:image/png;base64,... (or image/jpeg)
    width: int
    height: int
    source_width: int
    source_height: int


class PictureError(ValueError):
    """A picture that is not inlined (the page says why)."""


def png_size(head: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's first 24 bytes (its IHDR), before decoding anything."""
    if len(head) < 24 or not head.startswith(_SIGNATURE) or head[12:16] != b"IHDR":
        raise PictureError("not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def thumbnail(path: str | os.PathLike[str], budget: int = IMAGE_BUDGET) -> Thumbnail:
    """The PNG at `path` for the page: as it is when it fits the width and budget, else
    scaled down until it does (or reaches MIN_WIDTH)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PictureError(f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise PictureError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    width, height = png_size(data[:24])
    if width * height > MAX_PIXELS or width == 0 or height == 0:
        raise PictureError(f"{width}x{height} pixels is out of bounds")
    if width <= PAGE_WIDTH and len(data) <= budget:
        return Thumbnail(_uri(data, "png"), width, height, width, height)
    pixels = _decode(data)
    target = min(PAGE_WIDTH, width)
    small = downscale(pixels, target)
    encoded, kind = _encode(small, "png"), "png"
    # photo-like or noisy content (large input images) compresses badly as PNG: JPEG, then
    # narrower, until it fits
    while len(encoded) > budget:
        encoded, kind = _encode(small, "jpeg"), "jpeg"
        if len(encoded) <= budget or target <= MIN_WIDTH:
            break
        target = max(MIN_WIDTH, int(target * 0.75))
        small = downscale(pixels, target)
    h, w = small.shape[:2]
    return Thumbnail(_uri(encoded, kind), w, h, width, height)


def _uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _decode(data: bytes) -> np.ndarray:
    import matplotlib.image

    try:
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    except Exception as exc:  # a damaged file: Pillow's errors vary by what is wrong
        raise PictureError(f"cannot be decoded ({exc})") from None
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.dtype.kind != "f" or pixels.max(initial=0) > 1:
        pixels = pixels / 255.0
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] in (1, 2):  # gray, gray + alpha: as RGB(A)
        gray = np.repeat(pixels[..., :1], 3, axis=-1)
        pixels = np.concatenate([gray, pixels[..., 1:]], axis=-1)
    return pixels


def _encode(pixels: np.ndarray, kind: str) -> bytes:
    import matplotlib.image

    if pixels.shape[-1] == 4 and (kind == "jpeg" or np.all(pixels[..., 3] >= 1.0 - 1e-6)):
        alpha = pixels[..., 3:]
        pixels = pixels[..., :3] * alpha + (1.0 - alpha)  # on white: no alpha to store
    options = {"quality": JPEG_QUALITY} if kind == "jpeg" else {"optimize": True}
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.clip(pixels, 0.0, 1.0), format=kind, pil_kwargs=options)
    return buf.getvalue()


def _area_average(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """`a` resampled to `n_out` along `axis`: output j is the mean of the input over
    [j, j + 1) * n / n_out, fractional pixels weighted by their overlap (from prefix sums:
    linear time)."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    prefix = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0)])
    edges = np.arange(n_out + 1) * (n / n_out)
    edges[-1] = n
    whole = np.minimum(np.floor(edges).astype(np.intp), n - 1)
    frac = (edges - whole).reshape(-1, *([1] * (a.ndim - 1)))
    integral = prefix[whole] + frac * a[whole]
    return np.moveaxis((integral[1:] - integral[:-1]) * (n_out / n), 0, axis)


def downscale(pixels: np.ndarray, width: int) -> np.ndarray:
    """`pixels` (H, W, C) in [0, 1] scaled to `width` columns (aspect kept) by area
    averaging; colour is averaged premultiplied by alpha, so transparent pixels add none."""
    h, w = pixels.shape[:2]
    if width >= w:
        return pixels
    height = max(1, round(h * width / w))
    src = pixels.astype(np.float64, copy=True)
    alpha = src.shape[-1] == 4
    if alpha:
        src[..., :3] *= src[..., 3:]
    out = _area_average(_area_average(src, height, 0), width, 1)
    if alpha:
        a = out[..., 3:]
        np.divide(out[..., :3], a, out=out[..., :3], where=a > 0)
    return out
