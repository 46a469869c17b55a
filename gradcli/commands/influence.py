"""`gradcli influence CHECKPOINTS TRAIN --target Y`: which training samples pushed the model's
loss on each test sample down (proponents) or up (opponents), and which training samples are
the most self-influential, by TracIn over saved checkpoints."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from gradcli.commands.fields import ComputeJob
from gradcli.commands.layouts import REPORT_FILES
from gradcli.commands.spec import OWN, REQUIRED, CommandSpec, opt
from gradcli.commands.values import listed, lr_value, shard_value
from gradcli.errors import UsageError, param
from gradcli.present.records import Kind

LAST = "last"  # --layer last: the last layer with trainable weights (TracInCPFast's shortcut)


@dataclass(kw_only=True)
class InfluenceJob(ComputeJob):
    model: str = opt(
        metavar="CHECKPOINTS",
        help="The checkpoints of one training run: a directory (every model below it, in "
        "natural order: ckpt-2 before ckpt-10) or one model file.",
        show_default=False,
    )
    input: str | None = opt(
        None,
        metavar="TRAIN",
        help="The training inputs: .npy, or .npz keyed by input name (axis 0 = samples).",
        show_default=False,
        cli_default=REQUIRED,
    )
    target: str | None = opt(
        None,
        "--target",
        "-t",
        metavar="PATH",
        help="TRAIN's labels (.npy, or .npz keyed by output name): TracIn differentiates each "
        "sample's loss.",
        cli_default=REQUIRED,
    )
    test: str | None = opt(
        None,
        "--test",
        metavar="PATH",
        help="Test inputs: list each one's top proponents and opponents among TRAIN.",
    )
    test_target: str | None = opt(
        None, "--test-target", metavar="PATH", help="The test inputs' labels (with --test)."
    )
    self_influence: bool = opt(
        False,
        "--self",
        help="List the most self-influential training samples (likely mislabelled first).",
    )
    top: int = opt(
        5, "--top", min=1, metavar="K", help="Samples listed: per test sample, and with --self."
    )
    lr: list[float] | None = opt(
        None,
        "--lr",
        metavar="RATE|R1,R2,...|saved",
        help="Learning rate per checkpoint: one for all, one per checkpoint in order, or saved: "
        "each checkpoint's optimizer as saved in its file (the default).",
        cli_type=str | None,
        to_job=lr_value,
    )
    layers: list[str] = opt(
        MISSING,
        "--layer",
        "-l",
        factory=list,
        cli_default=None,
        metavar="NAME|PATH|INDEX|last",
        complete="gradcli.cli.completion:complete_layer",
        help="Count only this layer's weights (repeatable; default: all trainable weights); "
        "last: the last layer with weights (TracInCPFast's shortcut).",
        cli_type=list[str] | None,
        to_job=listed,
    )
    proj_dim: int | None = opt(
        None,
        "--proj-dim",
        min=1,
        metavar="D",
        help="Score through a seeded random projection of the gradients to D numbers (large "
        "models; the error bound is in the README).",
    )
    seed: int = opt(0, "--seed", min=0, metavar="N", help="The projection's seed.")
    matrix: bool = opt(
        False,
        "--matrix",
        help="Also write the full test x train score matrix to -o (refused when it would not fit "
        "in memory).",
    )
    out: str | None = opt(
        None,
        "--out",
        "-o",
        metavar="PATH",
        help="Write every training sample's self-influence and loss, and each test sample's top "
        "proponents and opponents (rows and scores), to this .npz.",
    )
    png: str | None = opt(
        None,
        "--png",
        metavar="DIR",
        help="Image inputs: a PNG per test sample beside its top proponents and opponents (with "
        "--self: the most self-influential samples).",
    )
    png_limit: int = opt(
        16, "--png-limit", min=0, metavar="N", help="At most this many test samples drawn."
    )
    shard: tuple[int, int] | None = opt(
        None,
        "--shard",
        metavar="K/N|auto",
        help="Split TRAIN: process every N-th batch of rows starting at the K-th (0-based); "
        "combine the N -o files with `gradcli merge`. auto: K and N from a Kubernetes Indexed "
        "Job or a Slurm job array.",
        cli_type=str | None,
        to_job=shard_value,
    )


def check_influence(job: InfluenceJob) -> None:
    """What the options ask must be one thing to compute."""
    if job.test is None and not job.self_influence:
        raise UsageError(
            f"nothing to compute: give {param('test')} X with {param('test_target')} Y (the "
            f"proponents and opponents of each test sample), or {param('self_influence')}"
        )
    if (job.test is None) != (job.test_target is None):
        given, missing = ("test", "test_target") if job.test else ("test_target", "test")
        raise UsageError(f"{param(given)} needs {param(missing)}")
    if job.test is None:
        for name in ("proj_dim", "matrix"):
            if getattr(job, name):
                raise UsageError(
                    f"{param(name)} is about test scores; give {param('test')} "
                    f"(self-influence is always exact)"
                )
    if job.png is not None and job.shard is not None:
        raise UsageError(
            f"{param('png')} draws the whole run's top samples; a shard has only its own rows: "
            f"leave it out of the {param('shard')} runs"
        )


INFLUENCE = CommandSpec(
    name="influence",
    help="Which training samples made each prediction: TracIn over saved checkpoints.\n\n"
    "The score of training sample z for test sample z' sums, over the checkpoints, the\n"
    "learning rate times the dot product of their loss gradients: positive for proponents\n"
    "(training on z lowered the loss on z'), negative for opponents. Self-influence\n"
    "(--self) is each training sample's own score: the highest are the likeliest mislabelled.",
    options=InfluenceJob,
    layout=(
        "model",
        "input",
        "target",
        "test",
        "test_target",
        OWN,
        "loss",
        "from_logits",
        "output",
        "batch_size",
        "out",
        "output_format",
        "as_json",
        "quiet",
        "unsafe",
        "imports",
        "shard",
        REPORT_FILES,
        "onednn",
        "debug",
    ),
    impl="gradcli.jobs.influence:run",
    record_kind=Kind.INFLUENCE,
    api_name="influence",
    png_suffix="",
    files=("input", "target", "test", "test_target"),
    provenance_params=(
        "self_influence",
        "top",
        "lr",
        "layers",
        "proj_dim",
        "seed",
        "matrix",
        "batch_size",
    ),
    checkpoints=True,
    normalize=check_influence,
)
