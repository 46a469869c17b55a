"""The fast path of per-sample gradients (persample.py): Dense, Conv1D/Conv2D and Embedding
layers, whose per-sample kernel and bias gradients (or their squared norms) follow from the
layer's input activation a and the gradient dz at its pre-activation output z, both captured
while the model runs (Goodfellow 2015; the "ghost norm" of DP-SGD libraries):
  Dense, a_i (d_in,):          ||a_i||^2 ||dz_i||^2
  Dense, a_i (T, d_in):        sum_{t,s} (a_t . a_s)(dz_t . dz_s), or ||a_i^T dz_i||^2
  Conv:                        the same on the input windows of each kernel offset
  Embedding:                   ||rows of dz summed per distinct id||^2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from gradcli.engine.capture import Hook
from gradcli.load.backend import keras, tf
from gradcli.load.handles import LayerInfo

# fast-path layer kinds
DENSE, CONV, EMBEDDING = "dense", "conv", "embedding"


def layer_kind(layer: Any) -> str | None:
    """The fast-path kind of a Keras 3 layer whose `call` is Keras's own, else None."""
    cls = type(layer)
    quantized = getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False)
    if quantized:
        return None
    if cls.call is keras.layers.Dense.call:
        return DENSE
    if cls.call in (keras.layers.Conv2D.call, keras.layers.Conv1D.call) and isinstance(
        layer, keras.layers.Conv1D | keras.layers.Conv2D
    ):
        if layer.groups != 1 or layer.data_format != "channels_last":
            return None
        return CONV
    if cls.call is keras.layers.Embedding.call and not getattr(layer, "sparse", False):
        return EMBEDDING
    return None


def layer_weights(layer: Any, kind: str) -> list[tuple[str, Any]]:
    """(role, keras variable) of a fast-path layer."""
    if kind == EMBEDDING:
        return [("kernel", layer.embeddings)]
    out = [("kernel", layer.kernel)]
    if getattr(layer, "bias", None) is not None:
        out.append(("bias", layer.bias))
    return out


@dataclass
class Slot:
    """A fast-path layer: where its variables sit in the variable list, and what it saw."""

    info: LayerInfo
    kind: str
    positions: dict[str, int]  # role -> index in the variable list
    inputs: list = field(default_factory=list)
    zs: list = field(default_factory=list)


