"""A look at the command line before Typer is imported: does it certainly fail parsing?

The worker is started before parsing (launch.py, supervisor.prestart) so that its TensorFlow
import overlaps the CLI's start-up. On a command line that will fail, that worker only takes
CPU from the CLI while it parses (on a busy 2-core machine a misspelled flag then answered in
1.5-1.9 s instead of a fraction of a second). This scan, from the commands' table alone
(stdlib, a millisecond), finds the mistakes that are certain: an option the command does not
have (`--clas 0`), a choice not among its values, a number that is no number or out of its
range, a value the flag's own conversion refuses (`--class abc`). Then no worker is started,
and Typer's parse, as always, writes the one `error:` line. Anything it cannot be sure of
(combined short flags, an option it does not know how to read) counts as fine: the worker
starts as before; the scan never changes what a command line means, only whether the worker
starts early.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the CLI's presentation options (cli/options.py builds their Typer options from these
# names): field -> (flags, takes a value)
PRESENTATION_FLAGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "output_format": (("--format",), True),
    "as_json": (("--json",), False),
    "quiet": (("--quiet", "-q"), False),
    "onednn": (("--onednn",), True),
    "debug": (("--debug",), False),
    "trace": (("--debug",), False),  # --debug of a command that runs no TensorFlow (diff)
}
HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Accepts:
    """One option of a command as the scan reads it: whether it takes a value, and a check
    of that value that is True only when the value certainly fails (None: not checked)."""

    takes_value: bool
    refuses: Callable[[str], bool] | None = None


def _number_check(kind: type, low: float | None, high: float | None) -> Callable[[str], bool]:
    def refuses(text: str) -> bool:
        try:
            value = float(text)
        except ValueError:
            return True  # no number at all: neither int nor float parsing takes it
        if kind is int and value != int(value):
            return True
        return (low is not None and value < low) or (high is not None and value > high)

    return refuses


def _conversion_check(to_job: Callable[[Any], Any], listed: bool) -> Callable[[str], bool]:
    from gradcli.errors import UsageError

    def refuses(text: str) -> bool:
        try:
            to_job([text] if listed else text)
        except UsageError:
            return True
        except Exception:  # noqa: BLE001 - not ours to judge here: the parse will
            return False
        return False

    return refuses


def _plain(hint: Any) -> Any:
    """`X | None` -> X; anything else as it is."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return args[0]
    return hint


def _accepts(flag: Any, hint: Any) -> Accepts:
    hint = _plain(flag.cli_type if flag.cli_type is not None else hint)
    if hint is bool:
        return Accepts(False)
    choices = flag.choice_values()
    if choices is not None:
        return Accepts(True, lambda text: text not in choices)
    if hint in (int, float):
        return Accepts(True, _number_check(hint, flag.min, flag.max))
    listed = typing.get_origin(hint) is list and typing.get_args(hint) == (str,)
    if flag.to_job is not None and (hint is str or listed):
        return Accepts(True, _conversion_check(flag.to_job, listed))
    return Accepts(True)


def command_options(name: str) -> dict[str, Accepts]:
    """Every option name command `name` takes on the command line (its spec's layout, as
    cli/params.py reads it), with how its value is read."""
    from gradcli.commands import spec as spec_of
    from gradcli.commands.spec import OWN, REPORT_FILES, flag_of, own_fields
    from gradcli.present.formats import file_formats, stdout_formats

    spec = spec_of(name)
    hints = typing.get_type_hints(spec.options)
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    names: list[str] = []
    for item in spec.layout:
        names += (
            [n for n in own_fields(spec.options) if n not in spec.layout] if item == OWN else [item]
        )
    checks: dict[str, Callable[[str], bool]] = {
        "output_format": lambda text: text not in stdout_formats(),
        "onednn": lambda text: text not in ("auto", "on", "off"),
    }
    found: dict[str, Accepts] = {n: Accepts(False) for n in HELP_FLAGS}
    for item in names:
        if item == REPORT_FILES:
            flags = [((f.file_option,), Accepts(True)) for f in file_formats().values()]
        elif item in fields:
            flag = flag_of(fields[item])
            flags = [] if flag.argument else [(flag.names, _accepts(flag, hints[item]))]
        elif item in spec.cli_only:
            hint, _, flag = spec.cli_only[item]
            flags = [(flag.names, _accepts(flag, hint))]
        else:
            options, takes_value = PRESENTATION_FLAGS[item]
            flags = [(options, Accepts(takes_value, checks.get(item)))]
        for options, accepts in flags:
            for option in options:
                found[option] = accepts
    return found


def certainly_fails(argv: list[str]) -> bool:
    """True only when `gradcli argv[0] argv[1:]` is sure to end in a usage error."""
    try:
        options = command_options(argv[0])
    except Exception:  # noqa: BLE001 - an unknown command, a table it cannot read: not sure
        return False
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            return False  # the rest are arguments
        if not arg.startswith("-") or arg == "-":
            continue  # an argument (MODEL, INPUT, stdin)
        if not arg.startswith("--") and len(arg) != 2:
            return False  # `-qc0`: combined short flags, not read here
        name, eq, inline = arg.partition("=")
        if eq and not name.startswith("--"):
            return False
        accepts = options.get(name)
        if accepts is None:
            return True  # an option the command does not have
        if not accepts.takes_value:
            if eq:
                return True  # `--json=1`: a flag takes no value
            continue
        value = inline if eq else next(args, None)
        if value is None:
            return True  # the value is missing
        if accepts.refuses is not None and accepts.refuses(value):
            return True
    return False
