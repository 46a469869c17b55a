"""`check`: autodiff directional derivatives against central finite differences."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradcli.engine.batched import GradientEngine

# `check --wrt weights` evaluates 2 x directions forward passes per tensor over the samples;
# past this many the extra rows add time, not power (any subset is an equally valid check)
MAX_WEIGHT_SAMPLES = 16
# a failed direction is measured again with a step this many times smaller
CONFIRM_FACTOR = 8.0
# the round-off of one mean objective, in units of the dtype's epsilon times mean |o_i|
ROUNDOFF_UNITS = 16.0
# the forward/backward gap estimates the error of kinks crossed by the step, but kinks on
# the two sides partly cancel in it, so it counts this many times
GAP_WEIGHT = 2.0
# how far (in steps) the inputs move to leave a kink the point sits on; no element moves
# more than JITTER_MAX (float-coded token ids keep their value)
JITTER_STEPS = 1000.0
JITTER_MAX = 1e-3


class _Objective:
    """The mean objective over fixed samples, with its autodiff gradient and round-off."""

    def __init__(
        self, engine: GradientEngine, xs: list, ys: list, size: int, wrt_input: bool
    ) -> None:
        self.engine = engine
        self.xs = xs
        self.ys = ys
        self.n = len(xs[0])
        self.size = size
        self.grads = self._gradient(wrt_input)
        o0 = self.values(xs)
        self.f0 = float(np.mean(o0))
        unit = max((_roundoff_unit(i.dtype) for i in engine.handle.outputs), default=2.0**-23)
        self.noise = ROUNDOFF_UNITS * unit * float(np.mean(np.abs(o0)))

    def values(self, inputs: list[np.ndarray]) -> np.ndarray:
        parts = []
        for start in range(0, self.n, self.size):
            stop = min(self.n, start + self.size)
            parts.append(
                self.engine.objective_values(
                    [x[start:stop] for x in inputs], [y[start:stop] for y in self.ys]
                ).astype(np.float64)
            )
        return np.concatenate(parts)

    def mean(self, inputs: list[np.ndarray] | None = None) -> float:
        return float(np.mean(self.values(self.xs if inputs is None else inputs)))

    def _gradient(self, wrt_input: bool) -> list[np.ndarray | None]:
        """d mean / d tensor in float64, batched as the objective is."""
        sums: list[Any] = []
        for start in range(0, self.n, self.size):
            stop = min(self.n, start + self.size)
            r = self.engine.gradients(
                [x[start:stop] for x in self.xs], [y[start:stop] for y in self.ys]
            )
            parts = r.inputs if wrt_input else r.weights
            if not sums:
                sums = [[] for _ in parts]
            for acc, g in zip(sums, parts, strict=True):
                acc.append(None if g is None else g.astype(np.float64))
        if wrt_input:
            return [None if a[0] is None else np.concatenate(a) / self.n for a in sums]
        return [None if a[0] is None else np.sum(a, axis=0) / self.n for a in sums]

    def along(self, k: int, weights: bool) -> Any:
        """f(delta): the mean objective with tensor k moved by delta."""
        if weights:
            var = self.engine.variables[k]

            def at(delta: np.ndarray) -> float:
                original = var.numpy()
                var.assign((original + delta).astype(original.dtype))
                try:
                    return self.mean()
                finally:
                    var.assign(original)

            return at

        def at_input(delta: np.ndarray) -> float:
            moved = [x if j != k else (x + delta).astype(x.dtype) for j, x in enumerate(self.xs)]
            return self.mean(moved)

        return at_input

    def step(self, at: Any, v: np.ndarray, h: float) -> tuple[float, float]:
        """The central difference along v with step h, and an estimate of its error.

        The estimate is half the gap between the forward and backward one-sided differences
        (what kinks crossed by the step and curvature add: for one crossed ReLU or max-pool
        kink it equals the central difference's error), GAP_WEIGHT times, plus the round-off
        of the objective over the step.
        """
        f_plus = at(h * v)
        f_minus = at(-h * v)
        fd = (f_plus - f_minus) / (2 * h)
        gap = abs(f_plus - 2 * self.f0 + f_minus) / (2 * h)
        return fd, GAP_WEIGHT * gap + self.noise / h


def _roundoff_unit(dtype: str) -> float:
    try:
        return float(np.finfo(np.dtype(dtype)).eps)
    except TypeError:
        return 2.0**-23


def _unit(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    v = rng.standard_normal(shape)
    return v / (np.linalg.norm(v.ravel()) or 1.0)


def _judge(ad: float, fd: float, err: float, rtol: float) -> dict:
    """|ad - fd| against rtol * scale + the FD error estimate; ratio > 1 fails."""
    miss = abs(ad - fd)
    scale = max(abs(ad), abs(fd))
    allowed = rtol * scale + err
    if not (np.isfinite(miss) and np.isfinite(allowed)):
        ratio = float("inf")
    elif allowed == 0.0:
        ratio = 0.0 if miss == 0.0 else float("inf")
    else:
        ratio = miss / allowed
    return {
        "autodiff": ad,
        "finite_diff": fd,
        "fd_error": err,
        "ratio": ratio,
        "ok": ratio <= 1.0,
        # the FD error is as large as the derivative: agreement says little
        "weak": 0.0 < scale <= 2.0 * err,
    }


def check_rows(
    engine: GradientEngine,
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    *,
    names: list[str],
    weights: bool,
    eps: float,
    rtol: float,
    directions: int,
    batch_size: int,
    seed: int | None,
    progress: Callable[[int, int], None],
) -> list[dict]:
    """One row per tensor (an input or a variable): autodiff against finite differences along
    `directions` random unit directions; `progress(done, total)` after each direction."""
    base = _Objective(engine, xs, ys, batch_size, wrt_input=not weights)
    rng = np.random.default_rng(seed if seed is not None else 0)
    # its own stream, so the directions are the same whether or not a recheck ran
    jitter_rng = np.random.default_rng([seed if seed is not None else 0, 1])
    shifted: list[_Objective] = []

    def jittered() -> _Objective:
        # float inputs moved up by a small random amount (up keeps float-coded ids intact)
        if not shifted:
            moved = []
            for x in xs:
                if x.dtype.kind != "f":
                    moved.append(x)
                    continue
                w = np.abs(_unit(jitter_rng, x.shape))
                size_x = float(np.linalg.norm(x.ravel().astype(np.float64)))
                amount = (
                    JITTER_STEPS * eps if size_x == 0 else min(JITTER_STEPS * eps, 1e-2 * size_x)
                )
                moved.append((x + np.minimum(amount * w, JITTER_MAX)).astype(x.dtype))
            shifted.append(_Objective(engine, moved, ys, batch_size, wrt_input=not weights))
        return shifted[0]

    def measure(k: int, v: np.ndarray) -> dict:
        ad = float(np.sum(base.grads[k] * v))
        first = _judge(ad, *base.step(base.along(k, weights), v, eps), rtol)
        if first["ok"] or not (np.isfinite(ad) and np.isfinite(first["finite_diff"])):
            return {**first, "rechecks": []}
        # kinks crossed by the step shrink with it; a wrong gradient does not
        small = eps / CONFIRM_FACTOR
        fd2, err2 = base.step(base.along(k, weights), v, small)
        # a kink error shrinks in proportion to the step: what changed from eps to eps / 8
        # bounds what is left at eps / 8 (Richardson's estimate)
        err2 += abs(first["finite_diff"] - fd2) / (CONFIRM_FACTOR - 1)
        second = _judge(ad, fd2, err2, rtol)
        rechecks = [{"where": "point", "eps": small, **second}]
        if not (second["ok"] and not second["weak"]):
            # the point may sit on a kink (max-pool ties, ReLU at exactly 0): no step size
            # resolves it, so compare at a point a little away, where the model is smooth
            other = jittered()
            ad_j = float(np.sum(other.grads[k] * v))
            third = _judge(ad_j, *other.step(other.along(k, weights), v, eps), rtol)
            rechecks.append({"where": "jittered", "eps": eps, **third})
        # a direction fails only when no measurement agrees with autodiff
        tries = [first, *rechecks]
        agree = [r for r in tries if r["ok"]]
        firm = [r for r in agree if not r["weak"]]
        verdict = (firm or agree or [min(tries, key=lambda r: r["ratio"])])[0]
        return {
            **first,
            "ok": bool(agree),
            "weak": bool(agree) and not firm,
            "ratio": verdict["ratio"],
            "rechecks": rechecks,
        }

    total = len(names) * directions
    done = 0
    rows = []
    for k, name in enumerate(names):
        shape = engine.variables[k].shape if weights else xs[k].shape
        if base.grads[k] is None:
            rows.append(_disconnected(name, shape))
            done += directions
            progress(done, total)
            continue
        measured = []
        for _ in range(directions):
            measured.append(measure(k, _unit(rng, tuple(shape))))
            done += 1
            progress(done, total)
        rows.append(_row(name, shape, measured))
    return rows


def _disconnected(name: str, shape: Any) -> dict:
    return {
        "name": name,
        "shape": list(shape),
        "status": "disconnected",
        "tripped": False,
        "autodiff": None,
        "finite_diff": None,
        "fd_error": None,
        "rel_error": None,
        "error_ratio": None,
    }


def _row(name: str, shape: Any, measured: list[dict]) -> dict:
    errors = []
    for m in measured:
        scale = max(abs(m["autodiff"]), abs(m["finite_diff"]))
        errors.append(0.0 if scale == 0.0 else abs(m["autodiff"] - m["finite_diff"]) / scale)
    worst = max(errors) if all(np.isfinite(e) for e in errors) else float("inf")
    bad = not all(m["ok"] for m in measured)
    status = "mismatch" if bad else ("unresolved" if all(m["weak"] for m in measured) else "ok")
    ratio = max(m["ratio"] for m in measured)
    row = {
        "name": name,
        "shape": list(shape),
        # NaN / Inf become null, as everywhere in the JSON
        "autodiff": [_finite(m["autodiff"]) for m in measured],
        "finite_diff": [_finite(m["finite_diff"]) for m in measured],
        "fd_error": [_finite(m["fd_error"]) for m in measured],
        "rel_error": float(worst) if np.isfinite(worst) else None,
        "error_ratio": float(ratio) if np.isfinite(ratio) else None,
        "status": status,
        "tripped": bool(bad),
    }
    rechecks = [
        [
            {
                key: _finite(r[key])
                for key in ("where", "eps", "autodiff", "finite_diff", "fd_error", "ratio")
            }
            for r in m["rechecks"]
        ]
        for m in measured
    ]
    if any(rechecks):
        row["rechecks"] = rechecks
    return row


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
