"""Class activation maps: Grad-CAM, Grad-CAM++ and Layer-CAM from a layer's activation A and
d o_i / d A (both from one tape call), the default CAM layer, and the resize to the input.

Maps are computed per sample from that sample's rows only, so they do not depend on the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gradcli.errors import GradientError, UsageError, param
from gradcli.load.handles import LayerInfo, ModelHandle
from gradcli.methods.common import Attribution, MethodOptions

if TYPE_CHECKING:
    from gradcli.engine.batched import Batch, GradientEngine


@dataclass(frozen=True)
class CamLayer:
    """The layer a CAM is computed on: its spatial rank and where its channel axis is."""

    info: LayerInfo
    spatial_rank: int  # 1: (N, t, K), 2: (N, h, w, K)
    channels_first: bool
    default: bool  # chosen by gradcli, not by --layer

    @property
    def key(self) -> str:
        """The npz key of the map at layer resolution."""
        return f"cam@{self.info.path}"


def _output_shape(layer: object) -> tuple | None:
    try:
        out = layer.output  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a layer never called has no output
        return None
    if isinstance(out, list | tuple) or not hasattr(out, "shape"):
        return None
    return tuple(out.shape)


def _pads_previous(rows: list[LayerInfo], position: int, channels_first: bool) -> bool:
    """Whether a padding layer pads the output of the layer listed before it, read in the same
    data format (then that layer is the better CAM layer: the same features, no zero border)."""
    if position == 0:
        return False
    try:
        padded = tuple(rows[position].layer.input.shape)
    except Exception:  # noqa: BLE001 - a layer never called, or called more than once
        return False
    before = _output_shape(rows[position - 1].layer)
    return before == padded and _data_format(rows, position - 1) == channels_first


def _is_model(info: LayerInfo) -> bool:
    return hasattr(info.layer, "layers") and hasattr(info.layer, "outputs")


def _data_format(rows: list[LayerInfo], position: int) -> bool:
    """Whether the layer at `position` is channels_first: its own data_format, else that of
    the nearest layer before it that has one (an activation after a conv follows the conv)."""
    for info in reversed(rows[: position + 1]):
        fmt = getattr(info.layer, "data_format", None)
        if fmt in ("channels_first", "channels_last"):
            return fmt == "channels_first"
    return False


def _spatial(shape: tuple, channels_first: bool) -> tuple:
    """The spatial axes of a layer output (N, t, K) or (N, h, w, K); channels first: (N, K, ...)."""
    return tuple(shape[2:] if channels_first else shape[1:-1])


def cam_layer(handle: ModelHandle, spec: str | None) -> CamLayer:
    """The CAM layer: --layer's, or the last layer in the model's layer list (nested layers
    included, models themselves not) whose output (N, t, K) or (N, h, w, K) still has a
    spatial extent greater than 1 (a 1x1 map after global pooling, such as MobileNetV3's
    `logits` convolution, would be one constant)."""
    if not handle.has_layers:
        raise UsageError(
            f"CAM methods need a Keras model with layers; {handle.path.name} is a SavedModel "
            "served through its function"
        )
    rows = handle.layers
    if spec is not None:
        info = handle.find_layer(spec)
        shape = _output_shape(info.layer)
        if shape is None or len(shape) not in (3, 4):
            got = "unknown" if shape is None else f"rank {len(shape)}"
            raise UsageError(
                f"{param('layers', spec)}: a CAM needs a layer with a spatial output "
                f"(N, t, K) or (N, h, w, K); {info.path!r} has output {info.output_shape} "
                f"({got})"
            )
        return CamLayer(info, len(shape) - 2, _data_format(rows, rows.index(info)), False)
    for position in range(len(rows) - 1, -1, -1):
        info = rows[position]
        if _is_model(info) or info.class_name == "InputLayer":
            continue
        shape = _output_shape(info.layer)
        if shape is None or len(shape) not in (3, 4):
            continue
        first = _data_format(rows, position)
        if info.class_name.startswith("ZeroPadding") and _pads_previous(rows, position, first):
            continue  # the same map as the layer before it, with a border of zeros
        if all(d is not None and d <= 1 for d in _spatial(shape, first)):
            continue
        return CamLayer(info, len(shape) - 2, first, True)
    raise UsageError(
        f"{handle.path.name} has no layer with a spatial output (N, t, K) or (N, h, w, K) "
        f"larger than 1x1 to compute a CAM on; give {param('layers', 'NAME')}"
    )


def _channels_last(a: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if channels_first else a


def _weighted_sum(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k weights[b, k] * a[b, ..., k]: one batched matrix product."""
    b, k = weights.shape
    flat = a.reshape(b, -1, k)
    return (flat @ weights.astype(a.dtype)[:, :, None]).reshape(a.shape[:-1])


