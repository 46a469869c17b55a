"""Model handles: what every command needs from a loaded model, and the Keras implementation."""

from __future__ import annotations

import difflib
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gradcli.errors import UsageError, param
from gradcli.load.backend import keras, tf_keras
from gradcli.load.losses import LossSpec


@dataclass
class TensorInfo:
    """A model input or output: name, shape without the batch axis, dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass
class LayerInfo:
    """One row of `gradcli info`'s layer list."""

    index: int | None  # position in the top-level model.layers; None inside nested models
    path: str  # name, or outer/inner for layers of nested models
    class_name: str
    output_shape: str
    params: int
    layer: Any = field(repr=False, default=None)
    depth: int = 0


class ModelHandle(ABC):
    """What every command needs from a model, whatever its format.

    Capabilities are class attributes that a command reads instead of probing the handle:
    `has_layers` (layers can be listed, found and watched: `layers`, `find_layer`) and
    `supports_training` (`call(..., training=True)` runs the model in training mode).
    """

    has_layers: ClassVar[bool]
    supports_training: ClassVar[bool]

    path: Path
    format: str  # a formats.ModelFormat: keras | h5 | savedmodel
    loader: str  # a formats.Loader: which loader read it
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    losses: dict[str, LossSpec] | None  # per output name; None when unknown
    loss_note: str | None = None
    endpoint: str | None = None

    @abstractmethod
    def call(self, inputs: list, training: bool = False) -> list:
        """The outputs (a list, in `outputs` order) for the inputs (in `inputs` order)."""

    @abstractmethod
    def named_variables(self) -> list[tuple[str, Any]]:
        """Trainable variables as (path, variable)."""

    @property
    @abstractmethod
    def layers(self) -> list[LayerInfo]:
        """Every layer, nested ones after their model; empty without `has_layers`."""

    @abstractmethod
    def find_layer(self, spec: str) -> LayerInfo:
        """The layer a --layer value names (index or name); UsageError if none (ModelError
        for a model without layers)."""

    def compiled_loss_text(self) -> str:
        if self.losses is None:
            return "unknown"
        parts = []
        for name, spec in self.losses.items():
            weight = "" if spec.weight == 1.0 else f" x {spec.weight:g}"
            parts.append(
                f"{spec.description}{weight}"
                if len(self.losses) == 1
                else f"{name}: {spec.description}{weight}"
            )
        return ", ".join(parts)


class KerasHandle(ModelHandle):
    """A Keras 3 (or tf.keras 2) model object with its layers."""

    has_layers = True
    supports_training = True

    def __init__(
        self,
        model: Any,
        path: Path,
        fmt: str,
        loader: str,
        losses: dict[str, LossSpec] | None,
        loss_note: str | None = None,
    ) -> None:
        self.model = model
        self.path = path
        self.format = fmt
        self.loader = loader
        self.losses = losses
        self.loss_note = loss_note
        self._layers: list[LayerInfo] | None = None
        self.inputs = [
            TensorInfo(_tensor_name(t, f"input_{i}"), _feature_shape(t), _dtype_name(t.dtype))
            for i, t in enumerate(_flat(model.inputs))
        ]
        names = output_names(model)
        self.outputs = [
            TensorInfo(names[i], _feature_shape(t), _dtype_name(t.dtype))
            for i, t in enumerate(_flat(model.outputs))
        ]
        structure = getattr(model, "_inputs_struct", None)
        self._dict_inputs = isinstance(structure, dict)

    def call(self, inputs: list, training: bool = False) -> list:
        if self._dict_inputs:
            arg = {info.name: x for info, x in zip(self.inputs, inputs, strict=True)}
        elif len(inputs) == 1:
            arg = inputs[0]
        else:
            arg = list(inputs)
        out = self.model(arg, training=training)
        if isinstance(out, dict):
            return [out[o.name] for o in self.outputs]
        if isinstance(out, list | tuple):
            return list(out)
        return [out]

    def named_variables(self) -> list[tuple[str, Any]]:
        return [(_variable_path(v), v) for v in self.model.trainable_variables]

    @property
    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = list(_walk_layers(self.model, prefix="", top=True, depth=0))
        return self._layers

    def find_layer(self, spec: str) -> LayerInfo:
        rows = self.layers
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            top = [r for r in rows if r.index is not None]
            if not 0 <= index < len(top):
                raise UsageError(
                    f"{param('layers', index)}: index out of range: {self.path.name} has "
                    f"{len(top)} top-level layers (0..{len(top) - 1}); see `gradcli info`"
                )
            return top[index]
        for row in rows:
            if row.path == text:
                return row
        # a bare name of a nested layer is accepted when it is unique
        matches = [r for r in rows if r.path.rsplit("/", 1)[-1] == text]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(
                f"{param('layers', text)}: the name is ambiguous in {self.path.name}: "
                + ", ".join(r.path for r in matches)
            )
        close = difflib.get_close_matches(text, [r.path for r in rows], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `gradcli info`"
        raise UsageError(f"{param('layers', text)}: no such layer in {self.path.name}{hint}")


def _walk_layers(model: Any, prefix: str, top: bool, depth: int):
    for i, layer in enumerate(model.layers):
        path = f"{prefix}{layer.name}"
        yield LayerInfo(
            index=i if top else None,
            path=path,
            class_name=type(layer).__name__,
            output_shape=_layer_output_shape(layer),
            params=_count_params(layer),
            layer=layer,
            depth=depth,
        )
        if (
            hasattr(layer, "layers")
            and isinstance(getattr(layer, "layers", None), list)
            and _is_model(layer)
        ):
            yield from _walk_layers(layer, prefix=f"{path}/", top=False, depth=depth + 1)


def _is_model(layer: Any) -> bool:
    if isinstance(layer, keras.Model):
        return True
    if "tf_keras" not in sys.modules:  # no tf.keras 2 model was loaded: nothing to check
        return False
    return isinstance(layer, tf_keras().Model)


def _layer_output_shape(layer: Any) -> str:
    try:
        out = layer.output
    except Exception:  # noqa: BLE001 - an unbuilt layer has no output; show "?"
        return "?"
    shapes = [tuple(t.shape) for t in _flat(out)]
    text = [_shape_text(s) for s in shapes]
    return text[0] if len(text) == 1 else "[" + ", ".join(text) + "]"


def _count_params(layer: Any) -> int:
    try:
        return int(layer.count_params())
    except Exception:  # noqa: BLE001 - unbuilt layers cannot count their weights
        return 0


def _shape_text(shape: tuple) -> str:
    return (
        "("
        + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape))
        + ")"
    )


def _flat(x: Any) -> list:
    if isinstance(x, dict):
        return list(x.values())
    if isinstance(x, list | tuple):
        out = []
        for item in x:
            out.extend(_flat(item))
        return out
    return [x]


def _feature_shape(t: Any) -> tuple[int | None, ...]:
    shape = tuple(t.shape)
    return tuple(None if d is None else int(d) for d in shape[1:])


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)


def _tensor_name(t: Any, default: str) -> str:
    name = getattr(t, "name", None) or default
    return name.split(":")[0]


def output_names(model: Any) -> list[str]:
    outs = _flat(model.outputs)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outs):
        names = [_producer_name(t) or _tensor_name(t, f"output_{i}") for i, t in enumerate(outs)]
    return names


def _producer_name(t: Any) -> str | None:
    history = getattr(t, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    return getattr(layer, "name", None)


def _variable_path(v: Any) -> str:
    path = getattr(v, "path", None)
    if path:
        return path
    return v.name.split(":")[0]
