"""A float64 copy of a Keras model (Keras 3 or tf.keras 2), rebuilt from its config, for
`check`'s finite differences; where the config does not allow it, the model itself."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from gradcli.load import backend
from gradcli.load.backend import keras
from gradcli.load.handles import KerasHandle, ModelHandle

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
                and "Policy" in str(value.get("class_name", ""))
            ):
                # Keras 3 writes DTypePolicy / FloatDTypePolicy, tf.keras 2 writes Policy
                keras3 = "DTypePolicy" in str(value.get("class_name", ""))
                out[key] = {
                    **value,
                    "class_name": "DTypePolicy" if keras3 else value["class_name"],
                    "config": {**value.get("config", {}), "name": "float64"},
                }
            else:
                out[key] = _retype(value)
        return out
    if isinstance(config, list):
        return [_retype(v) for v in config]
    return config


def _tf_keras_model(model: Any) -> bool:
    module = sys.modules.get("tf_keras")
    return module is not None and isinstance(model, module.Model)


def float64_handle(handle: ModelHandle, unsafe: bool) -> tuple[ModelHandle, str]:
    """A float64 copy of a Keras model (Keras 3 or tf.keras 2) where its config allows.

    Else the model itself, with the reason in the precision string.
    """
    model = handle.model if handle.has_layers else None
    tf2 = _tf_keras_model(model)
    if model is None or not (isinstance(model, keras.Model) or tf2):
        return handle, "float32 (the model's own dtype: it cannot be rebuilt in float64)"
    try:
        if tf2:
            safe_mode = backend.tf_keras_safe_mode
        else:
            safe_mode = backend.keras_safe_mode

        with safe_mode(not unsafe):
            clone = type(model).from_config(_retype(model.get_config()))
        clone.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
        copy = KerasHandle(
            clone, handle.path, handle.format, handle.loader, handle.losses, handle.loss_note
        )
        if any(i.dtype != "float64" for i in copy.inputs):
            raise ValueError("inputs did not become float64")
        if [v for v, _ in copy.named_variables()] != [v for v, _ in handle.named_variables()]:
            raise ValueError("the rebuilt model names its variables differently")
    except Exception as exc:  # noqa: BLE001 - fall back to the model's own precision
        return handle, f"float32 (float64 rebuild failed: {str(exc).splitlines()[0][:120]})"
    return copy, "float64"
