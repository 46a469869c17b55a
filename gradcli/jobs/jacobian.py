"""`jacobian`: J[i] = d f(x_i) / d x_i for one model output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.engine.batched import Compiled
from gradcli.engine.batching import default_batch_size
from gradcli.engine.tokens import input_dtype, inputs_gradient_error, missing_input_gradient
from gradcli.errors import GradientError, UsageError, first_line, param
from gradcli.jobs.context import Context, committed
from gradcli.load.backend import tf
from gradcli.load.handles import ModelHandle
from gradcli.present.figures import TensorStats


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    if job.target is not None or job.class_index is not None:
        raise UsageError(
            f"jacobian differentiates a model output itself: {param('target')} and "
            f"{param('class_index')} do not apply (use {param('output')})"
        )
    outputs = ctx.objective.outputs
    if len(outputs) != 1:
        raise UsageError(
            f"jacobian needs {param('output')} on a model with {len(handle.outputs)} "
            f"outputs ({', '.join(o.name for o in handle.outputs)})"
        )
    o = handle.outputs[outputs[0]]
    if any(d is None for d in o.shape):
        raise UsageError(f"output {o.name!r} has an unknown shape {o.shape}")
    out_shape = tuple(o.shape) or (1,)
    names = [i.name for i in handle.inputs]
    in_shapes = {n: ctx.inputs[n].shape[1:] for n in names}
    total = sum(ctx.n * math.prod(out_shape) * math.prod(in_shapes[n]) for n in names)
    if total > job.max_elements:
        raise UsageError(
            f"the Jacobian would have {total:,} elements (above "
            f"{param('max_elements', f'{job.max_elements:,.0f}')}); select fewer samples or "
            f"one {param('output')}, or raise {param('max_elements')}"
        )
    dtypes = [np.dtype(i.dtype) for i in handle.inputs]
    if (error := inputs_gradient_error(handle)) is not None:
        raise error  # integer inputs: the same message as wrt-input's, naming the embedding
    fn = jacobian_function(handle, outputs[0], training=job.training, jit=job.jit)
    per_sample = max(1, total // ctx.n)
    size = job.batch_size or max(1, min(default_batch_size(handle), (1 << 24) // per_sample))
    shapes = {n: (ctx.n, *out_shape, *in_shapes[n]) for n in names}
    stats = {n: TensorStats(n, shapes[n]) for n in names}
    with ctx.sink(out, {n: (shapes[n], "<f4") for n in names}) as writer:
        for start in range(0, ctx.n, size):
            stop = min(ctx.n, start + size)
            xs = [ctx.inputs[n].read(start, stop, dtypes[k]) for k, n in enumerate(names)]
            try:
                js = fn(xs)
            except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds
                raise GradientError(f"the Jacobian cannot be computed: {first_line(exc)}") from exc
            if fn.disconnected:  # the same error as wrt-input's, naming the embedding
                raise missing_input_gradient(handle, fn.disconnected[0])
            for n, j in zip(names, js, strict=True):
                j = j.numpy().reshape(shapes[n][0:0] + (stop - start, *shapes[n][1:]))
                stats[n].update(j)
                if writer:
                    writer.write(n, j)
            ctx.progress(stop)
        written = committed(writer)
    return ctx.record([stats[n] for n in names], out=written, output=o.name)


def jacobian_function(
    handle: ModelHandle, output_index: int, training: bool = False, jit: bool = False
) -> Any:
    """A compiled per-sample Jacobian d y_i / d x_i of one output, for each input.

    The returned callable's `disconnected` lists, once it has run, the inputs the output
    does not reach (their Jacobian is zeros), as `GradientEngine` reports None for them.
    """
    specs = [
        tf.TensorSpec((None, *info.shape), tf.as_dtype(input_dtype(info.dtype)))
        for info in handle.inputs
    ]
    disconnected: list[int] = []

    def jac(xs):
        xs = list(xs)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xs)
            y = handle.call(xs, training=training)[output_index]
            if y.shape.rank == 1:
                y = y[:, None]
            total = tf.reduce_sum(y)
        # known while tracing: whether the output reaches each input at all
        reached = tape.gradient(total, xs, unconnected_gradients=tf.UnconnectedGradients.NONE)
        disconnected[:] = [k for k, g in enumerate(reached) if g is None]
        out = []
        for k, x in enumerate(xs):
            if k in disconnected:  # zeros, without tracing a Jacobian loop for nothing
                shape = tf.concat([tf.shape(y), tf.shape(x)[1:]], axis=0)
                out.append(tf.zeros(shape, dtype=y.dtype))
            else:
                out.append(
                    tape.batch_jacobian(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                )
        del tape
        return out

    compiled = Compiled(jac, [specs], jit)
    compiled.disconnected = disconnected
    return compiled
