"""The options several commands share, each declared once with its flag: a command's options
class inherits the groups it takes (light: stdlib and present.gates only).

One file on purpose: a table of option declarations (flag, help, default, conversion); its
length is the number of options, not logic.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import ClassVar

from gradcli.commands.spec import REQUIRED, opt
from gradcli.commands.values import class_value, fail_on_values, listed, shard_value
from gradcli.present.gates import Gates


@dataclass(kw_only=True)
class JobBase:
    """What every command that reads a MODEL takes; a job is sent to the worker as JSON."""

    command: str
    model: str = opt(
        metavar="MODEL",
        help=".keras, .h5/.hdf5, SavedModel directory, or a directory of models.",
        show_default=False,
    )
    unsafe: bool = opt(
        False,
        "--unsafe",
        help="Allow unsafe deserialization (Lambda layers). Only for trusted files.",
    )
    imports: list[str] = opt(
        MISSING,
        "--import",
        factory=list,
        cli_default=None,
        metavar="MODULE|FILE.py",
        help="Import code that registers custom layers/losses before loading (repeatable).",
        cli_type=list[str] | None,
        to_job=listed,
    )
    shard: tuple[int, int] | None = opt(
        None,
        "--shard",
        metavar="K/N|auto",
        help="With a directory MODEL: process every N-th model starting at the K-th (0-based); "
        "auto: K and N from a Kubernetes Indexed Job or a Slurm job array.",
        cli_type=str | None,
        to_job=shard_value,
    )
    # the protocol's own fields (no flags): models a crashed attempt finished, and report
    # files (output format -> path) the worker stages with one model's outputs
    skip: list[int] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)
    # what records of a command without --method say
    method: ClassVar[str] = "vanilla"


@dataclass(kw_only=True)
class ComputeJob(JobBase):
    """What every command that computes on an INPUT takes: the objective and the run."""

    input: str | None = opt(
        None,
        metavar="INPUT",
        help=".npy, or .npz keyed by input name (axis 0 = samples); - reads it from stdin.",
        show_default=False,
        cli_default=REQUIRED,
    )
    target: str | None = opt(
        None,
        "--target",
        "-t",
        metavar="PATH",
        help="Labels (.npy, or .npz keyed by output name): the objective becomes the per-sample "
        "loss.",
    )
    loss: str | None = opt(
        None,
        "--loss",
        metavar="NAME",
        help="Keras loss identifier (e.g. mse, sparse_categorical_crossentropy); default: the "
        "model's compiled loss.",
    )
    from_logits: bool = opt(
        False, "--from-logits", help="The model outputs logits (for --loss crossentropies)."
    )
    class_index: int | str | None = opt(
        None,
        "--class",
        "-c",
        metavar="K|pred|FILE.npy",
        help="Objective: class K on the last axis of the selected output (summed over other "
        "positions); pred: each sample's predicted class; FILE.npy: one class per sample (e.g. "
        "the true labels).",
        cli_type=str | None,
        to_job=class_value,
    )
    output: str | None = opt(
        None, "--output", metavar="NAME|INDEX", help="Select one output of a multi-output model."
    )
    logits: bool = opt(
        False,
        "--logits",
        help="Differentiate the selected output before its final softmax/sigmoid (the model's "
        "file is not changed).",
    )
    batch_size: int | None = opt(
        None,
        "--batch-size",
        "-b",
        min=1,
        metavar="B",
        help="Samples per tape call (results do not depend on it). Default: from the input size.",
    )
    training: bool = opt(
        False, "--training", help="Run the model in training mode (dropout, batch statistics)."
    )
    jit: bool = opt(
        False,
        "--jit",
        help="Compile the tape with XLA: about 1 s to compile; on a CPU faster for attention and "
        "dense models, slower for convolutions (README: Speed).",
    )
    out: str | None = opt(
        None,
        "--out",
        "-o",
        metavar="PATH",
        help="Write the arrays to this .npz (a directory when MODEL is a directory).",
    )
    fail_on: list[str] = opt(
        MISSING,
        "--fail-on",
        factory=list,
        cli_default=None,
        metavar="STATUS",
        help="Exit 1 when a tensor is nonfinite, zero, vanishing (float noise) or disconnected "
        "(repeat or comma list).",
        cli_type=list[str] | None,
        to_job=fail_on_values,
    )
    max_norm: float | None = opt(
        None, "--max-norm", metavar="X", help="Gate: exit 1 when a tensor's L2 norm exceeds X."
    )
    min_norm: float | None = opt(
        None, "--min-norm", metavar="X", help="Gate: exit 1 when a tensor's L2 norm is below X."
    )

    @property
    def gates(self) -> Gates:
        return Gates(frozenset(self.fail_on), self.max_norm, self.min_norm)

    @property
    def class_file(self) -> str | None:
        """--class FILE.npy: the file of one class per sample (None for K or pred)."""
        value = self.class_index
        return value if isinstance(value, str) and value != "pred" else None


@dataclass(kw_only=True)
class DiffGateFields:
    """The limits a comparison of two results is held to (diff, --against)."""

    min_cosine: float | None = opt(
        None, "--min-cosine", metavar="X", help="Diff gate: exit 1 when a tensor's cosine < X."
    )
    max_rel_diff: float | None = opt(
        None,
        "--max-rel-diff",
        metavar="X",
        min=0.0,
        help="Diff gate: exit 1 when a tensor's |A - B| / |B| > X.",
    )
    min_rank_corr: float | None = opt(
        None,
        "--min-rank-corr",
        metavar="X",
        help="Diff gate (attribution maps): exit 1 when a sample's Spearman rank correlation < X.",
    )
    top_percent: float = opt(
        10.0,
        "--top-percent",
        metavar="P",
        min=0.001,
        max=100.0,
        help="Diff of attribution maps: overlap of each sample's top P% features.",
    )


@dataclass(kw_only=True)
class AgainstFields(DiffGateFields):
    """--against MODEL_B: the same job on a second model, then their diff."""

    against: str | None = opt(
        None,
        "--against",
        metavar="MODEL_B",
        help="Run the same job on MODEL_B too and diff the two results (B the reference); the "
        "diff gates apply.",
    )
