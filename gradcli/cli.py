"""The `gradcli` command line: parse options, run the job, present the records, map errors.

Nothing here imports TensorFlow: `--help`, `--version` and option errors answer at once; the
work runs in a worker process (supervisor.py).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.exceptions import TyperException

from . import __version__
from .errors import (
    CLI_FLAGS,
    ExitCode,
    GradcliError,
    InputError,
    UsageError,
    exit_code,
    marked,
    render_text,
)
from .formats import FORMATS, formats_help
from .job import Job
from .methods import METHODS, method_help
from .status import FAIL_ON_CHOICES

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
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


# --method's choices and help: the methods table (methods.py is light at import)
Method = StrEnum("Method", {name: name for name in METHODS})
# --format's choices: the formats table (--json is kept as the alias of --format json)
OutputFormat = StrEnum("OutputFormat", {name: name for name in FORMATS})


class OneDNN(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class Wrt(StrEnum):
    input = "input"
    weights = "weights"


# ------------------------------------------------------------------ shared options

# One declaration per option that several commands share: its Typer annotation (flag, short
# alias, metavar, help), its default, and how it goes into the Job (None: a presentation
# option of the CLI itself). A command names the shared options it takes, in help order, in
# `@command(...)`; the Job is built from them generically. A new shared option is one entry
# here (and a Job field when the worker needs it).

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Shared:
    annotation: Any
    default: Any
    to_job: Callable[[Any], Any] | None


def _same(value: Any) -> Any:
    return value


def _listed(value: list[str] | None) -> list[str]:
    return value or []


def _fail_on(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in FAIL_ON_CHOICES:
                raise UsageError(
                    f"--fail-on {item!r}: expected one of {', '.join(FAIL_ON_CHOICES)}"
                )
            out.append(item)
    return sorted(set(out))


def _shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(p) for p in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {value}: need 0 <= K < N")
    return k, n


SHARED: dict[str, Shared] = {
    "model": Shared(
        Annotated[
            str,
            typer.Argument(
                metavar="MODEL",
                help=".keras, .h5/.hdf5, SavedModel directory, or a directory of models.",
                show_default=False,
            ),
        ],
        REQUIRED,
        _same,
    ),
    "input": Shared(
        Annotated[
            str,
            typer.Argument(
                metavar="INPUT",
                help=".npy, or .npz keyed by input name (axis 0 = samples); - reads it from stdin.",
                show_default=False,
            ),
        ],
        REQUIRED,
        _same,
    ),
    "target": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--target",
                "-t",
                metavar="PATH",
                help="Labels (.npy, or .npz keyed by output name): the objective becomes the "
                "per-sample "
                "loss.",
            ),
        ],
        None,
        _same,
    ),
    "loss": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--loss",
                metavar="NAME",
                help="Keras loss identifier (e.g. mse, sparse_categorical_crossentropy); "
                "default: the "
                "model's compiled loss.",
            ),
        ],
        None,
        _same,
    ),
    "from_logits": Shared(
        Annotated[
            bool,
            typer.Option(
                "--from-logits", help="The model outputs logits (for --loss crossentropies)."
            ),
        ],
        False,
        _same,
    ),
    "class_index": Shared(
        Annotated[
            int | None,
            typer.Option(
                "--class",
                "-c",
                metavar="K",
                help="Objective: unit K of the selected output (class score).",
            ),
        ],
        None,
        _same,
    ),
    "output": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--output", metavar="NAME|INDEX", help="Select one output of a multi-output model."
            ),
        ],
        None,
        _same,
    ),
    "batch_size": Shared(
        Annotated[
            int | None,
            typer.Option(
                "--batch-size",
                "-b",
                min=1,
                metavar="B",
                help="Samples per tape call (results do not depend on it). "
                "Default: from the input size.",
            ),
        ],
        None,
        _same,
    ),
    "training": Shared(
        Annotated[
            bool,
            typer.Option(
                "--training", help="Run the model in training mode (dropout, batch statistics)."
            ),
        ],
        False,
        _same,
    ),
    "jit": Shared(
        Annotated[bool, typer.Option("--jit", help="Compile the tape with XLA.")],
        False,
        _same,
    ),
    "out": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--out",
                "-o",
                metavar="PATH",
                help="Write the arrays to this .npz (a directory when MODEL is a directory).",
            ),
        ],
        None,
        _same,
    ),
    "output_format": Shared(
        Annotated[
            OutputFormat,
            typer.Option("--format", help=formats_help()),
        ],
        OutputFormat("table"),
        None,
    ),
    "as_json": Shared(
        Annotated[
            bool, typer.Option("--json", help="One JSON object per model on stdout, nothing else.")
        ],
        False,
        None,
    ),
    "quiet": Shared(
        Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")],
        False,
        None,
    ),
    "fail_on": Shared(
        Annotated[
            list[str] | None,
            typer.Option(
                "--fail-on",
                metavar="STATUS",
                help="Exit 1 when a tensor is nonfinite, zero or disconnected "
                "(repeat or comma list).",
            ),
        ],
        None,
        _fail_on,
    ),
    "max_norm": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--max-norm", metavar="X", help="Gate: exit 1 when a tensor's L2 norm exceeds X."
            ),
        ],
        None,
        _same,
    ),
    "min_norm": Shared(
        Annotated[
            float | None,
            typer.Option(
                "--min-norm", metavar="X", help="Gate: exit 1 when a tensor's L2 norm is below X."
            ),
        ],
        None,
        _same,
    ),
    "unsafe": Shared(
        Annotated[
            bool,
            typer.Option(
                "--unsafe",
                help="Allow unsafe deserialization (Lambda layers). Only for trusted files.",
            ),
        ],
        False,
        _same,
    ),
    "imports": Shared(
        Annotated[
            list[str] | None,
            typer.Option(
                "--import",
                metavar="MODULE|FILE.py",
                help="Import code that registers custom layers/losses before loading (repeatable).",
            ),
        ],
        None,
        _listed,
    ),
    "shard": Shared(
        Annotated[
            str | None,
            typer.Option(
                "--shard",
                metavar="K/N",
                help="With a directory MODEL: process every N-th model starting at the K-th "
                "(0-based).",
            ),
        ],
        None,
        _shard,
    ),
    "onednn": Shared(
        Annotated[
            OneDNN,
            typer.Option(
                "--onednn",
                help="TensorFlow's oneDNN CPU kernels; auto reruns with them off if they crash.",
            ),
        ],
        OneDNN.auto,
        None,
    ),
    "debug": Shared(
        Annotated[
            bool,
            typer.Option(
                "--debug",
                help="Show tracebacks and TensorFlow's own output.",
                envvar="GRADCLI_DEBUG",
            ),
        ],
        False,
        None,
    ),
}


def _version(value: bool) -> None:
    if value:
        print(f"gradcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    pass


# ------------------------------------------------------------------ running a job


def _check_paths(job: Job) -> None:
    """Everything about the paths that can be checked before TensorFlow loads: models and
    inputs exist and are regular files (a FIFO is never opened), every output can be
    written; leftovers of killed runs beside the outputs are removed."""
    from .paths import (
        check_model_path,
        check_output,
        check_regular,
        is_savedmodel,
        output_file,
        remove_stale_temps,
    )

    check_model_path(job.model)
    from_stdin = []
    for label, value in (("input", job.input), ("target", job.target), ("baseline", job.baseline)):
        if value == "-":
            from_stdin.append(label)
        elif value is not None:
            check_regular(value, f"{label} {value}")
    if len(from_stdin) > 1:
        raise UsageError(f"only one of {' and '.join(from_stdin)} can be - (stdin)")
    if from_stdin:
        _spool_stdin(from_stdin[0])
    if job.shard and not Path(job.model).is_dir():
        raise UsageError("--shard needs a directory of models as MODEL")
    many = Path(job.model).is_dir() and not is_savedmodel(Path(job.model))
    outputs = []
    if job.out is not None:
        outputs.append(("--out", job.out, ".npz", many))
    if job.png is not None:
        outputs.append(("--png", job.png, ".png", many or job.command == "wrt-input"))
    for label, value, suffix, directory in outputs:
        path = Path(value) if directory else output_file(value, suffix)
        check_output(path, label, directory=directory)
        remove_stale_temps(path)


def _spool_stdin(label: str) -> None:
    """INPUT - : stdin becomes a regular file (a pipe is copied to an unlinked temp file), so
    the worker can map it, and a rerun after a crash reads it again."""
    import shutil
    import stat
    import tempfile

    try:
        st = os.fstat(0)
    except OSError:
        raise InputError(f"{label} -: stdin is closed") from None
    if os.isatty(0):
        raise UsageError(f"{label} -: stdin is a terminal; pipe a .npy or .npz into gradcli")
    if not stat.S_ISREG(st.st_mode):
        spool = tempfile.TemporaryFile()
        with os.fdopen(os.dup(0), "rb") as src:
            shutil.copyfileobj(src, spool, 1 << 22)
        spool.flush()
        os.dup2(spool.fileno(), 0)
        spool.close()
    head = os.pread(0, 6, 0)
    if head != b"\x93NUMPY" and head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise InputError(
            f"{label} - (stdin): neither a .npy nor an .npz stream (by its first bytes)"
        )


def _execute(
    job: Job,
    *,
    output_format: str | None = None,
    quiet: bool = False,
    onednn: OneDNN = OneDNN.auto,
    debug: bool = False,
) -> None:
    """Run a job and exit with its code; the one place errors become messages."""
    from . import supervisor

    fmt = FORMATS[output_format or "table"]

    debug = debug or os.environ.get("GRADCLI_DEBUG", "") not in ("", "0")
    previous = supervisor.handle_sigterm()
    out = Console(soft_wrap=False)
    if not out.is_terminal:  # piped or redirected: room for every column, no wrapping
        out = Console(soft_wrap=False, width=120)
    err = Console(stderr=True)
    code = 0
    try:
        _check_paths(job)
        records: list[dict] = []

        def on_record(record: dict) -> None:
            if record.get("error"):
                record["error"] = render_text(record["error"], CLI_FLAGS)
            if fmt.each is not None:
                fmt.each(record, sys.stdout)
            records.append(record)

        with _progress(err, enabled=not quiet and err.is_terminal) as on_progress:
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
                    warn=_stderr_line,
                )
        if outcome.traceback and debug:
            sys.stderr.write(outcome.traceback)
        if outcome.error is not None:
            raise outcome.error
        if fmt.end is not None:
            fmt.end(records, out)
        code = max([outcome.exit_code] + [int(r.get("exit_code", 0)) for r in records])
    except KeyboardInterrupt as exc:
        code = _interrupted(exc)
    except BrokenPipeError:
        # the reader went away (`gradcli ... --json | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    except Exception as exc:  # noqa: BLE001 - the funnel: no traceback unless --debug
        code = _fail(exc, debug)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


def _fail(exc: BaseException, debug: bool = False) -> int:
    """The one place an error becomes the user's `error: ...` line, its parameters named as
    the CLI's flags; whether it was raised here, in process, or reported by the worker."""
    from .supervisor import WorkerFailed

    # a worker's error came with the worker's own traceback (printed before)
    if debug and not isinstance(exc, WorkerFailed):
        traceback.print_exception(exc)
    _stderr_line(f"error: {render_text(marked(exc), CLI_FLAGS)}")
    return exit_code(exc)


