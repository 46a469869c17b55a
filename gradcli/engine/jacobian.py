"""Per-sample Jacobians d y_i / d x_i of one model output, for each input, on the core."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradcli.engine.core import TapeCore
from gradcli.engine.tokens import inputs_gradient_error, missing_input_gradient
from gradcli.load.backend import tf
from gradcli.load.handles import ModelHandle


class JacobianEngine:
    """One compiled call per batch: each input's (B, *output, *input) Jacobian."""

    def __init__(
        self, handle: ModelHandle, output_index: int, training: bool = False, jit: bool = False
    ) -> None:
        if (error := inputs_gradient_error(handle)) is not None:
            raise error  # integer inputs: the same message as wrt-input's, naming the embedding
        # a SavedModel export in training mode runs in inference mode, as it always has here
        self.core = TapeCore(handle, None, training=training, jit=jit, check_mode=False)
        self.handle = handle
        self.input_dtypes = self.core.input_dtypes
        # known once traced: the inputs the output does not reach (their Jacobian is zeros)
        self.disconnected: list[int] = []
        self._step = self.core.step(
            self._jacobians,
            what="the Jacobian cannot be computed",
            pad=False,
            catch=(Exception,),  # TensorFlow raises many kinds here
        )
        self._output = output_index

    def _jacobians(self, xs, ys, valid):
        xs = list(xs)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xs)
            y = self.handle.call(xs, training=self.core.training)[self._output]
            if y.shape.rank == 1:
                y = y[:, None]
            total = tf.reduce_sum(y)
        # known while tracing: whether the output reaches each input at all
        reached = tape.gradient(total, xs, unconnected_gradients=tf.UnconnectedGradients.NONE)
        self.disconnected[:] = [k for k, g in enumerate(reached) if g is None]
        out = []
        for k, x in enumerate(xs):
            if k in self.disconnected:  # zeros, without tracing a Jacobian loop for nothing
                shape = tf.concat([tf.shape(y), tf.shape(x)[1:]], axis=0)
                out.append(tf.zeros(shape, dtype=y.dtype))
            else:
                out.append(
                    tape.batch_jacobian(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                )
        del tape
        return out

    def jacobians(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One batch's Jacobians, per input."""
        js = self._step(list(inputs)).outputs
        if self.disconnected:  # the same error as wrt-input's, naming the embedding
            raise missing_input_gradient(self.handle, self.disconnected[0])
        return [j.numpy() for j in js]
