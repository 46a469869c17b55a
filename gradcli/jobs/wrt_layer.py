"""`wrt-layer`: d o_i / d a_i, the gradient at layer activations (and, with --activations,
the activations a_i themselves, under `LAYER/activation`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from gradcli.engine.batched import GradientEngine
from gradcli.errors import UsageError, param
from gradcli.jobs.context import Context, committed
from gradcli.present.figures import TensorStats


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    if not job.layers:
        raise UsageError(
            f"wrt-layer needs {param('layers', 'NAME|PATH|INDEX')} (see `gradcli info`)"
        )
    infos = [handle.find_layer(spec) for spec in job.layers]
    keys = [i.path for i in infos]
    if len(set(keys)) != len(keys):
        raise UsageError(f"{param('layers')} names the same layer twice")
    act_keys = [f"{k}/activation" for k in keys] if job.activations else []
    clash = sorted(set(act_keys) & set(keys))
    if clash:
        raise UsageError(
            f"--activations: the key {clash[0]!r} of an activation is also the path of a "
            "layer asked for; ask for them in two runs"
        )
    engine = GradientEngine(
        handle,
        ctx.objective,
        layers=infos,
        training=job.training,
        jit=job.jit,
        activations=job.activations,
    )
    size = ctx.batch_size()
    stats = {k: TensorStats(k) for k in [*keys, *act_keys]}
    with contextlib.ExitStack() as stack:
        writer = None
        for batch in ctx.batches(engine, size):
            result = engine.gradients(batch.inputs, batch.targets)
            if batch.start == 0:  # activation shapes are known after the first batch
                specs = {
                    k: ((ctx.n, *g.shape[1:]), g.dtype.str)
                    for k, g in zip(keys, result.layers, strict=True)
                    if g is not None
                }
                for k, a in zip(act_keys, result.activations or [], strict=True):
                    specs[k] = ((ctx.n, *a.shape[1:]), a.dtype.str)
                writer = stack.enter_context(ctx.sink(out, specs))
            for k, g in zip(keys, result.layers, strict=True):
                if g is None:
                    stats[k].disconnected = True
                    continue
                stats[k].shape = (ctx.n, *g.shape[1:])
                stats[k].update(g)
                if writer:
                    writer.write(k, g)
            for k, a in zip(act_keys, result.activations or [], strict=True):
                stats[k].shape = (ctx.n, *a.shape[1:])
                stats[k].update(a)
                if writer:
                    writer.write(k, a)
            ctx.progress(batch.stop)
        written = committed(writer)
    for j, k in enumerate(keys):
        engine.sensitivity.apply(stats[k], engine.sensitivity.share(("layer", j)))
    return ctx.record(
        [stats[k] for k in [*keys, *act_keys]],
        out=written,
        layers=[{"name": i.path, "class": i.class_name} for i in infos],
    )
