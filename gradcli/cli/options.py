"""The CLI's option declarations: choices from the methods and formats tables, and one
entry per option that several commands share (light: Typer only, no NumPy).

One file on purpose: it is a table, one declaration per shared option (flag, help, default,
how it reaches the Job), and its length is the number of options, not logic.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer

from gradcli.commands.values import class_value, fail_on_values, listed, same, shard_value
from gradcli.methods import METHODS
from gradcli.present.formats import FORMATS, formats_help

# --method's choices and help: the methods table (methods.py is light at import)
Method = StrEnum("Method", {name: name for name in METHODS})
# --format's choices: the formats table (--json is kept as the alias of --format json)
OutputFormat = StrEnum("OutputFormat", {name: name for name in FORMATS})


class OneDNN(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class PngStyle(StrEnum):
    signed = "signed"
    magnitude = "magnitude"


class Wrt(StrEnum):
    input = "input"
    weights = "weights"


# One declaration per option that several commands share: its Typer annotation (flag, short
# alias, metavar, help), its default, and how it goes into the Job (None: a presentation
# option of the CLI itself). A command names the shared options it takes, in help order, in
# `@command(...)`; the Job is built from them generically. A new shared option is one entry
# here (and a Job field when the worker needs it).

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Shared:
    annotation: Any
    default: Any
    to_job: Callable[[Any], Any] | None


SHARED: dict[str, Shared] = {
    "model": Shared(
        Annotated[
            str,
            typer.Argument(
                metavar="MODEL",
                help=".keras, .h5/.hdf5, SavedModel directory, or a directory of models.",
                show_default=False,
            ),
        ],
        REQUIRED,
        same,
    ),
    "input": Shared(
        Annotated[
            str,
            typer.Argument(
                metavar="INPUT",
                help=".npy, or .npz keyed by input name (axis 0 = samples); - reads it from stdin.",
                show_default=False,
            ),
        ],
        REQUIRED,
        same,
    ),
    "target": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--target",
                "-t",
                metavar="PATH",
                help="Labels (.npy, or .npz keyed by output name): the objective becomes the "
                "per-sample "
                "loss.",
            ),
        ],
        None,
        same,
    ),
    "loss": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--loss",
                metavar="NAME",
                help="Keras loss identifier (e.g. mse, sparse_categorical_crossentropy); "
                "default: the "
                "model's compiled loss.",
            ),
        ],
        None,
        same,
    ),
    "from_logits": Shared(
        Annotated[
            bool,
            typer.Option(
                "--from-logits", help="The model outputs logits (for --loss crossentropies)."
            ),
        ],
        False,
        same,
    ),
    "class_index": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--class",
                "-c",
                metavar="K|pred|FILE.npy",
                help="Objective: class K on the last axis of the selected output (summed over "
                "other positions); pred: each sample's predicted class; FILE.npy: one class per "
                "sample (e.g. the true labels).",
            ),
        ],
        None,
        class_value,
    ),
    "logits": Shared(
        Annotated[
            bool,
            typer.Option(
                "--logits",
                help="Differentiate the selected output before its final softmax/sigmoid "
                "(the model's file is not changed).",
            ),
        ],
        False,
        same,
    ),
    "output": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--output", metavar="NAME|INDEX", help="Select one output of a multi-output model."
            ),
        ],
        None,
        same,
    ),
    "batch_size": Shared(
        Annotated[
            int | None,
            typer.Option(
                "--batch-size",
                "-b",
                min=1,
                metavar="B",
                help="Samples per tape call (results do not depend on it). "
                "Default: from the input size.",
            ),
        ],
        None,
        same,
    ),
    "training": Shared(
        Annotated[
            bool,
            typer.Option(
                "--training", help="Run the model in training mode (dropout, batch statistics)."
            ),
        ],
        False,
        same,
    ),
    "jit": Shared(
        Annotated[
            bool,
            typer.Option(
                "--jit",
                help="Compile the tape with XLA: about 1 s to compile; on a CPU faster for "
                "attention and dense models, slower for convolutions (README: Speed).",
            ),
        ],
        False,
        same,
    ),
    "out": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--out",
                "-o",
                metavar="PATH",
                help="Write the arrays to this .npz (a directory when MODEL is a directory).",
            ),
        ],
        None,
        same,
    ),
    "output_format": Shared(
        Annotated[
            OutputFormat,
            typer.Option("--format", metavar="table|json|markdown", help=formats_help()),
        ],
        OutputFormat("table"),
        None,
    ),
    "as_json": Shared(
        Annotated[
            bool,
            typer.Option("--json", help="One JSON object per result on stdout, nothing else."),
        ],
        False,
        None,
    ),
    "quiet": Shared(
        Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")],
        False,
        None,
    ),
    "fail_on": Shared(
        Annotated[
            list[str] | None,
            typer.Option(
                "--fail-on",
                metavar="STATUS",
                help="Exit 1 when a tensor is nonfinite, zero, vanishing (float noise) or "
                "disconnected (repeat or comma list).",
            ),
        ],
        None,
        fail_on_values,
    ),
    "max_norm": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--max-norm", metavar="X", help="Gate: exit 1 when a tensor's L2 norm exceeds X."
            ),
        ],
        None,
        same,
    ),
    "min_norm": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--min-norm", metavar="X", help="Gate: exit 1 when a tensor's L2 norm is below X."
            ),
        ],
        None,
        same,
    ),
    "unsafe": Shared(
        Annotated[
            bool,
            typer.Option(
                "--unsafe",
                help="Allow unsafe deserialization (Lambda layers). Only for trusted files.",
            ),
        ],
        False,
        same,
    ),
    "imports": Shared(
        Annotated[
            list[str] | None,
            typer.Option(
                "--import",
                metavar="MODULE|FILE.py",
                help="Import code that registers custom layers/losses before loading (repeatable).",
            ),
        ],
        None,
        listed,
    ),
    "shard": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--shard",
                metavar="K/N",
                help="With a directory MODEL: process every N-th model starting at the K-th "
                "(0-based).",
            ),
        ],
        None,
        shard_value,
    ),
    "onednn": Shared(
        Annotated[
            OneDNN,
            typer.Option(
                "--onednn",
                metavar="auto|on|off",
                help="TensorFlow's oneDNN CPU kernels; auto reruns with them off if they crash.",
            ),
        ],
        OneDNN.auto,
        None,
    ),
    "debug": Shared(
        Annotated[
            bool,
            typer.Option(
                "--debug",
                help="Show tracebacks and TensorFlow's own output.",
                envvar="GRADCLI_DEBUG",
            ),
        ],
        False,
        None,
    ),
    "trace": Shared(  # --debug of a command that runs no TensorFlow (diff)
        Annotated[
            bool,
            typer.Option("--debug", help="Show tracebacks.", envvar="GRADCLI_DEBUG"),
        ],
        False,
        None,
    ),
    "junit": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--junit",
                metavar="FILE",
                help="Also write a JUnit XML report: a testcase per tensor, failures for "
                "tripped gates.",
            ),
        ],
        None,
        None,
    ),
    "against": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--against",
                metavar="MODEL_B",
                help="Run the same job on MODEL_B too and diff the two results (B the "
                "reference); the diff gates apply.",
            ),
        ],
        None,
        same,
    ),
    "min_cosine": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--min-cosine", metavar="X", help="Diff gate: exit 1 when a tensor's cosine < X."
            ),
        ],
        None,
        same,
    ),
    "max_rel_diff": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--max-rel-diff",
                metavar="X",
                min=0.0,
                help="Diff gate: exit 1 when a tensor's |A - B| / |B| > X.",
            ),
        ],
        None,
        same,
    ),
    "min_rank_corr": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--min-rank-corr",
                metavar="X",
                help="Diff gate (attribution maps): exit 1 when a sample's Spearman rank "
                "correlation < X.",
            ),
        ],
        None,
        same,
    ),
    "top_percent": Shared(
        Annotated[
            float,
            typer.Option(
                "--top-percent",
                metavar="P",
                min=0.001,
                max=100.0,
                help="Diff of attribution maps: overlap of each sample's top P% features.",
            ),
        ],
        10.0,
        same,
    ),
}

DIFF_GATES = ("min_cosine", "max_rel_diff", "min_rank_corr", "top_percent")
AGAINST = ("against", *DIFF_GATES)
REPORTS = ("output_format", "as_json", "junit", "quiet", "trace")


OBJECTIVE = ("target", "loss", "from_logits", "class_index", "output")
RUN = (
    "batch_size",
    "training",
    "jit",
    "out",
    "output_format",
    "as_json",
    "quiet",
    "fail_on",
    "max_norm",
    "min_norm",
    "unsafe",
    "imports",
    "shard",
    "junit",
    "onednn",
    "debug",
)
OWN = "*"  # in a layout: the command's own parameters, in their order
