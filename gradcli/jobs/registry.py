"""The commands, one module each, as entries of one table: a new command is one module and
one line of `COMMANDS` (and its CLI signature in cli.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradcli.commands.job import Job
from gradcli.jobs import check, info, jacobian, wrt_input, wrt_layer, wrt_weights
from gradcli.jobs.context import Context
from gradcli.load.handles import ModelHandle

Run = Callable[[Context, Path | None, Path | None], dict]
Describe = Callable[[Job, ModelHandle], dict]


@dataclass(frozen=True)
class Command:
    """How the per-model pipeline runs a command.

    `run(ctx, out, png)` computes with the model's inputs read; a command that only describes
    the model has `describe(job, handle)` instead (the model is loaded for description only).
    `png_suffix`: with a directory MODEL, each model's --png is a file with this suffix, or a
    directory when it is "".
    """

    run: Run | None = None
    describe: Describe | None = None
    png_suffix: str = ""


COMMANDS: dict[str, Command] = {
    "info": Command(describe=info.describe),
    "wrt-input": Command(wrt_input.run),
    "wrt-layer": Command(wrt_layer.run),
    "wrt-weights": Command(wrt_weights.run, png_suffix=".png"),
    "jacobian": Command(jacobian.run),
    "check": Command(check.run),
}
