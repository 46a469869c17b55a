"""`wrt-weights`: d (mean_i o_i) / d theta per trainable variable, and the per-layer flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradcli.context import Context
from gradcli.engine import GradientEngine, GradientSum
from gradcli.errors import GradientError
from gradcli.loading import ModelHandle
from gradcli.paths import output_file
from gradcli.stats import TensorStats, layer_summary


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


def _unique(names: list[str]) -> list[str]:
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
    job, handle = ctx.job, ctx.handle
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
    names = _unique(engine.variable_names)
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
    grads: dict[str, np.ndarray] = {}
    stats = []
    originals = [v for _, v in handle.named_variables()]
    for k, name in enumerate(names):
        value = np.asarray(engine.variables[k].numpy())
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
            if sums[k].sparse:
                st.extra["sparse"] = {"rows_touched": sums[k].rows_touched, "rows": g.shape[0]}
        stats.append(st)
    rows = [s.record(job.gates) for s in stats]
    owners = variable_layers(handle, engine.variable_names, originals)
    summary = layer_summary(rows, owners)
    written = ctx.save_whole(out, grads)
    chart = None
    if png is not None:
        from gradcli.pictures import write_flow_chart

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
    return ctx.record(stats, out=written, layer_summary=summary, png=chart)