class Capture:
    """Records each fast-path layer's input and pre-activation output in one model call (its
    `call`, and the `activation` of a Dense or Conv, hooked: engine.capture)."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        self.slots = list(slots)

    def hooks(self, tape: Any) -> list[Hook]:
        hooks = []
        for slot in self.slots:
            slot.inputs, slot.zs = [], []

            def calling(original: Any, __slot: Slot = slot) -> Any:
                def call(*args: Any, **kwargs: Any) -> Any:
                    __slot.inputs.append(args[0] if args else kwargs.get("inputs"))
                    out = original(*args, **kwargs)
                    if __slot.kind == EMBEDDING:
                        tape.watch(out)
                        __slot.zs.append(out)
                    return out

                return call

            hooks.append(Hook(slot.info.layer, "call", calling))
            if slot.kind != EMBEDDING:

                def activating(act: Any, __slot: Slot = slot) -> Any:
                    def activation(z: Any) -> Any:
                        tape.watch(z)
                        __slot.zs.append(z)
                        return act(z) if act is not None else z

                    return activation

                hooks.append(Hook(slot.info.layer, "activation", activating))
        return hooks


class Part(NamedTuple):
    """What a rule gives for one variable of its layer: each sample's squared gradient norm
    (B,), the per-sample gradients (B, *shape) if asked, and their sum over the batch (the
    variable's gradient G; None: the tape computes it)."""

    squares: Any
    per_sample: Any = None
    total: Any = None


def f32(x: Any) -> Any:
    return tf.cast(x, tf.float32)


def squared_norms(x: Any) -> Any:
    """Per-sample sum of squares of a (B, ...) tensor."""
    x = f32(x)
    return tf.reduce_sum(tf.reshape(tf.square(x), [tf.shape(x)[0], -1]), axis=1)


def _dense(slot: Slot, a: Any, dz: Any, arrays: bool) -> dict[str, Part]:
    """role -> Part of a Dense layer."""
    a, dz = f32(a), f32(dz)
    d_in, d_out = int(a.shape[-1]), int(dz.shape[-1])
    b = tf.shape(a)[0]
    if a.shape.rank == 2:
        kernel = tf.einsum("bi,bj->bij", a, dz) if arrays else None
        return {
            "kernel": Part(
                tf.reduce_sum(a * a, 1) * tf.reduce_sum(dz * dz, 1),
                kernel,
                tf.matmul(a, dz, transpose_a=True),
            ),
            "bias": Part(tf.reduce_sum(dz * dz, 1), dz if arrays else None, tf.reduce_sum(dz, 0)),
        }
    a3 = tf.reshape(a, [b, -1, d_in])
    dz3 = tf.reshape(dz, [b, -1, d_out])
    return _summed_outer(a3, dz3, _positions(a.shape), arrays, d_in * d_out > 4096)


def _positions(shape: Any) -> int | None:
    """Positions a sample of `shape` (B, ..., channels) holds, or None when one is unknown."""
    n = 1
    for d in shape[1:-1]:
        if d is None:
            return None
        n *= int(d)
    return n


def _summed_outer(
    u: Any, dz3: Any, positions: int | None, arrays: bool, unknown_gram: bool
) -> dict[str, Part]:
    """Kernel and bias of a layer whose per-sample kernel gradient is sum_p u_p (x) dz_p over
    its P positions (u: (B, P, d_in), dz3: (B, P, d_out)): role -> Part.
    The Gram form costs P^2 (d_in + d_out) a sample, the materialized one P d_in d_out;
    `unknown_gram` decides when P is not known."""
    d_in, d_out = int(u.shape[-1]), int(dz3.shape[-1])
    if arrays or not _gram(positions, d_in, d_out, unknown_gram):
        g = tf.einsum("bpi,bpj->bij", u, dz3)
        kernel = Part(squared_norms(g), g if arrays else None, tf.reduce_sum(g, 0))
    else:
        sq = tf.reduce_sum(
            tf.einsum("bpi,bqi->bpq", u, u) * tf.einsum("bpj,bqj->bpq", dz3, dz3), [1, 2]
        )
        kernel = Part(sq, None, tf.einsum("bpi,bpj->ij", u, dz3))
    return {"kernel": kernel, "bias": _bias(dz3, arrays)}


def _gram(positions: int | None, d_in: int, d_out: int, unknown: bool) -> bool:
    """Whether the Gram form (P^2 (d_in + d_out) a sample) is cheaper than the materialized
    kernel gradient (P d_in d_out); `unknown` when P is not known."""
    return positions * (d_in + d_out) < d_in * d_out if positions else unknown


def _bias(dz3: Any, arrays: bool) -> Part:
    """The bias of a layer with P positions a sample (dz3: (B, P, d_out))."""
    bias = tf.reduce_sum(dz3, 1)
    return Part(squared_norms(bias), bias if arrays else None, tf.reduce_sum(bias, 0))


def _conv(slot: Slot, a: Any, dz: Any, arrays: bool) -> dict[str, Part]:
    """role -> Part of a Conv1D/Conv2D layer. The kernel's gradient at offset (i, j) is the
    input window that offset reads (a strided slice of the padded input) against dz: k*k
    batched matmuls, 3-4x faster here than unfolding patches with tf.image.extract_patches
    (36 of 39 ms for a batch of 256 32x32x3 images went to the unfolding)."""
    layer = slot.info.layer
    a, dz = f32(a), f32(dz)
    kernel_shape = tuple(int(d) for d in layer.kernel.shape)
    padding = layer.padding.lower()
    if len(kernel_shape) == 3:  # Conv1D: one image row
        if padding == "causal":
            (d,) = layer.dilation_rate
            a = tf.pad(a, [[0, 0], [d * (kernel_shape[0] - 1), 0], [0, 0]])
            padding = "valid"
        a, dz = a[:, None], dz[:, None]
        sizes = (1, *layer.kernel_size)
        strides, rates = (1, *layer.strides), (1, *layer.dilation_rate)
    else:
        sizes, strides, rates = layer.kernel_size, layer.strides, layer.dilation_rate
    windows = _windows(a, tf.shape(dz), sizes, strides, rates, padding == "same")
    b = tf.shape(a)[0]
    depth, filters = int(np.prod(kernel_shape[:-1])), kernel_shape[-1]
    dz3 = tf.reshape(dz, [b, -1, filters])
    positions = _positions(dz.shape)
    if arrays or not _gram(positions, depth, filters, False):
        # one (B, C_in, C_out) block per kernel offset, joined only when the g_i are asked
        blocks = [tf.matmul(w, dz3, transpose_a=True) for w in windows]
        sq = tf.add_n([tf.reduce_sum(tf.square(k), [1, 2]) for k in blocks])
        total = tf.concat([tf.reduce_sum(k, 0) for k in blocks], axis=0)
        g = tf.reshape(tf.concat(blocks, axis=1), [b, *kernel_shape]) if arrays else None
        kernel = Part(sq, g, tf.reshape(total, kernel_shape))
        return {"kernel": kernel, "bias": _bias(dz3, arrays)}
    u = tf.concat(windows, axis=2) if len(windows) > 1 else windows[0]
    parts = _summed_outer(u, dz3, positions, False, False)
    kernel = parts["kernel"]
    parts["kernel"] = kernel._replace(total=tf.reshape(kernel.total, kernel_shape))
    return parts


def _windows(a: Any, out_shape: Any, sizes, strides, rates, same: bool) -> list:
    """(B, P, C_in) per kernel offset, in the kernel's (row, column) order: the input values
    that offset multiplies at each of the P output positions (out_shape: (B, H', W', C))."""
    pads = [[0, 0]]
    for axis, (k, s, d) in enumerate(zip(sizes, strides, rates, strict=True), start=1):
        total = 0
        if same:  # TensorFlow's SAME: the smaller half before
            total = tf.maximum((out_shape[axis] - 1) * s + (k - 1) * d + 1 - tf.shape(a)[axis], 0)
        pads.append([total // 2, total - total // 2])
    a = tf.pad(a, [*pads, [0, 0]]) if same else a
    b, c = tf.shape(a)[0], int(a.shape[-1])
    (kh, kw), (sh, sw), (dh, dw) = sizes, strides, rates
    oh, ow = out_shape[1], out_shape[2]
    out = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            w = a[:, top : top + (oh - 1) * sh + 1 : sh, left : left + (ow - 1) * sw + 1 : sw]
            out.append(tf.reshape(w, [b, -1, c]))
    return out


def _embedding(slot: Slot, ids: Any, dz: Any, arrays: bool) -> dict[str, Part]:
    """The table's per-sample gradient: dz rows added at their ids, repeated ids summed
    before squaring. G stays the tape's (rows, not a dense table)."""
    layer = slot.info.layer
    vocab, dim = int(layer.embeddings.shape[0]), int(layer.embeddings.shape[1])
    dz = f32(dz)
    b = tf.shape(dz)[0]
    ids = tf.reshape(tf.cast(ids, tf.int64), [b, -1])
    ids = tf.where(ids < 0, ids + vocab, ids)  # as Keras's `take` maps negative ids
    rows = tf.reshape(dz, [-1, dim])
    keys = tf.reshape(tf.range(tf.cast(b, tf.int64), dtype=tf.int64)[:, None] * vocab + ids, [-1])
    unique, where = tf.unique(keys)
    summed = tf.math.unsorted_segment_sum(rows, where, tf.size(unique))
    sq = tf.math.unsorted_segment_sum(
        tf.reduce_sum(summed * summed, 1), unique // vocab, tf.cast(b, tf.int64)
    )
    g = None
    if arrays:
        g = tf.reshape(
            tf.math.unsorted_segment_sum(rows, keys, tf.cast(b, tf.int64) * vocab),
            [b, vocab, dim],
        )
    return {"kernel": Part(sq, g)}


def row_values(slot: Slot) -> int | None:
    """Values one sample adds to a tape call in the rule of `slot`, beyond the activations
    the model holds anyway: a convolution's input windows (k x k copies of its input) and
    per-offset blocks or Gram matrices, a sequence Dense's materialized kernel gradient or
    Gram matrices. None when the layer's shapes are not known before tracing (a layer of a
    subclassed model, one called twice)."""
    layer = slot.info.layer
    try:
        a_shape, z_shape = tuple(layer.input.shape), tuple(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None
    if slot.kind == EMBEDDING:
        return 0  # dz's rows, summed per id: the size of the layer's own output
    positions = _positions(z_shape)
    if slot.kind == DENSE:
        if len(a_shape) == 2:
            return 0
        if positions is None:
            return None
        d_in, d_out = int(a_shape[-1]), int(z_shape[-1])
        return 2 * positions**2 if _gram(positions, d_in, d_out, False) else d_in * d_out
    if positions is None:
        return None
    offsets, c_in = int(np.prod(layer.kernel_size)), int(a_shape[-1])
    windows = offsets * positions * c_in
    depth, filters = offsets * c_in, int(z_shape[-1])
    if _gram(positions, depth, filters, False):
        return 2 * windows + 2 * positions**2  # the windows, joined, and two P x P
    return windows + depth * filters


RULES = {DENSE: _dense, CONV: _conv, EMBEDDING: _embedding}
