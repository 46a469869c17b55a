"""The wrt-input methods, as a table of light specs (spec.py): vanilla, gradient x input, the
noise tunnel (SmoothGrad, SquareGrad, VarGrad), Integrated Gradients and the CAM family, each
naming its implementation by dotted path. The CLI reads --method's choices and help from here,
so this stays light at import (no NumPy); an implementation is imported when it first runs.

A new method is one entry here and its function (in a module of its own or an existing one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradcli.methods.spec import MethodSpec

if TYPE_CHECKING:
    from gradcli.engine.batched import Batch, GradientEngine
    from gradcli.methods.common import Attribution, MethodOptions

METHODS: dict[str, MethodSpec] = {}


def register(method: MethodSpec) -> MethodSpec:
    """Add a method to the table (its name becomes a --method choice)."""
    METHODS[method.name] = method
    return method


def method_help() -> str:
    """--method's help: each method's clause, in table order."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."


def png_style_help() -> str:
    """--png-style's help: which methods draw signed by default and which are never negative,
    from the table."""

    def names(style: str) -> str:
        found = [m.name for m in METHODS.values() if m.png_style == style]
        return ", ".join(found[:-1]) + " and " + found[-1] if len(found) > 1 else "".join(found)

    return (
        "signed: a diverging colormap centred on zero (red +, blue -); magnitude: |value|. "
        f"Default: signed for {names('signed')}, magnitude for the others ({names('own')} are "
        "never negative)."
    )


def value_label(method: str | None) -> str:
    """How a table names a method's values: |g| (a gradient), |attr|, or CAM."""
    found = METHODS.get(method or "vanilla")
    if found is None or found.name == "vanilla":
        return "|g|"
    return "CAM" if found.needs_layer else "|attr|"


def attribute(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    """Attributions for one batch of samples under the chosen method."""
    return METHODS[options.method].attribute_function()(engine, batch, options, rows_per_call)


_GRADIENTS = "gradcli.methods.gradients"
_TUNNEL = "gradcli.methods.noise_tunnel"
_IG = "gradcli.methods.integrated"

register(MethodSpec("vanilla", "d o / d x", f"{_GRADIENTS}:vanilla", quantity="gradient"))
register(
    MethodSpec(
        "gradxinput",
        "x * grad",
        f"{_GRADIENTS}:gradxinput",
        quantity="gradient × input",
        png_style="signed",
        times_input=True,
    )
)
for _name, _help, _quantity, _style in (
    ("smoothgrad", "mean over noisy copies", "SmoothGrad", "magnitude"),
    ("squaregrad", "mean of grad^2 over the noisy copies", "SquareGrad", "own"),
    ("vargrad", "variance of grad over the noisy copies", "VarGrad", "own"),
):  # the noise tunnel: the same noisy copies, options and record keys, reduced differently
    register(
        MethodSpec(
            _name,
            _help,
            f"{_TUNNEL}:{_name}",
            quantity=_quantity,
            png_style=_style,
            expansion="samples",
            extras=f"{_TUNNEL}:extras",
            options=("samples", "noise", "seed"),
            prepare=f"{_TUNNEL}:noisy_copies",
        )
    )
register(
    MethodSpec(
        "integrated",
        "Integrated Gradients",
        f"{_IG}:attribute",
        quantity="Integrated Gradients",
        png_style="signed",
        expansion="steps",
        extras=f"{_IG}:extras",
        options=("steps", "baseline"),
        prepare=f"{_IG}:path_points",
    )
)
for _name, _quantity in (
    ("gradcam", "Grad-CAM"),
    ("gradcam++", "Grad-CAM++"),
    ("layercam", "Layer-CAM"),
):
    register(
        MethodSpec(
            _name,
            f"{_quantity} on --layer",
            "gradcli.methods.cam:attribute",
            quantity=_quantity,
            png_style="own",
            options=("layers",),
            needs_layer=True,
        )
    )
