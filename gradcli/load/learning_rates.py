"""Each checkpoint's learning rate as its saved optimizer says (`--lr saved`): read from the
file as data, never by running its code, and evaluated here.

The saved rate is what `model.optimizer.learning_rate` reads after loading the file: the float
in the optimizer config (Keras writes the current value of its learning-rate variable there,
so a callback's changes are in it), or a learning-rate schedule evaluated at the saved
iteration count. The six Keras schedules are evaluated here in float64 (Keras computes them in
float32); any other schedule would mean running its code, so it is refused.

Where the numbers are in the files (checked on Keras 3.15):
- `.keras`: `config.json` -> "compile_config" -> "optimizer" -> "config" -> "learning_rate";
  the iteration count is the first optimizer variable, `optimizer/vars/0` in
  `model.weights.h5` inside the archive (a float rate is also `optimizer/vars/1`).
- `.h5`: the root attribute "training_config" (JSON) -> "optimizer_config" -> "config" ->
  "learning_rate"; the iteration count is `optimizer_weights/<optimizer name>/iteration`.
- Keras 2 files may say "lr" instead of "learning_rate" and carry the legacy "decay":
  rate / (1 + decay * iterations).

The file is read after the loader's checks passed on it (load_model: the archive's members
and HDF5 datasets bounded, no external storage or links); only a JSON document and one scalar
dataset are read here, each checked for what it must be.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.errors import ModelError, param
from gradcli.io.modelfiles import ModelFormat, h5_json_attr, model_format
from gradcli.io.zipmember import open_member

_WEIGHTS = "model.weights.h5"
_CONFIG_BYTES = 256 << 20  # as the archive check bounds config.json


def saved_rate(path: str | Path) -> tuple[float, int | None]:
    """(learning rate, saved iteration count or None) of a checkpoint's optimizer; ModelError
    (exit 3) saying why it cannot be read, pointing to the option that gives the rates."""
    path = Path(path)
    fmt = model_format(path)
    if fmt is ModelFormat.KERAS:
        config, iterations = _keras_archive(path)
    elif fmt is ModelFormat.H5:
        found = h5_json_attr(path, "training_config")
        config = found if isinstance(found, dict) else {}
        name = ((optimizer_config(config) or {}).get("config") or {}).get("name")
        iterations = _h5_scalar(path, None, f"optimizer_weights/{name}/iteration") if name else None
    else:
        raise ModelError(
            f"{path}: the optimizer of a SavedModel is not read; give the learning rates "
            f"with {param('lr')}"
        )
    return saved_learning_rate(optimizer_config(config), iterations, str(path)), iterations


def _keras_archive(path: Path) -> tuple[dict, int | None]:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > _CONFIG_BYTES:
                raise ModelError(f"{path}: refused: config.json declares {info.file_size} bytes")
            config = json.loads(zf.read(info))
            names = set(zf.namelist())
            iterations = None
            if _WEIGHTS in names:
                with open_member(path, zf, _WEIGHTS) as member:
                    iterations = _h5_scalar(path, member, "optimizer/vars/0")
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read its optimizer ({exc})") from None
    return (config if isinstance(config, dict) else {}), iterations


def _h5_scalar(path: Path, source: Any, key: str) -> int | None:
    """An optimizer's iteration count: a scalar integer-valued dataset, or None when absent."""
    import h5py

    try:
        with h5py.File(source if source is not None else path, "r") as f:
            found = f.get(key)
            if not isinstance(found, h5py.Dataset) or found.size != 1:
                return None
            if found.dtype.kind not in "iuf":
                return None
            value = float(np.asarray(found[()]).reshape(-1)[0])
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{path}: cannot read its optimizer's iteration count ({exc})") from None
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ModelError(f"{path}: its optimizer's iteration count is {value}, not a count")
    return int(value)


def optimizer_config(file_config: dict) -> dict | None:
    """The serialized optimizer of a `.keras` archive's config.json or an `.h5`'s
    training_config, or None when the model was saved without one."""
    compiled = file_config.get("compile_config")
    if isinstance(compiled, dict):  # .keras
        found = compiled.get("optimizer")
    else:  # .h5 training_config
        found = file_config.get("optimizer_config")
    return found if isinstance(found, dict) else None


