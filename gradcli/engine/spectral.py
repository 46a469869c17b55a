"""Eigenvalues of a Hessian from its products: Lanczos with locking and restarts, and
PyHessian's power iteration for comparison (NumPy only; the product is a callable).

`top_eigen` runs Lanczos with full reorthogonalisation. A Ritz pair (theta, y) is accepted
when its residual ||H y - theta y|| <= tol * ||H||, with ||H|| estimated by the largest
|Ritz value| seen; for a symmetric H some eigenvalue then lies within that residual of theta
(and usually within residual**2 / gap). Accepted pairs are locked and Lanczos restarts in
their orthogonal complement until k are found; for k > 1 one more restart checks that the
complement holds nothing that outranks the k-th (a single Krylov space sees one copy of a
repeated eigenvalue, the restart finds the next copy). "Top" is chosen by `which`: "LA" the
largest algebraic (sharpness, the default), "SA" the smallest (most negative), "LM" the
largest magnitude (what PyHessian's power iteration finds). Negative eigenvalues are returned
as they are. Seeds (an int or a `numpy.random.Generator`) make the start vectors repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lanczos import BatchLanczos, Lanczos, Seed, generator, product
from .vectors import MatVec

WHICH = ("LA", "SA", "LM")
_TINY = np.finfo(np.float64).tiny


def _key(which: str, theta: np.ndarray) -> np.ndarray:
    """Larger ranks higher."""
    return {"LA": theta, "SA": -theta, "LM": abs(theta)}[which]


@dataclass
class Eigen:
    """Eigenpairs ranked by `which`, with their residuals and the work done."""

    values: np.ndarray  # (k,)
    vectors: np.ndarray  # (k, n), orthonormal rows
    residuals: np.ndarray  # ||H y - theta y||: bounds the distance to an eigenvalue
    converged: np.ndarray  # residual <= tol * norm
    matvecs: int  # Hessian-vector products used
    restarts: int  # Lanczos runs after the first (power iteration: 0)
    norm: float  # the ||H|| estimate the tolerance is relative to
    tol: float
    which: str


@dataclass
class _Run:
    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    steps: int
    norm: float


def _lanczos_run(matvec, n, want, which, tol, max_steps, rng, locked, below=None, budget=0) -> _Run:
    """One Lanczos run until its `want` top pairs converge. A confirming run (`below`: the
    key to beat) also stops after `budget` steps if its top Ritz value is still below it:
    Ritz values only grow towards the eigenvalues they approach, and the pairs being checked
    took no more than `budget` steps to converge."""
    capacity = min(max_steps, n - (0 if locked is None else len(locked)))
    lz = Lanczos(matvec, rng.standard_normal(n), capacity, locked)
    while True:
        more = lz.step()
        theta, s, res = lz.ritz()
        norm = max(float(np.max(abs(theta))), _TINY)
        order = np.argsort(-_key(which, theta), kind="stable")[:want]
        needed = set(order.tolist())
        if which == "LM":  # both ends: the other one may still grow past this one
            needed |= {0, len(theta) - 1}
        if not more or all(res[i] <= tol * norm for i in needed):
            break
        if below is not None and lz.steps >= budget and _key(which, theta[order])[0] < below:
            break
    return _Run(theta[order], lz.vectors(s[:, order]), res[order], lz.steps, norm)


def top_eigen(
    matvec: MatVec,
    n: int,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 1e-3,
    max_steps: int = 100,
    seed: Seed = 0,
    confirm: bool | None = None,
) -> Eigen:
    """The k top eigenpairs by `which` (module docstring). `max_steps` bounds each Lanczos
    run (its basis holds max_steps vectors of n); `confirm` (default: k > 1) runs the last
    restart that looks for a higher-ranked pair, such as another copy of a repeated value."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, not {which!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    rng = generator(seed)
    confirm = k > 1 if confirm is None else confirm
    vals: list[float] = []
    vecs: list[np.ndarray] = []
    res: list[float] = []
    ok: list[bool] = []
    matvecs = runs = budget = 0
    norm = _TINY
    while len(vecs) < n and runs <= 2 * k + 2:
        filling = len(vals) < k
        if not (filling or confirm):
            break
        locked = np.array(vecs) if vecs else None
        worst = int(np.argmin(_key(which, np.array(vals)))) if vals else -1
        below = None if filling else float(_key(which, np.array(vals))[worst]) - tol * norm
        want = k - len(vals) if filling else 1
        run = _lanczos_run(matvec, n, want, which, tol, max_steps, rng, locked, below, budget)
        budget = max(budget, run.steps) if filling else budget
        matvecs += run.steps
        runs += 1
        norm = max(norm, run.norm)
        good = run.residuals <= tol * norm
        if filling:
            take = np.flatnonzero(good) if good.any() else np.arange(min(1, len(good)))
            for i in take:
                vals.append(float(run.values[i]))
                vecs.append(run.vectors[i])
                res.append(float(run.residuals[i]))
                ok.append(bool(good[i]))
            if not good.any():
                break  # no pair converged within max_steps: report the best one as such
            continue
        gain = _key(which, run.values[:1])[0] - _key(which, np.array([vals[worst]]))[0]
        if not (good[0] and gain > tol * norm):
            break
        vals[worst], vecs[worst], res[worst], ok[worst] = (
            float(run.values[0]),
            run.vectors[0],
            float(run.residuals[0]),
            True,
        )
    order = np.argsort(-_key(which, np.array(vals)), kind="stable")[:k]
    return Eigen(
        values=np.array(vals)[order],
        vectors=np.array(vecs)[order],
        residuals=np.array(res)[order],
        converged=np.array(ok)[order],
        matvecs=matvecs,
        restarts=runs - 1,
        norm=norm,
        tol=tol,
        which=which,
    )


