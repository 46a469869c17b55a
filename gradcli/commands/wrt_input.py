"""`gradcli wrt-input MODEL INPUT`: attributions under a method of the methods table."""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass

from gradcli.commands.fields import AgainstFields, ComputeJob
from gradcli.commands.layouts import AGAINST, OBJECTIVE, RUN
from gradcli.commands.spec import OWN, CommandSpec, opt
from gradcli.errors import UsageError, param
from gradcli.methods import METHODS, method_help, png_style_help
from gradcli.present.records import Kind


def _one_layer(value: str | None) -> list[str]:
    return [] if value is None else [value]


def _baseline(value: str) -> str | None:
    return None if value == "zeros" else value


@dataclass(kw_only=True)
class WrtInputJob(AgainstFields, ComputeJob):
    method: str = opt(
        "vanilla",
        "--method",
        "-m",
        metavar="METHOD",
        help=method_help,
        choices=lambda: tuple(METHODS),
    )
    layers: list[str] = opt(
        MISSING,
        "--layer",
        "-l",
        factory=list,
        metavar="NAME|PATH|INDEX",
        complete="gradcli.cli.completion:complete_layer",
        help="CAM methods: the layer (default: the last layer whose output is more than 1x1).",
        cli_type=str | None,
        cli_default=None,
        to_job=_one_layer,
    )
    samples: int = opt(
        25, "--samples", min=1, metavar="N", help="SmoothGrad, SquareGrad, VarGrad: noisy copies."
    )
    noise: float = opt(
        0.15,
        "--noise",
        min=0.0,
        metavar="X",
        help="SmoothGrad, SquareGrad, VarGrad: noise std as a fraction of each sample's range.",
    )
    seed: int | None = opt(
        None, "--seed", metavar="N", help="SmoothGrad family: seed for repeatable noise."
    )
    steps: int = opt(50, "--steps", min=1, metavar="N", help="Integrated Gradients: path steps.")
    baseline: str | None = opt(
        None,
        "--baseline",
        metavar="zeros|PATH",
        help="Integrated Gradients: zeros, or a .npy/.npz (one sample or N).",
        cli_type=str,
        cli_default="zeros",
        to_job=_baseline,
    )
    top: int | None = opt(
        None, "--top", min=1, metavar="K", help="List the K most salient features."
    )
    png: str | None = opt(
        None,
        "--png",
        metavar="DIR",
        help="Write a PNG per sample (input | map | overlay) into this directory, for image-like "
        "inputs.",
    )
    png_limit: int = opt(
        16, "--png-limit", min=0, metavar="N", help="At most this many PNGs per input."
    )
    png_style: str | None = opt(
        None,
        "--png-style",
        metavar="signed|magnitude",
        help=png_style_help(),
        show_default=False,
        choices=("signed", "magnitude"),
    )


_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".webp", ".tif", ".tiff")


def check_png_directory(value: str) -> None:
    """--png names a directory (a PNG per sample): a name like a picture file that is not an
    existing directory is refused, rather than made into a directory q.png."""
    if value.lower().endswith(_PICTURE_SUFFIXES) and not os.path.isdir(value):
        stem = value[: value.rfind(".")]
        raise UsageError(
            f"{param('png', value)}: wrt-input writes one PNG per sample into a directory, and "
            f"this looks like a file name; give a directory, e.g. {param('png', stem + '/')}"
        )


def normalize(job: WrtInputJob) -> None:
    """The options that go with some methods only, and --png's directory."""
    found = METHODS.get(job.method)
    if found is None:
        raise UsageError(
            f"{param('method', repr(job.method))}: expected one of {', '.join(METHODS)}"
        )
    if "baseline" not in found.options and job.baseline is not None:
        raise UsageError(f"{param('baseline')} goes with {param('method', 'integrated')}")
    if job.layers and not found.needs_layer:
        cams = ", ".join(m.name for m in METHODS.values() if m.needs_layer)
        raise UsageError(
            f"{param('layers')} goes with a CAM method ({cams}); for the gradient at a layer "
            "use `gradcli wrt-layer`"
        )
    if len(job.layers) > 1:
        raise UsageError(f"{param('layers')}: a CAM is computed on one layer")
    if job.png_style is not None:
        if job.png is None:
            raise UsageError(f"{param('png_style')} goes with {param('png')}")
        if job.png_style == "signed" and found.png_style == "own":
            raise UsageError(
                f"{param('png_style', 'signed')}: {job.method} is never negative; it is drawn "
                "as it is"
            )
    if job.png is not None:
        check_png_directory(job.png)


WRT_INPUT = CommandSpec(
    name="wrt-input",
    help="Gradient of the objective with respect to the input: saliency and attributions.\n\n"
    "With --target every method explains the loss (a CAM then shows what raises it); to\n"
    "explain each sample's true class, give the labels as --class LABELS.npy.",
    options=WrtInputJob,
    layout=("model", "input", "method", "layers", *OBJECTIVE, "logits", OWN, *RUN, *AGAINST),
    impl="gradcli.jobs.wrt_input:run",
    record_kind=Kind.GRADIENTS,
    api_name="wrt_input",
    png_suffix="",
    files=("input", "target", "baseline"),
    uses_methods=True,
    attribution=True,
    normalize=normalize,
)
