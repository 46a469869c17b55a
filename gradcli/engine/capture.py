"""Seeing inside one model call: layer attributes (`call`, `activation`) wrapped for the
duration of the call, then restored exactly. What the tape watches at a layer's output
(wrt-layer, CAMs), a fast-path layer's input and pre-activation (per-sample gradients) and an
output's logit (--logits) are all captured this way; the model is never changed.

Capturing at run time gives the exact activation gradient where graph surgery fails: a
Sequential built without an Input, a layer inside a nested model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Hook:
    """Replace `layer.<attribute>` by `wrap(original)` for one model call."""

    layer: Any
    attribute: str  # "call" or "activation"
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]]


@contextlib.contextmanager
def hooked(hooks: Sequence[Hook]) -> Iterator[None]:
    """Install each hook for the duration of the block; restore exactly what was there
    (an attribute the instance owned is put back, one it took from its class is removed),
    in reverse order, whatever happens. Hooks compose: a later one on the same attribute
    wraps the earlier (ghost norms and --logits both wrap a final Dense's activation)."""
    installed: list[tuple[Any, str, Any, bool]] = []
    try:
        for hook in hooks:
            original = getattr(hook.layer, hook.attribute)
            own = hook.attribute in vars(hook.layer)  # else the class's method
            object.__setattr__(hook.layer, hook.attribute, hook.wrap(original))
            installed.append((hook.layer, hook.attribute, original, own))
        yield
    finally:
        for layer, attribute, original, own in reversed(installed):
            if own:
                object.__setattr__(layer, attribute, original)
            else:
                layer.__dict__.pop(attribute, None)


class LayerOutputs:
    """The outputs of some layers (LayerInfo) in one model call, watched by a tape."""

    def __init__(self, layers: Sequence[Any]) -> None:
        self.layers = list(layers)
        self.captured: list[list[Any]] = [[] for _ in self.layers]

    def hooks(self, tape: Any) -> list[Hook]:
        def watching(store: list[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    out = original(*args, **kwargs)
                    tape.watch(out)
                    store.append(out)
                    return out

                return call

            return wrap

        return [
            Hook(info.layer, "call", watching(store))
            for info, store in zip(self.layers, self.captured, strict=True)
        ]

    def outputs(self, xs: list, input_names: list[str]) -> list[Any]:
        from gradcli.errors import GradientError

        result = []
        for info, outs in zip(self.layers, self.captured, strict=True):
            if not outs and info.class_name == "InputLayer" and info.layer.name in input_names:
                # an input layer is not called: its activation is the model input itself
                result.append(xs[input_names.index(info.layer.name)])
                continue
            if not outs:
                raise GradientError(
                    f"layer {info.path!r} did not run when the model was called, so it has "
                    f"no activation to differentiate"
                )
            if len(outs) > 1:
                raise GradientError(
                    f"layer {info.path!r} is called {len(outs)} times in the model (a shared "
                    f"layer), so its activation is ambiguous"
                )
            result.append(outs[0])
        return result


def first_argument(store: list[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A wrapper that records its first argument (a layer's input, an activation's input)
    and returns what the original returns."""

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            store.append(args[0] if args else kwargs.get("inputs"))
            return original(*args, **kwargs)

        return call

    return wrap
