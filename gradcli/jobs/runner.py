"""The per-model pipeline every command shares: expand a directory of models (and shards),
name each model's outputs, isolate one model's failure from the others, load it, run the
command (commands/) in one output transaction, and emit its record.

Records are plain JSON-able dicts; presenting them is report.py's job. `emit` receives
progress and temp-file events (the supervisor uses them); it never prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradcli._version import __version__
from gradcli.commands import spec as spec_of
from gradcli.commands.display import rendered, typed
from gradcli.errors import InputError, exit_code, marked
from gradcli.io.hashes import check_unchanged, stamp
from gradcli.io.modelfiles import EXPECTED, is_savedmodel
from gradcli.io.outputs import Outputs
from gradcli.io.paths import (
    check_model_path,
    check_output,
    find_models,
    model_output,
    trajectory_outputs,
)
from gradcli.jobs.context import Context, Emit
from gradcli.load.loaders import load_model
from gradcli.load.plugins import import_custom_code

Report = Callable[[dict, Outputs], None]  # stages report files of a record in a transaction


def model_paths(job: Any) -> tuple[list[Path], bool]:
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
    target = model_output(base, root, model, suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def run_job(job: Any, emit: Emit) -> int:
    """Run a job; emit one record per model; return the worst exit code. A command over the
    checkpoints of one run (spec.checkpoints) runs the whole job itself: one record."""
    import_custom_code(job.imports)
    if spec_of(job.command).checkpoints:
        return spec_of(job.command).implementation()(job, emit)
    models, many = model_paths(job)
    if many and not models:
        raise InputError(f"{job.model}: no models ({EXPECTED}) below it")
    worst = 0
    # report files of one model are staged with its outputs and committed with them (all or
    # nothing); a directory run's cover every model: the CLI writes them once all are in
    report = report_stager(job.reports) if job.reports and not many else None
    spec = spec_of(job.command)
    base_out, base_png = getattr(job, "out", None), getattr(job, "png", None)
    if many and spec.trajectory and base_png:  # the CLI draws the trajectory once all are in
        base_png, _ = trajectory_outputs(base_png)
    for index, path in enumerate(models):
        if index in job.skip:
            continue
        out = png = None
        if many:
            out = _model_out(base_out, Path(job.model), path, ".npz")
            png = _model_out(base_png, Path(job.model), path, spec.png_suffix or "")
        else:
            out = Path(base_out) if base_out else None
            png = Path(base_png) if base_png else None
        try:
            if getattr(job, "against", None):
                from gradcli.jobs.diff_runs import run_against

                record = run_against(job, path, out, emit, index, report=report)
            else:
                record = run_one(job, path, out, png, emit, index, report=report)
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
            if not many:
                raise
            record = _error_record(job, path, exit_code(exc), marked(exc))
        worst = max(worst, int(record["exit_code"]))
        emit("result", index=index, record=record)
    return worst


def report_stager(reports: dict[str, str]) -> Report:
    """Stages each report file (format -> path) of one model's record in its transaction,
    its messages naming parameters as the CLI's flags."""

    def stage(record: dict, outputs: Outputs) -> None:
        from gradcli.present.reports import write_report

        shown = typed([rendered(dict(record))])
        for fmt, path in reports.items():
            write_report(fmt, shown, path, outputs)

    return stage


def _error_record(job: Any, path: Path, code: int, message: str) -> dict:
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
    job: Any,
    path: Path,
    out: Path | None,
    png: Path | None,
    emit: Emit,
    index: int = 0,
    report: Report | None = None,
) -> dict:
    """One model: load it, run the command in one `Outputs` transaction, return its record.
    `report(record, outputs)` stages report files (--junit) in that transaction."""
    spec = spec_of(job.command)
    if out is not None:
        check_output(out, "--out")
    check_model_path(str(path))  # a FIFO named like a model is refused, never opened
    # the sha256 recorded must be of what was loaded and read: the files must be the same
    # (inode, size, times) after hashing as before loading
    before = {k: (v, stamp(v)) for k, v in files_read(job, str(path)).items() if v is not None}
    handle = load_model(path, unsafe=job.unsafe, describe_only=not spec.computes)
    if not spec.computes:
        record = spec.implementation()(job, handle)
        check_unchanged(before)
        if report is not None:
            with Outputs(lambda p: emit("temp", path=p)) as outputs:
                report(record, outputs)
                outputs.commit()
        return record
    ctx = Context(job, handle, emit, index)
    with Outputs(ctx.temp) as ctx.outputs:  # every output file of the run, all or nothing
        record = spec.implementation()(ctx, out, png)
        check_unchanged(before)
        if report is not None:  # rendered before anything is committed
            report(record, ctx.outputs)
        ctx.outputs.commit()
    return record


def files_read(job: Any, model: str) -> dict[str, str | None]:
    """The files a job reads, by what they are: the model, its command's files (INPUT,
    --target, --baseline) and a --class FILE.npy."""
    files: dict[str, str | None] = {"model": model}
    for name in spec_of(job.command).files:
        files[name] = getattr(job, name, None)
    files["classes"] = getattr(job, "class_file", None)
    return files
