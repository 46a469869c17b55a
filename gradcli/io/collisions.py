"""Before any work: no two outputs of a run are one file, and no output is a file it reads.

Two models of a directory run never map to one output (`m.keras` and `m.h5` would both be
`m.npz` under `-o DIR`): the run is refused, naming both, before anything is computed, and
for the whole directory (not only this shard: shards write to the same directory). An output
that is an input, model, target, baseline or `--import` file of the same run (the same path,
or the same device and inode: a symlink, a hard link), or lies inside a SavedModel the run
reads, is refused too. Nothing here opens a file; it stats and walks only.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradcli.errors import InputError
from gradcli.io.paths import model_output

FileId = tuple[int, int]


def _id(path: Path) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def model_outputs(base: str, label: str, root: Path, models: list[Path], suffix: str) -> list[Path]:
    """Each model's output under `base` (-o/--png DIR of a directory run); two models that
    would write one file are refused (exit 3)."""
    owner: dict[Path, Path] = {}
    for model in models:
        dest = model_output(base, root, model, suffix)
        key = _real(dest)
        if key in owner:
            raise InputError(
                f"{label} {base}: {owner[key]} and {model} would both be written to {dest}; "
                "rename one of them, or run them separately"
            )
        owner[key] = model
    return [model_output(base, root, m, suffix) for m in models]


def _read_files(path: Path) -> list[Path]:
    """The files behind a path the run reads (a directory: every file below it)."""
    if not path.is_dir():
        return [path]
    files = []
    for base, _, names in os.walk(path):  # symlinked directories are not followed
        files += [Path(base, n) for n in names]
    return files


def check_distinct(written: list[tuple[str, Path]], read: list[tuple[str, Path]]) -> None:
    """Refuse (exit 3) an output that is another output or one of the files the run reads."""
    reads: dict[FileId, str] = {}
    trees: list[tuple[Path, str]] = []
    for label, path in read:
        if path.is_dir():
            trees.append((_real(path), label))
        for f in _read_files(path):
            key = _id(f)
            if key is not None:
                reads.setdefault(key, label if f == path else f"{label} ({f})")
    outputs: dict[Path, str] = {}
    for label, path in written:
        real = _real(path)
        if real in outputs:
            raise InputError(
                f"{label} {path}: is also {outputs[real]}; give each output its own path"
            )
        outputs[real] = f"{label} {path}"
        key = _id(path)
        if key is not None and key in reads:
            raise InputError(
                f"{label} {path}: is {reads[key]}, a file this run reads; "
                "gradcli never writes over its own inputs"
            )
        for tree, tree_label in trees:
            if real.is_relative_to(tree) and real != tree:
                raise InputError(
                    f"{label} {path}: is inside {tree_label}, which this run reads; "
                    "write the output elsewhere"
                )
