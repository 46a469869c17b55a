"""--logits: the selected outputs before their final softmax/sigmoid, captured while the model
runs (the model is not changed, nothing is saved)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradcli.engine.capture import Hook, first_argument, hooked
from gradcli.errors import UsageError, param
from gradcli.load.handles import ModelHandle

# --logits: the activations whose input is the logit, by their function's name
_SQUASHING = ("softmax", "sigmoid")


@dataclass
class _LogitSource:
    """Where one output's logit is read: the input of `layer`'s activation function (a Dense,
    Conv or Activation layer with softmax/sigmoid) or of a `Softmax` layer's call."""

    output: int
    layer: Any
    path: str
    attribute: str  # "activation" (the function is wrapped) or "call" (the layer is)


@dataclass
class Logits:
    """--logits: each selected output's pre-activation, captured while the model runs.

    The final softmax/sigmoid (its function, or a Softmax layer's call) is wrapped for the
    duration of one call of the model only, so it records its input and returns what it
    always did: the model is not changed and nothing is saved.
    """

    sources: list[_LogitSource]

    @classmethod
    def find(cls, handle: ModelHandle, selected: list[int]) -> Logits:
        if not handle.has_layers:
            raise UsageError(
                f"{param('logits')} needs a Keras model with layers; {handle.path.name} is a "
                "SavedModel served through its function, whose outputs are final"
            )
        return cls([_logit_source(handle, i) for i in selected])

    def call(self, handle: ModelHandle, xs: list, training: bool) -> list:
        captured: list[list[Any]] = [[] for _ in self.sources]
        hooks = [
            Hook(source.layer, source.attribute, first_argument(store))
            for source, store in zip(self.sources, captured, strict=True)
        ]
        with hooked(hooks):
            outputs = list(handle.call(xs, training=training))
        for source, store in zip(self.sources, captured, strict=True):
            if len(store) != 1:
                raise UsageError(
                    f"{param('logits')}: layer {source.path!r} ran {len(store)} times in one "
                    "call of the model, so its logit is ambiguous"
                )
            outputs[source.output] = store[0]
        return outputs


def _final_layer(model: Any, output: int) -> Any:
    """The layer that produces output `output` of a Keras model (or None)."""
    try:
        tensors = model.outputs
        tensors = list(tensors) if isinstance(tensors, list | tuple) else [tensors]
        history = getattr(tensors[output], "_keras_history", None)
        layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    except Exception:  # noqa: BLE001 - a Sequential never called has no outputs
        layer = None
    if layer is None and output == 0 and getattr(model, "layers", None):
        layer = model.layers[-1]
    return layer


def _activation_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", "") or type(fn).__name__).lower()


def _final(handle: ModelHandle, output: int) -> tuple[Any, str]:
    """The innermost layer producing output `output` (through nested models), and its path."""
    layer, path = _final_layer(handle.model, output), ""
    while layer is not None and hasattr(layer, "layers") and hasattr(layer, "outputs"):
        # a nested model ends the output: its own last layer holds the activation
        path += layer.name + "/"
        layer = _final_layer(layer, 0)
    return layer, path + (layer.name if layer is not None else "")


def final_squashing(handle: ModelHandle, output: int) -> tuple[str, str] | None:
    """("softmax" or "sigmoid", the layer's path) when output `output` ends in one (a
    `Softmax` layer, or a layer whose activation is one); None when it does not or when the
    model has no layers to tell."""
    if not handle.has_layers:
        return None
    try:
        layer, path = _final(handle, output)
    except Exception:  # noqa: BLE001 - a model whose graph cannot be read: no answer
        return None
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax", path
    fn = getattr(layer, "activation", None)
    name = _activation_name(fn) if fn is not None else ""
    return (name, path) if name in _SQUASHING else None


def _logit_source(handle: ModelHandle, output: int) -> _LogitSource:
    name = handle.outputs[output].name
    layer, path = _final(handle, output)
    if layer is None:
        raise UsageError(f"{param('logits')}: cannot find the layer that produces output {name!r}")
    kind = type(layer).__name__
    if kind == "Softmax":
        return _LogitSource(output, layer, path, "call")
    fn = getattr(layer, "activation", None)
    if fn is not None and _activation_name(fn) in _SQUASHING:
        return _LogitSource(output, layer, path, "activation")
    what = f"activation {_activation_name(fn)!r}" if fn is not None else "no activation"
    raise UsageError(
        f"{param('logits')}: output {name!r} ends in {kind} {path!r} with {what}, not a "
        "softmax or sigmoid, so it has no logit to differentiate instead"
    )
