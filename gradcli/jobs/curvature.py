"""What both `hessian` modes share: seeded streams, the memory refusals before any work, the
data kept for many passes, JSON numbers, and the --max-sharpness gate."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.engine.batched import read_batches
from gradcli.engine.spectral import Eigen
from gradcli.engine.stochastic import Estimate
from gradcli.engine.vectors import basis_bytes
from gradcli.errors import UsageError, param
from gradcli.jobs.context import Context
from gradcli.present.gates import Status

CACHE_BYTES = 256 << 20  # inputs up to this size are read once and kept for every product
TOP, TRACE, DENSITY, LAYERS = range(4)  # each estimate's seed stream: (--seed, this number)


def stream(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, purpose, index])


def available_bytes() -> int:
    """Memory the system can give now (MemAvailable), or its free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def check_basis(n: int, vectors: int, options: list[str], what: str) -> None:
    """Refuse (exit 2, before any work) a Lanczos basis larger than half the memory free."""
    need, free = basis_bytes(n, vectors), available_bytes()
    if need > free // 2:
        named = " and ".join(param(o) for o in options)
        raise UsageError(
            f"{named}: the Lanczos basis would hold {vectors:,} vectors of {n:,} {what} in "
            f"float64 ({_gib(need)}), more than half the memory available ({_gib(free)}); "
            f"lower {named}"
        )


def check_k(k: int, n: int, what: str) -> None:
    if k > n:
        raise UsageError(f"{param('top_k', k)}: the Hessian has {n:,} rows ({what})")


def data_batches(ctx: Context, dtypes: list, size: int) -> Callable:
    """The input in batches, as many times as the estimators ask: kept in memory when small."""

    def batches():
        return read_batches(ctx.input_sources, dtypes, ctx.targets, ctx.n, size)

    rows = sum(int(np.prod(s.array.shape[1:])) * 4 for s in ctx.input_sources)
    if rows * ctx.n > CACHE_BYTES:
        return batches
    kept = list(batches())
    return lambda: kept


def estimate_json(e: Estimate) -> dict:
    return {"value": json_number(e.value), "stderr": json_number(e.stderr), "probes": e.probes}


def json_number(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def eigen_json(e: Eigen, which: str) -> dict:
    return {
        "which": which,
        "values": [json_number(v) for v in e.values],
        "residuals": [json_number(r) for r in e.residuals],
        "converged": [bool(c) for c in e.converged],
        "tol": e.tol,
        "norm": json_number(e.norm),
        "products": e.matvecs,
        "restarts": e.restarts,
    }


def sharpness(job: Any, value: float | None) -> dict:
    """The --max-sharpness gate's block; a NaN or missing value trips it, never clamped."""
    block: dict[str, Any] = {"value": json_number(value) if value is not None else None}
    if job.max_sharpness is not None:
        block["limit"] = job.max_sharpness
        v = block["value"]
        block["tripped"] = v is None or v > job.max_sharpness
    return block


def gate(rec: dict, block: dict) -> dict:
    """The record's gates and exit code with the sharpness gate in them."""
    if block.get("tripped"):
        rec["gates"] = sorted({*rec["gates"], Status.TOO_SHARP.value})
        rec["exit_code"] = 1
    return rec
