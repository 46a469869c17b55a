"""Weight-space vectors: per-variable arrays as one flat float64 vector, blocks of it, memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from math import prod

import numpy as np

MatVec = Callable[[np.ndarray], np.ndarray]
# a block of the flat vector: one slice (a variable) or several (a layer's variables)
Block = slice | Sequence[slice]


class Layout:
    """Where each variable's entries sit in one flat float64 vector.

    The Hessian-vector product comes from TensorFlow one array per variable; the estimators
    work on flat vectors. `flatten` and `split` convert (C order, as `np.ravel`), and
    `matvec` wraps a per-variable product as a flat one.
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> None:
        if len(names) != len(shapes):
            raise ValueError(f"{len(names)} names for {len(shapes)} shapes")
        if len(set(names)) != len(names):
            raise ValueError("variable names repeat")
        self.names = tuple(names)
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        sizes = [prod(s) for s in self.shapes]
        ends = np.cumsum([0, *sizes])
        self.slices = {
            name: slice(int(a), int(b))
            for name, a, b in zip(self.names, ends[:-1], ends[1:], strict=True)
        }
        self.n = int(ends[-1])

    @classmethod
    def of(cls, names: Sequence[str], arrays: Sequence[np.ndarray]) -> Layout:
        return cls(names, [np.shape(a) for a in arrays])

    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """One float64 vector from one array per variable (in this layout's order)."""
        if len(arrays) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} arrays, got {len(arrays)}")
        out = np.empty(self.n, dtype=np.float64)
        for name, shape, a in zip(self.names, self.shapes, arrays, strict=True):
            if np.shape(a) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {np.shape(a)}")
            out[self.slices[name]] = np.ravel(a)
        return out

    def split(self, vector: np.ndarray) -> list[np.ndarray]:
        """One array per variable (views into `vector`)."""
        if np.shape(vector) != (self.n,):
            raise ValueError(f"expected a vector of {self.n} entries, got shape {np.shape(vector)}")
        return [
            vector[self.slices[n]].reshape(s) for n, s in zip(self.names, self.shapes, strict=True)
        ]

    def matvec(self, product: Callable[[list[np.ndarray]], Sequence[np.ndarray]]) -> MatVec:
        """The flat product of a per-variable one (`product(arrays) -> arrays`)."""
        return lambda v: self.flatten(product(self.split(v)))

    def blocks(self, group: Callable[[str], str] | None = None) -> dict[str, list[slice]]:
        """Blocks of the vector: one per variable, or one per `group(name)` (a layer, say),
        in the order of first appearance."""
        out: dict[str, list[slice]] = {}
        for name in self.names:
            out.setdefault(group(name) if group else name, []).append(self.slices[name])
        return out


def as_slices(block: Block) -> list[slice]:
    return [block] if isinstance(block, slice) else list(block)


def block_dot(u: np.ndarray, v: np.ndarray, blocks: Mapping[str, Block]) -> np.ndarray:
    """u_b . v_b for each block, in the mapping's order."""
    return np.array(
        [sum(float(u[s] @ v[s]) for s in as_slices(b)) for b in blocks.values()], dtype=np.float64
    )


def restricted(matvec: MatVec, n: int, block: Block) -> tuple[MatVec, int]:
    """The product of the diagonal block H_bb (a layer's own Hessian): the block's vector is
    padded with zeros to the full space, multiplied, and the block's rows are kept."""
    parts = as_slices(block)
    index = np.concatenate([np.arange(n)[s] for s in parts]) if parts else np.zeros(0, int)

    def product(v: np.ndarray) -> np.ndarray:
        full = np.zeros(n, dtype=np.float64)
        full[index] = v
        return np.asarray(matvec(full), dtype=np.float64)[index]

    return product, int(index.size)


def basis_bytes(n: int, vectors: int) -> int:
    """Memory a Lanczos basis of `vectors` float64 vectors of `n` entries needs (bytes); the
    estimators hold one such basis (plus a few vectors) at a time."""
    return 8 * int(n) * (int(vectors) + 3)
