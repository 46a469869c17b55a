"""Per-sample losses: Keras identifiers resolved, compiled losses and old training configs read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradcli.errors import UsageError, first_line, param
from gradcli.load.backend import keras


@dataclass
class LossSpec:
    """The per-sample loss of one output, and its weight."""

    fn: Any  # a Keras loss object or function taking (y_true, y_pred)
    description: str
    weight: float = 1.0


def _loss_description(fn: Any) -> str:
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__
    inner = getattr(fn, "fn", None)
    if inner is not None and getattr(inner, "__name__", None):
        name = inner.__name__
    kwargs = getattr(fn, "_fn_kwargs", None) or {}
    if kwargs.get("from_logits"):
        name += " (from logits)"
    return name


def resolve_loss(identifier: Any, from_logits: bool = False, api: Any = None) -> Any:
    """A per-sample loss callable from a Keras identifier ('mse', a config dict, an object)."""
    api = api or keras
    if isinstance(identifier, dict) and isinstance(identifier.get("config"), dict):
        # tf.keras 2 configs carry reduction="auto" and the function itself: Keras 3 rejects both
        identifier = {
            **identifier,
            "config": {
                k: v for k, v in identifier["config"].items() if k not in ("reduction", "fn")
            },
        }
    try:
        fn = api.losses.get(identifier)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/TypeError variously
        raise UsageError(f"unknown loss {identifier!r}: {first_line(exc)}") from None
    if fn is None:
        raise UsageError(f"unknown loss {identifier!r}")
    if from_logits:
        fn = _with_from_logits(fn, identifier)
    return fn


def _with_from_logits(fn: Any, identifier: Any) -> Any:
    import inspect

    if hasattr(fn, "get_config") and "from_logits" in (fn.get_config() or {}):
        config = {**fn.get_config(), "from_logits": True}
        return type(fn).from_config(config)
    target = getattr(fn, "fn", fn)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    if "from_logits" not in params:
        raise UsageError(f"{param('from_logits')} does not apply to the loss {identifier!r}")

    def with_logits(y_true, y_pred):
        return target(y_true, y_pred, from_logits=True)

    with_logits.__name__ = f"{getattr(target, '__name__', 'loss')} (from logits)"
    return with_logits


def compiled_losses(model: Any, output_names: list[str], api: Any) -> dict[str, LossSpec] | None:
    loss = getattr(model, "loss", None)
    compile_config = getattr(model, "_compile_config", None)
    weights = None
    if compile_config is not None and hasattr(compile_config, "config"):
        weights = compile_config.config.get("loss_weights")
    if weights is None:
        weights = getattr(getattr(model, "compiled_loss", None), "_loss_weights", None)
    if loss is None:
        return None
    return _loss_table(loss, weights, output_names, api)


def _loss_table(
    loss: Any, weights: Any, output_names: list[str], api: Any
) -> dict[str, LossSpec] | None:
    if isinstance(loss, dict):
        per_output = {name: loss.get(name) for name in output_names}
    elif isinstance(loss, list | tuple):
        if len(loss) != len(output_names):
            return None
        per_output = dict(zip(output_names, loss, strict=True))
    else:
        per_output = {name: loss for name in output_names}
    if isinstance(weights, dict):
        w = {name: float(weights.get(name, 1.0)) for name in output_names}
    elif isinstance(weights, list | tuple) and len(weights) == len(output_names):
        # tf.keras 2 keeps [None] when compile() was given no loss_weights
        w = {
            name: 1.0 if x is None else float(x)
            for name, x in zip(output_names, weights, strict=True)
        }
    else:
        w = dict.fromkeys(output_names, 1.0)
    table = {}
    for name, ident in per_output.items():
        if ident is None:
            continue
        fn = (
            ident
            if callable(ident) and not isinstance(ident, str)
            else resolve_loss(ident, api=api)
        )
        table[name] = LossSpec(fn=fn, description=_loss_description(ident), weight=w[name])
    return table or None


def _h5_training_config(path: Path) -> dict | None:
    from gradcli.io.modelfiles import h5_json_attr

    config = h5_json_attr(path, "training_config")
    return config if isinstance(config, dict) else None


def training_config_losses(path: Path, output_names: list[str]) -> dict | None:
    config = _h5_training_config(path)
    if not config or config.get("loss") is None:
        return None
    try:
        return _loss_table(config["loss"], config.get("loss_weights"), output_names, keras)
    except Exception:  # noqa: BLE001 - an unreadable old loss leaves the loss unknown
        return None
