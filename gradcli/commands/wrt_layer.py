"""`gradcli wrt-layer MODEL INPUT --layer L`: the gradient at layer activations."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any

from gradcli.commands.fields import AgainstFields, ComputeJob
from gradcli.commands.layouts import AGAINST, OBJECTIVE, RUN
from gradcli.commands.spec import OWN, REQUIRED, CommandSpec, Flag, opt
from gradcli.errors import UsageError
from gradcli.present.records import Kind


@dataclass(kw_only=True)
class WrtLayerJob(AgainstFields, ComputeJob):
    layers: list[str] = opt(
        MISSING,
        "--layer",
        "-l",
        factory=list,
        metavar="NAME|PATH|INDEX",
        complete="gradcli.cli.completion:complete_layer",
        help="Layer name, nested path outer/inner, or index from `gradcli info` (repeatable).",
        cli_default=REQUIRED,
        to_job=list,
    )
    activations: bool = opt(
        False, "--activations", help="Also write each layer's activation (key LAYER/activation)."
    )


def refuse_method(values: dict[str, Any]) -> None:
    """wrt-layer has no --method (hidden, so that the mistake gets this answer)."""
    from gradcli.methods import METHODS

    method = values.get("method")
    if method is None:
        return
    cams = [m.name for m in METHODS.values() if m.needs_layer]
    where = (
        f"CAM methods are attributions over the input: `gradcli wrt-input MODEL INPUT "
        f"--method {method} --layer L`"
        if method in cams
        else f"methods are options of wrt-input: `gradcli wrt-input MODEL INPUT --method {method}`"
    )
    raise UsageError(f"wrt-layer has no --method; {where}")


WRT_LAYER = CommandSpec(
    name="wrt-layer",
    help="Gradient of the objective with respect to a layer's output activation.",
    options=WrtLayerJob,
    layout=("model", "input", "layers", OWN, "method", *OBJECTIVE, "logits", *RUN, *AGAINST),
    impl="gradcli.jobs.wrt_layer:run",
    record_kind=Kind.GRADIENTS,
    api_name="wrt_layer",
    files=("input", "target"),
    provenance_params=("layers", "activations"),
    attribution=True,
    compared_in_diff="note",
    cli_only={
        "method": (
            str | None,
            None,
            Flag(("--method", "-m"), hidden=True, help="See wrt-input --method."),
        )
    },
    check_cli=refuse_method,
)
