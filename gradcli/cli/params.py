"""A command's Typer parameters, built from its spec: each name of the spec's layout is a field
of its options class (its Flag in the field's metadata), a presentation option of the CLI
(options.py), a command-line-only guard, or the report files of the output-format table."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from enum import StrEnum
from typing import Annotated, Any

import typer

from gradcli.cli.options import PRESENTATION, report_options
from gradcli.commands.spec import (
    OWN,
    REPORT_FILES,
    REQUIRED,
    UNSET,
    CommandSpec,
    Flag,
    own_fields,
    resolve,
)

_choices: dict[tuple[str, ...], type[StrEnum]] = {}


def choice_type(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """The StrEnum Typer checks a choice against (one per set of values)."""
    if values not in _choices:
        _choices[values] = StrEnum(name, {v: v for v in values})
    return _choices[values]


def typer_info(flag: Flag) -> Any:
    """typer.Option / typer.Argument with exactly the arguments the flag sets."""
    kwargs: dict[str, Any] = {"help": flag.help_text()}
    for key in ("metavar", "min", "max", "envvar", "show_default"):
        value = getattr(flag, key)
        if value is not None:
            kwargs[key] = value
    if flag.hidden:
        kwargs["hidden"] = True
    if flag.complete:
        kwargs["autocompletion"] = resolve(flag.complete)
    if flag.argument:
        return typer.Argument(**kwargs)
    return typer.Option(*flag.names, **kwargs)


def _annotation(flag: Flag, hint: Any, name: str, optional: bool) -> Any:
    values = flag.choice_values()
    if values is not None:
        enum = choice_type(name.title().replace("_", ""), values)
        hint = enum | None if optional else enum
    elif flag.cli_type is not None:
        hint = flag.cli_type
    return Annotated[hint, typer_info(flag)]


def _default(flag: Flag, field: dataclasses.Field, annotation: Any) -> Any:
    if flag.cli_default is REQUIRED:
        return inspect.Parameter.empty
    if flag.cli_default is not UNSET:
        default = flag.cli_default
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return inspect.Parameter.empty  # a required argument (MODEL, INPUT)
    values = flag.choice_values()
    if values is not None and default is not None:
        return choice_type(field.name.title().replace("_", ""), values)(default)
    return default


def parameters(spec: CommandSpec) -> list[inspect.Parameter]:
    """The command's parameters in help order."""
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    hints = typing.get_type_hints(spec.options)
    names: list[str] = []
    for item in spec.layout:
        if item == OWN:
            names += [n for n in own_fields(spec.options) if n not in spec.layout]
        else:
            names.append(item)
    params = []
    for name in names:
        if name == REPORT_FILES:
            for option, (annotation, default) in report_options().items():
                params.append(_parameter(option, annotation, default))
        elif name in fields:
            field = fields[name]
            flag = field.metadata["flag"]
            optional = field.default is None or flag.cli_default is None
            annotation = _annotation(flag, hints[name], name, optional)
            params.append(_parameter(name, annotation, _default(flag, field, annotation)))
        elif name in spec.cli_only:
            hint, default, flag = spec.cli_only[name]
            params.append(_parameter(name, _annotation(flag, hint, name, True), default))
        else:
            annotation, default = PRESENTATION[name]
            params.append(_parameter(name, annotation, default))
    return params


def _parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation
    )


def job_values(spec: CommandSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The job's field values from the command line's (each through its flag's to_job)."""
    out = {}
    for field in dataclasses.fields(spec.options):
        if field.name not in values:
            continue
        value = values[field.name]
        if isinstance(value, StrEnum):
            value = value.value
        flag = field.metadata.get("flag")
        if flag is not None and flag.to_job is not None:
            value = flag.to_job(value)
        out[field.name] = value
    return out