def _interrupted(exc: BaseException) -> int:
    """Ctrl-C exits 130, SIGTERM 143 (what a shell reports for them), after cleaning up."""
    from .supervisor import Terminated

    if isinstance(exc, Terminated):
        _stderr_line("terminated")
        return int(ExitCode.TERMINATED)
    _stderr_line("interrupted")
    return int(ExitCode.INTERRUPTED)


def _stderr_line(message: str) -> None:
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()


class _progress:
    """A Rich progress bar on stderr, fed by the worker's progress events."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[int, int] = {}

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, event: dict) -> None:
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
            self.tasks[index] = self.bar.add_task(f"model {index + 1}", total=event.get("total"))
        self.bar.update(self.tasks[index], completed=event.get("done", 0))

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False


def _guard(fn):
    """Option errors found before the job runs get the same one-line treatment."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GradcliError as exc:
            raise typer.Exit(_fail(exc)) from None

    return wrapper


OBJECTIVE = ("target", "loss", "from_logits", "class_index", "output")
RUN = (
    "batch_size",
    "training",
    "jit",
    "out",
    "output_format",
    "as_json",
    "quiet",
    "fail_on",
    "max_norm",
    "min_norm",
    "unsafe",
    "imports",
    "shard",
    "onednn",
    "debug",
)
OWN = "*"  # in a layout: the command's own parameters, in their order


