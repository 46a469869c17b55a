"""Records as the renderers take them (present.records.Record, with the kind the command table
gives and the value label the methods table gives), and their messages with parameters named
as the CLI's flags: shared by the CLI's funnel and the worker's report files."""

from __future__ import annotations

from typing import Any

from gradcli.commands import cli_flags, kind_of
from gradcli.errors import render_text
from gradcli.methods import value_label
from gradcli.present.records import MESSAGE_KEYS, Record


def typed(records: list[dict[str, Any]]) -> list[Record]:
    return [
        Record.from_json(r, kind=kind_of(r), value_label=value_label(r.get("method")))
        for r in records
    ]


def rendered(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its messages' parameters named as flags (in place; returned)."""
    flags = cli_flags()
    for key in MESSAGE_KEYS:
        value = record.get(key)
        if isinstance(value, str):
            record[key] = render_text(value, flags)
        elif isinstance(value, list) and value:
            record[key] = [render_text(str(line), flags) for line in value]
    return record
