"""`check`: autodiff directional derivatives against central finite differences (the
finite-difference math is checking.py's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradcli.engine.batched import GradientEngine, target_dtype
from gradcli.engine.batching import default_batch_size
from gradcli.engine.finite_diff import MAX_WEIGHT_SAMPLES, check_rows
from gradcli.errors import GradientError
from gradcli.jobs.context import Context
from gradcli.load.float64 import float64_handle


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job = ctx.job
    handle, precision = float64_handle(ctx.handle, job.unsafe)
    f64 = precision == "float64"
    eps = job.eps or (1e-5 if f64 else 1e-2)
    rtol = job.rtol or (1e-4 if f64 else 5e-2)
    weights = job.wrt == "weights"
    engine = GradientEngine(
        handle, ctx.objective, wrt_inputs=not weights, wrt_weights=weights, training=job.training
    )
    n = min(ctx.n, MAX_WEIGHT_SAMPLES) if weights else ctx.n
    xs = [
        src.read(0, n, dt) for src, dt in zip(ctx.input_sources, engine.input_dtypes, strict=True)
    ]
    ys = [t.read(0, n, target_dtype(t)) for t in ctx.targets]
    size = job.batch_size or default_batch_size(handle)
    names = engine.variable_names if weights else [i.name for i in handle.inputs]

    def progress(done: int, total: int) -> None:
        ctx.emit("progress", **ctx.progress_fields(done, total))

    rows = check_rows(
        engine,
        xs,
        ys,
        names=names,
        weights=weights,
        eps=eps,
        rtol=rtol,
        directions=job.directions,
        batch_size=size,
        seed=job.seed,
        progress=progress,
    )
    if not rows:
        raise GradientError("nothing to check: the model has no trainable variables")
    extra: dict[str, Any] = {"samples": n} if n < ctx.n else {}
    return ctx.record_rows(
        rows,
        method="finite differences",
        wrt=job.wrt,
        precision=precision,
        eps=eps,
        rtol=rtol,
        directions=job.directions,
        **extra,
    )