def command(name: str, *layout: str):
    """Register a command whose function takes only its own options and returns the Job
    fields they set; the shared options named in `layout` (in help order, OWN marking where
    the function's own go) are added to its signature, and the Job is built and run here."""

    def decorate(fn: Callable[..., dict[str, Any]]):
        own = inspect.signature(fn, eval_str=True).parameters
        params: list[inspect.Parameter] = []
        for item in layout:
            if item == OWN:
                params += [p for p in own.values() if p.name not in layout]
            elif item in own:
                params.append(own[item])
            else:
                shared = SHARED[item]
                params.append(
                    inspect.Parameter(
                        item,
                        inspect.Parameter.POSITIONAL_OR_KEYWORD,
                        default=shared.default,
                        annotation=shared.annotation,
                    )
                )
        job_fields = {f.name for f in fields(Job)}

        def run(**kwargs: Any) -> None:
            fields_set = fn(**{k: v for k, v in kwargs.items() if k in own})
            job_data = {
                k: SHARED[k].to_job(v)
                for k, v in kwargs.items()
                if k not in own and SHARED[k].to_job is not None and k in job_fields
            }
            job = Job(name, **job_data, **fields_set)
            _execute(
                job,
                output_format="json" if kwargs.get("as_json") else kwargs.get("output_format"),
                quiet=kwargs.get("quiet", True),
                onednn=kwargs.get("onednn", OneDNN.auto),
                debug=kwargs.get("debug", False),
            )

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(name)(_guard(run))

    return decorate


