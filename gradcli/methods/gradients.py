"""The plain gradient (vanilla) and gradient x input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradcli.methods.common import Attribution, MethodOptions

if TYPE_CHECKING:
    from gradcli.engine.batched import Batch, GradientEngine


def vanilla(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    result = engine.gradients(batch.inputs, batch.targets)
    return Attribution(result.inputs, result.objective)


def gradxinput(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    result = engine.gradients(batch.inputs, batch.targets)
    if engine.times_input:  # multiplied on the tape (the methods table asks for it)
        return Attribution(result.inputs, result.objective)
    values = [x * g for x, g in zip(batch.inputs, result.inputs, strict=True)]
    return Attribution(values, result.objective)
