"""Carry out one command on one or many models: load, compute, write files, return records.

Records are plain JSON-able dicts; presenting them is report.py's job. `emit` receives
progress and temp-file events (the supervisor uses them); it never prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .arrays import ArraySource, check_samples, read_arrays
from .engine import (
    GradientEngine,
    GradientSum,
    default_batch_size,
    input_gradient_error,
    jacobian_function,
    missing_input_gradient,
    read_batches,
)
from .errors import ExitCode, GradientError, InputError, UsageError, exit_code, marked, param
from .job import Job
from .loading import ModelHandle, import_custom_code, load_model
from .methods import METHODS, MethodOptions, attribute
from .objective import Objective, build_objective
from .paths import check_model_path, find_models, is_savedmodel, output_file
from .stats import TensorStats, TopFeatures, layer_summary
from .writers import MemorySink, NpzStreamWriter, Outputs, check_writable

Emit = Callable[..., None]


def model_paths(job: Job) -> tuple[list[Path], bool]:
    """The models a job covers, and whether MODEL was a directory of models."""
    path = Path(job.model)
    if path.is_dir() and not is_savedmodel(path):
        models = find_models(path)
        if job.shard:
            k, n = job.shard
            models = models[k::n]
        return models, True
    return [path], False


def _model_out(base: str | None, root: Path, model: Path, suffix: str) -> Path | None:
    """With a directory MODEL, -o/--png name a directory holding one file per model."""
    if base is None:
        return None
    rel = model.relative_to(root)
    name = rel.with_suffix(suffix) if model.is_file() else rel.with_name(rel.name + suffix)
    target = Path(base) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def run_job(job: Job, emit: Emit) -> int:
    """Run a job; emit one record per model; return the worst exit code."""
    import_custom_code(job.imports)
    models, many = model_paths(job)
    if many and not models:
        raise InputError(f"{job.model}: no models (.keras, .h5, .hdf5, SavedModel) below it")
    worst = 0
    for index, path in enumerate(models):
        if index in job.skip:
            continue
        out = png = None
        if many:
            out = _model_out(job.out, Path(job.model), path, ".npz")
            png = _model_out(
                job.png, Path(job.model), path, ".png" if job.command == "wrt-weights" else ""
            )
        else:
            out = Path(job.out) if job.out else None
            png = Path(job.png) if job.png else None
        try:
            record = run_one(job, path, out, png, emit, index)
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
            if not many:
                raise
            record = _error_record(job, path, exit_code(exc), marked(exc))
        worst = max(worst, int(record["exit_code"]))
        emit("result", index=index, record=record)
    return worst


def _error_record(job: Job, path: Path, code: int, message: str) -> dict:
    return {
        "version": __version__,
        "command": job.command,
        "model": str(path),
        "error": message,
        "exit_code": int(code),
        "tensors": [],
        "gates": [],
    }


def _base_record(job: Job, handle: ModelHandle) -> dict:
    return {
        "version": __version__,
        "command": job.command,
        "model": str(handle.path),
        "format": handle.format,
        "loader": handle.loader,
    }


def run_one(
    job: Job, path: Path, out: Path | None, png: Path | None, emit: Emit, index: int = 0
) -> dict:
    if out is not None:
        check_writable(out)
    check_model_path(str(path))  # a FIFO named like a model is refused, never opened
    handle = load_model(path, unsafe=job.unsafe, describe_only=job.command == "info")
    if job.command == "info":
        return info_record(job, handle)
    ctx = _Context(job, handle, emit, index)
    with Outputs(ctx.temp) as ctx.outputs:  # every output file of the run, all or nothing
        record = RUNNERS[job.command](ctx, out, png)
        ctx.outputs.commit()
    return record


def info_record(job: Job, handle: ModelHandle) -> dict:
    rec = _base_record(job, handle)
    rec.update(
        endpoint=handle.endpoint,
        inputs=[{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in handle.inputs],
        outputs=[
            {"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in handle.outputs
        ],
        loss=handle.compiled_loss_text(),
        loss_note=handle.loss_note,
        layers=[
            {
                "index": r.index,
                "name": r.path,
                "class": r.class_name,
                "output_shape": r.output_shape,
                "params": r.params,
                "depth": r.depth,
            }
            for r in handle.layers
        ],
        trainable_params=int(sum(int(np.prod(v.shape)) for _, v in handle.named_variables())),
        exit_code=0,
    )
    return rec


class _Context:
    """Loaded model, opened arrays and the objective of one model's run."""

    def __init__(
        self,
        job: Job,
        handle: ModelHandle,
        emit: Emit,
        index: int,
        collect: dict[str, np.ndarray] | None = None,
        arrays: dict[str, ArraySource] | None = None,
        target_arrays: dict[str, ArraySource] | None = None,
    ) -> None:
        self.job = job
        self.outputs: Outputs | None = None  # where run_one stages output files
        self.collect = collect  # the Python API gathers arrays here instead of an .npz
        self.handle = handle
        self.emit = emit
        self.index = index
        names = [i.name for i in handle.inputs]
        if arrays is not None:
            self.inputs = arrays
        elif job.input is None:
            raise UsageError(f"{job.command} needs an INPUT file")
        else:
            self.inputs = read_arrays(job.input, names, "input")
        self.n = check_samples(self.inputs, {i.name: i.shape for i in handle.inputs}, "input")
        self.objective: Objective = build_objective(
            handle,
            output=job.output,
            class_index=job.class_index,
            loss=job.loss,
            from_logits=job.from_logits,
            has_target=job.target is not None or target_arrays is not None,
        )
        self.targets: list[ArraySource] = []
        if self.objective.needs_targets:
            tnames = self.objective.target_names
            sources = (
                target_arrays
                if target_arrays is not None
                else read_arrays(job.target, tnames, "target")
            )
            missing = [t for t in tnames if t not in sources]
            if missing:
                raise InputError(f"no target for output(s) {', '.join(missing)}")
            check_samples(sources, {}, "target", n=self.n)
            self.targets = [sources[t] for t in tnames]
            self.objective.check_targets(handle, self.targets)

    @property
    def input_sources(self) -> list[ArraySource]:
        return [self.inputs[i.name] for i in self.handle.inputs]

    def batch_size(self) -> int:
        return self.job.batch_size or default_batch_size(self.handle)

    def batches(self, engine: GradientEngine, size: int):
        return read_batches(self.input_sources, engine.input_dtypes, self.targets, self.n, size)

    def progress(self, done: int) -> None:
        self.emit("progress", index=self.index, done=done, total=self.n)

    def record(self, tensors: list[TensorStats], **extra: Any) -> dict:
        return self.record_rows([t.record(self.job.gates) for t in tensors], **extra)

    def record_rows(self, rows: list[dict], **extra: Any) -> dict:
        """The JSON record of a run: one row per tensor; tripped rows name the gates."""
        tripped = sorted({r["status"] for r in rows if r["tripped"]})
        rec = _base_record(self.job, self.handle)
        rec.update(
            n=self.n,
            objective=self.objective.describe(),
            method=self.job.method,
            tensors=rows,
            gates=tripped,
            exit_code=int(ExitCode.GATE) if tripped else 0,
        )
        rec.update(extra)
        return rec

    def temp(self, path: str) -> None:
        self.emit("temp", path=path)

    def open_sink(self, out: Path | None, specs: dict[str, tuple[tuple[int, ...], str]]):
        """Where result arrays go: memory (API), a streaming .npz (-o), or nowhere."""
        if self.collect is not None:
            return MemorySink(self.collect, specs)
        if out is not None:
            return NpzStreamWriter(out, specs, self.temp, self.outputs)
        return None

    def save_whole(self, out: Path | None, arrays: dict[str, np.ndarray]) -> str | None:
        specs = {k: (v.shape, v.dtype.str) for k, v in arrays.items()}
        sink = self.open_sink(out, specs)
        if sink is None:
            return None
        try:
            for key, value in arrays.items():
                sink.write(key, value)
            return _committed(sink)
        except BaseException:
            sink.abort()
            raise


