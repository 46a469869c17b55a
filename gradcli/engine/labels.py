"""Labels and classes checked before any work: the labels of a sparse-label loss (--target)
and the per-sample classes of --class FILE.npy, each against the output's class range.

Both are scanned in chunks of about a million values, so a memory-mapped file of any size is
checked in bounded memory; a value out of range is exit 3 naming the file, the sample and the
range.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gradcli.engine.objective import PRED, Objective, ObjectiveKind
from gradcli.errors import InputError
from gradcli.io.arrays import ArraySource
from gradcli.load.handles import ModelHandle
from gradcli.load.losses import LossSpec

_CHUNK_VALUES = 1 << 20


def _chunks(source: ArraySource, chunk_values: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """(first sample, rows, values per sample) of a source, about `chunk_values` at a time."""
    per_sample = max(1, int(np.prod(source.shape[1:], dtype=np.int64)))
    rows = max(1, chunk_values // per_sample)
    n = len(source)
    for start in range(0, n, rows):
        part = source.read(start, min(n, start + rows))
        yield start, (part.astype(np.int8) if part.dtype.kind == "b" else part), per_sample


def _first_out_of_range(
    source: ArraySource, classes: int, ignore: int | None, chunk_values: int = _CHUNK_VALUES
) -> tuple[int | float, int] | None:
    """The first label outside 0..classes-1 (value, sample index), scanning in chunks."""
    for start, part, per_sample in _chunks(source, chunk_values):
        bad = (part < 0) | (part >= classes)
        if part.dtype.kind == "f":
            bad &= np.isfinite(part)  # NaN labels are the loss's business, not a range error
        if ignore is not None:
            bad &= part != ignore
        if bad.any():
            flat = int(np.flatnonzero(bad.reshape(-1))[0])
            value = part.reshape(-1)[flat].item()
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return value, start + flat // per_sample
    return None


def _loss_names(fn: Any) -> str:
    """Every name a loss goes by (class, function, wrapped function), squashed for matching."""
    names = [type(fn).__name__, getattr(fn, "__name__", ""), getattr(fn, "name", "")]
    inner = getattr(fn, "fn", None)
    if inner is not None:
        names.append(getattr(inner, "__name__", ""))
    return " ".join(str(n) for n in names).replace("_", "").lower()


def _is_sparse_loss(spec: LossSpec) -> bool:
    text = _loss_names(spec.fn) + " " + spec.description.replace("_", "").lower()
    return "sparsecategorical" in text


def _ignore_class(fn: Any) -> int | None:
    for source in (getattr(fn, "_fn_kwargs", None), getattr(fn, "ignore_class", None)):
        if isinstance(source, dict) and source.get("ignore_class") is not None:
            return int(source["ignore_class"])
        if isinstance(source, int) and not isinstance(source, bool):
            return int(source)
    return None


def sparse_labels(objective: Objective, handle: ModelHandle) -> list[tuple[int, int, int | None]]:
    """(target position, number of classes, ignore_class) of each sparse-label loss."""
    found = []
    for position, (i, spec) in enumerate(objective.losses.items()):
        if objective.kind != ObjectiveKind.LOSS or not _is_sparse_loss(spec):
            continue
        shape = handle.outputs[i].shape
        classes = shape[-1] if shape else None
        if classes:
            found.append((position, int(classes), _ignore_class(spec.fn)))
    return found


def check_targets(
    objective: Objective, handle: ModelHandle, targets: Sequence[ArraySource]
) -> None:
    """Labels a sparse loss cannot take (7 or -1 for 3 classes): exit 3 before any work."""
    for position, classes, ignore in sparse_labels(objective, handle):
        source = targets[position]
        bad = _first_out_of_range(source, classes, ignore)
        if bad is None:
            continue
        value, sample = bad
        index = list(objective.losses)[position]
        spec = objective.losses[index]
        raise InputError(
            f"{source.label}: label {value} (sample {sample}) is out of range for "
            f"{spec.description} on output {objective.output_names[index]!r}, which has "
            f"{classes} classes: labels must be in 0..{classes - 1}"
            + ("" if ignore is None else f" (or {ignore}, the ignored class)")
        )


def check_classes(
    objective: Objective, handle: ModelHandle, source: ArraySource
) -> dict[int, int] | None:
    """--class FILE.npy (or an array in the Python API): one integer class per sample, each in
    the output's class range (exit 3 naming the file, the sample and the range). Returns how
    many samples each class has; None for predicted classes (counted as they are made)."""
    if objective.classes == PRED:
        return None
    if source.dtype.kind not in "iubf":
        raise InputError(f"{source.label}: holds {source.dtype}; expected integer classes")
    if len(source.shape) != 1 and source.shape[1:] != (1,):
        raise InputError(
            f"{source.label}: has shape {source.shape}; expected one class per sample, (N,)"
        )
    name = objective.output_names[objective.outputs[0]]
    shape = tuple(handle.outputs[objective.outputs[0]].shape)
    classes = shape[-1] if shape else 1
    counts: dict[int, int] = {}
    for start, part, _ in _chunks(source, _CHUNK_VALUES):
        part = part.reshape(-1)
        if part.dtype.kind == "f":
            bad = ~np.isfinite(part) | (part != np.round(part))
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise InputError(
                    f"{source.label}: class {part[k]} (sample {start + k}) is not an integer; "
                    "expected one class index per sample"
                )
        values = part.astype(np.int64)
        wrong = (values < 0) | (values >= classes) if classes else values < 0
        if wrong.any():
            k = int(np.flatnonzero(wrong)[0])
            span = f"0..{classes - 1}" if classes else "0 or more"
            has = f"{classes} classes" if classes else "an open number of classes"
            raise InputError(
                f"{source.label}: class {int(values[k])} (sample {start + k}) is out of range "
                f"for output {name!r}, which has {has}: classes must be in {span}"
            )
        for value, count in zip(*np.unique(values, return_counts=True), strict=True):
            counts[int(value)] = counts.get(int(value), 0) + int(count)
    return dict(sorted(counts.items()))
