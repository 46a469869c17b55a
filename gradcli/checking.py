"""`check`: autodiff directional derivatives against central finite differences."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import keras
from .engine import GradientEngine, default_batch_size, target_dtype
from .errors import GradientError, UsageError
from .loading import KerasHandle, ModelHandle

_FLOATS = ("float16", "bfloat16", "float32", "mixed_float16", "mixed_bfloat16")


def _retype(config: Any) -> Any:
    """A model config with every float dtype policy replaced by float64."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and isinstance(value, str) and value in _FLOATS:
                out[key] = "float64"
            elif (
                key == "dtype"
                and isinstance(value, dict)
                and "DTypePolicy" in str(value.get("class_name", ""))
            ):
                out[key] = {
                    **value,
                    "class_name": "DTypePolicy",
                    "config": {**value.get("config", {}), "name": "float64"},
                }
            else:
                out[key] = _retype(value)
        return out
    if isinstance(config, list):
        return [_retype(v) for v in config]
    return config


def float64_handle(handle: ModelHandle, unsafe: bool) -> tuple[ModelHandle, str]:
    """A float64 copy of a Keras 3 model where its config allows; else the model itself."""
    model = handle.model if handle.has_layers else None
    if not isinstance(model, keras.Model):
        return handle, "float32 (the model's own dtype: it cannot be rebuilt in float64)"
    try:
        from keras.src.saving.serialization_lib import SafeModeScope

        with SafeModeScope(not unsafe):
            clone = type(model).from_config(_retype(model.get_config()))
        clone.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
        copy = KerasHandle(
            clone, handle.path, handle.format, handle.loader, handle.losses, handle.loss_note
        )
        if any(i.dtype != "float64" for i in copy.inputs):
            raise ValueError("inputs did not become float64")
    except Exception as exc:  # noqa: BLE001 - fall back to the model's own precision
        return handle, f"float32 (float64 rebuild failed: {str(exc).splitlines()[0][:120]})"
    return copy, "float64"


def gradient_check(ctx: Any) -> dict:
    job = ctx.job
    if job.wrt not in ("input", "weights"):
        raise UsageError(f"--wrt {job.wrt}: expected input or weights")
    if job.directions < 1:
        raise UsageError("--directions must be at least 1")
    handle, precision = float64_handle(ctx.handle, job.unsafe)
    f64 = precision == "float64"
    eps = job.eps or (1e-5 if f64 else 1e-2)
    rtol = job.rtol or (1e-4 if f64 else 5e-2)
    engine = GradientEngine(
        handle,
        ctx.objective,
        wrt_inputs=job.wrt == "input",
        wrt_weights=job.wrt == "weights",
        training=job.training,
    )
    n = ctx.n
    xs = [
        src.read(0, n, dt) for src, dt in zip(ctx.input_sources, engine.input_dtypes, strict=True)
    ]
    ys = [t.read(0, n, target_dtype(t)) for t in ctx.targets]
    size = job.batch_size or default_batch_size(handle)

    def mean_objective(inputs: list[np.ndarray]) -> float:
        total = 0.0
        for start in range(0, n, size):
            stop = min(n, start + size)
            o = engine.objective_values(
                [x[start:stop] for x in inputs], [y[start:stop] for y in ys]
            )
            total += float(np.sum(o, dtype=np.float64))
        return total / n

    def mean_gradient() -> list[np.ndarray | None]:
        sums: list[Any] = []
        for start in range(0, n, size):
            stop = min(n, start + size)
            r = engine.gradients([x[start:stop] for x in xs], [y[start:stop] for y in ys])
            if job.wrt == "input":
                parts = r.inputs
                if not sums:
                    sums = [[] for _ in parts]
                for acc, g in zip(sums, parts, strict=True):
                    acc.append(g)
            else:
                parts = [None if g is None else g.astype(np.float64) for g in r.weights]
                sums = (
                    parts
                    if not sums
                    else [
                        None if a is None or g is None else a + g
                        for a, g in zip(sums, parts, strict=True)
                    ]
                )
        if job.wrt == "input":
            return [np.concatenate(a).astype(np.float64) / n for a in sums]
        return [None if s is None else s / n for s in sums]

    grads = mean_gradient()
    rng = np.random.default_rng(job.seed if job.seed is not None else 0)
    rows = []
    if job.wrt == "input":
        names = [i.name for i in handle.inputs]
        for k, name in enumerate(names):
            ad, fd = [], []
            for _ in range(job.directions):
                v = rng.standard_normal(xs[k].shape)
                v /= np.linalg.norm(v.ravel()) or 1.0
                plus = [x if j != k else (x + eps * v).astype(x.dtype) for j, x in enumerate(xs)]
                minus = [x if j != k else (x - eps * v).astype(x.dtype) for j, x in enumerate(xs)]
                ad.append(float(np.sum(grads[k] * v)))
                fd.append((mean_objective(plus) - mean_objective(minus)) / (2 * eps))
            rows.append(_row(name, xs[k].shape, ad, fd, rtol))
    else:
        for k, (name, var) in enumerate(zip(engine.variable_names, engine.variables, strict=True)):
            if grads[k] is None:
                rows.append(
                    {
                        "name": name,
                        "shape": list(var.shape),
                        "status": "disconnected",
                        "tripped": False,
                        "autodiff": None,
                        "finite_diff": None,
                        "rel_error": None,
                    }
                )
                continue
            original = var.numpy()
            ad, fd = [], []
            try:
                for _ in range(job.directions):
                    v = rng.standard_normal(original.shape)
                    v /= np.linalg.norm(v.ravel()) or 1.0
                    var.assign((original + eps * v).astype(original.dtype))
                    f_plus = mean_objective(xs)
                    var.assign((original - eps * v).astype(original.dtype))
                    f_minus = mean_objective(xs)
                    var.assign(original)
                    ad.append(float(np.sum(grads[k] * v)))
                    fd.append((f_plus - f_minus) / (2 * eps))
            finally:
                var.assign(original)
            rows.append(_row(name, original.shape, ad, fd, rtol))
    if not rows:
        raise GradientError("nothing to check: the model has no trainable variables")
    return ctx.record_rows(
        rows,
        method="finite differences",
        wrt=job.wrt,
        precision=precision,
        eps=eps,
        rtol=rtol,
        directions=job.directions,
    )


def _row(name: str, shape: tuple, ad: list[float], fd: list[float], rtol: float) -> dict:
    errors = []
    for a, f in zip(ad, fd, strict=True):
        scale = max(abs(a), abs(f))
        # both at round-off level (a flat direction): nothing to compare
        errors.append(0.0 if scale < 1e-9 else abs(a - f) / scale)
    worst = max(errors)
    bad = not np.isfinite(worst) or worst > rtol
    return {
        "name": name,
        "shape": list(shape),
        "autodiff": ad,
        "finite_diff": fd,
        "rel_error": float(worst) if np.isfinite(worst) else None,
        "status": "mismatch" if bad else "ok",
        "tripped": bool(bad),
    }
