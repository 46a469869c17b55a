"""The per-sample scalar objective o_i from --target/--loss, --class or the output sum."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from .arrays import ArraySource
from .backend import keras, tf
from .errors import InputError, UsageError, param
from .loading import LossSpec, ModelHandle, resolve_loss
from .logits import Logits


class ObjectiveKind(StrEnum):
    LOSS = "loss"  # the per-sample loss against --target
    CLASS = "class"  # unit K of one output (summed over positions)
    SUM = "sum"  # the sum of the selected outputs


@dataclass
class Objective:
    """What is differentiated: one scalar per sample."""

    kind: ObjectiveKind
    outputs: list[int]  # indices of the selected model outputs
    output_names: list[str]
    class_index: int | None = None
    losses: dict[int, LossSpec] = field(default_factory=dict)  # per output index (kind "loss")
    output_shapes: dict[int, tuple] = field(default_factory=dict)  # declared, without N
    logits: Logits | None = None  # --logits: the selected outputs before their softmax/sigmoid
    class_size_checked: bool = False  # check_class_size ran (once per objective)

    def model_outputs(self, handle: ModelHandle, xs: list, training: bool) -> list:
        """The model's outputs for the objective (with --logits, the selected ones as logits)."""
        if self.logits is None:
            return handle.call(xs, training=training)
        return self.logits.call(handle, xs, training)

    @property
    def needs_targets(self) -> bool:
        return self.kind == ObjectiveKind.LOSS

    @property
    def target_names(self) -> list[str]:
        if self.kind != ObjectiveKind.LOSS:
            return []
        return [self.output_names[i] for i in self.losses]

    def describe(self) -> str:
        names = ", ".join(self.output_names[i] for i in self.outputs)
        if self.kind == ObjectiveKind.LOSS:
            parts = []
            for i, spec in self.losses.items():
                w = "" if spec.weight == 1.0 else f"{spec.weight:g} x "
                parts.append(f"{w}{spec.description} on {self.output_names[i]}")
            return "per-sample loss: " + " + ".join(parts)
        if self.kind == ObjectiveKind.CLASS:
            shape = self.output_shapes.get(self.outputs[0], ())
            summed = " (summed over positions)" if len(shape) > 1 else ""
            logit = " logit" if self.logits else ""
            return f"class {self.class_index}{logit} of {names}{summed}"
        return f"sum of logits of {names}" if self.logits else f"sum of {names}"

    def check_class_size(self, handle: ModelHandle, inputs: list) -> None:
        """--class against the real class axis, where the declared shape leaves it open: one
        sample's forward pass gives the real size (once; engines call it before a batch)."""
        if self.class_size_checked or self.kind != ObjectiveKind.CLASS:
            return
        self.class_size_checked = True
        index = self.outputs[0]
        shape = handle.outputs[index].shape
        if shape and shape[-1] is None and len(inputs[0]):
            try:
                y = handle.call([x[:1] for x in inputs], training=False)[index]
            except Exception:  # noqa: BLE001 - the gradient call reports model errors itself
                return
            self.check_class_range(handle, tuple(y.shape[1:]))

    def check_class_range(self, handle: ModelHandle, shape: tuple[int | None, ...]) -> None:
        """--class K indexes the output's last (class) axis: refuse K outside it (exit 2)."""
        k = self.class_index
        name = self.output_names[self.outputs[0]]
        classes = shape[-1] if shape else 1
        if k is None or (k >= 0 and (classes is None or k < classes)):
            return
        text = _shape_text(shape)
        declared = tuple(handle.outputs[self.outputs[0]].shape)
        if tuple(shape) != declared:
            text += f" on this input (declared {_shape_text(declared)})"
        if classes is None:
            raise UsageError(
                f"{param('class_index', k)}: K must be 0 or more; output {name!r} has shape {text}"
            )
        where = "classes on its last axis" if len(shape) > 1 else "classes"
        raise UsageError(
            f"{param('class_index', k)}: output {name!r} has shape {text}, {classes} {where}; "
            f"K must be in 0..{classes - 1}"
        )

    def sparse_labels(self, handle: ModelHandle) -> list[tuple[int, int, int | None]]:
        """(target position, number of classes, ignore_class) of each sparse-label loss."""
        found = []
        for position, (i, spec) in enumerate(self.losses.items()):
            if self.kind != ObjectiveKind.LOSS or not _is_sparse_loss(spec):
                continue
            shape = handle.outputs[i].shape
            classes = shape[-1] if shape else None
            if classes:
                found.append((position, int(classes), _ignore_class(spec.fn)))
        return found

    def check_targets(self, handle: ModelHandle, targets: Sequence[ArraySource]) -> None:
        """Labels a sparse loss cannot take (7 or -1 for 3 classes): exit 3 before any work.

        The target is scanned in chunks of about a million values, so a memory-mapped
        target of any size is checked in bounded memory.
        """
        for position, classes, ignore in self.sparse_labels(handle):
            source = targets[position]
            bad = _first_out_of_range(source, classes, ignore)
            if bad is None:
                continue
            value, sample = bad
            index = list(self.losses)[position]
            spec = self.losses[index]
            raise InputError(
                f"{source.label}: label {value} (sample {sample}) is out of range for "
                f"{spec.description} on output {self.output_names[index]!r}, which has "
                f"{classes} classes: labels must be in 0..{classes - 1}"
                + ("" if ignore is None else f" (or {ignore}, the ignored class)")
            )

    def per_sample(self, outputs: list, targets: list) -> Any:
        """o for a batch: shape (B,), float32. `targets` aligns with `self.losses`."""
        if self.kind == ObjectiveKind.LOSS:
            total = None
            for (i, spec), y_true in zip(self.losses.items(), targets, strict=True):
                value = _per_sample_loss(spec.fn, y_true, outputs[i]) * spec.weight
                total = value if total is None else total + value
            return total
        if self.kind == ObjectiveKind.CLASS:
            y = _wide(outputs[self.outputs[0]])
            if y.shape.rank == 1:  # (N,): one unit per sample, K = 0
                return y
            score = y[..., self.class_index]  # class K at every position
            if score.shape.rank == 1:
                return score
            return tf.reduce_sum(score, axis=list(range(1, score.shape.rank)))
        total = None
        for i in self.outputs:
            y = _wide(outputs[i])
            s = tf.reduce_sum(tf.reshape(y, [tf.shape(y)[0], -1]), axis=1)
            total = s if total is None else total + s
        return total


