"""The per-sample scalar objective o_i from --target/--loss, --class or the output sum, and
the checks that it means something: class ranges, sparse labels, and no constant objective
(the sum of a softmax output)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.engine.logits import Logits, final_squashing
from gradcli.errors import UsageError, param
from gradcli.load.backend import keras, tf
from gradcli.load.handles import ModelHandle
from gradcli.load.losses import LossSpec, resolve_loss


class ObjectiveKind(StrEnum):
    LOSS = "loss"  # the per-sample loss against --target
    CLASS = "class"  # unit K of one output (summed over positions), K fixed or per sample
    SUM = "sum"  # the sum of the selected outputs


PRED = "pred"  # --class pred: each sample's own top class, as the model predicts it


@dataclass
class Objective:
    """What is differentiated: one scalar per sample."""

    kind: ObjectiveKind
    outputs: list[int]  # indices of the selected model outputs
    output_names: list[str]
    class_index: int | None = None
    # per-sample classes, fed to the tape as the last target: PRED, or where they come from
    # (a file's path, "class_index array" in the Python API); None with one class K
    classes: str | None = None
    losses: dict[int, LossSpec] = field(default_factory=dict)  # per output index (kind "loss")
    output_shapes: dict[int, tuple] = field(default_factory=dict)  # declared, without N
    logits: Logits | None = None  # --logits: the selected outputs before their softmax/sigmoid
    first_batch_checked: bool = False  # check_first_batch ran (once per objective)
    notes: list[str] = field(default_factory=list)  # for the record's `notes` (stderr lines)

    def model_outputs(self, handle: ModelHandle, xs: list, training: bool) -> list:
        """The model's outputs for the objective (with --logits, the selected ones as logits)."""
        if self.logits is None:
            return handle.call(xs, training=training)
        return self.logits.call(handle, xs, training)

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
            if self.classes == PRED:
                which = "predicted class"
            elif self.classes is not None:
                which = f"class per sample from {Path(self.classes).name}"
            else:
                which = f"class {self.class_index}"
            return f"{which}{logit} of {names}{summed}"
        return f"sum of logits of {names}" if self.logits else f"sum of {names}"

    def check_first_batch(self, handle: ModelHandle, inputs: list) -> None:
        """What only the model's outputs on real samples tell, checked once before the first
        tape call (engines call it): --class K against a class axis the declared shape leaves
        open, and an output sum that cannot depend on the input (exit 2)."""
        if self.first_batch_checked or not inputs or not len(inputs[0]):
            return
        self.first_batch_checked = True
        if self.kind == ObjectiveKind.SUM and self.logits is None:
            self._check_not_constant(handle, inputs)
            return
        if self.kind != ObjectiveKind.CLASS or self.classes is not None:
            return
        index = self.outputs[0]
        shape = handle.outputs[index].shape
        if shape and shape[-1] is None:
            try:
                y = handle.call([x[:1] for x in inputs], training=False)[index]
            except Exception:  # noqa: BLE001 - the gradient call reports model errors itself
                return
            self.check_class_range(handle, tuple(y.shape[1:]))

    def _check_not_constant(self, handle: ModelHandle, inputs: list) -> None:
        """Refuse (exit 2) an output sum whose every output is a probability distribution: a
        softmax sums to 1 for every sample, so its gradient is float noise, never an answer.
        Told by the model's last layer (a softmax), else by the values of a few samples."""
        found: dict[int, str] = {}
        logits = True  # --logits would help: every such output ends in a softmax layer
        for i in self.outputs:
            squash = final_squashing(handle, i)
            if squash is not None and squash[0] == "softmax":
                found[i] = f"a softmax (layer {squash[1]!r}), which sums to 1 for every sample"
        rest = [i for i in self.outputs if i not in found]
        if rest:
            try:
                ys = handle.call([x[:_PROBE_ROWS] for x in inputs], training=False)
            except Exception:  # noqa: BLE001 - the gradient call reports model errors itself
                ys = None
            for i in rest if ys is not None else ():
                if _sums_to_one(np.asarray(ys[i])):
                    found[i] = "whose values sum to 1 over its last axis for every sample"
                    logits = False
        if not found:
            return
        described = "; ".join(f"{self.output_names[i]!r}, {why}" for i, why in found.items())
        if len(found) < len(self.outputs):
            self.notes.append(
                f"the objective sums every output, and output {described}: it adds a constant "
                "to the objective, nothing to its gradient"
            )
            return
        hint = f" or {param('logits')} (the sum of the logits)" if logits else ""
        raise UsageError(
            f"the objective would be the sum of output {described}: that sum is the same for "
            f"every input, so its gradient is float noise, not an answer. Say what to explain: "
            f"{param('class_index', PRED)} (each sample's predicted class), "
            f"{param('class_index', 'K')}, {param('class_index', 'LABELS.npy')} (one class per "
            f"sample), {param('target', 'LABELS')} (the loss){hint}"
        )

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
            if self.classes is not None:  # each sample's class K_i, from the last target
                k = tf.reshape(tf.cast(targets[-1], tf.int32), [-1])
                score = tf.gather(y, k, axis=y.shape.rank - 1, batch_dims=1)
            else:
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


_PROBE_ROWS = 4  # samples whose outputs tell a probability output from others


def _sums_to_one(y: np.ndarray) -> bool:
    """Whether every position of `y` (N, ..., C), C >= 2, is a probability distribution over
    its last axis: values in [0, 1] summing to 1 up to float32 rounding."""
    if y.ndim < 2 or y.shape[-1] < 2 or not y.size or not np.isfinite(y).all():
        return False
    y = y.astype(np.float64)
    tol = 8 * y.shape[-1] * float(np.finfo(np.float32).eps)
    if y.min() < -tol or y.max() > 1 + tol:
        return False
    return bool(np.all(np.abs(y.sum(axis=-1) - 1.0) <= tol))


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join(["N", *("?" if d is None else str(d) for d in shape)]) + ")"


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
    classes: str | None = None,
) -> Objective:
    """Resolve the SPEC's objective rules against a model. `classes`: per-sample classes
    (PRED, or where they come from) instead of one `class_index`."""
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
            handle,
            output=output,
            class_index=class_index,
            loss=loss,
            from_logits=from_logits,
            classes=classes,
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
        if class_index is not None or classes is not None:
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
    if class_index is not None or classes is not None:
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
            classes=classes,
            output_shapes={selected[0]: tuple(handle.outputs[selected[0]].shape)},
        )
        # an output whose class axis is open is checked again on the first batch
        objective.check_class_range(handle, tuple(handle.outputs[selected[0]].shape))
        return objective
    return Objective(ObjectiveKind.SUM, selected, names)
