"""`gradcli wrt-weights MODEL INPUT`: the mean gradient per trainable variable (and per sample)."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.fields import AgainstFields, ComputeJob
from gradcli.commands.layouts import AGAINST, OBJECTIVE, RUN
from gradcli.commands.spec import OWN, CommandSpec, opt
from gradcli.present.records import Kind


@dataclass(kw_only=True)
class WrtWeightsJob(AgainstFields, ComputeJob):
    png: str | None = opt(
        None,
        "--png",
        metavar="FILE",
        help="Draw the per-layer gradient-flow chart to a PNG. With a directory of models: "
        "FILE.png draws the trajectory (each layer's gradient norm and |g|/|θ| over the "
        "models, in directory order); a directory gets one chart per model and "
        "trajectory.png.",
    )
    per_sample: bool = opt(
        False,
        "--per-sample",
        help="Also each sample's gradient g_i: norm distribution, tr Σ, SNR, noise scale B_simple "
        "per variable, layer and model; norms to the .npz.",
    )
    per_sample_arrays: bool = opt(
        False,
        "--per-sample-arrays",
        help="Also stream every g_i to the .npz (implies --per-sample; N x the model's size).",
    )
    top: int | None = opt(
        None,
        "--top",
        min=1,
        metavar="K",
        help="List the K samples with the largest gradient norm (implies --per-sample; default 5).",
    )


def imply_per_sample(job: WrtWeightsJob) -> None:
    """--per-sample-arrays and --top are per-sample figures: they imply --per-sample."""
    job.per_sample = job.per_sample or job.per_sample_arrays or job.top is not None


WRT_WEIGHTS = CommandSpec(
    name="wrt-weights",
    help="Gradient of the mean objective over all samples with respect to each trainable\n"
    "variable.",
    options=WrtWeightsJob,
    layout=("model", "input", *OBJECTIVE, "logits", OWN, *RUN, *AGAINST),
    impl="gradcli.jobs.wrt_weights:run",
    record_kind=Kind.WEIGHTS,
    api_name="wrt_weights",
    png_suffix=".png",
    trajectory=True,
    files=("input", "target"),
    provenance_params=("per_sample", "per_sample_arrays", "top"),
    normalize=imply_per_sample,
)
