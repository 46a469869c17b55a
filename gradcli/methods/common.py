"""What every wrt-input method shares: its options, its result for a batch, and the tape in
calls of at most `rows_per_call` rows (SmoothGrad copies and IG steps are stacked on the batch
axis and go through the same compiled tape as vanilla gradients: no Python loop per step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gradcli.engine.batched import Batch, GradientEngine
    from gradcli.methods.cam import CamLayer


@dataclass
class MethodOptions:
    method: str = "vanilla"
    samples: int = 25
    noise: float = 0.15
    seed: int = 0
    steps: int = 50
    baseline: list[np.ndarray] | None = None  # per input: (N, ...) rows, or None for zeros
    baseline_name: str = "zeros"  # what the record calls the baseline
    cam_layer: CamLayer | None = None  # CAM methods: the layer (cam.py)
    # every option the method's spec lists, as the job gave it: a method's own option needs
    # no field here (its flag is a field of commands.wrt_input.WrtInputJob)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attribution:
    """Per-input attributions of a batch, and the objective where the method reports it.

    A CAM's `values` are its map resized to each input (None for an input without the
    layer's spatial axes) and `layer_map` the map at the layer's resolution."""

    values: list[np.ndarray | None]
    objective: np.ndarray | None = None
    completeness: dict = field(default_factory=dict)  # IG: per-sample gaps
    layer_map: np.ndarray | None = None


# (engine, batch, options, rows_per_call) -> Attribution
Attribute = Callable[["GradientEngine", "Batch", MethodOptions, int], Attribution]
# work on a batch that needs no tape (noisy copies, IG path points): Context.batches runs it in
# the reader thread, so it overlaps the previous batch's tape calls
Prepare = Callable[["Batch", MethodOptions], Any]


def prepared(batch: Batch, options: MethodOptions, prepare: Prepare) -> Any:
    """What `prepare` made of this batch in the reader thread, or made now."""
    return batch.prepared if batch.prepared is not None else prepare(batch, options)


def tape_in_chunks(
    engine: GradientEngine, inputs: list[np.ndarray], targets: list[np.ndarray], rows_per_call: int
) -> list[np.ndarray]:
    rows = len(inputs[0])
    if rows <= rows_per_call:
        return engine.gradients(inputs, targets).inputs
    parts: list[list[np.ndarray]] = [[] for _ in inputs]
    for start in range(0, rows, rows_per_call):
        stop = min(rows, start + rows_per_call)
        got = engine.gradients(
            [x[start:stop] for x in inputs], [t[start:stop] for t in targets]
        ).inputs
        for part, g in zip(parts, got, strict=True):
            part.append(g)
    return [np.concatenate(p) for p in parts]
