"""Rows per tape call, chosen from what a call costs: the model's activations per sample.

A tape call over B rows keeps every activation of the forward pass for the backward pass.
While those stay in the CPU's last-level cache, a call runs at full speed; once they spill to
memory it slows down, and fewer, bigger calls do not win that back. So the rows of a call
are chosen to hold about the last-level cache in activations (the nearer power of two of
cache / activations a sample), between `MIN_ROWS` and `MAX_ROWS`, and never more than
`INPUT_VALUES` input values. On a GPU the cache argument does not hold: there the input
budget alone decides.

Measured on the project machine (2 cores, 32 MiB L3), one compiled tape, ms a row after
warm-up, at 32 / 64 / 128 / 256 rows a call:
- a 32/64-channel CNN on 32x32x3 images (0.21 MiB of activations a sample):
  0.332 / 0.300 / 0.292 / 0.328;
- a 2-block Transformer encoder on 64 tokens (0.27 MiB a sample, `wrt-layer` on the
  embedding): 0.906 / 0.833 / 0.805 / 0.959.
Both are fastest at 128 rows, about 27-34 MiB of activations: the whole cache, not half of
it (the rule before this one chose 64 for both).

A deep network of many small layers is the other way round: each of its hundreds of
operations costs a fixed overhead per call, and a call over few rows is mostly overhead.
keras.applications at 64x64 (in one process, gradcli and a hand-written tape alike; s for
32 images at 4 / 8 / 16 / 32 rows a call):
- EfficientNetV2B0 (5.2 MiB a sample, 270 layers): 0.86 / 0.38 / 0.32 / 0.25;
- MobileNetV3Small (1.8 MiB, 230 layers): 0.33 / 0.14 / 0.14 / 0.10;
- DenseNet121 (15.6 MiB, 430 layers; 16 images): 0.72 / 0.64 / 0.40 at 4 / 8 / 16;
far past the cache and still faster. So a call also holds at least `OP_BYTES` of each
layer's output (activations a sample / layers, times rows), as long as its activations stay
under `ACTIVATION_MEMORY`; the larger of the two rules wins.

The estimate is deterministic: it reads the model's layer output shapes (a SavedModel
export has no layers: the operations of its serving graph are counted instead), never
times anything, and never changes results (every row is computed once, in order, whatever
the batch size).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

INPUT_VALUES = 1 << 22  # input values a call at most (the rule before activations counted)
MAX_ROWS = 1024
MIN_ROWS = 4  # below this, per-call overhead and thin matrix products cost more than cache
UNKNOWN_DIM = 32  # a size a shape leaves open (a sequence length) counts as this
DEFAULT_CACHE = 32 << 20  # last-level cache when the machine does not say
OP_BYTES = 1 << 20  # a layer's output a call at least (deep nets: per-operation overhead)
ACTIVATION_MEMORY = 512 << 20  # ... while a call's activations stay under this
# operations that alias or re-label a tensor: they hold no activation of their own
_ALIASES = {
    "Identity",
    "IdentityN",
    "Reshape",
    "Squeeze",
    "ExpandDims",
    "StopGradient",
    "Placeholder",
    "Const",
    "Shape",
    "NoOp",
    "ReadVariableOp",
}
# a graph counts each layer's bias add and activation as tensors of their own: about two
# operations per Keras layer output
_OPS_PER_LAYER = 2


@functools.cache
def last_level_cache() -> int:
    """Bytes of the largest CPU cache (Linux sysfs), or DEFAULT_CACHE."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (entry / "type").read_text().strip() == "Instruction":
                continue
            sizes.append(_parse_size((entry / "size").read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else DEFAULT_CACHE


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def activation_budget() -> int:
    """Activation bytes a tape call aims at: the last-level cache, 4 to 64 MiB."""
    return min(64 << 20, max(4 << 20, last_level_cache()))


def _values(shape: Iterable[Any]) -> int:
    """Values a sample holds in a tensor of `shape` (without the batch axis)."""
    return math.prod(UNKNOWN_DIM if d is None else int(d) for d in shape)


_TUPLE = re.compile(r"\(([^()]*)\)")


def _shape_text_values(text: str) -> int:
    """Values a sample holds in the outputs `gradcli info` shows, e.g. '(N, 30, 30, 32)'."""
    total = 0
    for inner in _TUPLE.findall(text):
        dims = [d.strip() for d in inner.split(",") if d.strip()]
        if not dims:
            continue
        total += _values(None if d in ("?", "None") else int(d) for d in dims[1:])
    return total


def _layer_values(handle: Any) -> tuple[int, int]:
    """Activation values a sample produces, summed over the layers' outputs, and the number
    of layers counted."""
    total = layers = 0
    for info in handle.layers:
        layer = info.layer
        if layer is not None and isinstance(getattr(layer, "layers", None), list):
            continue  # a nested model: its own layers are counted
        if info.class_name == "InputLayer":
            continue  # the inputs are counted once, by the caller
        try:
            total += _shape_text_values(info.output_shape)
        except ValueError:  # an output shape that is not plain numbers: not counted
            continue
        layers += 1
    return total, layers


def _graph_values(graph: Any) -> tuple[int, int]:
    """Activation values a sample produces in a serving graph: every operation output with a
    batch axis, aliases left out, per layer-like pair of operations; and those pairs."""
    total = ops = 0
    for op in graph.get_operations():
        if op.type in _ALIASES:
            continue
        batched = False
        for t in op.outputs:
            shape = t.shape
            if shape.rank is None or shape.rank < 1 or shape[0] is not None:
                continue
            if t.dtype.is_floating:
                total += _values(shape[1:])
                batched = True
        ops += batched
    return total // _OPS_PER_LAYER, ops // _OPS_PER_LAYER


def activation_profile(handle: Any) -> tuple[int, int]:
    """Estimated bytes of activations a sample produces in the model's forward pass (float32;
    the inputs themselves included), and the layers producing them. (0, 0) when the model
    does not tell."""
    values = sum(_values(info.shape) for info in handle.inputs)
    layers = 0
    if getattr(handle, "has_layers", False):
        found, layers = _layer_values(handle)
        values += found
    else:
        graph = serving_graph(handle)
        if graph is not None:
            found, layers = _graph_values(graph)
            values += found
    return 4 * values, layers


def activation_bytes(handle: Any) -> int:
    """Estimated bytes of activations a sample produces (activation_profile)."""
    return activation_profile(handle)[0]


def serving_graph(handle: Any) -> Any:
    """The graph of a layerless SavedModel's serving function, or None."""
    fn = getattr(handle, "_fn", None)
    concrete = getattr(fn, "concrete_functions", None)
    if concrete:
        fn = concrete[0]
    return getattr(fn, "graph", None)


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _nearest_pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def rows_for(
    input_values: int, act_bytes: int, budget: int, gpu: bool = False, layers: int = 0
) -> int:
    """Rows per tape call for a sample of `input_values` inputs and `act_bytes` activations
    over `layers` layers (0: not known)."""
    rows = min(MAX_ROWS, INPUT_VALUES // max(1, input_values))
    if not gpu and act_bytes > 0:
        fit = _nearest_pow2(budget / act_bytes)  # "about" the budget: the nearer power of two
        if layers > 0:  # many small layers: enough of each layer's output a call
            amortized = _nearest_pow2(OP_BYTES * layers / act_bytes)
            fit = max(fit, min(amortized, _floor_pow2(ACTIVATION_MEMORY // act_bytes)))
        rows = min(rows, max(MIN_ROWS, fit))
    return _floor_pow2(max(1, rows))


def uses_gpu() -> bool:
    from gradcli.load.backend import tf

    try:
        return bool(tf.config.list_logical_devices("GPU"))
    except Exception:  # noqa: BLE001 - no device list: assume the CPU
        return False


def input_rows(handle: Any) -> int:
    """Rows per call by the input rule alone: INPUT_VALUES input values, at most MAX_ROWS."""
    input_values = sum(_values(info.shape) or 1 for info in handle.inputs)
    return rows_for(input_values, 0, activation_budget())


def default_batch_size(handle: Any) -> int:
    """Rows per tape call for this model (see the module docstring)."""
    input_values = sum(_values(info.shape) or 1 for info in handle.inputs)
    try:
        act, layers = activation_profile(handle)
    except Exception:  # noqa: BLE001 - an estimate: a model that does not say gets the input rule
        act, layers = 0, 0
    return rows_for(input_values, act, activation_budget(), uses_gpu(), layers)
