"""Sparse (Embedding table) gradients as NumPy rows, and their memory-bounded float64 sums."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SparseGradient:
    """A gradient that touches only some rows of a variable (TensorFlow's IndexedSlices).

    Embedding tables get these: `values[j]` is added to row `indices[j]` (indices repeat
    when a token occurs twice); every other row's gradient is zero.
    """

    values: np.ndarray  # (k, *row_shape)
    indices: np.ndarray  # (k,)
    shape: tuple[int, ...]  # the dense variable's shape

    def dense(self) -> np.ndarray:
        """The dense gradient, in the values' dtype (one table-sized array)."""
        out = np.zeros(self.shape, dtype=self.values.dtype)
        np.add.at(out, self.indices, self.values)
        return out


def summed_rows(g: SparseGradient) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows g touches (sorted) and each one's values summed in float64, in the
    order they come: a stable sort and np.add.reduceat (about 9x faster than np.add.at)."""
    indices = g.indices.reshape(-1)
    if not len(indices):
        return indices, np.zeros((0, *g.shape[1:]), dtype=np.float64)
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    values = g.values.reshape(len(indices), *g.shape[1:])[order]
    return ordered[starts], np.add.reduceat(values, starts, axis=0, dtype=np.float64)


class GradientSum:
    """The float64 sum of one variable's batch gradients, dense or sparse.

    Sparse batch gradients are scatter-added into the one accumulator row by row (their
    repeated indices summed first), so no table-sized array is made per batch; the rows
    they touched are counted for the report.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.total: np.ndarray | None = None
        self.batches = 0
        self.sparse_batches = 0
        self._touched: np.ndarray | None = None

    def add(self, g: np.ndarray | SparseGradient) -> None:
        if self.total is None:
            self.total = np.zeros(self.shape, dtype=np.float64)
        self.batches += 1
        if isinstance(g, SparseGradient):
            self.sparse_batches += 1
            if self._touched is None:
                self._touched = np.zeros(self.shape[0], dtype=bool)
            rows, summed = summed_rows(g)
            self.total[rows] += summed
            self._touched[rows] = True
        else:
            self.total += np.asarray(g, dtype=np.float64).reshape(self.shape)

    @property
    def sparse(self) -> bool:
        """Every batch gradient came as rows (an embedding table): say so in the report."""
        return self.batches > 0 and self.sparse_batches == self.batches

    @property
    def rows_touched(self) -> int:
        return 0 if self._touched is None else int(np.count_nonzero(self._touched))