def _gradcam(a: np.ndarray, g: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    weights = g.mean(axis=axes, dtype=np.float64)  # alpha_k: mean gradient over positions
    return _weighted_sum(a, weights)


def _gradcam_pp(a: np.ndarray, g: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    # The closed form for the exponential score exp(o) (Chattopadhay et al. 2018, eq. 19), as
    # the authors' code and tf-keras-vis compute it: exp(o) cancels in alpha; its remaining
    # positive per-sample factor is left out (it overflows float32 above o = 88).
    g = g.astype(np.float64)
    g2 = g * g
    denom = 2.0 * g2 + g2 * g * a.sum(axis=axes, keepdims=True, dtype=np.float64)
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
    norm = alpha.sum(axis=axes, keepdims=True)
    alpha /= np.where(norm != 0, norm, 1.0)
    weights = (alpha * np.maximum(g, 0.0)).sum(axis=axes)
    return _weighted_sum(a, weights)


def _layercam(a: np.ndarray, g: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return (np.maximum(g, 0.0) * a).sum(axis=-1, dtype=np.float64)


CAMS: dict[str, Callable[[np.ndarray, np.ndarray, tuple[int, ...]], np.ndarray]] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcam_pp,
    "layercam": _layercam,
}


def cam_maps(method: str, layer: CamLayer, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """ReLU of the method's channel-weighted sum of A: (B, t) or (B, h, w), float32.

    A and g stay in their float32 (they are the largest arrays of a run); the per-channel
    weights are reduced in float64."""
    a32 = _channels_last(np.asarray(a, np.float32), layer.channels_first)
    g32 = _channels_last(np.asarray(g, np.float32), layer.channels_first)
    axes = tuple(range(1, 1 + layer.spatial_rank))
    return np.maximum(CAMS[method](a32, g32, axes), 0.0).astype(np.float32)


def input_spatial(shape: tuple[int, ...], layer: CamLayer) -> tuple[int, ...] | None:
    """The spatial size of an input with feature shape `shape` that a map resizes to, or None
    when the input has no such axes (channels are dropped as the layer's data format says)."""
    rank = layer.spatial_rank
    if len(shape) == rank:
        return tuple(shape)
    if len(shape) == rank + 1:
        return tuple(shape[1:] if layer.channels_first else shape[:-1])
    return None


def resize(maps: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Maps (B, t) or (B, h, w) bilinearly (tf.image.resize, half-pixel centres) to `size`."""
    from gradcli.load.backend import tf

    if maps.ndim == 2:  # a 1-D map: a 1 x t image, resized along its one axis (linear)
        out = tf.image.resize(maps[:, None, :, None], (1, size[0]), method="bilinear")
        return out.numpy()[:, 0, :, 0].astype(np.float32)
    out = tf.image.resize(maps[..., None], size, method="bilinear")
    return out.numpy()[..., 0].astype(np.float32)


def attribute(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    layer = options.cam_layer
    assert layer is not None  # the command resolves it before the first batch
    result = engine.gradients(batch.inputs, batch.targets)
    (g,) = result.layers
    if g is None:
        raise GradientError(
            f"the objective does not depend on layer {layer.info.path!r}: no CAM (its "
            "gradient is disconnected)"
        )
    (a,) = result.activations or [None]
    maps = cam_maps(options.method, layer, a, g)
    values = []
    for x in batch.inputs:
        size = input_spatial(x.shape[1:], layer)
        values.append(None if size is None else resize(maps, size))
    return Attribution(values, result.objective, layer_map=maps)
