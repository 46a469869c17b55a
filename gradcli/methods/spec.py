"""What a wrt-input method is, as data (stdlib only: the CLI reads the table for --method's
choices and help): its name, help, options, how it is drawn, and its implementation by
dotted path (or a function, for one registered at run time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradcli.dotted import resolve

Implementation = str | Callable[..., Any]


def _called(part: Implementation | None) -> Callable[..., Any] | None:
    if part is None or callable(part):
        return part
    return resolve(part)


@dataclass(frozen=True)
class MethodSpec:
    """One wrt-input method: its name, help, options it reads, and how it computes."""

    name: str
    help: str  # one clause of --method's help
    # (engine, batch, options, rows_per_call) -> methods.common.Attribution
    attribute: Implementation
    # what its values are, named in pictures and tables ("gradient", "Grad-CAM")
    quantity: str = "attribution"
    # how --png draws it by default: "signed" (diverging colormap centred on zero),
    # "magnitude", or "own" for a quantity that is never negative (CAMs, SquareGrad, VarGrad)
    png_style: str = "magnitude"
    # tape rows per input sample: a MethodOptions field (its value) or a number
    expansion: str | int = 1
    # (options, per-batch completeness) -> extra record keys
    extras: Implementation | None = None
    options: tuple[str, ...] = ()  # the job fields (options) it reads besides the common ones
    # True: it reads a layer's activation and gradient (--layer; the engine watches the layer
    # and returns its activation instead of input gradients)
    needs_layer: bool = False
    # (batch, options) -> the tape's inputs for a batch, built off the main thread; `attribute`
    # finds them in `batch.prepared` (and builds them itself where nobody did)
    prepare: Implementation | None = None
    # True: the engine multiplies input gradients by their inputs on the tape (gradient x
    # input); `attribute` finds the products in the gradients' place
    times_input: bool = False

    def rows_per_sample(self, options: Any) -> int:
        if isinstance(self.expansion, str):
            return int(getattr(options, self.expansion))
        return int(self.expansion)

    def attribute_function(self) -> Callable[..., Any]:
        found = _called(self.attribute)
        assert found is not None
        return found

    def prepare_function(self) -> Callable[..., Any] | None:
        return _called(self.prepare)

    def record_extras(self, options: Any, completeness: list[dict]) -> dict[str, Any]:
        found = _called(self.extras)
        return {} if found is None else found(options, completeness)
