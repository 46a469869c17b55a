"""The checkpoints of one training run: their order, and each one's learning rate (stdlib only).

Pre-work for issue 29; the reorganisation (issue 25) places it (order and `--lr` parsing near
the command, the saved-rate reader in `load/`). Nothing here opens a file: the caller reads
the JSON (a `.keras` archive's `config.json`, an `.h5`'s `training_config` attribute) and the
optimizer's iteration count, and this module interprets them.

Order. Checkpoint names sort naturally: runs of digits compare as numbers, the rest
case-insensitively, so `ckpt-2` < `ckpt-10` and `epoch_9` < `epoch_10`; Keras'
`model.{epoch:02d}-{val_loss:.2f}.keras` names sort by epoch because the first number that
differs decides. Names equal in that order (`ckpt-02`, `ckpt-2`) fall back to plain string order.

Learning rates (`--lr`): one value for every checkpoint, a comma list with one value per
checkpoint in that order, or `saved`: each checkpoint's optimizer as saved in the file. The
saved rate is what `model.optimizer.learning_rate` reads after loading it: the float in the
optimizer config (Keras writes the current value of its learning-rate variable there, so a
callback's changes are in it), or a learning-rate schedule evaluated at the saved iteration
count. The six Keras schedules are evaluated here in float64 (Keras computes them in
float32); any other schedule would mean running its code, so it is refused.

Where the numbers are in the files (checked on Keras 3.15):
- `.keras`: `config.json` -> "compile_config" -> "optimizer" -> "config" -> "learning_rate";
  the iteration count is the first optimizer variable, `optimizer/vars/0` in
  `model.weights.h5` inside the archive (a float rate is also `optimizer/vars/1`).
- `.h5`: the root attribute "training_config" (JSON) -> "optimizer_config" -> "config" ->
  "learning_rate"; the iteration count is `optimizer_weights/<optimizer name>/iteration`.
- Keras 2 files may say "lr" instead of "learning_rate" and carry the legacy "decay":
  rate / (1 + decay * iterations).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from .errors import ModelError, UsageError, param

SAVED = "saved"

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sort key: digit runs as numbers, text case-insensitively, then the name itself."""
    parts = _DIGITS.split(name)  # text, digits, text, digits, ... : types line up by position
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def order_checkpoints(names: Iterable[str]) -> list[str]:
    """Checkpoint names (or paths relative to their directory) in training order."""
    return sorted(names, key=natural_key)


def parse_lr(text: str) -> list[float] | None:
    """`--lr`'s value: a list of rates (one value, or one per checkpoint), or None for `saved`."""
    if text.strip().lower() == SAVED:
        return None
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(
                f"{param('lr', text)}: expected a learning rate, a comma list of one per "
                f"checkpoint, or {SAVED} (read from each checkpoint's optimizer)"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"{param('lr', text)}: learning rates must be positive numbers")
        values.append(value)
    return values


def learning_rates(text: str, n_checkpoints: int) -> list[float] | None:
    """One rate per checkpoint from `--lr` (None: read them from the files)."""
    values = parse_lr(text)
    if values is None:
        return None
    if len(values) == 1:
        return values * n_checkpoints
    if len(values) != n_checkpoints:
        raise UsageError(
            f"{param('lr', text)}: {len(values)} learning rates for {n_checkpoints} "
            "checkpoints; give one value, or one per checkpoint in their order"
        )
    return values


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
    rate = config.get("learning_rate", config.get("lr"))
    if isinstance(rate, dict):
        if iterations is None:
            raise refuse("its learning-rate schedule needs the optimizer's iteration count")
        try:
            value = schedule_value(rate, iterations)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise refuse(f"its learning-rate schedule cannot be evaluated ({exc})") from None
    elif isinstance(rate, int | float) and not isinstance(rate, bool):
        value = float(rate)
    else:
        raise refuse("its optimizer config has no learning rate")
    decay = config.get("decay") or 0.0
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
