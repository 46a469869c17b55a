"""`gradcli check MODEL INPUT`: autodiff against central finite differences."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.fields import ComputeJob
from gradcli.commands.layouts import OBJECTIVE, RUN
from gradcli.commands.spec import OWN, CommandSpec, opt
from gradcli.errors import UsageError, param
from gradcli.present.records import Kind

NOT_CHECKED = ("jit", "out", "fail_on", "max_norm", "min_norm")  # options check has no use for


@dataclass(kw_only=True)
class CheckJob(ComputeJob):
    wrt: str = opt(
        "input",
        "--wrt",
        metavar="input|weights",
        help="Check input or weight gradients.",
        choices=("input", "weights"),
    )
    directions: int = opt(
        3, "--directions", min=1, metavar="N", help="Random directions per tensor."
    )
    eps: float | None = opt(
        None,
        "--eps",
        min=0.0,
        metavar="X",
        help="Finite-difference step (default 1e-5 in float64, 1e-2 in float32).",
    )
    rtol: float | None = opt(
        None,
        "--rtol",
        min=0.0,
        metavar="X",
        help="Largest relative error that passes (default 1e-4 in float64, 5e-2 in float32).",
    )
    seed: int | None = opt(None, "--seed", metavar="N", help="Seed for the directions.")


def check_values(job: CheckJob) -> None:
    if job.eps is not None and job.eps <= 0:
        raise UsageError(f"{param('eps')} must be positive")
    if job.wrt not in ("input", "weights"):
        raise UsageError(f"{param('wrt', job.wrt)}: expected input or weights")
    if job.directions < 1:
        raise UsageError(f"{param('directions')} must be at least 1")


CHECK = CommandSpec(
    name="check",
    help="Compare autodiff with central finite differences along random directions.",
    options=CheckJob,
    layout=("model", "input", OWN, *OBJECTIVE, *(o for o in RUN if o not in NOT_CHECKED)),
    impl="gradcli.jobs.check:run",
    record_kind=Kind.CHECK,
    api_name="check",
    files=("input", "target"),
    provenance_params=("wrt", "directions", "eps", "rtol", "seed"),
    provenance_defaults={"seed": 0},  # the seed the directions use when none is given
    compared_in_diff="ignore",
    normalize=check_values,
)
