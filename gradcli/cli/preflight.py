"""Everything about a run's paths that can be checked before TensorFlow loads: models and
inputs exist and are regular files (a FIFO is never opened), every output can be written, is
no other output and none of the files the run reads; leftovers of killed runs beside the
outputs are removed; stdin given as `-` is spooled into a file the worker can map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gradcli.commands.spec import CommandSpec
from gradcli.errors import UsageError
from gradcli.io.collisions import check_distinct, model_outputs
from gradcli.io.modelfiles import EXPECTED, is_savedmodel
from gradcli.io.paths import (
    check_model_path,
    check_output,
    check_regular,
    output_file,
    remove_stale_temps,
    stdin_kind,
    trajectory_outputs,
    walk_models,
)


def is_directory_run(model: str) -> bool:
    """MODEL is a directory of models (not one SavedModel)."""
    return Path(model).is_dir() and not is_savedmodel(Path(model))


def check_paths(spec: CommandSpec, job: Any, note: Any) -> None:
    """A job's paths, before any work (`note(line)` says which files a directory walk
    skipped)."""
    check_model_path(job.model)
    reads: list[tuple[str, Path]] = []
    from_stdin = []
    named = [(name, getattr(job, name, None)) for name in spec.files]
    named.append(("--class file", getattr(job, "class_file", None)))
    for label, value in named:
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
    if job.shard and not root.is_dir() and not spec.checkpoints:
        raise UsageError("--shard needs a directory of models as MODEL")
    many = is_directory_run(job.model)
    models, skipped = [root], []
    if many:
        walk = walk_models(root)
        models, skipped = walk.models, walk.skipped
    reads += [("MODEL", m) for m in models]
    many = many and not spec.checkpoints  # checkpoints of one run: one output of each kind
    out, png, against = (getattr(job, k, None) for k in ("out", "png", "against"))
    outputs = []
    writes: list[tuple[str, Path]] = []
    if out is not None:
        outputs.append(("--out", out, ".npz", many, ".npz"))
    if against is not None:
        _check_against(job, many)
        reads.append(("--against", Path(against)))
        if out is not None:
            from gradcli.io.paths import against_file

            outputs.append(("--out (B's result)", str(against_file(out)), ".npz", False, None))
    if png is not None:
        # --png: one file per model, or a directory of PNGs per model (""); a directory run
        # of a command that draws a trajectory: its chart, and a chart per model beside it
        each = spec.png_suffix or ""
        if many and spec.trajectory:
            per_model, chart = trajectory_outputs(png)
            if per_model is not None:
                outputs.append(("--png", per_model, ".png", True, each))
            outputs.append(("--png (the trajectory chart)", str(chart), ".png", False, None))
        else:
            outputs.append(("--png", png, ".png", many or each == "", each))
    for name, path in job.reports.items():
        outputs.append((f"--{name}", path, "", False, None))
    for label, value, suffix, directory, each in outputs:
        path = Path(value) if directory else output_file(value, suffix)
        check_output(path, label, directory=directory)
        remove_stale_temps(path)
        if many and each is not None:
            writes += [(label, p) for p in model_outputs(value, label, root, models, each)]
        elif not directory:
            writes.append((label, path))
    check_distinct(writes, reads)
    if skipped:
        note(_skipped_note(root, skipped))


def _skipped_note(root: Path, skipped: list[Path]) -> str:
    """The one line a directory run says about the files it passed over (stderr_line shows
    the names escaped)."""
    names = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (
        f"note: {root}: skipped {len(skipped)} file(s) that are not models "
        f"({EXPECTED}): {names}{more}"
    )


def _check_against(job: Any, many: bool) -> None:
    """--against: one model against one model (a SavedModel directory is one model)."""
    check_model_path(job.against)
    if many or is_directory_run(job.against):
        raise UsageError(
            "--against compares one model with one model; for directories, write each "
            "run's results with -o and compare them with `gradcli diff`"
        )
    if job.png is not None:
        raise UsageError("--png goes without --against")


def _spool_stdin(label: str) -> None:
    """INPUT - : stdin becomes a regular file before the worker starts, so the worker can map
    it, and a rerun after a crash reads it again."""
    if os.isatty(0):
        raise UsageError(f"{label} -: stdin is a terminal; pipe a .npy or .npz into gradcli")
    stdin_kind(f"{label} - (stdin)")


def check_report(path: str, label: str, reads: list[tuple[str, str]]) -> None:
    """A report file (--junit) is checked writable before any work, like -o, and must not be
    one of the files the run reads."""
    check_output(Path(path), label)
    remove_stale_temps(Path(path))
    check_distinct([(label, Path(path))], [(k, Path(v)) for k, v in reads])
