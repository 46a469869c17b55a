"""Output formats of the CLI: name -> how records are shown (light: read by `--format`).

A format writes each record as it arrives (`each`, e.g. JSON lines for scripts) and/or all of
them at the end (`end`, e.g. Rich tables). Adding a format is one entry here (and its renderer,
here or in report.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Format:
    help: str
    each: Callable[[dict, TextIO], None] | None = None  # one record, as it arrives
    end: Callable[[list[dict], Console], None] | None = None  # every record, at the end


def _json_line(record: dict, stream: TextIO) -> None:
    from gradcli.present.table import to_json

    stream.write(to_json(record) + "\n")
    stream.flush()


def _tables(records: list[dict], console: Console) -> None:
    from gradcli.present.table import render

    render(records, console)


def _markdown(records: list[dict], console: Console) -> None:
    from gradcli.present.markdown import render_markdown

    console.file.write(render_markdown(records))
    console.file.flush()


FORMATS: dict[str, Format] = {
    "table": Format("tables for people", end=_tables),
    "json": Format("one JSON object per result on stdout, nothing else", each=_json_line),
    "markdown": Format("Markdown tables (for $GITHUB_STEP_SUMMARY, PR comments)", end=_markdown),
}


def formats_help() -> str:
    """--format's help: each format's line, in table order."""
    return "; ".join(f"{name}: {f.help}" for name, f in FORMATS.items()) + "."
