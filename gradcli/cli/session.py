"""Running one job for the CLI: check paths, start the worker (or run in process), show
progress and records, and turn every failure into one `error:` line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from gradcli.cli.options import OneDNN
from gradcli.commands.job import Job
from gradcli.errors import CLI_FLAGS, ExitCode, UsageError, exit_code, marked, render_text
from gradcli.present.formats import FORMATS


def _check_paths(job: Job) -> None:
    """Everything about the paths that can be checked before TensorFlow loads: models and
    inputs exist and are regular files (a FIFO is never opened), every output can be
    written, is no other output and none of the files the run reads; leftovers of killed
    runs beside the outputs are removed."""
    from gradcli.io.collisions import check_distinct, model_outputs
    from gradcli.io.modelfiles import is_savedmodel
    from gradcli.io.paths import (
        check_model_path,
        check_output,
        check_regular,
        output_file,
        remove_stale_temps,
        walk_models,
    )

    check_model_path(job.model)
    reads: list[tuple[str, Path]] = []
    from_stdin = []
    classes = (
        job.class_index if isinstance(job.class_index, str) and job.class_index != "pred" else None
    )
    for label, value in (
        ("input", job.input),
        ("target", job.target),
        ("baseline", job.baseline),
        ("--class file", classes),
    ):
        if value == "-":
            from_stdin.append(label)
        elif value is not None:
            check_regular(value, f"{label} {value}")
            reads.append((label, Path(value)))
    reads += [("--import", Path(f)) for f in job.imports if f.endswith(".py")]
    if len(from_stdin) > 1:
        raise UsageError(f"only one of {' and '.join(from_stdin)} can be - (stdin)")
    if from_stdin:
        _spool_stdin(from_stdin[0])
    root = Path(job.model)
    if job.shard and not root.is_dir():
        raise UsageError("--shard needs a directory of models as MODEL")
    many = root.is_dir() and not is_savedmodel(root)
    models, skipped = [root], []
    if many:
        walk = walk_models(root)
        models, skipped = walk.models, walk.skipped
    reads += [("MODEL", m) for m in models]
    outputs = []
    writes: list[tuple[str, Path]] = []
    if job.out is not None:
        outputs.append(("--out", job.out, ".npz", many))
    if job.against is not None:
        _check_against(job, many)
        reads.append(("--against", Path(job.against)))
        if job.out is not None:
            from gradcli.jobs.diff_runs import against_file

            outputs.append(("--out (B's result)", str(against_file(job.out)), ".npz", False))
    if job.png is not None:
        outputs.append(("--png", job.png, ".png", many or job.command == "wrt-input"))
    if job.junit is not None:
        outputs.append(("--junit", job.junit, "", False))
    for label, value, suffix, directory in outputs:
        path = Path(value) if directory else output_file(value, suffix)
        check_output(path, label, directory=directory)
        remove_stale_temps(path)
        if many and label in ("--out", "--png"):
            # one file per model (--png of wrt-input: a directory per model; see
            # commands.Command.png_suffix)
            each = suffix if label == "--out" or job.command == "wrt-weights" else ""
            writes += [(label, p) for p in model_outputs(value, label, root, models, each)]
        elif not directory:
            writes.append((label, path))
    check_distinct(writes, reads)
    if skipped:
        stderr_line(_skipped_note(root, skipped))


def _skipped_note(root: Path, skipped: list[Path]) -> str:
    """The one line a directory run says about the files it passed over (stderr_line shows
    the names escaped)."""
    from gradcli.io.modelfiles import EXPECTED

    names = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (
        f"note: {root}: skipped {len(skipped)} file(s) that are not models "
        f"({EXPECTED}): {names}{more}"
    )


def _check_against(job: Job, many: bool) -> None:
    """--against: one model against one model (a SavedModel directory is one model)."""
    from gradcli.io.modelfiles import is_savedmodel
    from gradcli.io.paths import check_model_path

    check_model_path(job.against)
    b_many = Path(job.against).is_dir() and not is_savedmodel(Path(job.against))
    if many or b_many:
        raise UsageError(
            "--against compares one model with one model; for directories, write each "
            "run's results with -o and compare them with `gradcli diff`"
        )
    if job.png is not None:
        raise UsageError("--png goes without --against")


def _spool_stdin(label: str) -> None:
    """INPUT - : stdin becomes a regular file before the worker starts, so the worker can map
    it, and a rerun after a crash reads it again."""
    from gradcli.io.paths import stdin_kind

    if os.isatty(0):
        raise UsageError(f"{label} -: stdin is a terminal; pipe a .npy or .npz into gradcli")
    stdin_kind(f"{label} - (stdin)")


def execute(
    job: Job,
    *,
    output_format: str | None = None,
    quiet: bool = False,
    onednn: OneDNN = OneDNN.auto,
    debug: bool = False,
    junit: str | None = None,
) -> None:
    """Run a job in the worker and exit with its code. --junit of one model is written by
    the worker, staged with the model's other outputs and committed with them; a directory
    run's report covers every model and is written here once all records are in."""
    from gradcli.process import supervisor

    job.junit = junit
    from gradcli.io.modelfiles import is_savedmodel

    many = Path(job.model).is_dir() and not is_savedmodel(Path(job.model))

    def produce(on_record, on_progress) -> int:
        _check_paths(job)
        if os.environ.get("GRADCLI_INPROCESS", "") not in ("", "0"):
            outcome = supervisor.run_inprocess(
                job, debug=debug, on_record=on_record, on_progress=on_progress
            )
        else:
            outcome = supervisor.run(
                job,
                debug=debug,
                onednn=onednn.value,
                on_record=on_record,
                on_progress=on_progress,
                warn=stderr_line,
            )
        if outcome.traceback and debug:
            sys.stderr.write(outcome.traceback)
        if outcome.error is not None:
            raise outcome.error
        return outcome.exit_code

    present(
        produce,
        output_format=output_format,
        quiet=quiet,
        debug=debug,
        junit=junit if many else None,
    )


