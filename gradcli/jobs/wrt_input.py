"""`wrt-input`: attributions d o_i / d x_i under a method of the methods table; the CAM
methods' maps of a layer, resized to the input."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradcli.engine.batched import GradientEngine
from gradcli.engine.objective import ObjectiveKind
from gradcli.errors import InputError, UsageError, param
from gradcli.io.arrays import check_samples, read_arrays
from gradcli.io.outputs import Outputs
from gradcli.jobs.context import Context, committed
from gradcli.methods import METHODS, attribute
from gradcli.methods.cam import CamLayer, cam_layer, input_spatial
from gradcli.methods.common import MethodOptions
from gradcli.methods.spec import MethodSpec
from gradcli.present.figures import TensorStats, TopFeatures

if TYPE_CHECKING:
    from gradcli.present.pictures import MapStyle


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    method, options = _method(ctx)
    if options.cam_layer is not None:
        return _run_cam(ctx, method, options, out, png)
    engine = GradientEngine(
        handle,
        ctx.objective,
        wrt_inputs=True,
        training=job.training,
        jit=job.jit,
        times_input=method.times_input,
    )
    rows_per_call = ctx.batch_size()
    names = [i.name for i in handle.inputs]
    shapes = {name: (ctx.n, *ctx.inputs[name].shape[1:]) for name in names}
    stats = {name: TensorStats(name, shapes[name]) for name in names}
    top = {n: TopFeatures(int(np.prod(shapes[n][1:]))) for n in names} if job.top else {}
    pictures = _Pictures(png, names, shapes, job.png_limit)
    completeness: list[dict] = []
    specs = {n: (shapes[n], engine.input_dtypes[k].str) for k, n in enumerate(names)}
    # the noisy copies or path points of the next batch are made while this one is on the tape
    prep = method.prepare_function()
    prepare = functools.partial(prep, options=options) if prep is not None else None
    with ctx.sink(out, specs) as writer:
        size = ctx.method_batch(method.rows_per_sample(options))
        for batch in ctx.batches(engine, size, prepare):
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
        for k, name in enumerate(names):
            engine.sensitivity.apply(stats[name], engine.sensitivity.share(("input", k)))
        faint = {n: stats[n].vanishing for n in names}
        written_png = pictures.write(job, ctx.objective.describe(), ctx.outputs, faint)
        written = committed(writer)
    extra = {"method": job.method, "out": written, **method.record_extras(options, completeness)}
    for name, features in top.items():
        stats[name].extra["top"] = _top_features(features, job.top, shapes[name][1:])
    if png:
        extra["png"] = written_png
    return ctx.record([stats[n] for n in names], **extra)


def _method(ctx: Context) -> tuple[MethodSpec, MethodOptions]:
    """The job's method and its options (the spec's normalize checked they go together;
    Context drew a seed for a method that needs one)."""
    job = ctx.job
    method = METHODS[job.method]
    options = MethodOptions(
        job.method,
        job.samples,
        job.noise,
        job.seed if job.seed is not None else 0,
        job.steps,
        params={name: getattr(job, name) for name in method.options},
    )
    if method.needs_layer:
        options.cam_layer = cam_layer(ctx.handle, job.layers[0] if job.layers else None)
        ctx.resolved["layer"] = options.cam_layer.info.path
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

    def write(
        self, job: Any, objective: str, outputs: Outputs | None, faint: dict[str, bool]
    ) -> list[str]:
        if self.png is None:
            return []
        return _write_heatmaps(self.png, self.kept, job, objective, outputs, faint)


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


def map_style(method: str, png_style: str | None) -> MapStyle:
    """How --png draws a method's map: --png-style, else the method's own default."""
    from gradcli.present.pictures import MapStyle

    found = METHODS[method]
    if found.png_style == "own":  # never negative (the spec refuses --png-style signed)
        return MapStyle(found.quantity, absolute=False)
    return MapStyle(found.quantity, signed=(png_style or found.png_style) == "signed")


def _write_heatmaps(
    png: Path,
    keep: dict,
    job: Any,
    objective: str,
    outputs: Outputs | None,
    faint: dict[str, bool],
) -> list[str]:
    from gradcli.present.pictures import write_heatmaps

    stage = outputs.stage_dir(png) if outputs is not None else png
    style = map_style(job.method, job.png_style)
    written = []
    for name, parts in keep.items():
        if not parts:
            continue
        x = np.concatenate([p[0] for p in parts])[: job.png_limit]
        g = np.concatenate([p[1] for p in parts])[: job.png_limit]
        prefix = name.replace("/", "_")
        title = f"{Path(job.model).name}: {style.quantity} of {objective}, w.r.t. {name}"
        paths = write_heatmaps(stage, prefix, x, g, title=title, style=style, faint=faint[name])
        written += [str(png / p.name) for p in paths]
    return written


def _run_cam(
    ctx: Context, method: MethodSpec, options: MethodOptions, out: Path | None, png: Path | None
) -> dict:
    """A CAM method: per sample, the map at the layer's resolution (key `cam@LAYER`) and
    resized to each input with the layer's spatial axes (key: the input's name)."""
    job, handle = ctx.job, ctx.handle
    layer = options.cam_layer
    assert layer is not None
    if ctx.objective.kind == ObjectiveKind.LOSS:
        ctx.notes.append(
            f"with {param('target')} a CAM explains the loss: its ReLU keeps the regions that "
            "raise the loss, not the evidence for the true class; for that, give the labels "
            f"as {param('class_index', 'LABELS.npy')}"
        )
    names = [i.name for i in handle.inputs]
    if layer.key in names:
        raise UsageError(
            f"the CAM key {layer.key!r} is also the name of a model input; the npz could not "
            "tell them apart"
        )
    sizes = {n: input_spatial(tuple(ctx.inputs[n].shape[1:]), layer) for n in names}
    resized = [n for n in names if sizes[n] is not None]
    engine = GradientEngine(
        handle,
        ctx.objective,
        layers=[layer.info],
        training=job.training,
        jit=job.jit,
        activations=True,
    )
    keys = [*resized, layer.key]
    stats = {k: TensorStats(k) for k in keys}
    for n in resized:
        stats[n].shape = (ctx.n, *sizes[n])
    top = {n: TopFeatures(int(np.prod(sizes[n]))) for n in resized} if job.top else {}
    pictures = _CamPictures(png, resized, ctx.inputs, layer, job.png_limit)
    with contextlib.ExitStack() as stack:
        writer = None
        for batch in ctx.batches(engine, ctx.batch_size()):
            att = attribute(engine, batch, options, ctx.batch_size())
            layer_map = att.layer_map
            assert layer_map is not None
            if batch.start == 0:  # the layer's spatial size is known after the first batch
                stats[layer.key].shape = (ctx.n, *layer_map.shape[1:])
                specs = {k: (stats[k].shape, "<f4") for k in keys}
                writer = stack.enter_context(ctx.sink(out, specs))
            arrays = {n: att.values[names.index(n)] for n in resized}
            arrays[layer.key] = layer_map
            for k in keys:
                stats[k].update(arrays[k])
                if writer:
                    writer.write(k, arrays[k])
            for n in top:
                top[n].update(arrays[n])
            pictures.keep(batch.inputs, arrays)
            ctx.progress(batch.stop)
        for k in keys:  # both maps come from the layer's gradient
            engine.sensitivity.apply(stats[k], engine.sensitivity.share(("layer", 0)))
        faint = stats[layer.key].vanishing
        written_png = pictures.write(job, ctx.objective.describe(), ctx.outputs, faint)
        written = committed(writer)
    for name, features in top.items():
        stats[name].extra["top"] = _top_features(features, job.top, sizes[name])
    extra = {
        "method": job.method,
        "out": written,
        "cam": {
            "layer": layer.info.path,
            "class": layer.info.class_name,
            "default": layer.default,
            "map": layer.key,
            "resized": resized,
        },
    }
    if png:
        extra["png"] = written_png
    return ctx.record([stats[k] for k in keys], **extra)


class _CamPictures:
    """--png for a CAM: the first `limit` samples of each input the map is resized to, drawn
    with the map over them (an image) or under them (a 1-D strip)."""

    def __init__(
        self, png: Path | None, resized: list[str], inputs: dict, layer: CamLayer, limit: int
    ) -> None:
        self.png = png
        self.limit = limit
        self.layer = layer
        self.positions = {n: list(inputs).index(n) for n in resized}
        self.kept: dict[str, list] = {n: [] for n in resized} if png else {}
        if png and not resized:
            shapes = ", ".join(str(tuple(s.shape[1:])) for s in inputs.values())
            raise UsageError(
                f"{param('png')}: no input has the spatial axes of layer "
                f"{layer.info.path!r} (input shapes {shapes}), so there is nothing to overlay"
            )

    def keep(self, xs: list[np.ndarray], arrays: dict[str, np.ndarray]) -> None:
        for name, parts in self.kept.items():
            have = sum(len(a) for a, _ in parts)
            if have < self.limit:
                take = self.limit - have
                parts.append((xs[self.positions[name]][:take], arrays[name][:take]))

    def write(self, job: Any, objective: str, outputs: Outputs | None, faint: bool) -> list[str]:
        if self.png is None:
            return []
        from gradcli.present.pictures import write_cam_pictures

        stage = outputs.stage_dir(self.png) if outputs is not None else self.png
        written = []
        for name, parts in self.kept.items():
            if not parts:
                continue
            x = np.concatenate([p[0] for p in parts])[: self.limit]
            cam = np.concatenate([p[1] for p in parts])[: self.limit]
            if x.ndim == cam.ndim + 1 and self.layer.channels_first:
                x = np.moveaxis(x, 1, -1)  # pictures want channels last
            quantity = METHODS[job.method].quantity
            title = (
                f"{Path(job.model).name}: {quantity} of {objective} on layer "
                f"{self.layer.info.path}, over {name}"
            )
            paths = write_cam_pictures(
                stage, name.replace("/", "_"), x, cam, title=title, quantity=quantity, faint=faint
            )
            written += [str(self.png / p.name) for p in paths]
        return written
