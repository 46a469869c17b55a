"""`jacobian`: J[i] = d f(x_i) / d x_i for one model output."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gradcli.engine.batching import default_batch_size
from gradcli.engine.jacobian import JacobianEngine
from gradcli.errors import UsageError, param
from gradcli.jobs.context import Context, committed
from gradcli.present.figures import TensorStats


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    if job.target is not None or job.class_index is not None:
        raise UsageError(
            f"jacobian differentiates a model output itself: {param('target')} and "
            f"{param('class_index')} do not apply (use {param('output')})"
        )
    outputs = ctx.objective.outputs
    if len(outputs) != 1:
        raise UsageError(
            f"jacobian needs {param('output')} on a model with {len(handle.outputs)} "
            f"outputs ({', '.join(o.name for o in handle.outputs)})"
        )
    o = handle.outputs[outputs[0]]
    if any(d is None for d in o.shape):
        raise UsageError(f"output {o.name!r} has an unknown shape {o.shape}")
    out_shape = tuple(o.shape) or (1,)
    names = [i.name for i in handle.inputs]
    in_shapes = {n: ctx.inputs[n].shape[1:] for n in names}
    total = sum(ctx.n * math.prod(out_shape) * math.prod(in_shapes[n]) for n in names)
    if total > job.max_elements:
        raise UsageError(
            f"the Jacobian would have {total:,} elements (above "
            f"{param('max_elements', f'{job.max_elements:,.0f}')}); select fewer samples or "
            f"one {param('output')}, or raise {param('max_elements')}"
        )
    dtypes = [np.dtype(i.dtype) for i in handle.inputs]
    engine = JacobianEngine(handle, outputs[0], training=job.training, jit=job.jit)
    per_sample = max(1, total // ctx.n)
    size = job.batch_size or max(1, min(default_batch_size(handle), (1 << 24) // per_sample))
    shapes = {n: (ctx.n, *out_shape, *in_shapes[n]) for n in names}
    stats = {n: TensorStats(n, shapes[n]) for n in names}
    with ctx.sink(out, {n: (shapes[n], "<f4") for n in names}) as writer:
        for start in range(0, ctx.n, size):
            stop = min(ctx.n, start + size)
            xs = [ctx.inputs[n].read(start, stop, dtypes[k]) for k, n in enumerate(names)]
            js = engine.jacobians(xs)
            for n, j in zip(names, js, strict=True):
                j = j.reshape(shapes[n][0:0] + (stop - start, *shapes[n][1:]))
                stats[n].update(j)
                if writer:
                    writer.write(n, j)
            ctx.progress(stop)
        written = committed(writer)
    return ctx.record([stats[n] for n in names], out=written, output=o.name)
