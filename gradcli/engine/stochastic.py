"""Stochastic curvature estimates from Hessian-vector products: Hutchinson traces (total and
per block) and the spectral density by stochastic Lanczos quadrature (NumPy only).

`hutchinson` averages v^T H v over Rademacher probes v; its standard error is the probes'
sample standard deviation / sqrt(probes). The same products give each block's trace
v_b^T (H v)_b (a variable's or a layer's diagonal block: HAWQ's traces), and the blocks sum to
the total. `slq` runs Lanczos from each normalised Rademacher probe: the Ritz values are
quadrature nodes and the squared first components of their vectors the weights, so
sum_j w_j f(theta_j) estimates tr f(H) / n (Ghorbani et al. 2019, PyHessian's `density`); the
first product of each probe also gives the Hutchinson trace. Seeds make the probes repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .lanczos import Lanczos, Seed, generator, product, rademacher
from .vectors import Block, MatVec, block_dot


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo mean with its standard error (NaN below two samples)."""

    value: float
    stderr: float
    probes: int

    @classmethod
    def of(cls, samples: np.ndarray) -> Estimate:
        m = len(samples)
        sd = float(np.std(samples, ddof=1)) if m > 1 else math.nan
        return cls(
            float(np.mean(samples)) if m else math.nan, sd / math.sqrt(m) if m else math.nan, m
        )


@dataclass
class Trace:
    """Hutchinson's trace and each block's, from the same probes."""

    samples: np.ndarray  # (probes,) v^T H v
    block_samples: np.ndarray  # (probes, blocks) v_b^T (H v)_b
    block_names: tuple[str, ...] = ()

    @property
    def total(self) -> Estimate:
        return Estimate.of(self.samples)

    @property
    def blocks(self) -> dict[str, Estimate]:
        return {b: Estimate.of(self.block_samples[:, i]) for i, b in enumerate(self.block_names)}


class _TraceSamples:
    def __init__(self, blocks: Mapping[str, Block] | None) -> None:
        self.blocks = dict(blocks or {})
        self.samples: list[float] = []
        self.block_samples: list[np.ndarray] = []

    def add(self, v: np.ndarray, hv: np.ndarray) -> None:
        self.samples.append(float(v @ hv))
        self.block_samples.append(block_dot(v, hv, self.blocks))

    def trace(self) -> Trace:
        rows = np.array(self.block_samples).reshape(len(self.samples), len(self.blocks))
        return Trace(np.array(self.samples), rows, tuple(self.blocks))


def hutchinson(
    matvec: MatVec,
    n: int,
    probes: int = 100,
    *,
    blocks: Mapping[str, Block] | None = None,
    rtol: float | None = None,
    min_probes: int = 10,
    seed: Seed = 0,
) -> Trace:
    """tr(H) by Rademacher probes, one product each. With `rtol`, stops early once at least
    `min_probes` were used and the standard error is <= rtol * |estimate|."""
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")
    rng = generator(seed)
    acc = _TraceSamples(blocks)
    for p in range(probes):
        v = rademacher(rng, n)
        acc.add(v, product(matvec, v))
        if rtol is not None and p + 1 >= max(min_probes, 2):
            est = Estimate.of(np.array(acc.samples))
            if est.stderr <= rtol * abs(est.value):
                break
    return acc.trace()


# ------------------------------------------------------------------ density


@dataclass
class Density:
    """A Gaussian-broadened eigenvalue density: the mass of each bin (summing to about 1,
    the Gaussians' tails past the edges left out) and the density at the bin centres."""

    edges: np.ndarray  # (bins + 1,)
    mass: np.ndarray  # (bins,)
    sigma: float

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[1:] + self.edges[:-1]) / 2

    @property
    def pdf(self) -> np.ndarray:
        return self.mass / np.diff(self.edges)


_erf = np.vectorize(math.erf, otypes=[np.float64])


@dataclass
class Quadrature:
    """Stochastic Lanczos quadrature: per probe, nodes and weights (each row sums to 1)."""

    nodes: np.ndarray  # (probes, steps); rows shorter than steps padded with weight 0
    weights: np.ndarray  # (probes, steps)
    n: int
    trace: Trace = field(repr=False)  # Hutchinson from the same probes

    def moment(self, p: int) -> Estimate:
        """tr(H^p) / n (p = 1: the mean eigenvalue); exact per probe for p <= 2 steps - 1."""
        return Estimate.of(np.sum(self.weights * self.nodes**p, axis=1))

    def density(
        self,
        bins: int = 100,
        sigma: float | None = None,
        lo: float | None = None,
        hi: float | None = None,
    ) -> Density:
        """Bins over [lo, hi] (default: the nodes' range widened by 3 sigma); sigma defaults
        to 1% of the nodes' range."""
        used = self.nodes[self.weights > 0]
        a, b = float(used.min()), float(used.max())
        sigma = sigma or (b - a) / 100 or max(abs(a), 1.0) * 1e-3
        lo = a - 3 * sigma if lo is None else lo
        hi = b + 3 * sigma if hi is None else hi
        edges = np.linspace(lo, hi, bins + 1)
        z = (edges[None, None, :] - self.nodes[:, :, None]) / (sigma * math.sqrt(2))
        cdf = 0.5 * (1 + _erf(z))  # (probes, steps, bins + 1)
        mass = np.einsum("ps,psb->b", self.weights, np.diff(cdf, axis=2)) / len(self.nodes)
        return Density(edges, mass, float(sigma))


def slq(
    matvec: MatVec,
    n: int,
    probes: int = 10,
    steps: int = 100,
    *,
    blocks: Mapping[str, Block] | None = None,
    seed: Seed = 0,
) -> Quadrature:
    """`probes` Lanczos runs of up to `steps` products each (fewer when the Krylov space is
    exhausted), from normalised Rademacher probes."""
    if probes < 1 or steps < 1:
        raise ValueError(f"probes and steps must be at least 1, got {probes} and {steps}")
    rng = generator(seed)
    width = min(steps, n)
    nodes = np.zeros((probes, width))
    weights = np.zeros((probes, width))
    acc = _TraceSamples(blocks)
    for p in range(probes):
        v = rademacher(rng, n)
        lz = Lanczos(matvec, v, width)
        while lz.step():
            pass
        acc.add(v, lz.first * math.sqrt(n))  # q_0 = v / sqrt(n): H v = sqrt(n) H q_0
        theta, s, _ = lz.ritz()
        nodes[p, : len(theta)] = theta
        weights[p, : len(theta)] = s[0] ** 2
    return Quadrature(nodes, weights, n, acc.trace())
