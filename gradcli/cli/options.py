"""The CLI's own options: how a run is presented (format, quiet, debug, oneDNN, report files),
never part of a job. The job's options are the commands' (commands/), whose flags also name
parameters in messages (commands.cli_flags). Light: Typer only. Their names are
PRESENTATION_FLAGS (cli/prescan.py, which reads a command line before Typer is imported)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from gradcli.cli.prescan import PRESENTATION_FLAGS
from gradcli.present.formats import file_formats, formats_help, stdout_formats

# --format's choices: the stdout formats of the output-format table (--json is the alias of
# --format json)
OutputFormat = StrEnum("OutputFormat", {name: name for name in stdout_formats()})


class OneDNN(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


def _names(option: str) -> tuple[str, ...]:
    return PRESENTATION_FLAGS[option][0]


# name -> (annotation, default): a layout names them like a command's fields
PRESENTATION: dict[str, tuple[Any, Any]] = {
    "output_format": (
        Annotated[
            OutputFormat,
            typer.Option(
                *_names("output_format"), metavar="|".join(stdout_formats()), help=formats_help()
            ),
        ],
        OutputFormat("table"),
    ),
    "as_json": (
        Annotated[
            bool,
            typer.Option(
                *_names("as_json"), help="One JSON object per result on stdout, nothing else."
            ),
        ],
        False,
    ),
    "quiet": (
        Annotated[bool, typer.Option(*_names("quiet"), help="No progress on stderr.")],
        False,
    ),
    "onednn": (
        Annotated[
            OneDNN,
            typer.Option(
                *_names("onednn"),
                metavar="auto|on|off",
                help="TensorFlow's oneDNN CPU kernels; auto reruns with them off if they crash.",
            ),
        ],
        OneDNN.auto,
    ),
    "debug": (
        Annotated[
            bool,
            typer.Option(
                *_names("debug"),
                help="Show tracebacks and TensorFlow's own output.",
                envvar="GRADCLI_DEBUG",
            ),
        ],
        False,
    ),
    # --debug of a command that runs no TensorFlow (diff)
    "trace": (
        Annotated[
            bool, typer.Option(*_names("trace"), help="Show tracebacks.", envvar="GRADCLI_DEBUG")
        ],
        False,
    ),
}


def report_options() -> dict[str, tuple[Any, Any]]:
    """One `--NAME FILE` option per file format of the output-format table, in its order."""
    return {
        name: (
            Annotated[str | None, typer.Option(f.file_option, metavar="FILE", help=f.file_help)],
            None,
        )
        for name, f in file_formats().items()
    }
