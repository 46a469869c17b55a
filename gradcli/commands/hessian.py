"""`gradcli hessian MODEL INPUT`: curvature of the mean objective (top eigenvalues, trace,
spectral density, per layer and per variable) or of each sample's input (`--wrt input`)."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.fields import ComputeJob
from gradcli.commands.layouts import OBJECTIVE, RUN
from gradcli.commands.spec import OWN, CommandSpec, opt
from gradcli.errors import UsageError, param
from gradcli.present.records import Kind

# what "top" means: the command's words, and the Lanczos names the engine takes
WHICH = {"largest": "LA", "smallest": "SA", "magnitude": "LM"}
HVP_MODES = ("double-backward", "forward-over-backward")  # engine.hvp.MODES, light
NOT_USED = ("max_norm", "min_norm")  # gradient-norm gates: a Hessian has its own gate


@dataclass(kw_only=True)
class HessianJob(ComputeJob):
    wrt: str = opt(
        "weights",
        "--wrt",
        metavar="weights|input",
        choices=("weights", "input"),
        help="The Hessian w.r.t. the trainable weights (of the mean objective), or w.r.t. each "
        "sample's input (of its own o_i: one eigenvalue per sample).",
    )
    top_k: int = opt(
        1, "--top-k", "-k", min=1, metavar="K", help="How many top eigenvalues (Lanczos)."
    )
    which: str = opt(
        "largest",
        "--which",
        metavar="largest|smallest|magnitude",
        choices=tuple(WHICH),
        help="Which eigenvalues are top: largest (sharpness), smallest (most negative) or "
        "largest magnitude (what PyHessian's power iteration finds).",
    )
    tol: float = opt(
        1e-3,
        "--tol",
        min=0.0,
        metavar="X",
        help="Lanczos: accept an eigenvalue when its residual |Hy - λy| <= X |H|.",
    )
    lanczos_steps: int = opt(
        100,
        "--lanczos-steps",
        min=1,
        metavar="N",
        help="Lanczos: products per run at most (its basis holds N vectors of the weights' size).",
    )
    probes: int = opt(
        100,
        "--probes",
        min=1,
        metavar="N",
        help="Hutchinson trace: random ±1 probes, one Hessian-vector product each (weights).",
    )
    trace_rtol: float | None = opt(
        None,
        "--trace-rtol",
        min=0.0,
        metavar="X",
        help="Stop adding probes once the trace's standard error is <= X |trace| (after 10).",
    )
    per_layer: bool = opt(
        False,
        "--per-layer",
        help="Also each layer's top eigenvalue of its own Hessian block (traces per layer and "
        "per variable are always given).",
    )
    density: bool = opt(
        False,
        "--density",
        help="Also the eigenvalue density by stochastic Lanczos quadrature (histogram in the "
        "JSON and .npz).",
    )
    density_runs: int = opt(
        4, "--density-runs", min=1, metavar="N", help="Density: Lanczos runs (random probes)."
    )
    density_steps: int = opt(
        64, "--density-steps", min=1, metavar="N", help="Density: products per run."
    )
    bins: int = opt(100, "--bins", min=1, metavar="N", help="Density: histogram bins.")
    seed: int = opt(0, "--seed", metavar="N", help="Seed of every random start and probe.")
    hvp: str = opt(
        HVP_MODES[0],
        "--hvp",
        metavar="|".join(HVP_MODES),
        choices=HVP_MODES,
        help="How a Hessian-vector product is computed (the same result; README: Curvature).",
    )
    max_sharpness: float | None = opt(
        None,
        "--max-sharpness",
        metavar="X",
        help="Gate: exit 1 when the largest eigenvalue exceeds X (--wrt input: any sample's).",
    )
    png: str | None = opt(
        None,
        "--png",
        metavar="FILE",
        help="Draw the eigenvalue density to a PNG (implies --density).",
    )


def check_values(job: HessianJob) -> None:
    """Cross-option rules, before any work (exit 2)."""
    if job.wrt not in ("weights", "input"):
        raise UsageError(f"{param('wrt', job.wrt)}: expected weights or input")
    if job.which not in WHICH:
        raise UsageError(f"{param('which', job.which)}: expected {', '.join(WHICH)}")
    if job.hvp not in HVP_MODES:
        raise UsageError(f"{param('hvp', job.hvp)}: expected {' or '.join(HVP_MODES)}")
    for name in ("top_k", "lanczos_steps", "probes", "density_runs", "density_steps", "bins"):
        if getattr(job, name) < 1:
            raise UsageError(f"{param(name)} must be at least 1")
    if not job.tol > 0:
        raise UsageError(f"{param('tol')} must be positive")
    if job.max_sharpness is not None and job.which != "largest":
        raise UsageError(
            f"{param('max_sharpness')} gates the largest eigenvalue: it goes with "
            f"{param('which', 'largest')} (the default)"
        )
    if job.wrt == "input":
        for name in ("per_layer", "density", "png"):
            if getattr(job, name) not in (False, None):
                raise UsageError(f"{param(name)} is for {param('wrt', 'weights')}")
        if job.training:
            raise UsageError(
                f"{param('wrt', 'input')} gives each sample's own Hessian, defined in inference "
                f"mode; with {param('training')} batch statistics couple the samples and dropout "
                "changes the function at every product"
            )
    job.density = job.density or job.png is not None


HESSIAN = CommandSpec(
    name="hessian",
    help="Curvature of the mean objective: top Hessian eigenvalues (sharpness), trace, spectral\n"
    "density, per layer and per variable; or each sample's input Hessian (--wrt input).",
    options=HessianJob,
    layout=("model", "input", *OBJECTIVE, "logits", OWN, *(o for o in RUN if o not in NOT_USED)),
    impl="gradcli.jobs.hessian:run",
    record_kind=Kind.CURVATURE,
    api_name="hessian",
    png_suffix=".png",
    files=("input", "target"),
    provenance_params=(
        "wrt",
        "top_k",
        "which",
        "tol",
        "lanczos_steps",
        "probes",
        "trace_rtol",
        "per_layer",
        "density",
        "density_runs",
        "density_steps",
        "bins",
        "seed",
        "hvp",
        "max_sharpness",
    ),
    compared_in_diff="note",
    normalize=check_values,
)
