"""Output formats, as one table (light: the CLI reads it for --format's choices and the report
file options). A format shows a run's records on stdout (`--format NAME`), as each arrives
(`streams`: `line(record)`) or all at the end (`render(records, console)`), or writes them to a
file (`--NAME FILE` on every command: `write_file(records, path, locate)`, where `locate(p)`
says where an output file p a record names is now: staged, before the run's outputs commit).
Its renderer module is imported only when it is used. A new format is one entry here and its
module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class OutputFormat:
    name: str
    help: str
    module: str  # the renderer, imported when used
    stdout: bool = True  # a --format choice
    streams: bool = False  # `line(record: dict) -> str`, printed as each record arrives
    file_option: str | None = None  # a report file: `--junit FILE` (`write_file(...)`)
    file_help: str = ""

    def renderer(self) -> ModuleType:
        return importlib.import_module(self.module)


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("table", "tables for people", "gradcli.present.table"),
        OutputFormat(
            "json",
            "one JSON object per result on stdout, nothing else",
            "gradcli.present.json",
            streams=True,
        ),
        OutputFormat(
            "markdown",
            "Markdown tables (for $GITHUB_STEP_SUMMARY, PR comments)",
            "gradcli.present.markdown",
        ),
        OutputFormat(
            "junit",
            "JUnit XML for CI test reporters",
            "gradcli.present.junit",
            stdout=False,
            file_option="--junit",
            file_help="Also write a JUnit XML report: a testcase per tensor, failures for tripped "
            "gates.",
        ),
        OutputFormat(
            "html",
            "one self-contained HTML page for people",
            "gradcli.present.html",
            stdout=False,
            file_option="--html",
            file_help="Also write an HTML report: one self-contained page (header, gates, "
            "sortable tables, charts, pictures; over a directory, the trajectory first).",
        ),
    )
}


def stdout_formats() -> dict[str, OutputFormat]:
    return {k: f for k, f in OUTPUT_FORMATS.items() if f.stdout}


def file_formats() -> dict[str, OutputFormat]:
    return {k: f for k, f in OUTPUT_FORMATS.items() if f.file_option}


def formats_help() -> str:
    """--format's help: each stdout format's line, in table order."""
    return "; ".join(f"{name}: {f.help}" for name, f in stdout_formats().items()) + "."
