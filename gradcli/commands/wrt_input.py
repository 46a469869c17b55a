"""`wrt-input`: attributions d o_i / d x_i under a method of the methods table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradcli.arrays import check_samples, read_arrays
from gradcli.context import Context, committed
from gradcli.engine import GradientEngine
from gradcli.errors import InputError, UsageError, param
from gradcli.job import Job
from gradcli.methods import METHODS, Method, MethodOptions, attribute
from gradcli.stats import TensorStats, TopFeatures
from gradcli.writers import Outputs


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    method, options = _method(ctx)
    engine = GradientEngine(
        handle, ctx.objective, wrt_inputs=True, training=job.training, jit=job.jit
    )
    rows_per_call = ctx.batch_size()
    names = [i.name for i in handle.inputs]
    shapes = {name: (ctx.n, *ctx.inputs[name].shape[1:]) for name in names}
    stats = {name: TensorStats(name, shapes[name]) for name in names}
    top = {n: TopFeatures(int(np.prod(shapes[n][1:]))) for n in names} if job.top else {}
    pictures = _Pictures(png, names, shapes, job.png_limit)
    completeness: list[dict] = []
    specs = {n: (shapes[n], engine.input_dtypes[k].str) for k, n in enumerate(names)}
    with ctx.sink(out, specs) as writer:
        for batch in ctx.batches(engine, ctx.method_batch(method.expansion(options))):
            att = attribute(engine, batch, options, rows_per_call)
            for k, name in enumerate(names):
                g = att.values[k]
                stats[name].update(g)
                if writer:
                    writer.write(name, g)
                if top:
                    top[name].update(g)
                pictures.keep(name, batch.inputs[k], g)
            if att.completeness:
                completeness.append(att.completeness)
            ctx.progress(batch.stop)
        written_png = pictures.write(job, ctx.objective.describe(), ctx.outputs)
        written = committed(writer)
    extra = {"method": job.method, "out": written, **method.extras(options, completeness)}
    for name, features in top.items():
        stats[name].extra["top"] = _top_features(features, job.top, shapes[name][1:])
    if png:
        extra["png"] = written_png
    return ctx.record([stats[n] for n in names], **extra)


def _method(ctx: Context) -> tuple[Method, MethodOptions]:
    """The job's method and its options (a SmoothGrad seed drawn now when none was given)."""
    job = ctx.job
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
    return method, options


def _top_features(features: TopFeatures, k: int, shape: tuple[int, ...]) -> list[dict]:
    """The K most salient features; an N-d input's also get their index in the sample."""
    feats = features.top(k)
    if len(shape) > 1:
        for f in feats:
            f["index"] = [int(i) for i in np.unravel_index(f["feature"], shape)]
    return feats


def _image_like(shape: tuple) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 2, 3, 4))


class _Pictures:
    """--png: the first `limit` samples (and their attributions) of each image-like input."""

    def __init__(
        self, png: Path | None, names: list[str], shapes: dict[str, tuple], limit: int
    ) -> None:
        self.png = png
        self.limit = limit
        self.kept: dict[str, list] = {n: [] for n in names if png and _image_like(shapes[n][1:])}
        if png and not self.kept:
            raise UsageError(
                f"{param('png')}: input shapes {', '.join(str(shapes[n][1:]) for n in names)} "
                f"are not image-like (H, W) or (H, W, C)"
            )

    def keep(self, name: str, x: np.ndarray, g: np.ndarray) -> None:
        if name not in self.kept:
            return
        have = sum(len(a) for a, _ in self.kept[name])
        if have < self.limit:
            take = self.limit - have
            self.kept[name].append((x[:take], g[:take]))

    def write(self, job: Job, objective: str, outputs: Outputs | None) -> list[str]:
        if self.png is None:
            return []
        return _write_heatmaps(self.png, self.kept, job, objective, outputs)


def _read_baseline(ctx: Context, path: str) -> list[np.ndarray]:
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
    from gradcli.pictures import write_heatmaps

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
