"""The `gradcli` command line: the Typer app, each command built from its spec (commands/),
run in a worker (process/) or, for a command that needs no TensorFlow, in this process; and
the console-script entry.

Nothing here imports TensorFlow: `--help`, `--version` and option errors answer at once.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from gradcli._version import __version__
from gradcli.cli.funnel import fail, interrupted, present, stderr_line
from gradcli.cli.helpformat import PlainCommand, option_message, summary
from gradcli.cli.launch import COMPLETE_VAR
from gradcli.cli.options import OneDNN
from gradcli.cli.params import job_values, parameters
from gradcli.cli.preflight import check_paths, is_directory_run
from gradcli.commands import COMMANDS
from gradcli.commands.spec import CommandSpec
from gradcli.errors import ExitCode, GradcliError
from gradcli.io.paths import trajectory_outputs
from gradcli.present.formats import file_formats

HELP = """Gradients of saved Keras models, from the shell.

MODEL is a .keras file, a legacy .h5/.hdf5, a TensorFlow SavedModel directory, or a
directory of models (each is processed). INPUT is a .npy (single-input model) or an .npz
keyed by input name, or - to read one from stdin; axis 0 is the sample axis.

Exit codes: 0 done, 1 a health gate or check tripped, 2 usage error, 3 model/input/target
cannot be read or does not fit, 4 gradient cannot be computed, 130 interrupted, 143
terminated (SIGTERM). Output files change only when a run succeeds.
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=False,  # Typer's own flags ignore a shell named on the command line
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        print(f"gradcli {__version__}")
        raise typer.Exit(0)


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def _show_completion(shell: Shell | None) -> None:
    if shell is not None:
        from typer.completion import get_completion_script

        print(get_completion_script(prog_name="gradcli", complete_var=COMPLETE_VAR, shell=shell))
        raise typer.Exit(0)


def _install_completion(shell: Shell | None) -> None:
    if shell is not None:
        from typer.completion import install

        _, path = install(shell=shell.value, prog_name="gradcli", complete_var=COMPLETE_VAR)
        print(f"{shell.value} completion installed in {path}; it works in shells started from now")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    install_completion: Annotated[
        Shell | None,
        typer.Option(
            "--install-completion",
            metavar="bash|zsh|fish",
            callback=_install_completion,
            is_eager=True,
            help="Install tab completion of commands, options and --layer names for this shell "
            "(adds a line to ~/.bashrc or ~/.zshrc; fish: ~/.config/fish/completions).",
        ),
    ] = None,
    show_completion: Annotated[
        Shell | None,
        typer.Option(
            "--show-completion",
            metavar="bash|zsh|fish",
            callback=_show_completion,
            is_eager=True,
            help="Print the completion script for this shell, to install it your own way.",
        ),
    ] = None,
) -> None:
    pass


def _guard(fn):
    """Option errors found before the job runs get the same one-line treatment."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GradcliError as exc:
            raise typer.Exit(fail(exc)) from None

    return wrapper


def _register(spec: CommandSpec) -> None:
    """Command `spec.name`: its parameters from the spec; called with them, it builds the job
    (each flag's value through its conversion, then the spec's cross-field rules) and runs
    it."""
    params = parameters(spec)

    def run(**values: Any) -> None:
        if spec.check_cli is not None:
            spec.check_cli({k: values.get(k) for k in spec.cli_only})
        job = spec.job(**job_values(spec, values))
        if spec.normalize is not None:
            spec.normalize(job)
        fmt = values.get("output_format")
        execute(
            spec,
            job,
            output_format="json" if values.get("as_json") else getattr(fmt, "value", fmt),
            quiet=values.get("quiet", False),
            onednn=values.get("onednn", OneDNN.auto),
            debug=values.get("debug", False) or values.get("trace", False),
            reports={k: values[k] for k in file_formats() if values.get(k) is not None},
        )

    run.__name__ = spec.name.replace("-", "_")
    run.__doc__ = spec.help
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    app.command(spec.name, cls=PlainCommand, short_help=summary(spec.help))(_guard(run))


def execute(
    spec: CommandSpec,
    job: Any,
    *,
    output_format: str | None = None,
    quiet: bool = False,
    onednn: OneDNN = OneDNN.auto,
    debug: bool = False,
    reports: dict[str, str] | None = None,
) -> None:
    """Run a job and exit with its code: in a worker process (or in this one with
    GRADCLI_INPROCESS=1), or here for a command that runs no TensorFlow. Report files of one
    model are written by the worker, staged with the model's other outputs and committed
    with them; a directory run's (or a local command's) cover every record and are written
    here once all are in."""
    from gradcli.process import supervisor

    reports = dict(reports or {})
    reads: list[tuple[str, str]] = []
    if not spec.in_worker:
        for name in spec.files:  # a file, or a list of them (merge's SHARD.npz...)
            value = getattr(job, name)
            reads += [(name.upper(), v) for v in (value if isinstance(value, list) else [value])]

        def produce(on_record, on_progress) -> int:
            on_record(spec.implementation()(job))
            return 0

        present(
            produce,
            output_format=output_format,
            quiet=quiet,
            debug=debug,
            reports=reports,
            reads=reads,
        )
        return
    job.reports = reports
    many = is_directory_run(job.model) and not spec.checkpoints

    def produce_in_worker(on_record, on_progress) -> int:
        check_paths(spec, job, stderr_line)
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
        produce_in_worker,
        output_format=output_format,
        quiet=quiet,
        debug=debug,
        reports=reports if many else None,
        finish=_trajectory_chart(job) if many and spec.trajectory else None,
    )


def _trajectory_chart(job: Any) -> Callable[[list[dict]], None] | None:
    """A directory run's --png trajectory chart, drawn from every model's record (those of a
    first attempt that crashed included), in a transaction of its own."""
    if getattr(job, "png", None) is None:
        return None
    _, chart = trajectory_outputs(job.png)

    def draw(records: list[dict]) -> None:
        from gradcli.present.trajectory_png import write_trajectory_report

        write_trajectory_report(records, chart, Path(job.model).name)

    return draw


for _spec in COMMANDS.values():
    _register(_spec)


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: usage errors become one `error:` line and exit 2."""
    from gradcli.process import supervisor

    completing = COMPLETE_VAR in os.environ  # the shell asks for completions: no worker
    if completing:
        from typer.completion import completion_init

        completion_init()  # Typer's bash/zsh/fish protocol (the scripts --show-completion prints)
    elif argv is None:  # the program itself (launch.py has usually started the worker already)
        from gradcli.cli.launch import prestart

        prestart(sys.argv[1:])
    try:
        _main(argv)
    finally:  # a worker started before parsing and never given its job goes, silently
        supervisor.discard_prestarted()


def _main(argv: list[str] | None) -> None:
    try:
        # without standalone mode, a typer.Exit raised by a command comes back as its code
        code = app(args=argv, standalone_mode=False, prog_name="gradcli")
    except TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(ctx.get_help() if ctx else HELP)
            sys.exit(0)
        where = ctx.info_name if ctx is not None and ctx.info_name != "gradcli" else None
        hint = f" (see `gradcli {where} --help`)" if where else " (see `gradcli --help`)"
        stderr_line(f"error: {option_message(exc.format_message())}{hint}")
        sys.exit(int(getattr(exc, "exit_code", ExitCode.USAGE)))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        stderr_line("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    except KeyboardInterrupt as exc:
        sys.exit(interrupted(exc))
    sys.exit(code if isinstance(code, int) else 0)
