"""The `gradcli` command line: the commands' signatures (their own options; the shared ones
come from options.py), the Typer app and the console-script entry; session.py runs the job.

Nothing here imports TensorFlow: `--help`, `--version` and option errors answer at once; the
work runs in a worker process (supervisor.py).

One file on purpose: it is the whole command-line surface, one signature per command with
its own options' help text, which reads best in one place (the shared options are in
options.py, the work elsewhere).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from enum import StrEnum
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from gradcli._version import __version__
from gradcli.cli.completion import complete_layer
from gradcli.cli.helpformat import PlainCommand, option_message, summary
from gradcli.cli.launch import COMPLETE_VAR
from gradcli.cli.options import (
    AGAINST,
    DIFF_GATES,
    OBJECTIVE,
    OWN,
    REPORTS,
    RUN,
    SHARED,
    Method,
    OneDNN,
    PngStyle,
    Wrt,
)
from gradcli.cli.session import execute, fail, interrupted, stderr_line
from gradcli.commands.job import Job
from gradcli.commands.values import check_method_options
from gradcli.errors import ExitCode, GradcliError, UsageError
from gradcli.methods import METHODS, method_help

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
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GradcliError as exc:
            raise typer.Exit(fail(exc)) from None

    return wrapper


def _parameters(own: Any, layout: tuple[str, ...]) -> list[inspect.Parameter]:
    """A command's parameters: its own ones and the shared ones `layout` names, in order."""
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
    return params


def local_command(name: str, *layout: str):
    """Register a command that runs in this process without TensorFlow (`diff`): `fn` takes
    its own options and the shared ones named in `layout`, and is called with all of them."""

    def decorate(fn: Callable[..., None]):
        own = inspect.signature(fn, eval_str=True).parameters
        params = _parameters(own, layout)

        def run(**kwargs: Any) -> None:
            fn(**kwargs)

        return _register(name, fn, run, params)

    return decorate


def _register(name: str, fn: Callable, run: Callable, params: list) -> Callable:
    """Register `run` as command `name`, with `fn`'s name and help and the signature
    (`params`) Typer reads its options from."""
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return app.command(name, cls=PlainCommand, short_help=summary(fn.__doc__ or ""))(_guard(run))


def command(name: str, *layout: str):
    """Register a command whose function takes only its own options and returns the Job
    fields they set; the shared options named in `layout` (in help order, OWN marking where
    the function's own go) are added to its signature, and the Job is built and run here."""

    def decorate(fn: Callable[..., dict[str, Any]]):
        own = inspect.signature(fn, eval_str=True).parameters
        params = _parameters(own, layout)
        job_fields = {f.name for f in fields(Job)}

        def run(**kwargs: Any) -> None:
            fields_set = fn(**{k: v for k, v in kwargs.items() if k in own})
            job_data = {
                k: SHARED[k].to_job(v)
                for k, v in kwargs.items()
                if k not in own and SHARED[k].to_job is not None and k in job_fields
            }
            job = Job(name, **job_data, **fields_set)
            execute(
                job,
                output_format="json" if kwargs.get("as_json") else kwargs.get("output_format"),
                quiet=kwargs.get("quiet", True),
                onednn=kwargs.get("onednn", OneDNN.auto),
                debug=kwargs.get("debug", False),
                junit=kwargs.get("junit"),
            )

        return _register(name, fn, run, params)

    return decorate


# ------------------------------------------------------------------ commands


@command("info", "model", "output_format", "as_json", "unsafe", "imports", "shard", "debug")
def info() -> dict[str, Any]:
    """What the model is: format, inputs, outputs, compiled loss, layers (for --layer)."""
    return {}


@command(
    "wrt-input", "model", "input", "method", "layer", *OBJECTIVE, "logits", OWN, *RUN, *AGAINST
)
def wrt_input(
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            "-m",
            metavar="METHOD",
            help=method_help(),
        ),
    ] = Method.vanilla,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="NAME|PATH|INDEX",
            autocompletion=complete_layer,
            help="CAM methods: the layer (default: the last layer whose output is more than 1x1).",
        ),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", min=1, metavar="N", help="SmoothGrad, SquareGrad, VarGrad: noisy copies."
        ),
    ] = 25,
    noise: Annotated[
        float,
        typer.Option(
            "--noise",
            min=0.0,
            metavar="X",
            help="SmoothGrad, SquareGrad, VarGrad: noise std as a fraction of each sample's range.",
        ),
    ] = 0.15,
    seed: Annotated[
        int | None,
        typer.Option("--seed", metavar="N", help="SmoothGrad family: seed for repeatable noise."),
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", min=1, metavar="N", help="Integrated Gradients: path steps.")
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
            "--png",
            metavar="DIR",
            help="Write a PNG per sample (input | map | overlay) into this directory, for "
            "image-like inputs.",
        ),
    ] = None,
    png_limit: Annotated[
        int,
        typer.Option("--png-limit", min=0, metavar="N", help="At most this many PNGs per input."),
    ] = 16,
    png_style: Annotated[
        PngStyle | None,
        typer.Option(
            "--png-style",
            metavar="signed|magnitude",
            help="signed: a diverging colormap centred on zero (red +, blue -); magnitude: "
            "|value|. Default: signed for integrated and gradxinput, magnitude for the others "
            "(CAMs, squaregrad and vargrad are never negative).",
            show_default=False,
        ),
    ] = None,
) -> dict[str, Any]:
    """Gradient of the objective with respect to the input: saliency and attributions.

    With --target every method explains the loss (a CAM then shows what raises it); to
    explain each sample's true class, give the labels as --class LABELS.npy.
    """
    style = None if png_style is None else png_style.value
    check_method_options(method.value, layer, baseline, png, style)
    return {
        "method": method.value,
        "layers": [] if layer is None else [layer],
        "samples": samples,
        "noise": noise,
        "seed": seed,
        "steps": steps,
        "baseline": None if baseline == "zeros" else baseline,
        "top": top,
        "png": png,
        "png_limit": png_limit,
        "png_style": style,
    }