# ------------------------------------------------------------------ commands


@command("info", "model", "output_format", "as_json", "unsafe", "imports", "shard", "debug")
def info() -> dict[str, Any]:
    """What the model is: format, inputs, outputs, compiled loss, layers (for --layer)."""
    return {}


@command("wrt-input", "model", "input", "method", *OBJECTIVE, OWN, *RUN)
def wrt_input(
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            help=method_help(),
        ),
    ] = Method.vanilla,
    samples: Annotated[
        int, typer.Option("--samples", min=1, help="SmoothGrad: noisy copies.")
    ] = 25,
    noise: Annotated[
        float,
        typer.Option(
            "--noise", min=0.0, help="SmoothGrad: noise std as a fraction of each sample's range."
        ),
    ] = 0.15,
    seed: Annotated[
        int | None, typer.Option("--seed", help="SmoothGrad: seed for repeatable noise.")
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Integrated Gradients: path steps.")
    ] = 50,
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline",
            metavar="zeros|PATH",
            help="Integrated Gradients: zeros, or a .npy/.npz (one sample or N).",
        ),
    ] = "zeros",
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, metavar="K", help="List the K most salient features."),
    ] = None,
    png: Annotated[
        str | None,
        typer.Option(
            "--png", metavar="DIR", help="Write a heatmap PNG per sample for image-like inputs."
        ),
    ] = None,
    png_limit: Annotated[
        int, typer.Option("--png-limit", min=0, help="At most this many PNGs per input.")
    ] = 16,
) -> dict[str, Any]:
    """Gradient of the objective with respect to the input (saliency, attributions)."""
    if "baseline" not in METHODS[method.value].options and baseline != "zeros":
        raise UsageError("--baseline goes with --method integrated")
    return {
        "method": method.value,
        "samples": samples,
        "noise": noise,
        "seed": seed,
        "steps": steps,
        "baseline": None if baseline == "zeros" else baseline,
        "top": top,
        "png": png,
        "png_limit": png_limit,
    }


@command("wrt-layer", "model", "input", "layer", *OBJECTIVE, *RUN)
def wrt_layer(
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer",
            "-l",
            metavar="NAME|PATH|INDEX",
            help="Layer name, nested path outer/inner, or index from `gradcli info` (repeatable).",
        ),
    ],
) -> dict[str, Any]:
    """Gradient of the objective with respect to a layer's output activation."""
    return {"layers": list(layer)}


@command("wrt-weights", "model", "input", *OBJECTIVE, OWN, *RUN)
def wrt_weights(
    png: Annotated[
        str | None,
        typer.Option(
            "--png", metavar="FILE", help="Draw the per-layer gradient-flow chart to a PNG."
        ),
    ] = None,
) -> dict[str, Any]:
    """Gradient of the mean objective over all samples w.r.t. each trainable variable."""
    return {"png": png}


@command("jacobian", "model", "input", "output", OWN, *RUN)
def jacobian(
    max_elements: Annotated[
        float,
        typer.Option(
            "--max-elements", min=1, help="Refuse (exit 2) above this many Jacobian elements."
        ),
    ] = 1e8,
) -> dict[str, Any]:
    """Per-sample Jacobian d output / d input: shape (N, *output, *input)."""
    return {"max_elements": max_elements}


@command(
    "check",
    "model",
    "input",
    OWN,
    *OBJECTIVE,
    *(o for o in RUN if o not in ("jit", "out", "fail_on", "max_norm", "min_norm")),
)
def check(
    wrt: Annotated[Wrt, typer.Option("--wrt", help="Check input or weight gradients.")] = Wrt.input,
    directions: Annotated[
        int, typer.Option("--directions", min=1, help="Random directions per tensor.")
    ] = 3,
    eps: Annotated[
        float | None,
        typer.Option(
            "--eps",
            min=0.0,
            help="Finite-difference step (default 1e-5 in float64, 1e-2 in float32).",
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(
            "--rtol",
            min=0.0,
            help="Largest relative error that passes (default 1e-4 in float64, 5e-2 in float32).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for the directions.")] = None,
) -> dict[str, Any]:
    """Compare autodiff with central finite differences along random directions."""
    if eps is not None and eps <= 0:
        raise UsageError("--eps must be positive")
    return {"wrt": wrt.value, "directions": directions, "eps": eps, "rtol": rtol, "seed": seed}


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: usage errors become one `error:` line and exit 2."""
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
        _stderr_line(f"error: {exc.format_message()}{hint}")
        sys.exit(int(getattr(exc, "exit_code", ExitCode.USAGE)))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _stderr_line("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    except KeyboardInterrupt as exc:
        sys.exit(_interrupted(exc))
    sys.exit(code if isinstance(code, int) else 0)
