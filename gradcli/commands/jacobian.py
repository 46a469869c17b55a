"""`gradcli jacobian MODEL INPUT`: each sample's Jacobian of one output."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.fields import ComputeJob
from gradcli.commands.layouts import RUN
from gradcli.commands.spec import OWN, CommandSpec, opt
from gradcli.present.records import Kind


@dataclass(kw_only=True)
class JacobianJob(ComputeJob):
    max_elements: float = opt(
        1e8,
        "--max-elements",
        min=1,
        metavar="N",
        help="Refuse (exit 2) above this many Jacobian elements.",
    )


JACOBIAN = CommandSpec(
    name="jacobian",
    help="Per-sample Jacobian d output / d input: shape (N, *output, *input).",
    options=JacobianJob,
    layout=("model", "input", "output", OWN, *RUN),
    impl="gradcli.jobs.jacobian:run",
    record_kind=Kind.GRADIENTS,
    api_name="jacobian",
    objective=False,
    files=("input",),
    provenance_params=("max_elements",),
)
