"""The Python API: the CLI's engine on in-memory arrays, with the CLI's options as keyword
arguments (their Python names: `class_index` is --class, `layers` is --layer).

    import gradcli
    g = gradcli.wrt_input("model.keras", x, class_index="pred")   # {"input_name": (N, ...)}
    r = gradcli.wrt_weights(model, x, target=y, return_record=True)
    r.arrays["dense/kernel"], r.figures["dense/kernel"]["l2"], r.gates

`model` is a path, a loaded Keras model, or a handle from `gradcli.load_model`; `x` (and
`target`) is an array for a single input (output), a dict keyed by input (output) name, or
a list in the model's order. `class_index` is K, "pred", a .npy path, or an array of one
class per sample. Semantics are exactly the CLI's (see `gradcli --help` and the README).
Errors are `gradcli.errors.GradcliError`s, naming parameters as Python knows them.

One file on purpose: one explicit function per command of the table (commands/), each with
its keyword arguments spelled out where `help()` shows them; the work is jobs/'.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def _quiet_start() -> Iterator[None]:
    """TensorFlow's start-up lines (oneDNN, CUDA stubs, `cuInit` failures) are written by
    its C++ logging straight to file descriptor 2, which a notebook shows in every output;
    they are sent to /dev/null while TensorFlow starts, unless TF_CPP_MIN_LOG_LEVEL or
    GRADCLI_DEBUG says the user wants them."""
    wanted = "TF_CPP_MIN_LOG_LEVEL" in os.environ or os.environ.get("GRADCLI_DEBUG", "") not in (
        "",
        "0",
    )
    if wanted:
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_start():
    from gradcli.load.backend import keras, tf

    tf.config.list_physical_devices()  # the CUDA probe (and its cuInit line) happens here

from gradcli.commands import api_specs  # noqa: E402
from gradcli.commands.spec import CommandSpec  # noqa: E402
from gradcli.errors import InputError, UsageError, render_text  # noqa: E402
from gradcli.io.arrays import ArraySource, check_dtype  # noqa: E402
from gradcli.jobs.context import Context  # noqa: E402
from gradcli.load.handles import (  # noqa: E402
    KerasHandle,
    ModelHandle,
    output_names,  # noqa: E402
)
from gradcli.load.loaders import load_model as _load_model  # noqa: E402
from gradcli.load.losses import compiled_losses  # noqa: E402
from gradcli.present.gates import FAIL_ON_CHOICES  # noqa: E402
from gradcli.present.records import MESSAGE_KEYS  # noqa: E402

__all__ = ["Result", "load_model", *api_specs()]


@dataclass
class Result:
    """A run's arrays with what the CLI reports of them.

    `arrays`: the tensors, as `-o` writes them. `figures`: each tensor's row of the table
    (l2, mean_abs, max_abs, zero_fraction, nonfinite, status, ...), by name. `gates`: the
    statuses that tripped a gate (`fail_on`, `max_norm`, `min_norm`; diff's limits);
    `ok` is True when none did. `record`: the whole JSON record the CLI prints with --json
    (objective, method, provenance, ...); `notes`: what the CLI prints as `note:` lines.
    """

    arrays: dict[str, np.ndarray]
    record: dict
    figures: dict[str, dict] = field(init=False)

    def __post_init__(self) -> None:
        self.figures = {t["name"]: t for t in self.record.get("tensors", [])}

    @property
    def gates(self) -> list[str]:
        return list(self.record.get("gates", []))

    @property
    def ok(self) -> bool:
        return not self.gates

    @property
    def notes(self) -> list[str]:
        return [*self.record.get("warnings", []), *self.record.get("notes", [])]

    def __repr__(self) -> str:
        names = ", ".join(self.figures) or "no tensors"
        return f"Result({self.record.get('command')}: {names}; gates: {self.gates or 'none'})"


def load_model(path: str | Path, unsafe: bool = False) -> ModelHandle:
    """Load a .keras, .h5 or SavedModel the way the CLI does (safe mode unless `unsafe`)."""
    return _load_model(path, unsafe=unsafe)


def _handle(model: Any, unsafe: bool) -> ModelHandle:
    if isinstance(model, ModelHandle):
        return model
    if isinstance(model, keras.Model):
        names = output_names(model)
        return KerasHandle(
            model,
            Path(f"<{model.name}>"),
            "keras",
            "in-memory",
            compiled_losses(model, names, keras),
        )
    return _load_model(model, unsafe=unsafe)


def _sources(data: Any, names: list[str], what: str) -> dict[str, ArraySource]:
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(
                f"{what}: no array for {', '.join(missing)}; expected keys {', '.join(names)}"
            )
        items = {n: data[n] for n in names}
    elif isinstance(data, list | tuple):
        if len(data) != len(names):
            raise InputError(
                f"{what}: expected {len(names)} arrays ({', '.join(names)}), got {len(data)}"
            )
        items = dict(zip(names, data, strict=True))
    else:
        if len(names) != 1:
            raise InputError(
                f"{what}: the model has {len(names)} {what}s ({', '.join(names)});"
                f" pass a dict keyed by name"
            )
        items = {names[0]: data}
    out = {}
    for name, value in items.items():
        array = np.asarray(value)
        label = f"{what} {name!r}"
        check_dtype(array, label)
        out[name] = ArraySource(array, label)
    return out


def _targets(handle: ModelHandle, target: Any, output: str | None) -> dict | None:
    if target is None:
        return None
    names = [o.name for o in handle.outputs]
    if not isinstance(target, dict | list | tuple) and len(names) > 1:
        if output not in names:
            raise InputError("target: pass a dict keyed by output name for a multi-output model")
        names = [output]
    return _sources(target, names, "target")


def _fail_on(values: str | Sequence[str]) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    bad = [v for v in items if v not in FAIL_ON_CHOICES]
    if bad:
        raise UsageError(f"fail_on={bad[0]!r}: expected some of {', '.join(FAIL_ON_CHOICES)}")
    return sorted(set(items))


def _spec(function: Any) -> CommandSpec:
    """The command whose Python function this is (commands.CommandSpec.api_name)."""
    return api_specs()[function.__name__]


def _run(spec: CommandSpec, model: Any, x: Any, target: Any, options: dict[str, Any]) -> Result:
    """Run a gradient command in memory, as the CLI's worker would."""
    unsafe = options.pop("unsafe", False)
    handle = _handle(model, unsafe)
    classes = options.get("class_index")
    class_array = None
    if classes is not None and not isinstance(classes, str | int | np.integer | Path):
        class_array, options["class_index"] = classes, None  # one class per sample
    elif isinstance(classes, Path):
        options["class_index"] = str(classes)
    options["fail_on"] = _fail_on(options.get("fail_on") or [])
    job = spec.job(model=str(handle.path), unsafe=unsafe, **options)
    if spec.normalize is not None:
        spec.normalize(job)
    arrays = _sources(x, [i.name for i in handle.inputs], "input")
    collected: dict[str, np.ndarray] = {}
    ctx = Context(
        job,
        handle,
        lambda *a, **k: None,
        0,
        collect=collected,
        arrays=arrays,
        target_arrays=_targets(handle, target, options.get("output")),
        class_array=class_array,
    )
    record = spec.implementation()(ctx, None, None)
    return Result(collected, _python_messages(record))


def info(model: Any, *, unsafe: bool = False) -> dict:
    """What the model is (`gradcli info --json`'s record): format, inputs, outputs, compiled
    loss, layers."""
    handle = _handle(model, unsafe)
    spec = _spec(info)
    record = spec.implementation()(spec.job(model=str(handle.path), unsafe=unsafe), handle)
    return _python_messages(record)


def _python_messages(record: dict) -> dict:
    """The record's messages with parameters named as Python knows them (in place)."""
    for key in MESSAGE_KEYS:
        value = record.get(key)
        if isinstance(value, str):
            record[key] = render_text(value)
        elif isinstance(value, list) and value:
            record[key] = [render_text(line) for line in value]
    return record


def _arrays_or_result(result: Result, return_record: bool) -> dict[str, np.ndarray] | Result:
    return result if return_record else result.arrays


def wrt_input(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    class_index: Any = None,
    output: str | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    logits: bool = False,
    method: str = "vanilla",
    layer: str | None = None,
    samples: int = 25,
    noise: float = 0.15,
    seed: int | None = None,
    steps: int = 50,
    baseline: str | None = None,
    top: int | None = None,
    batch_size: int | None = None,
    training: bool = False,
    jit: bool = False,
    fail_on: str | Sequence[str] = (),
    max_norm: float | None = None,
    min_norm: float | None = None,
    unsafe: bool = False,
    return_record: bool = False,
) -> dict[str, np.ndarray] | Result:
    """d o_i / d x_i per input under `method` (`gradcli wrt-input`): vanilla, gradxinput,
    smoothgrad, squaregrad, vargrad, integrated, gradcam, gradcam++, layercam (on `layer`).

    The objective: the per-sample loss against `target` (`loss`, `from_logits`), else
    `class_index` (--class: K, "pred", a .npy path, or an array of N classes), else the sum
    of the outputs; `output` selects one output, `logits` differentiates before the final
    softmax/sigmoid. Returns {input name: (N, ...)} (CAMs: also "cam@LAYER"), or with
    `return_record=True` a `Result` with the figures and gates too.
    """
    options = locals().copy()
    for key in ("model", "x", "target", "return_record", "layer"):
        options.pop(key)
    options["layers"] = [] if layer is None else [str(layer)]
    return _arrays_or_result(_run(_spec(wrt_input), model, x, target, options), return_record)


def wrt_layer(
    model: Any,
    x: Any,
    layers: str | int | Sequence[str | int],
    target: Any = None,
    *,
    class_index: Any = None,
    output: str | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    logits: bool = False,
    activations: bool = False,
    batch_size: int | None = None,
    training: bool = False,
    jit: bool = False,
    fail_on: str | Sequence[str] = (),
    max_norm: float | None = None,
    min_norm: float | None = None,
    unsafe: bool = False,
    return_record: bool = False,
) -> dict[str, np.ndarray] | Result:
    """d o_i / d a_i for each layer (--layer: a name, a nested path outer/inner, or an index
    into `gradcli info`'s list); `activations` also returns each a_i as "LAYER/activation".
    Objective options as `wrt_input`'s."""
    options = locals().copy()
    for key in ("model", "x", "target", "return_record"):
        options.pop(key)
    chosen = [layers] if isinstance(layers, str | int) else list(layers)
    options["layers"] = [str(item) for item in chosen]
    return _arrays_or_result(_run(_spec(wrt_layer), model, x, target, options), return_record)


def wrt_weights(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    class_index: Any = None,
    output: str | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    logits: bool = False,
    per_sample: bool = False,
    per_sample_arrays: bool = False,
    top: int | None = None,
    batch_size: int | None = None,
    training: bool = False,
    jit: bool = False,
    fail_on: str | Sequence[str] = (),
    max_norm: float | None = None,
    min_norm: float | None = None,
    unsafe: bool = False,
    return_record: bool = False,
) -> dict[str, np.ndarray] | Result:
    """d (mean_i o_i) / d theta per trainable variable path (disconnected ones are absent);
    `per_sample`, `per_sample_arrays`, `top` as --per-sample, --per-sample-arrays, --top
    (the statistics are in the `Result`'s record, key "per_sample")."""
    options = locals().copy()
    for key in ("model", "x", "target", "return_record"):
        options.pop(key)
    return _arrays_or_result(_run(_spec(wrt_weights), model, x, target, options), return_record)


def jacobian(
    model: Any,
    x: Any,
    *,
    output: str | None = None,
    max_elements: float = 1e8,
    batch_size: int | None = None,
    training: bool = False,
    jit: bool = False,
    unsafe: bool = False,
    return_record: bool = False,
) -> dict[str, np.ndarray] | Result:
    """J[i] = d f(x_i) / d x_i for the selected output, per input: (N, *output, *input)."""
    options = locals().copy()
    for key in ("model", "x", "return_record"):
        options.pop(key)
    return _arrays_or_result(_run(_spec(jacobian), model, x, None, options), return_record)


def check(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    wrt: str = "input",
    directions: int = 3,
    eps: float | None = None,
    rtol: float | None = None,
    seed: int | None = None,
    class_index: Any = None,
    output: str | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    batch_size: int | None = None,
    training: bool = False,
    unsafe: bool = False,
) -> Result:
    """Autodiff against central finite differences (`gradcli check`): a `Result` whose
    figures hold each tensor's autodiff, finite_diff, fd_error, rel_error and status;
    `gates` is ["mismatch"] when a direction misses (the CLI exits 1)."""
    options = locals().copy()
    for key in ("model", "x", "target"):
        options.pop(key)
    result = _run(_spec(check), model, x, target, options)
    mismatched = any(t["status"] == "mismatch" for t in result.record["tensors"])
    if mismatched and "mismatch" not in result.record["gates"]:
        result.record["gates"] = [*result.record["gates"], "mismatch"]
    return result


def hessian(
    model: Any,
    x: Any,
    target: Any = None,
    *,
    wrt: str = "weights",
    top_k: int = 1,
    which: str = "largest",
    tol: float = 1e-3,
    lanczos_steps: int = 100,
    probes: int = 100,
    trace_rtol: float | None = None,
    per_layer: bool = False,
    density: bool = False,
    density_runs: int = 4,
    density_steps: int = 64,
    bins: int = 100,
    seed: int = 0,
    hvp: str = "double-backward",
    max_sharpness: float | None = None,
    class_index: Any = None,
    output: str | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    logits: bool = False,
    batch_size: int | None = None,
    training: bool = False,
    jit: bool = False,
    fail_on: str | Sequence[str] = (),
    unsafe: bool = False,
) -> Result:
    """Curvature of the objective (`gradcli hessian`): a `Result` whose record holds `eigen`
    (the `top_k` top eigenvalues by `which`: largest, smallest or magnitude, with residuals),
    `trace` (Hutchinson, `probes`, with its standard error), `layers` (each layer's block
    trace, and its own top eigenvalue with `per_layer`), `density` (stochastic Lanczos
    quadrature with `density`) and per-variable rows in `figures`; `arrays` holds
    "eigenvalues", "eigenvectors/<variable>" and the density. `wrt="input"`: each sample's
    top eigenvalue(s) of its input Hessian instead ("eigenvalues" (N, top_k), the record's
    `per_sample`). `max_sharpness` gates the largest eigenvalue. Objective options as
    `wrt_weights`'."""
    options = locals().copy()
    for key in ("model", "x", "target"):
        options.pop(key)
    return _run(_spec(hessian), model, x, target, options)


def diff(
    a: str | Path,
    b: str | Path,
    *,
    min_cosine: float | None = None,
    max_rel_diff: float | None = None,
    min_rank_corr: float | None = None,
    top_percent: float = 10.0,
) -> Result:
    """Compare two result .npz files key by key, B the reference (`gradcli diff`): a
    `Result` whose figures hold each key's cosine, rel_diff, ... and whose gates are the
    limits tripped."""
    from gradcli.jobs.diff import DiffGates, diff_files

    record = diff_files(a, b, DiffGates(min_cosine, max_rel_diff, min_rank_corr), top_percent)
    return Result({}, record)


def influence(
    checkpoints: str | Path,
    x: str | Path,
    target: str | Path,
    *,
    test: str | Path | None = None,
    test_target: str | Path | None = None,
    self_influence: bool = False,
    top: int = 5,
    lr: float | Sequence[float] | str | None = None,
    layers: str | int | Sequence[str | int] = (),
    proj_dim: int | None = None,
    seed: int = 0,
    matrix: bool = False,
    loss: str | None = None,
    from_logits: bool = False,
    output: str | None = None,
    batch_size: int | None = None,
    shard: str | tuple[int, int] | None = None,
    out: str | Path | None = None,
    png: str | Path | None = None,
    png_limit: int = 16,
    unsafe: bool = False,
) -> Result:
    """TracIn over a training run's checkpoints (`gradcli influence`), from files: the
    training set is streamed from its memory map, as the CLI does. `lr`: one rate, one per
    checkpoint, or None / "saved" (each checkpoint's saved optimizer); `layers`: names,
    indices or "last"; `shard`: (K, N), "K/N" or "auto". A `Result` whose arrays are what -o
    holds (rows, self_influence, loss, proponent_scores, proponent_rows, opponent_scores,
    opponent_rows, matrix) and whose record holds the top samples per test sample."""
    from gradcli.commands.values import lr_value, shard_value
    from gradcli.jobs.influence import compute

    spec = _spec(influence)
    if lr is None or isinstance(lr, str):
        rates = lr_value(lr)
    else:  # one rate or a sequence, checked as the CLI checks --lr
        rates = lr_value(",".join(repr(float(v)) for v in np.atleast_1d(lr)))
    chosen = [layers] if isinstance(layers, str | int) else list(layers)
    job = spec.job(
        model=str(checkpoints),
        input=str(x),
        target=str(target),
        test=None if test is None else str(test),
        test_target=None if test_target is None else str(test_target),
        self_influence=self_influence,
        top=top,
        lr=rates,
        layers=[str(item) for item in chosen],
        proj_dim=proj_dim,
        seed=seed,
        matrix=matrix,
        loss=loss,
        from_logits=from_logits,
        output=output,
        batch_size=batch_size,
        shard=shard_value(shard) if isinstance(shard, str) else shard,
        out=None if out is None else str(out),
        png=None if png is None else str(png),
        png_limit=png_limit,
        unsafe=unsafe,
    )
    spec.normalize(job)
    collected: dict[str, np.ndarray] = {}
    record = compute(job, lambda *a, **k: None, collect=collected)
    return Result(collected, _python_messages(record))


def merge(shards: Sequence[str | Path], *, out: str | Path | None = None) -> Result:
    """The shards of one `influence(..., shard=(K, N))` job combined exactly into the whole
    run's result (`gradcli merge`): a `Result` with the merged arrays and record."""
    from gradcli.jobs.merge import run

    spec = _spec(merge)
    job = spec.job(shards=[str(s) for s in shards], out=None if out is None else str(out))
    collected: dict[str, np.ndarray] = {}
    record = run(job, collect=collected)
    return Result(collected, _python_messages(record))