def _units(shape: Sequence[int | None]) -> int | None:
    units = 1
    for d in shape:
        if d is None:
            return None
        units *= int(d)
    return units


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join(["N", *("?" if d is None else str(d) for d in shape)]) + ")"


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


def _first_out_of_range(
    source: ArraySource, classes: int, ignore: int | None, chunk_values: int = 1 << 20
) -> tuple[int | float, int] | None:
    """The first label outside 0..classes-1 (value, sample index), scanning in chunks."""
    per_sample = max(1, int(np.prod(source.shape[1:], dtype=np.int64)))
    rows = max(1, chunk_values // per_sample)
    n = len(source)
    for start in range(0, n, rows):
        part = source.read(start, min(n, start + rows))
        if part.dtype.kind == "b":
            part = part.astype(np.int8)
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


def _wide(x: Any) -> Any:
    """At least float32 (a float16 model's objective is summed in float32); float64 stays."""
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)


def _per_sample_loss(fn: Any, y_true: Any, y_pred: Any) -> Any:
    # Loss objects reduce over the batch in __call__; their `call` gives per-sample values.
    if (
        hasattr(fn, "call")
        and not isinstance(fn, type)
        and hasattr(fn, "get_config")
        and hasattr(fn, "reduction")
    ):
        values = fn.call(y_true, y_pred)
    else:
        values = fn(y_true, y_pred)
    values = _wide(values)
    rank = values.shape.rank
    if rank is None or rank > 1:
        values = tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
    elif rank == 0:
        raise UsageError("the loss reduced over the batch; give a per-sample loss")
    return values


