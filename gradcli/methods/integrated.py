"""Integrated Gradients: the gradient's mean along the straight path from a baseline, in
`steps` points (midpoint rule), and how complete the attributions are per sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gradcli.methods.common import Attribution, MethodOptions, prepared, tape_in_chunks

if TYPE_CHECKING:
    from gradcli.engine.batched import Batch, GradientEngine


def path_points(batch: Batch, options: MethodOptions) -> tuple[list, list, list]:
    """The tape's rows for a batch: `steps` points on the path from each row's baseline to
    the row (midpoint rule), the targets, and the baselines."""
    m = options.steps
    # midpoint rule: second-order accurate with exactly `steps` gradient evaluations
    alphas = ((np.arange(m, dtype=np.float64) + 0.5) / m).astype(np.float32)
    baselines = []
    for k, x in enumerate(batch.inputs):
        if options.baseline is None or options.baseline[k] is None:
            baselines.append(np.zeros_like(x))
        else:
            b = options.baseline[k]
            baselines.append(
                np.broadcast_to(b[batch.start : batch.stop] if len(b) > 1 else b, x.shape).astype(
                    x.dtype
                )
            )
    path_inputs = []
    for x, b in zip(batch.inputs, baselines, strict=True):
        shape = (1,) * (x.ndim - 1)
        a = alphas.reshape(1, m, *shape)
        rows = b[:, None] + a * (x - b)[:, None]
        path_inputs.append(rows.reshape(len(x) * m, *x.shape[1:]).astype(x.dtype))
    return path_inputs, [np.repeat(t, m, axis=0) for t in batch.targets], baselines


def attribute(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    m = options.steps
    path_inputs, targets, baselines = prepared(batch, options, path_points)
    grads = tape_in_chunks(engine, path_inputs, targets, rows_per_call)
    values = []
    for g, x, b in zip(grads, batch.inputs, baselines, strict=True):
        mean = g.reshape(len(x), m, *x.shape[1:]).mean(axis=1, dtype=np.float64)
        values.append(((x - b) * mean).astype(x.dtype))
    o_x = engine.objective_values(batch.inputs, batch.targets)
    o_b = engine.objective_values(baselines, batch.targets)
    total = sum(v.reshape(len(v), -1).sum(axis=1, dtype=np.float64) for v in values)
    delta = o_x.astype(np.float64) - o_b.astype(np.float64)
    gap = np.abs(total - delta)
    return Attribution(values, o_x, {"gap": gap, "delta": delta})


def extras(options: MethodOptions, completeness: list[dict]) -> dict[str, Any]:
    gap = np.concatenate([c["gap"] for c in completeness])
    delta = np.concatenate([c["delta"] for c in completeness])
    rel = gap / np.maximum(np.abs(delta), 1e-12)
    return {
        "steps": options.steps,
        "baseline": options.baseline_name,
        "completeness": {
            "max_abs_gap": float(gap.max()),
            "mean_abs_gap": float(gap.mean()),
            "max_rel_gap": float(rel.max()),
            "mean_rel_gap": float(rel.mean()),
            "mean_abs_delta": float(np.abs(delta).mean()),
        },
    }