def _committed(sink) -> str | None:
    """Finish a sink; the path written, if any."""
    if sink is None:
        return None
    path = sink.commit()
    return str(path) if path else None


def _image_like(shape: tuple) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 2, 3, 4))


def _wrt_input(ctx: _Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    method = METHODS.get(job.method)
    if method is None:
        raise UsageError(
            f"{param('method', repr(job.method))}: expected one of {', '.join(METHODS)}"
        )
    options = MethodOptions(
        job.method, job.samples, job.noise, job.seed if job.seed is not None else 0, job.steps
    )
    if "seed" in method.options and job.seed is None:
        options.seed = int(np.random.SeedSequence().entropy % (2**31))
    if "baseline" in method.options and job.baseline not in (None, "zeros"):
        options.baseline = _read_baseline(ctx, job.baseline)
        options.baseline_name = job.baseline
    engine = GradientEngine(
        handle, ctx.objective, wrt_inputs=True, training=job.training, jit=job.jit
    )
    rows_per_call = ctx.batch_size()
    read_size = max(1, rows_per_call // method.expansion(options))
    names = [i.name for i in handle.inputs]
    shapes = {}
    for name, src in ctx.inputs.items():
        shapes[name] = (ctx.n, *src.shape[1:])
    stats = {name: TensorStats(name, shapes[name]) for name in names}
    top = None
    if job.top:
        top = {name: TopFeatures(int(np.prod(shapes[name][1:]))) for name in names}
    keep = {name: [] for name in names if png and _image_like(shapes[name][1:])}
    if png and not keep:
        raise UsageError(
            f"{param('png')}: input shapes {', '.join(str(shapes[n][1:]) for n in names)} "
            f"are not image-like (H, W) or (H, W, C)"
        )
    completeness: list[dict] = []
    writer = ctx.open_sink(
        out, {n: (shapes[n], engine.input_dtypes[k].str) for k, n in enumerate(names)}
    )
    try:
        for batch in ctx.batches(engine, read_size):
            att = attribute(engine, batch, options, rows_per_call)
            for k, name in enumerate(names):
                g = att.values[k]
                stats[name].update(g)
                if writer:
                    writer.write(name, g)
                if top:
                    top[name].update(g)
                if name in keep:
                    have = sum(len(a) for a, _ in keep[name])
                    if have < job.png_limit:
                        take = job.png_limit - have
                        keep[name].append((batch.inputs[k][:take], g[:take]))
            if att.completeness:
                completeness.append(att.completeness)
            ctx.progress(batch.stop)
        pictures = (
            _write_heatmaps(png, keep, job, ctx.objective.describe(), ctx.outputs) if png else []
        )
        written = _committed(writer)
    except BaseException:
        if writer:
            writer.abort()
        raise
    extra: dict[str, Any] = {"method": job.method, "out": written}
    extra.update(method.extras(options, completeness))
    if top:
        for name in names:
            feats = top[name].top(job.top)
            fshape = shapes[name][1:]
            if len(fshape) > 1:
                for f in feats:
                    f["index"] = [int(i) for i in np.unravel_index(f["feature"], fshape)]
            stats[name].extra["top"] = feats
    if png:
        extra["png"] = pictures
    return ctx.record([stats[n] for n in names], **extra)


def _read_baseline(ctx: _Context, path: str) -> list[np.ndarray]:
    handle = ctx.handle
    names = [i.name for i in handle.inputs]
    sources = read_arrays(path, names, "baseline")
    out = []
    for info in handle.inputs:
        src = sources[info.name]
        shape = src.shape
        if shape == tuple(info.shape):  # one baseline for every sample
            out.append(np.asarray(src.array, np.float32)[None])
            continue
        check_samples({info.name: src}, {info.name: info.shape}, "baseline")
        if shape[0] not in (1, ctx.n):
            raise InputError(f"{src.label}: has {shape[0]} samples; expected 1 or {ctx.n}")
        out.append(np.asarray(src.array, np.float32))
    return out


def _write_heatmaps(
    png: Path, keep: dict, job: Job, objective: str, outputs: Outputs | None = None
) -> list[str]:
    from .pictures import write_heatmaps

    stage = outputs.stage_dir(png) if outputs is not None else png
    written = []
    for name, parts in keep.items():
        if not parts:
            continue
        x = np.concatenate([p[0] for p in parts])[: job.png_limit]
        g = np.concatenate([p[1] for p in parts])[: job.png_limit]
        prefix = name.replace("/", "_")
        title = f"{Path(job.model).name}: {job.method}, {objective}, w.r.t. {name}"
        written += [str(png / p.name) for p in write_heatmaps(stage, prefix, x, g, title=title)]
    return written


def _wrt_layer(ctx: _Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    if not job.layers:
        raise UsageError(
            f"wrt-layer needs {param('layers', 'NAME|PATH|INDEX')} (see `gradcli info`)"
        )
    infos = [handle.find_layer(spec) for spec in job.layers]
    keys = [i.path for i in infos]
    if len(set(keys)) != len(keys):
        raise UsageError(f"{param('layers')} names the same layer twice")
    engine = GradientEngine(handle, ctx.objective, layers=infos, training=job.training, jit=job.jit)
    size = ctx.batch_size()
    stats = {k: TensorStats(k) for k in keys}
    writer = None
    try:
        for batch in ctx.batches(engine, size):
            result = engine.gradients(batch.inputs, batch.targets)
            if batch.start == 0:  # activation shapes are known after the first batch
                specs = {
                    k: ((ctx.n, *g.shape[1:]), g.dtype.str)
                    for k, g in zip(keys, result.layers, strict=True)
                    if g is not None
                }
                writer = ctx.open_sink(out, specs)
            for k, g in zip(keys, result.layers, strict=True):
                if g is None:
                    stats[k].disconnected = True
                    continue
                stats[k].shape = (ctx.n, *g.shape[1:])
                stats[k].update(g)
                if writer:
                    writer.write(k, g)
            ctx.progress(batch.stop)
        written = _committed(writer)
    except BaseException:
        if writer:
            writer.abort()
        raise
    return ctx.record(
        [stats[k] for k in keys],
        out=written,
        layers=[{"name": i.path, "class": i.class_name} for i in infos],
    )


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


def _wrt_weights(ctx: _Context, out: Path | None, png: Path | None) -> dict:
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
    records_gates = job.gates
    rows = [s.record(records_gates) for s in stats]
    owners = variable_layers(handle, engine.variable_names, originals)
    summary = layer_summary(rows, owners)
    written = ctx.save_whole(out, grads)
    chart = None
    if png is not None:
        from .pictures import write_flow_chart

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


def _jacobian(ctx: _Context, out: Path | None, png: Path | None) -> dict:
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
    dtypes = [np.dtype(i.dtype) if np.dtype(i.dtype).kind == "f" else None for i in handle.inputs]
    for k, dt in enumerate(dtypes):
        if dt is None:  # integer inputs: the same message as wrt-input's, naming the embedding
            raise input_gradient_error(handle, k)
    fn = jacobian_function(handle, outputs[0], training=job.training, jit=job.jit)
    per_sample = max(1, total // ctx.n)
    size = job.batch_size or max(1, min(default_batch_size(handle), (1 << 24) // per_sample))
    shapes = {n: (ctx.n, *out_shape, *in_shapes[n]) for n in names}
    stats = {n: TensorStats(n, shapes[n]) for n in names}
    writer = ctx.open_sink(out, {n: (shapes[n], "<f4") for n in names})
    try:
        for start in range(0, ctx.n, size):
            stop = min(ctx.n, start + size)
            xs = [ctx.inputs[n].read(start, stop, dtypes[k]) for k, n in enumerate(names)]
            try:
                js = fn(xs)
            except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds
                raise GradientError(
                    f"the Jacobian cannot be computed: {str(exc).splitlines()[0][:300]}"
                ) from exc
            if fn.disconnected:  # the same error as wrt-input's, naming the embedding
                raise missing_input_gradient(handle, fn.disconnected[0])
            for n, j in zip(names, js, strict=True):
                j = j.numpy().reshape(shapes[n][0:0] + (stop - start, *shapes[n][1:]))
                stats[n].update(j)
                if writer:
                    writer.write(n, j)
            ctx.progress(stop)
        written = _committed(writer)
    except BaseException:
        if writer:
            writer.abort()
        raise
    return ctx.record([stats[n] for n in names], out=written, output=o.name)


def _check(ctx: _Context, out: Path | None, png: Path | None) -> dict:
    from .checking import gradient_check

    return gradient_check(ctx)


RUNNERS = {
    "wrt-input": _wrt_input,
    "wrt-layer": _wrt_layer,
    "wrt-weights": _wrt_weights,
    "jacobian": _jacobian,
    "check": _check,
}
