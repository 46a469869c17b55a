"""Seeded random projections of per-sample gradients to `dim` numbers: the NumPy reference,
whose buckets and signs (`entries`) the compiled step uses (engine.persample.count_sketch).

What the projection is, and why this one
----------------------------------------
TracIn scores are inner products of per-sample gradients of P numbers (P up to ~1e7). A
projection R (P x dim) replaces <g, h> by <R^T g, R^T h>. A dense Gaussian R of 1e7 x 1024 is
4e10 floats (40 GB in float32): it does not fit, and drawing it block by block on the fly costs
P * dim random numbers and P * dim multiply-adds per sample (1e10: minutes per batch on 2 CPU
cores). An SRHT needs a Hadamard transform over all P coordinates at once, so it cannot be
computed one variable at a time.

This module uses a sparse sign projection (CountSketch; with `blocks` > 1 the block
construction of sparse Johnson-Lindenstrauss of Kane and Nelson, 2014): the output is `blocks`
blocks of m = dim / blocks buckets, and coordinate j of variable v adds
`sign * g_j / sqrt(blocks)` to one bucket of each block. Cost: `blocks` additions per
parameter per sample (the same order as computing the gradient), nothing P x dim anywhere;
the (bucket, sign) of every coordinate is a function of (seed, variable index, block,
coordinate) alone, so an in-graph version computes it per variable and per slice of a
variable, and caches it if it likes (5 bytes per parameter and block).

Guarantee (the one the tests check). For fixed vectors x, y and a random seed, the estimate
<Px, Py> is unbiased and, with 4-wise independent signs and pairwise independent buckets,

    Var <Px, Py> = ( |x|^2 |y|^2 + <x, y>^2 - 2 sum_j x_j^2 y_j^2 ) / dim  <=  2 |x|^2 |y|^2 / dim

whatever `blocks` is (a dense Gaussian R has the same variance without the last term). By
Chebyshev, with probability at least 1 - delta,

    | <Px, Py> - <x, y> |  <=  eps |x| |y|,    eps = sqrt(2 / (dim * delta)).

At dim = 1024 and delta = 0.05, eps = 0.198: a TracIn score moves by at most a fifth of
|g(z)| |g(z')| (the scale of a cosine similarity) in 95% of seeds. That is a worst-case bound;
for gradients whose mass is spread over many coordinates the error is close to Gaussian with
the standard deviation above (typically sqrt(1/dim) = 0.031 of |x||y|). `blocks` > 1 lowers
the tail when a few coordinates dominate, at `blocks` times the cost; it does not change the
variance.

The hash. A 32-bit mixer (Wellons' "lowbias32": xor-shift, multiply, xor-shift, multiply,
xor-shift) over int64 arrays, with every product split into 16-bit halves so that no value
exceeds 2**49: the same integers come out of NumPy, TensorFlow int64 ops, or any language,
with no reliance on unsigned or wrapping arithmetic. Per variable v and block r the key is
    key = mix(mix(mix(seed) ^ v) ^ r)
and for coordinate j (flat C-order index inside the variable)
    h = mix(mix(j ^ key) + key2),  key2 = mix(key ^ 0x9e3779b9)
    bucket = r * m + (h & 0x7fffffff) % m,   sign = -1 if h >> 31 else +1.
The variable index is the variable's position in the model's trainable variables (the order
`gradcli info` and `wrt-weights` use), so a variable is projected the same way whichever
subset of layers is selected.

What must be recorded to reproduce a run: the method name ("countsketch"), seed, dim, blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHOD = "countsketch"
MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B


def _mul32(x: np.ndarray, c: int) -> np.ndarray:
    """(x * c) mod 2**32 for 0 <= x < 2**32, in int64 without overflow."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + ((high * (c & 0xFFFF)) << 16)) & MASK32


def mix32(x: np.ndarray | int) -> np.ndarray:
    """A bijective 32-bit integer mixer (lowbias32) on int64 values in [0, 2**32)."""
    x = np.asarray(x, dtype=np.int64) & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL2)
    return x ^ (x >> 16)


