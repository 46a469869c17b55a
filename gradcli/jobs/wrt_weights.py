"""`wrt-weights`: d (mean_i o_i) / d theta per trainable variable, and the per-layer flow."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from gradcli.engine.batched import GradientEngine
from gradcli.engine.sensitivity import Sensitivity
from gradcli.engine.sparse import GradientSum
from gradcli.errors import GradientError
from gradcli.io.paths import output_file
from gradcli.jobs.context import Context, committed
from gradcli.load.handles import ModelHandle
from gradcli.present.figures import TensorStats, layer_summary
from gradcli.present.gradient_noise import PerSampleNorms, summarize


def variable_layers(handle: ModelHandle, names: list[str], variables: list) -> list[str]:
    """The (innermost) layer path owning each variable, for the per-layer summary."""
    owner: dict[int, str] = {}
    for row in handle.layers:
        for w in getattr(row.layer, "trainable_weights", []):
            owner[id(w)] = row.path
            owner[id(getattr(w, "value", w))] = row.path
    return [
        owner.get(id(v), name.rsplit("/", 1)[0] if "/" in name else name)
        for name, v in zip(names, variables, strict=True)
    ]


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}_{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job = ctx.job
    if job.per_sample or job.per_sample_arrays or job.top is not None:
        return run_per_sample(ctx, out, png)
    handle = ctx.handle
    engine = GradientEngine(
        handle,
        ctx.objective,
        wrt_weights=True,
        training=job.training,
        jit=job.jit,
        sparse_weights=True,
    )
    if not engine.variables:
        raise GradientError(f"{handle.path.name} has no trainable variables")
    names = unique_names(engine.variable_names)
    # embedding tables' gradients arrive as rows: summed into one float64 table each
    sums = [GradientSum(tuple(v.shape)) for v in engine.variables]
    connected = [True] * len(names)
    for batch in ctx.batches(engine, ctx.batch_size()):
        result = engine.gradients(batch.inputs, batch.targets)
        for k, g in enumerate(result.weights):
            if g is None:
                connected[k] = False
                continue
            sums[k].add(g)
        ctx.progress(batch.stop)
    grads, stats = _mean_gradients(
        ctx, engine.variables, names, sums, connected, engine.sensitivity
    )
    written = ctx.save_whole(out, grads)
    return _finish(ctx, engine, stats, written, png)


def _mean_gradients(
    ctx: Context,
    variables: list,
    names: list[str],
    sums: list[GradientSum],
    connected: list,
    sensitivity: Sensitivity,
) -> tuple[dict[str, np.ndarray], list[TensorStats]]:
    """G = the summed batch gradients / N per variable, and its figures (a G at float-noise
    level against its variable and the objective is vanishing)."""
    grads: dict[str, np.ndarray] = {}
    stats = []
    for k, name in enumerate(names):
        value = np.asarray(variables[k].numpy())
        st = TensorStats(name, tuple(value.shape))
        st.param_norm = float(np.linalg.norm(value.astype(np.float64).ravel()))
        if not connected[k] or sums[k].total is None:
            st.disconnected = True
        else:
            total = sums[k].total
            total /= ctx.n
            g = total.astype(value.dtype if value.dtype.kind == "f" else np.float32)
            sums[k].total = None  # the float64 table goes before the next one is made
            grads[name] = g
            st.update(g)
            sensitivity.apply(st, sensitivity.share_of(st.l2, st.param_norm, ctx.n))
            if sums[k].sparse:
                st.extra["sparse"] = {"rows_touched": sums[k].rows_touched, "rows": g.shape[0]}
        stats.append(st)
    return grads, stats


def _finish(
    ctx: Context, engine, stats: list[TensorStats], written: str | None, png: Path | None, **extra
) -> dict:
    """The record: per-variable rows, the per-layer flow summary, the optional chart."""
    job, handle = ctx.job, ctx.handle
    rows = [s.record(job.gates) for s in stats]
    originals = [v for _, v in handle.named_variables()]
    owners = variable_layers(handle, engine.variable_names, originals)
    summary = layer_summary(rows, owners)
    chart = None
    if png is not None:
        from gradcli.present.flowchart import write_flow_chart

        png = output_file(png, ".png")
        staged = ctx.outputs.stage_file(png) if ctx.outputs is not None else png
        chart = str(png)
        write_flow_chart(
            staged,
            [s["layer"] for s in summary],
            [s["l2"] for s in summary],
            [s["status"] for s in summary],
            title=f"{Path(handle.path).name}: gradient flow",
        )
    return ctx.record(stats, out=written, layer_summary=summary, png=chart, **extra)


# ------------------------------------------------------------------ --per-sample

# a batch row's materialized per-sample gradients (arrays, or the general path's) may take
# at most this many values in one tape call: B x (their size) stays near 16 MiB of float32.
# Bigger calls are no faster: writing B x the model's size is memory-bound (measured on the
# bench MLP, 262k parameters: 512 samples in 0.6 s at 16 rows a call, 1.2 s at 126)
PER_SAMPLE_BUDGET = 1 << 22
# the fast path's rules hold, for the largest layer, at most this many values a call beyond
# the activations (a convolution's k x k input windows, Gram matrices): 128 MiB of float32
FAST_PATH_BUDGET = 1 << 25
# rows a call when a layer's shapes are unknown before tracing (the rules' size with them)
PER_SAMPLE_ROWS = 256
DEFAULT_TOP = 5
PREFIX = "per_sample/"


def _debug_line(message: str) -> None:
    if os.environ.get("GRADCLI_DEBUG", "") not in ("", "0"):
        sys.stderr.write(f"debug: {message}\n")
        sys.stderr.flush()


def per_sample_rows(engine, requested: int | None, default: int) -> int:
    """Rows per tape call: --batch-size or plain wrt-weights' default, within the memory
    budgets of the materialized per-sample gradients and of the fast path's rules (an
    Embedding MLP's norms: 1,024 rows a call, 1.7x faster than 256)."""
    fast = engine.fast_path_size()
    size = requested or (default if fast is not None else min(default, PER_SAMPLE_ROWS))
    for per_row, budget in (
        (engine.per_sample_size(), PER_SAMPLE_BUDGET),
        (fast, FAST_PATH_BUDGET),
    ):
        if per_row:
            size = max(1, min(size, budget // per_row))
    return size


def run_per_sample(ctx: Context, out: Path | None, png: Path | None) -> dict:
    """G as plain wrt-weights gives it, plus each sample's g_i: norms, spread, top samples,
    and with --per-sample-arrays the g_i themselves, streamed to the .npz batch by batch."""
    from gradcli.engine.persample import PerSampleEngine

    job, handle = ctx.job, ctx.handle
    arrays = job.per_sample_arrays
    engine = PerSampleEngine(
        handle, ctx.objective, training=job.training, jit=job.jit, arrays=arrays
    )
    if not engine.variables:
        raise GradientError(f"{handle.path.name} has no trainable variables")
    names = unique_names(engine.variable_names)
    clash = [n for n in names if n.startswith(PREFIX)]
    if clash:
        raise GradientError(
            f"variable {clash[0]!r} would collide with the per-sample .npz keys ({PREFIX}...)"
        )
    size = per_sample_rows(engine, job.batch_size, ctx.batch_size())
    originals = [v for _, v in handle.named_variables()]
    owners = variable_layers(handle, engine.variable_names, originals)
    sums = [GradientSum(tuple(v.shape)) for v in engine.variables]
    connected = [True] * len(names)
    norms = PerSampleNorms(ctx.n, len(names))
    sensitivity = Sensitivity()
    with contextlib.ExitStack() as stack:
        sink = None
        for batch in ctx.batches(engine, size):
            step = engine.gradients(batch.inputs, batch.targets)
            if batch.start == 0:
                connected = [g is not None for g in step.weights]
                sink = stack.enter_context(
                    ctx.sink(out, _per_sample_specs(ctx.n, engine, names, connected, arrays))
                )
                general = list(dict.fromkeys(owners[k] for k in engine.general_variables))
                if general:
                    _debug_line(
                        "per-sample gradients of "
                        + ", ".join(general)
                        + " took the general path (a vectorized per-sample Jacobian); "
                        "the others the fast path (input activation x output gradient)"
                    )
            for k, g in enumerate(step.weights):
                if g is not None:
                    sums[k].add(g)
            norms.add(batch.start, step.squares, step.objective)
            sensitivity.add_objective(step.objective)
            if sink is not None:
                _write_rows(sink, names, connected, step, arrays)
            ctx.progress(batch.stop)
        grads, stats = _mean_gradients(ctx, engine.variables, names, sums, connected, sensitivity)
        if sink is not None:
            for key, value in grads.items():
                sink.write(key, value)
            sink.write(PREFIX + "norm", norms.norm.astype(np.float32))
            sink.write(PREFIX + "norms", norms.norms)
            sink.write(PREFIX + "objective", norms.objective)
        written = committed(sink)
    g_sq = [
        float(np.square(grads[name].astype(np.float64)).sum()) if name in grads else None
        for name in names
    ]
    block = summarize(norms, names, owners, g_sq, job.top or DEFAULT_TOP)
    block["general_path"] = list(dict.fromkeys(owners[k] for k in engine.general_variables))
    block["batch_size"] = size
    block["mode"] = "training" if job.training else "inference"
    return _finish(ctx, engine, stats, written, png, per_sample=block)


def _per_sample_specs(
    n: int, engine, names: list[str], connected: list[bool], arrays: bool
) -> dict[str, tuple[tuple[int, ...], str]]:
    """The .npz entries: G per connected variable, the per-sample norms and objective, and
    with arrays the g_i per connected variable (the largest first: it streams straight into
    the file, the others are spooled beside it)."""
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    streamed = {}
    for k, name in enumerate(names):
        if not connected[k]:
            continue
        shape = tuple(int(d) for d in engine.variables[k].shape)
        dtype = np.dtype(engine.variables[k].dtype.as_numpy_dtype)
        dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
        specs[name] = (shape, dtype.str)
        if arrays:
            streamed[PREFIX + name] = ((n, *shape), dtype.str)
    specs[PREFIX + "norm"] = ((n,), "<f4")
    specs[PREFIX + "norms"] = ((n, len(names)), "<f4")
    specs[PREFIX + "objective"] = ((n,), "<f4")
    if streamed:
        largest = max(streamed, key=lambda key: int(np.prod(streamed[key][0], dtype=np.int64)))
        specs = {largest: streamed.pop(largest), **specs, **streamed}
    return specs


def _write_rows(sink, names, connected, step, arrays: bool) -> None:
    if not arrays:
        return
    for k, name in enumerate(names):
        if connected[k]:
            sink.write(PREFIX + name, step.arrays[k])