@command("wrt-layer", "model", "input", "layer", OWN, *OBJECTIVE, "logits", *RUN, *AGAINST)
def wrt_layer(
    layer: Annotated[
        list[str],
        typer.Option(
            "--layer",
            "-l",
            metavar="NAME|PATH|INDEX",
            autocompletion=complete_layer,
            help="Layer name, nested path outer/inner, or index from `gradcli info` (repeatable).",
        ),
    ],
    activations: Annotated[
        bool,
        typer.Option(
            "--activations", help="Also write each layer's activation (key LAYER/activation)."
        ),
    ] = False,
    method: Annotated[
        str | None, typer.Option("--method", "-m", hidden=True, help="See wrt-input --method.")
    ] = None,
) -> dict[str, Any]:
    """Gradient of the objective with respect to a layer's output activation."""
    if method is not None:
        cams = [m.name for m in METHODS.values() if m.needs_layer]
        where = (
            f"CAM methods are attributions over the input: `gradcli wrt-input MODEL INPUT "
            f"--method {method} --layer L`"
            if method in cams
            else f"methods are options of wrt-input: `gradcli wrt-input MODEL INPUT --method "
            f"{method}`"
        )
        raise UsageError(f"wrt-layer has no --method; {where}")
    return {"layers": list(layer), "activations": activations}


@command("wrt-weights", "model", "input", *OBJECTIVE, "logits", OWN, *RUN, *AGAINST)
def wrt_weights(
    png: Annotated[
        str | None,
        typer.Option(
            "--png", metavar="FILE", help="Draw the per-layer gradient-flow chart to a PNG."
        ),
    ] = None,
    per_sample: Annotated[
        bool,
        typer.Option(
            "--per-sample",
            help="Also each sample's gradient g_i: norm distribution, tr Σ, SNR, noise scale "
            "B_simple per variable, layer and model; norms to the .npz.",
        ),
    ] = False,
    per_sample_arrays: Annotated[
        bool,
        typer.Option(
            "--per-sample-arrays",
            help="Also stream every g_i to the .npz (implies --per-sample; N x the model's size).",
        ),
    ] = False,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            min=1,
            metavar="K",
            help="List the K samples with the largest gradient norm (implies --per-sample; "
            "default 5).",
        ),
    ] = None,
) -> dict[str, Any]:
    """Gradient of the mean objective over all samples with respect to each trainable
    variable."""
    return {
        "png": png,
        "per_sample": per_sample or per_sample_arrays or top is not None,
        "per_sample_arrays": per_sample_arrays,
        "top": top,
    }


@command("jacobian", "model", "input", "output", OWN, *RUN)
def jacobian(
    max_elements: Annotated[
        float,
        typer.Option(
            "--max-elements",
            min=1,
            metavar="N",
            help="Refuse (exit 2) above this many Jacobian elements.",
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
    wrt: Annotated[
        Wrt, typer.Option("--wrt", metavar="input|weights", help="Check input or weight gradients.")
    ] = Wrt.input,
    directions: Annotated[
        int, typer.Option("--directions", min=1, metavar="N", help="Random directions per tensor.")
    ] = 3,
    eps: Annotated[
        float | None,
        typer.Option(
            "--eps",
            min=0.0,
            metavar="X",
            help="Finite-difference step (default 1e-5 in float64, 1e-2 in float32).",
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(
            "--rtol",
            min=0.0,
            metavar="X",
            help="Largest relative error that passes (default 1e-4 in float64, 5e-2 in float32).",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="N", help="Seed for the directions.")
    ] = None,
) -> dict[str, Any]:
    """Compare autodiff with central finite differences along random directions."""
    if eps is not None and eps <= 0:
        raise UsageError("--eps must be positive")
    return {"wrt": wrt.value, "directions": directions, "eps": eps, "rtol": rtol, "seed": seed}


@local_command("diff", "a", "b", *DIFF_GATES, *REPORTS)
def diff(
    a: Annotated[
        str, typer.Argument(metavar="A", help="A result .npz (the new one).", show_default=False)
    ],
    b: Annotated[
        str,
        typer.Argument(
            metavar="B", help="The result .npz to compare with (the reference).", show_default=False
        ),
    ],
    **options: Any,
) -> None:
    """Compare two result .npz files key by key, B the reference.

    Per key: cosine, relative L2 difference, max abs difference, sign agreement; for
    attribution maps (wrt-input, wrt-layer results), per-sample Spearman rank correlation
    and top-P% overlap."""
    from gradcli.cli.session import present

    def produce(on_record, on_progress) -> int:
        from gradcli.jobs.diff import DiffGates, diff_files

        gates = DiffGates(options["min_cosine"], options["max_rel_diff"], options["min_rank_corr"])
        on_record(diff_files(a, b, gates, options["top_percent"]))
        return 0

    present(
        produce,
        output_format="json" if options["as_json"] else options["output_format"].value,
        quiet=options["quiet"],
        debug=options["trace"],
        junit=options["junit"],
        reads=[("A", a), ("B", b)],
    )


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: usage errors become one `error:` line and exit 2."""
    from gradcli.process import supervisor

    completing = COMPLETE_VAR in os.environ  # the shell asks for completions: no worker
    if completing:
        from typer.completion import completion_init

        completion_init()  # Typer's bash/zsh/fish protocol (the scripts --show-completion prints)
    elif argv is None:  # the program itself (launch.py has usually started the worker already)
        supervisor.prestart(sys.argv[1:])
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