def saved_learning_rate(optimizer: dict | None, iterations: int | None, source: str) -> float:
    """The learning rate a checkpoint's optimizer uses at its saved iteration count."""

    def refuse(why: str) -> ModelError:
        return ModelError(f"{source}: {why}; give the learning rates with {param('lr')}")

    if optimizer is None:
        raise refuse("no optimizer was saved with the model")
    config = optimizer.get("config", optimizer)
    if not isinstance(config, dict):
        raise refuse("its optimizer config is not a JSON object")
    rate = config.get("learning_rate", config.get("lr"))
    if isinstance(rate, dict):
        if iterations is None:
            raise refuse("its learning-rate schedule needs the optimizer's iteration count")
        try:
            value = schedule_value(rate, iterations)
        except (LookupError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise refuse(f"its learning-rate schedule cannot be evaluated ({exc})") from None
    elif isinstance(rate, int | float) and not isinstance(rate, bool):
        value = float(rate)
    else:
        raise refuse("its optimizer config has no learning rate")
    decay = config.get("decay") or 0.0
    if not isinstance(decay, int | float) or isinstance(decay, bool):
        raise refuse(f"its learning-rate decay is {decay!r}, not a number")
    if decay:
        if iterations is None:
            raise refuse("its learning-rate decay needs the optimizer's iteration count")
        value /= 1.0 + float(decay) * iterations
    if not math.isfinite(value) or value <= 0:
        raise refuse(f"its learning rate is {value}")
    return value


def schedule_value(schedule: dict, step: int) -> float:
    """A serialized Keras learning-rate schedule at an optimizer step."""
    kind = schedule.get("class_name", "")
    evaluate = _SCHEDULES.get(kind)
    if evaluate is None:
        raise ValueError(f"{kind or 'an unnamed'} schedule is not one of {', '.join(_SCHEDULES)}")
    return float(evaluate(schedule["config"], float(step)))


def _exponential(c: dict, step: float) -> float:
    p = step / c["decay_steps"]
    return c["initial_learning_rate"] * c["decay_rate"] ** (math.floor(p) if c["staircase"] else p)


def _inverse_time(c: dict, step: float) -> float:
    p = step / c["decay_steps"]
    return c["initial_learning_rate"] / (
        1 + c["decay_rate"] * (math.floor(p) if c["staircase"] else p)
    )


def _piecewise(c: dict, step: float) -> float:
    boundaries, values = c["boundaries"], c["values"]
    for boundary, value in zip(boundaries, values, strict=False):
        if step <= boundary:
            return value
    return values[len(boundaries)]


def _polynomial(c: dict, step: float) -> float:
    steps = c["decay_steps"]
    if c.get("cycle"):
        steps *= 1.0 if step == 0 else math.ceil(step / c["decay_steps"])
    else:
        step = min(step, steps)
    start, end = c["initial_learning_rate"], c["end_learning_rate"]
    return (start - end) * (1 - step / steps) ** c["power"] + end


def _cosine_factor(fraction: float, alpha: float) -> float:
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + alpha


def _cosine(c: dict, step: float) -> float:
    start, steps, alpha = c["initial_learning_rate"], c["decay_steps"], c["alpha"]
    target, warmup = c.get("warmup_target"), c.get("warmup_steps") or 0
    if target is None:
        return start * _cosine_factor(min(step, steps) / steps, alpha)
    step = min(step, steps + warmup)
    if step < warmup:
        return (target - start) * step / warmup + start
    return target * _cosine_factor((step - warmup) / steps, alpha)


def _cosine_restarts(c: dict, step: float) -> float:
    fraction = step / c["first_decay_steps"]
    t_mul, m_mul, alpha = c["t_mul"], c["m_mul"], c["alpha"]
    if t_mul == 1.0:
        restart = math.floor(fraction)
        fraction -= restart
    else:
        restart = math.floor(math.log(1.0 - fraction * (1.0 - t_mul)) / math.log(t_mul))
        done = (1.0 - t_mul**restart) / (1.0 - t_mul)
        fraction = (fraction - done) / t_mul**restart
    decayed = 0.5 * m_mul**restart * (1.0 + math.cos(math.pi * fraction))
    return c["initial_learning_rate"] * ((1 - alpha) * decayed + alpha)


_SCHEDULES = {
    "ExponentialDecay": _exponential,
    "InverseTimeDecay": _inverse_time,
    "PiecewiseConstantDecay": _piecewise,
    "PolynomialDecay": _polynomial,
    "CosineDecay": _cosine,
    "CosineDecayRestarts": _cosine_restarts,
}
