"""The per-model pipeline every command shares: expand a directory of models (and shards),
name each model's outputs, isolate one model's failure from the others, load it, run the
command (commands/) in one output transaction, and emit its record.

Records are plain JSON-able dicts; presenting them is report.py's job. `emit` receives
progress and temp-file events (the supervisor uses them); it never prints.
"""

from __future__ import annotations

from pathlib import Path

from . import __version__
from .commands import COMMANDS
from .context import Context, Emit
from .errors import InputError, exit_code, marked
from .formats import EXPECTED
from .job import Job
from .loading import import_custom_code, load_model
from .paths import check_model_path, check_output, find_models, is_savedmodel
from .writers import Outputs

__all__ = ["Context", "Emit", "model_paths", "run_job", "run_one"]


def model_paths(job: Job) -> tuple[list[Path], bool]:
    """The models a job covers, and whether MODEL was a directory of models."""
    path = Path(job.model)
    if path.is_dir() and not is_savedmodel(path):
        models = find_models(path)
        if job.shard:
            k, n = job.shard
            models = models[k::n]
        return models, True
    return [path], False


def _model_out(base: str | None, root: Path, model: Path, suffix: str) -> Path | None:
    """With a directory MODEL, -o/--png name a directory holding one file per model."""
    if base is None:
        return None
    rel = model.relative_to(root)
    name = rel.with_suffix(suffix) if model.is_file() else rel.with_name(rel.name + suffix)
    target = Path(base) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def run_job(job: Job, emit: Emit) -> int:
    """Run a job; emit one record per model; return the worst exit code."""
    import_custom_code(job.imports)
    models, many = model_paths(job)
    if many and not models:
        raise InputError(f"{job.model}: no models ({EXPECTED}) below it")
    worst = 0
    for index, path in enumerate(models):
        if index in job.skip:
            continue
        out = png = None
        if many:
            out = _model_out(job.out, Path(job.model), path, ".npz")
            png = _model_out(job.png, Path(job.model), path, COMMANDS[job.command].png_suffix)
        else:
            out = Path(job.out) if job.out else None
            png = Path(job.png) if job.png else None
        try:
            if job.against:
                from .against import run_against

                record = run_against(job, path, out, emit, index)
            else:
                record = run_one(job, path, out, png, emit, index)
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
            if not many:
                raise
            record = _error_record(job, path, exit_code(exc), marked(exc))
        worst = max(worst, int(record["exit_code"]))
        emit("result", index=index, record=record)
    return worst


def _error_record(job: Job, path: Path, code: int, message: str) -> dict:
    return {
        "version": __version__,
        "command": job.command,
        "model": str(path),
        "error": message,
        "exit_code": int(code),
        "tensors": [],
        "gates": [],
    }


def run_one(
    job: Job, path: Path, out: Path | None, png: Path | None, emit: Emit, index: int = 0
) -> dict:
    """One model: load it, run the command in one `Outputs` transaction, return its record."""
    command = COMMANDS[job.command]
    if out is not None:
        check_output(out, "--out")
    check_model_path(str(path))  # a FIFO named like a model is refused, never opened
    handle = load_model(path, unsafe=job.unsafe, describe_only=command.run is None)
    if command.describe is not None:
        return command.describe(job, handle)
    ctx = Context(job, handle, emit, index)
    with Outputs(ctx.temp) as ctx.outputs:  # every output file of the run, all or nothing
        record = command.run(ctx, out, png)
        ctx.outputs.commit()
    return record