def _select_outputs(handle: ModelHandle, output: str | None) -> list[int]:
    names = [o.name for o in handle.outputs]
    if output is None:
        return list(range(len(names)))
    if output in names:
        return [names.index(output)]
    if output.lstrip("-").isdigit():
        index = int(output)
        if 0 <= index < len(names):
            return [index]
        raise UsageError(
            f"{param('output', output)}: the model has {len(names)} outputs "
            f"(0..{len(names) - 1}: {', '.join(names)})"
        )
    raise UsageError(
        f"{param('output', repr(output))}: no such output; "
        f"the model's outputs are {', '.join(names)}"
    )


def build_objective(
    handle: ModelHandle,
    *,
    output: str | None = None,
    class_index: int | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    has_target: bool = False,
    logits: bool = False,
) -> Objective:
    """Resolve the SPEC's objective rules against a model."""
    selected = _select_outputs(handle, output)
    names = [o.name for o in handle.outputs]
    if logits:
        if has_target:
            raise UsageError(
                f"{param('logits')} goes with {param('class_index')} or the output sum; a loss "
                f"reads the model's own output (for a loss on logits, use a model that outputs "
                f"them with {param('loss', 'NAME')} {param('from_logits')})"
            )
        objective = build_objective(
            handle, output=output, class_index=class_index, loss=loss, from_logits=from_logits
        )
        objective.logits = Logits.find(handle, selected)
        return objective
    if loss is not None and not has_target:
        raise UsageError(
            f"{param('loss')} needs {param('target')} (the labels the loss compares against)"
        )
    if from_logits and loss is None and not has_target:
        raise UsageError(f"{param('from_logits')} goes with {param('loss')} and {param('target')}")
    if has_target:
        if class_index is not None:
            raise UsageError(
                f"{param('class_index')} and {param('target')} are exclusive: the objective is "
                "either "
                "a class score or a loss"
            )
        losses: dict[int, LossSpec] = {}
        if loss is not None:
            fn = resolve_loss(loss, from_logits=from_logits, api=keras)
            for i in selected:
                losses[i] = LossSpec(
                    fn=fn, description=loss + (" (from logits)" if from_logits else "")
                )
        else:
            if handle.losses is None:
                why = f" ({handle.loss_note})" if handle.loss_note else ""
                raise UsageError(
                    f"{handle.path.name}: the compiled loss is unknown{why}; "
                    f"give {param('loss', 'NAME')} with {param('target')}"
                )
            if from_logits:
                raise UsageError(
                    f"{param('from_logits')} goes with {param('loss')}; the compiled loss keeps "
                    "its own setting"
                )
            for i in selected:
                spec = handle.losses.get(names[i])
                if spec is not None:
                    losses[i] = spec
            if not losses:
                raise UsageError(
                    f"no compiled loss for output(s) "
                    f"{', '.join(names[i] for i in selected)}; give {param('loss')}"
                )
        return Objective(ObjectiveKind.LOSS, selected, names, losses=losses)
    if class_index is not None:
        if len(selected) != 1:
            raise UsageError(
                f"{param('class_index')} on a model with {len(names)} outputs needs "
                f"{param('output')} ({', '.join(names)})"
            )
        objective = Objective(
            ObjectiveKind.CLASS,
            selected,
            names,
            class_index=class_index,
            output_shapes={selected[0]: tuple(handle.outputs[selected[0]].shape)},
        )
        # an output whose class axis is open is checked again on the first batch
        objective.check_class_range(handle, tuple(handle.outputs[selected[0]].shape))
        return objective
    return Objective(ObjectiveKind.SUM, selected, names)
