"""The one place a run is shown and its failures become messages: records in the format asked
(as they arrive or at the end), report files, progress, and every error as one `error:` line
on stderr with an exit code, whether it was raised here or reported by the worker."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable

import typer
from rich.console import Console

from gradcli.cli.progress import ProgressBar
from gradcli.commands import cli_flags
from gradcli.commands.display import rendered, typed
from gradcli.errors import ExitCode, exit_code, marked, render_text
from gradcli.present.formats import OUTPUT_FORMATS

Produce = Callable[[Callable[[dict], None], Callable | None], int]


def present(
    produce: Produce,
    *,
    output_format: str | None = None,
    quiet: bool = False,
    debug: bool = False,
    reports: dict[str, str] | None = None,
    reads: list[tuple[str, str]] = (),
    finish: Callable[[list[dict]], None] | None = None,
) -> None:
    """Show what `produce(on_record, on_progress)` computes (its records, in the format asked,
    and the report files of `reports`, format -> path, which must not be any of the files it
    `reads`; then `finish(records)` writes what covers them all) and exit with the worst
    code."""
    from gradcli.process import supervisor

    fmt = OUTPUT_FORMATS[output_format or "table"]
    debug = debug or os.environ.get("GRADCLI_DEBUG", "") not in ("", "0")
    previous = supervisor.handle_sigterm()
    out = Console(soft_wrap=False)
    if not out.is_terminal:  # piped or redirected: room for every column, no wrapping
        out = Console(soft_wrap=False, width=120)
    err = Console(stderr=True)
    code = 0
    try:
        if reports:
            from gradcli.cli.preflight import check_report

            for name, path in reports.items():
                check_report(path, OUTPUT_FORMATS[name].file_option or name, reads)
        records: list[dict] = []

        def on_record(record: dict) -> None:
            rendered(record)
            for line in record.get("warnings") or []:
                stderr_line(f"warning: {line}")
            for line in record.get("notes") or []:
                stderr_line(f"note: {line}")
            if fmt.streams:
                sys.stdout.write(fmt.renderer().line(record) + "\n")
                sys.stdout.flush()
            records.append(record)

        with ProgressBar(err, enabled=not quiet and err.is_terminal) as on_progress:
            worst = produce(on_record, on_progress)
        supervisor.check_terminated()  # before any report is written
        if not fmt.streams:
            fmt.renderer().render(typed(records), out)
        if reports:
            from gradcli.present.reports import write_report

            for name, path in reports.items():
                write_report(name, typed(records), path)
        if finish is not None:
            finish(records)
        code = max([worst] + [int(r.get("exit_code", 0)) for r in records])
    except KeyboardInterrupt as exc:
        code = interrupted(exc)
    except BrokenPipeError:
        # the reader went away (`gradcli ... --json | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    except Exception as exc:  # noqa: BLE001 - the funnel: no traceback unless --debug
        code = fail(exc, debug)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


def fail(exc: BaseException, debug: bool = False) -> int:
    """The one place an error becomes the user's `error: ...` line, its parameters named as
    the CLI's flags; whether it was raised here, in process, or reported by the worker."""
    from gradcli.process.supervisor import WorkerFailed

    # a worker's error came with the worker's own traceback (printed before)
    if debug and not isinstance(exc, WorkerFailed):
        traceback.print_exception(exc)
    stderr_line(f"error: {render_text(marked(exc), cli_flags())}")
    return exit_code(exc)


def interrupted(exc: BaseException) -> int:
    """Ctrl-C exits 130, SIGTERM 143 (what a shell reports for them), after cleaning up."""
    from gradcli.process.supervisor import Terminated, sigterm_handled

    if isinstance(exc, Terminated):
        sigterm_handled()
        stderr_line("terminated")
        return int(ExitCode.TERMINATED)
    stderr_line("interrupted")
    return int(ExitCode.INTERRUPTED)


def stderr_line(message: str) -> None:
    """One line on stderr; a name from a file cannot break it or reach the terminal raw."""
    from gradcli.present.escape import printable

    sys.stderr.write(printable(message.rstrip()) + "\n")
    sys.stderr.flush()
