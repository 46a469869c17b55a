"""The per-sample scalar objective o_i from --target/--loss, --class or the output sum."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backend import keras, tf
from .errors import UsageError
from .loading import LossSpec, ModelHandle, resolve_loss


@dataclass
class Objective:
    """What is differentiated: one scalar per sample."""

    kind: str  # "loss" | "class" | "sum"
    outputs: list[int]  # indices of the selected model outputs
    output_names: list[str]
    class_index: int | None = None
    losses: dict[int, LossSpec] = field(default_factory=dict)  # per output index (kind "loss")

    @property
    def needs_targets(self) -> bool:
        return self.kind == "loss"

    @property
    def target_names(self) -> list[str]:
        return [self.output_names[i] for i in self.losses] if self.kind == "loss" else []

    def describe(self) -> str:
        names = ", ".join(self.output_names[i] for i in self.outputs)
        if self.kind == "loss":
            parts = []
            for i, spec in self.losses.items():
                w = "" if spec.weight == 1.0 else f"{spec.weight:g} x "
                parts.append(f"{w}{spec.description} on {self.output_names[i]}")
            return "per-sample loss: " + " + ".join(parts)
        if self.kind == "class":
            return f"class {self.class_index} of {names}"
        return f"sum of {names}"

    def per_sample(self, outputs: list, targets: list) -> Any:
        """o for a batch: shape (B,), float32. `targets` aligns with `self.losses`."""
        if self.kind == "loss":
            total = None
            for (i, spec), y_true in zip(self.losses.items(), targets, strict=True):
                value = _per_sample_loss(spec.fn, y_true, outputs[i]) * spec.weight
                total = value if total is None else total + value
            return total
        if self.kind == "class":
            y = outputs[self.outputs[0]]
            flat = tf.reshape(y, [tf.shape(y)[0], -1])
            return _wide(flat[:, self.class_index])
        total = None
        for i in self.outputs:
            y = _wide(outputs[i])
            s = tf.reduce_sum(tf.reshape(y, [tf.shape(y)[0], -1]), axis=1)
            total = s if total is None else total + s
        return total


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
            f"--output {output}: the model has {len(names)} outputs "
            f"(0..{len(names) - 1}: {', '.join(names)})"
        )
    raise UsageError(
        f"--output {output!r}: no such output; the model's outputs are {', '.join(names)}"
    )


def build_objective(
    handle: ModelHandle,
    *,
    output: str | None = None,
    class_index: int | None = None,
    loss: str | None = None,
    from_logits: bool = False,
    has_target: bool = False,
) -> Objective:
    """Resolve the SPEC's objective rules against a model."""
    selected = _select_outputs(handle, output)
    names = [o.name for o in handle.outputs]
    if loss is not None and not has_target:
        raise UsageError("--loss needs --target (the labels the loss compares against)")
    if from_logits and loss is None and not has_target:
        raise UsageError("--from-logits goes with --loss and --target")
    if has_target:
        if class_index is not None:
            raise UsageError(
                "--class and --target are exclusive: the objective is either "
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
                    f"give --loss NAME with --target"
                )
            if from_logits:
                raise UsageError(
                    "--from-logits goes with --loss; the compiled loss keeps its own setting"
                )
            for i in selected:
                spec = handle.losses.get(names[i])
                if spec is not None:
                    losses[i] = spec
            if not losses:
                raise UsageError(
                    f"no compiled loss for output(s) "
                    f"{', '.join(names[i] for i in selected)}; give --loss"
                )
        return Objective("loss", selected, names, losses=losses)
    if class_index is not None:
        if len(selected) != 1:
            raise UsageError(
                f"--class on a model with {len(names)} outputs needs --output ({', '.join(names)})"
            )
        shape = handle.outputs[selected[0]].shape
        units = 1
        for d in shape:
            units = units * d if d is not None and units is not None else None
        if class_index < 0 or (units is not None and class_index >= units):
            raise UsageError(
                f"--class {class_index}: output {names[selected[0]]!r} has "
                f"{units} units (0..{units - 1 if units else '?'})"
            )
        return Objective("class", selected, names, class_index=class_index)
    return Objective("sum", selected, names)