def present(
    produce: Callable[[Callable[[dict], None], Callable | None], int],
    *,
    output_format: str | None = None,
    quiet: bool = False,
    debug: bool = False,
    junit: str | None = None,
    reads: list[tuple[str, str]] = (),
) -> None:
    """Show what `produce(on_record, on_progress)` computes (its records, in the format
    asked, and the --junit report, which must not be any of the files it `reads`) and exit
    with the worst code; the one place errors become messages, whether the records come
    from the worker or from this process."""
    from gradcli.process import supervisor

    fmt = FORMATS[output_format or "table"]

    debug = debug or os.environ.get("GRADCLI_DEBUG", "") not in ("", "0")
    previous = supervisor.handle_sigterm()
    out = Console(soft_wrap=False)
    if not out.is_terminal:  # piped or redirected: room for every column, no wrapping
        out = Console(soft_wrap=False, width=120)
    err = Console(stderr=True)
    code = 0
    try:
        if junit is not None:
            _check_report(junit, "--junit", reads)
        records: list[dict] = []

        def on_record(record: dict) -> None:
            if record.get("error"):
                record["error"] = render_text(record["error"], CLI_FLAGS)
            for key in ("warnings", "notes"):
                if record.get(key):
                    record[key] = [render_text(line, CLI_FLAGS) for line in record[key]]
            for line in record.get("warnings") or []:
                stderr_line(f"warning: {line}")
            for line in record.get("notes") or []:
                stderr_line(f"note: {line}")
            if fmt.each is not None:
                fmt.each(record, sys.stdout)
            records.append(record)

        with ProgressBar(err, enabled=not quiet and err.is_terminal) as on_progress:
            worst = produce(on_record, on_progress)
        if fmt.end is not None:
            fmt.end(records, out)
        if junit is not None:
            from gradcli.present.junit import write_junit

            write_junit(records, junit)
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


def _check_report(path: str, label: str, reads: list[tuple[str, str]]) -> None:
    """A report file (--junit) is checked writable before any work, like -o, and must not be
    one of the files the run reads."""
    from gradcli.io.collisions import check_distinct
    from gradcli.io.paths import check_output, remove_stale_temps

    check_output(Path(path), label)
    remove_stale_temps(Path(path))
    check_distinct([(label, Path(path))], [(k, Path(v)) for k, v in reads])


def fail(exc: BaseException, debug: bool = False) -> int:
    """The one place an error becomes the user's `error: ...` line, its parameters named as
    the CLI's flags; whether it was raised here, in process, or reported by the worker."""
    from gradcli.process.supervisor import WorkerFailed

    # a worker's error came with the worker's own traceback (printed before)
    if debug and not isinstance(exc, WorkerFailed):
        traceback.print_exception(exc)
    stderr_line(f"error: {render_text(marked(exc), CLI_FLAGS)}")
    return exit_code(exc)


def interrupted(exc: BaseException) -> int:
    """Ctrl-C exits 130, SIGTERM 143 (what a shell reports for them), after cleaning up."""
    from gradcli.process.supervisor import Terminated

    if isinstance(exc, Terminated):
        stderr_line("terminated")
        return int(ExitCode.TERMINATED)
    stderr_line("interrupted")
    return int(ExitCode.INTERRUPTED)


def stderr_line(message: str) -> None:
    """One line on stderr; a name from a file cannot break it or reach the terminal raw."""
    from gradcli.present.escape import printable

    sys.stderr.write(printable(message.rstrip()) + "\n")
    sys.stderr.flush()


class ProgressBar:
    """A Rich progress bar on stderr, fed by the worker's progress events."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[int, int] = {}

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, event: dict) -> None:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
        index = int(event.get("index", 0))
        if index not in self.tasks:
            # the model's file name (a directory run has one bar per model), never "model 1"
            name = str(event.get("model") or "computing")
            name = name if len(name) <= 40 else name[:18] + "\u2026" + name[-21:]
            self.tasks[index] = self.bar.add_task(escape(name), total=event.get("total"))
        self.bar.update(self.tasks[index], completed=event.get("done", 0))

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False