def check_parameters(seed: int, dim: int, blocks: int = 1) -> None:
    """ValueError for a projection that cannot be built (the caller names its options)."""
    if not 0 <= seed <= MASK32:
        raise ValueError(f"the seed must be between 0 and {MASK32}, got {seed}")
    if blocks < 1 or dim < blocks or dim % blocks:
        raise ValueError(f"the dimension ({dim}) must be a positive multiple of blocks ({blocks})")


def _key(seed: int, variable: int, block: int) -> int:
    return int(mix32(int(mix32(int(mix32(seed)) ^ variable)) ^ block))


def entries(
    seed: int, variable: int, size: int, dim: int, blocks: int = 1, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Columns (blocks, n) int64 and signs (blocks, n) of coordinates start .. start+n-1 of
    variable number `variable` (n = size - start): where each coordinate goes in each block."""
    check_parameters(seed, dim, blocks)
    if size > MASK32:
        raise ValueError(f"a variable of {size} elements is beyond 2**32 coordinates")
    m = dim // blocks
    j = np.arange(start, size, dtype=np.int64)
    columns = np.empty((blocks, j.size), dtype=np.int64)
    signs = np.empty((blocks, j.size), dtype=np.int8)
    for r in range(blocks):
        key = _key(seed, variable, r)
        key2 = int(mix32(key ^ _GOLDEN))
        h = mix32((mix32(j ^ key) + key2) & MASK32)
        columns[r] = r * m + (h & 0x7FFFFFFF) % m
        signs[r] = 1 - 2 * (h >> 31)
    return columns, signs


def project(
    gradients: Sequence[np.ndarray],
    seed: int,
    dim: int,
    blocks: int = 1,
    variables: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-sample gradients, one array (B, *shape_v) per variable, projected to (B, dim) in
    float64. `variables` gives each array's variable index (default 0, 1, 2, ...)."""
    ids = list(range(len(gradients))) if variables is None else list(variables)
    if len(ids) != len(gradients):
        raise ValueError("one variable index per gradient array")
    rows = gradients[0].shape[0] if gradients else 0
    out = np.zeros(rows * dim, dtype=np.float64)
    offsets = (np.arange(rows, dtype=np.int64) * dim)[:, None]
    scale = 1.0 / math.sqrt(blocks)
    for g, v in zip(gradients, ids, strict=True):
        flat = np.asarray(g, dtype=np.float64).reshape(rows, -1)
        columns, signs = entries(seed, v, flat.shape[1], dim, blocks)
        for r in range(blocks):
            weights = flat * (signs[r] * scale)
            out += np.bincount((offsets + columns[r]).ravel(), weights.ravel(), rows * dim)
    return out.reshape(rows, dim)


def matrix(sizes: Sequence[int], seed: int, dim: int, blocks: int = 1) -> np.ndarray:
    """The dense (P, dim) matrix of the projection of variables of these sizes (tests, small P)."""
    out = np.zeros((sum(sizes), dim), dtype=np.float64)
    offset = 0
    for v, size in enumerate(sizes):
        columns, signs = entries(seed, v, size, dim, blocks)
        for r in range(blocks):
            out[offset + np.arange(size), columns[r]] += signs[r] / math.sqrt(blocks)
        offset += size
    return out


def variance(x: np.ndarray, y: np.ndarray, dim: int) -> float:
    """The variance of <Px, Py> over seeds (the formula in the module docstring)."""
    x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
    return float((x @ x * (y @ y) + (x @ y) ** 2 - 2 * np.sum(x * x * y * y)) / dim)


def error_bound(dim: int, delta: float) -> float:
    """eps with P(|<Px, Py> - <x, y>| > eps |x| |y|) <= delta for any x, y (Chebyshev)."""
    return math.sqrt(2.0 / (dim * delta))


def record(seed: int, dim: int, blocks: int = 1) -> dict:
    """What provenance records so that a run's projection can be rebuilt."""
    return {"method": METHOD, "seed": seed, "dim": dim, "blocks": blocks}
