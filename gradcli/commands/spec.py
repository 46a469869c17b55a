"""What a command is, as data: its options (a dataclass whose fields carry their flags), its
help, where it runs, how its records are shown, and its implementation as a dotted path
(stdlib only: the CLI, the worker and the Python API all read the table; nothing here imports
an implementation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from gradcli.dotted import resolve

OWN = "*"  # in a layout: the fields the command's own options class declares, in order
REPORT_FILES = "+reports"  # in a layout: one FILE option per report-file output format


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Sentinel("REQUIRED")  # a Flag's cli_default: the command line must give it
UNSET: Any = _Sentinel("UNSET")  # a Flag's cli_default: the field's own default


@dataclass(frozen=True)
class Flag:
    """How one option appears on the command line (cli/params.py turns it into Typer's)."""

    names: tuple[str, ...] = ()  # ("--method", "-m"); () for a positional argument
    help: str | Callable[[], str] = ""  # a callable is read when the CLI is built
    metavar: str | None = None
    min: float | None = None
    max: float | None = None
    hidden: bool = False
    envvar: str | None = None
    show_default: bool | None = None  # None: Typer's default
    # the values it takes (a choice the CLI checks); a callable is read when the CLI is built
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None
    complete: str | None = None  # "module:function" giving shell completions
    cli_type: Any = None  # the value's type on the command line, when not the field's
    cli_default: Any = UNSET  # the default on the command line, when not the field's
    to_job: Callable[[Any], Any] | None = None  # command-line value -> the field's value

    @property
    def argument(self) -> bool:
        return not self.names

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help

    def choice_values(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


def opt(default: Any = MISSING, *names: str, factory: Any = MISSING, **flag: Any) -> Any:
    """An options field and its flag: `opt(25, "--samples", min=1, metavar="N", help=...)`;
    no default: a required value; `factory` for a list."""
    return field(default=default, default_factory=factory, metadata={"flag": Flag(names, **flag)})


def flag_of(f: dataclasses.Field) -> Flag | None:
    return f.metadata.get("flag")


def own_fields(options: type) -> list[str]:
    """The fields `options` declares itself (not inherited), in order."""
    own = options.__dict__.get("__annotations__", {})
    return [f.name for f in dataclasses.fields(options) if f.name in own]


@dataclass(frozen=True)
class CommandSpec:
    """One command of the table (commands/__init__.py)."""

    name: str  # the word on the command line
    help: str  # its help; the first sentence is its line in `gradcli --help`
    options: type  # its options dataclass: the fields a job of it carries
    layout: tuple[str, ...]  # help order: fields and presentation options by name; OWN
    impl: str  # "module:function" running it (jobs/): (ctx, out, png), or (job, handle)
    record_kind: str  # present.records.Kind: how renderers show its records
    api_name: str  # gradcli.<api_name> is its Python function (api.py)
    in_worker: bool = True  # False: runs in the light CLI process (NumPy only: diff)
    computes: bool = True  # False: describes the model (no INPUT; loaded for description)
    objective: bool = True  # False: differentiates an output itself (no objective recorded)
    png_suffix: str | None = None  # --png: one file with this suffix, "" a directory of PNGs
    # a directory run's --png also draws the trajectory over its models (io.paths has where)
    trajectory: bool = False
    files: tuple[str, ...] = ()  # fields naming files it reads (checked, hashed; "-" = stdin)
    provenance_params: tuple[str, ...] = ()  # fields recorded as its parameters
    provenance_defaults: Mapping[str, Any] = field(default_factory=dict)  # recorded when unset
    # MODEL is the checkpoints of one training run (a directory is one run, not many models):
    # impl(job, emit) runs the whole job instead of the per-model pipeline and emits its one
    # record; --shard splits the run's rows
    checkpoints: bool = False
    uses_methods: bool = False  # takes --method from the methods table
    attribution: bool = False  # results are per-sample maps: `diff` compares sample by sample
    # what `diff` makes of parameters that differ between two of its results
    compared_in_diff: Literal["warning", "note", "ignore"] = "warning"
    normalize: Callable[[Any], None] | None = None  # cross-field rules (UsageError): CLI and API
    cli_only: Mapping[str, tuple[Any, Any, Flag]] = field(
        default_factory=dict
    )  # type, default, flag
    check_cli: Callable[[dict[str, Any]], None] | None = None  # refuses cli_only values

    def job(self, **values: Any) -> Any:
        """A job of this command (its options dataclass) from field values."""
        return self.options(command=self.name, **values)

    def implementation(self) -> Callable[..., Any]:
        return resolve(self.impl)

    def field_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]
