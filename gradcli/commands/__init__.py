"""The commands, as a table of light specs (spec.py): the CLI builds its commands from it, the
supervisor starts a worker for the ones that run in one, the worker and the Python API look
up a command's implementation, provenance and the renderers read what a command records.

A new command is its module here (options dataclass + spec), one line below, and its
implementation under jobs/ (named by the spec's dotted path).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gradcli.commands.check import CHECK
from gradcli.commands.diff import DIFF
from gradcli.commands.hessian import HESSIAN
from gradcli.commands.influence import INFLUENCE
from gradcli.commands.info import INFO
from gradcli.commands.jacobian import JACOBIAN
from gradcli.commands.merge import MERGE
from gradcli.commands.spec import CommandSpec, flag_of
from gradcli.commands.wrt_input import WRT_INPUT
from gradcli.commands.wrt_layer import WRT_LAYER
from gradcli.commands.wrt_weights import WRT_WEIGHTS
from gradcli.present.records import Kind

# in the order of `gradcli --help`
COMMANDS: dict[str, CommandSpec] = {
    s.name: s
    for s in (
        INFO,
        WRT_INPUT,
        WRT_LAYER,
        WRT_WEIGHTS,
        JACOBIAN,
        CHECK,
        HESSIAN,
        DIFF,
        INFLUENCE,
        MERGE,
    )
}


def spec(name: str) -> CommandSpec:
    """The spec of command `name` (a KeyError names an unknown one)."""
    return COMMANDS[name]


def worker_commands() -> frozenset[str]:
    """The commands that run in a worker process (TensorFlow)."""
    return frozenset(name for name, s in COMMANDS.items() if s.in_worker)


def api_specs() -> dict[str, CommandSpec]:
    """Each command by the name of its Python function (gradcli.<api_name>)."""
    return {s.api_name: s for s in COMMANDS.values()}


def kind_of(record: dict[str, Any]) -> str:
    """How a record is shown: its command's record kind (an unknown command's record is
    shown as gradients); a record with an `error` is shown as that error, whatever its kind."""
    found = COMMANDS.get(str(record.get("command")))
    return found.record_kind if found is not None else Kind.GRADIENTS


def cli_flags() -> dict[str, str]:
    """Each option's Python name -> its flag (`class_index` -> `--class`): how messages that
    name parameters with errors.param() read on the command line."""
    flags: dict[str, str] = {}
    for s in COMMANDS.values():
        for f in dataclasses.fields(s.options):
            found = flag_of(f)
            if found is not None and found.names:
                flags.setdefault(f.name, found.names[0])
        for name, (_, _, found) in s.cli_only.items():
            flags.setdefault(name, found.names[0])
    return flags
