"""Lanczos with full reorthogonalisation over a Hessian-vector product, and seeded probes
(NumPy only: the product is a callable `matvec(v) -> Hv` on flat float64 vectors)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .vectors import MatVec

Seed = int | np.random.Generator


def generator(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def rademacher(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, n).astype(np.float64) * 2.0 - 1.0


class NonFiniteProduct(ArithmeticError):
    """The Hessian-vector product returned NaN or infinity."""


def product(matvec: MatVec, v: np.ndarray) -> np.ndarray:
    """matvec(v) as float64, checked: the same shape as v, and finite."""
    w = np.asarray(matvec(v), dtype=np.float64)
    if w.shape != v.shape:
        raise ValueError(f"the product returned shape {w.shape} for a vector of {v.shape}")
    if not np.all(np.isfinite(w)):
        raise NonFiniteProduct("the Hessian-vector product is not finite")
    return w


# ------------------------------------------------------------------ Lanczos


class Lanczos:
    """Lanczos on `matvec` from `start`, with full reorthogonalisation against its own basis
    and against `locked` (orthonormal rows): the Krylov space of (I - LL^T) H (I - LL^T)."""

    def __init__(self, matvec: MatVec, start: np.ndarray, capacity: int, locked=None) -> None:
        self.matvec = matvec
        self.locked = locked if locked is not None and len(locked) else None
        n = start.shape[0]
        self.basis = np.empty((max(capacity, 1), n), dtype=np.float64)
        q = self._orthogonal(np.asarray(start, dtype=np.float64), 0)
        self.basis[0] = q / np.linalg.norm(q)
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.first: np.ndarray | None = None  # H q_0, the first product
        self.scale = 0.0
        self.capacity = capacity

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def _orthogonal(self, w: np.ndarray, j: int) -> np.ndarray:
        # classical Gram-Schmidt twice is enough for orthogonality to rounding (Giraud 2005)
        for _ in range(2):
            if j:
                w = w - self.basis[:j].T @ (self.basis[:j] @ w)
            if self.locked is not None:
                w = w - self.locked.T @ (self.locked @ w)
        return w

    def step(self) -> bool:
        """One product; False once the space is exhausted (breakdown or capacity)."""
        j = self.steps
        q = self.basis[j]
        w = product(self.matvec, q)
        if j == 0:
            self.first = w.copy()
        a = float(q @ w)
        w = self._orthogonal(w - a * q, j + 1)
        b = float(np.linalg.norm(w))
        self.alpha.append(a)
        self.beta.append(b)
        self.scale = max(self.scale, abs(a), b)
        if j + 1 >= self.capacity or b <= 1e-12 * self.scale:
            return False
        self.basis[j + 1] = w / b
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), the eigenvectors of T (columns) and each pair's residual
        norm ||H y - theta y|| = beta_m |s_m|."""
        t = np.diag(self.alpha) + np.diag(self.beta[:-1], 1) + np.diag(self.beta[:-1], -1)
        theta, s = np.linalg.eigh(t)
        return theta, s, abs(self.beta[-1] * s[-1])

    def vectors(self, s: np.ndarray) -> np.ndarray:
        """Ritz vectors (rows) for eigenvectors of T given as columns."""
        y = (self.basis[: self.steps].T @ s).T
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        # a sign fixed by the vector itself: its largest entry is positive
        pick = np.argmax(abs(y), axis=1)
        return y * np.sign(y[np.arange(len(y)), pick])[:, None]


# ------------------------------------------------------------------ many small operators


class BatchLanczos:
    """Independent Lanczos runs on B symmetric operators advanced together: one call of
    `matvec(Q) -> HQ` on (B, n) gives every run's product (the per-sample input Hessians of a
    batch). Full reorthogonalisation per run; a run that breaks down (its Krylov space is
    exhausted) or that `freeze` stops keeps its tridiagonal matrix and gets zero vectors."""

    def __init__(
        self, matvec: Callable[[np.ndarray], np.ndarray], start: np.ndarray, capacity: int
    ):
        self.matvec = matvec
        b, n = start.shape
        self.capacity = max(1, min(capacity, n))
        self.basis = np.zeros((b, self.capacity, n), dtype=np.float64)
        self.basis[:, 0] = start / np.linalg.norm(start, axis=1, keepdims=True)
        self.alpha = np.zeros((b, self.capacity))
        self.beta = np.zeros((b, self.capacity))
        self.length = np.zeros(b, dtype=int)  # steps each run took
        self.active = np.ones(b, dtype=bool)
        self.scale = np.zeros(b)
        self.steps = 0  # products computed

    def step(self) -> bool:
        """One product for every active run; False once none is left."""
        j = self.steps
        q = self.basis[:, j]
        w = np.asarray(self.matvec(q), dtype=np.float64)
        if w.shape != q.shape:
            raise ValueError(f"the product returned shape {w.shape} for vectors of {q.shape}")
        if not np.all(np.isfinite(w[self.active])):
            raise NonFiniteProduct("the Hessian-vector product is not finite")
        self.steps += 1
        a = np.einsum("bn,bn->b", q, w)
        w = w - a[:, None] * q
        done = self.basis[:, : j + 1]
        for _ in range(2):
            w = w - np.einsum("bkn,bk->bn", done, np.einsum("bkn,bn->bk", done, w))
        b = np.linalg.norm(w, axis=1)
        live = self.active
        self.alpha[live, j] = a[live]
        self.beta[live, j] = b[live]
        self.length[live] += 1
        self.scale = np.where(live, np.maximum(self.scale, np.maximum(abs(a), b)), self.scale)
        self.active = live & (b > 1e-12 * self.scale)
        if j + 1 >= self.capacity:
            self.active[:] = False
            return False
        go = self.active
        self.basis[go, j + 1] = w[go] / b[go, None]
        return bool(go.any())

    def freeze(self, runs: np.ndarray) -> None:
        self.active &= ~runs

    def ritz(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run r's Ritz values (ascending), T's eigenvectors (columns) and residual norms."""
        m = int(self.length[r])
        a, b = self.alpha[r, :m], self.beta[r, :m]
        t = np.diag(a) + np.diag(b[:-1], 1) + np.diag(b[:-1], -1)
        theta, s = np.linalg.eigh(t)
        return theta, s, abs(b[-1] * s[-1])

    def vectors(self, r: int, s: np.ndarray) -> np.ndarray:
        """Run r's Ritz vectors (rows), signed like `Lanczos.vectors`."""
        m = s.shape[0]
        y = (self.basis[r, :m].T @ s).T
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        pick = np.argmax(abs(y), axis=1)
        return y * np.sign(y[np.arange(len(y)), pick])[:, None]