def power_iteration(
    matvec: MatVec, n: int, k: int = 1, *, tol: float = 1e-3, max_iter: int = 100, seed: Seed = 0
) -> Eigen:
    """PyHessian's `eigenvalues`: power iteration with deflation against the pairs found,
    stopped when the Rayleigh quotient changes by less than tol relative (largest magnitude;
    a pair counts as converged when it stopped before max_iter)."""
    rng = generator(seed)
    vals, vecs, res, ok = [], [], [], []
    matvecs = 0
    for _ in range(k):
        found = np.array(vecs) if vecs else np.zeros((0, n))
        v = rng.standard_normal(n)
        value, stopped = None, False
        for _ in range(max_iter):
            v = v - found.T @ (found @ v)
            v /= np.linalg.norm(v)
            w = product(matvec, v)
            matvecs += 1
            quotient = float(v @ w)
            residual = float(np.linalg.norm(w - quotient * v))
            stopped = value is not None and abs(value - quotient) / (abs(value) + 1e-6) < tol
            value, y = quotient, v
            if stopped:
                break
            v = w
        vals.append(value)
        vecs.append(y)
        res.append(residual)
        ok.append(stopped)
    norm = max(max(abs(x) for x in vals), _TINY)
    return Eigen(
        np.array(vals), np.array(vecs), np.array(res), np.array(ok), matvecs, 0, norm, tol, "LM"
    )


@dataclass
class BatchEigen:
    """Top pairs of B small operators (one per sample), ranked by `which`."""

    values: np.ndarray  # (B, k)
    vectors: np.ndarray  # (B, k, n)
    residuals: np.ndarray  # (B, k)
    converged: np.ndarray  # (B, k)
    steps: np.ndarray  # (B,) products each run took
    norms: np.ndarray  # (B,) the ||H_i|| estimate each tolerance is relative to


def batched_top(
    matvec: MatVec,
    start: np.ndarray,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 1e-3,
    max_steps: int = 100,
) -> BatchEigen:
    """The k top eigenpairs of each of B operators from one Lanczos run each (no restarts:
    a repeated eigenvalue is seen once), all advanced by one product call per step; a run
    stops once its k top pairs have residual <= tol * ||H_i||, or after `max_steps`."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, not {which!r}")
    b, n = start.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    lz = BatchLanczos(matvec, start, max(max_steps, k))
    while lz.step():
        done = np.zeros(b, dtype=bool)
        for r in np.flatnonzero(lz.active):
            if lz.length[r] >= k:
                theta, _, res = lz.ritz(r)
                norm = max(float(np.max(abs(theta))), _TINY)
                top = np.argsort(-_key(which, theta), kind="stable")[:k]
                needed = set(top.tolist()) | ({0, len(theta) - 1} if which == "LM" else set())
                done[r] = all(res[i] <= tol * norm for i in needed)
        lz.freeze(done)
    out = BatchEigen(
        np.full((b, k), np.nan),
        np.zeros((b, k, n)),
        np.full((b, k), np.nan),
        np.zeros((b, k), dtype=bool),
        lz.length.copy(),
        np.zeros(b),
    )
    for r in range(b):
        theta, s, res = lz.ritz(r)
        norm = max(float(np.max(abs(theta))), _TINY)
        top = np.argsort(-_key(which, theta), kind="stable")[:k]
        got = len(top)
        out.values[r, :got] = theta[top]
        out.vectors[r, :got] = lz.vectors(r, s[:, top])
        out.residuals[r, :got] = res[top]
        out.converged[r, :got] = res[top] <= tol * norm
        out.norms[r] = norm
    return out
