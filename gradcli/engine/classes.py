"""--class per sample: each sample's predicted class (`pred`) or one class per sample from a
file (or, in the Python API, an array). The classes reach the tape as one more per-sample
array beside the labels, so every method, engine and batch size sees the same class for a
sample (its SmoothGrad copies and IG path points included).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradcli.engine.core import Compiled
from gradcli.engine.objective import PRED
from gradcli.engine.tokens import input_dtype
from gradcli.errors import UsageError, param
from gradcli.io.arrays import ArraySource, check_dtype, read_arrays
from gradcli.load.backend import tf
from gradcli.load.handles import ModelHandle

API_ARRAY = "class_index array"  # where the classes of an array given to the Python API come from


def class_choice(value: Any) -> tuple[int | None, str | None]:
    """--class's value as (one class K, None) or (None, where per-sample classes come from:
    PRED or a file path). The CLI has parsed it already; the Python API passes ints, "pred",
    paths (an array is given separately)."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        raise UsageError(f"{param('class_index', value)}: expected K, {PRED} or a .npy file")
    if isinstance(value, int | np.integer):
        return int(value), None
    text = str(value)
    if text.lstrip("-").isdigit():
        return int(text), None
    if text == PRED:
        return None, PRED
    if not text.lower().endswith(".npy"):
        raise UsageError(
            f"{param('class_index', repr(text))}: expected a class index K, {PRED} (each "
            "sample's predicted class) or a .npy file of one class per sample"
        )
    return None, text


def class_source(
    classes: str,
    handle: ModelHandle,
    output: int,
    inputs: list[ArraySource],
    n: int,
    array: Any = None,
) -> ArraySource:
    """The per-sample classes as a source of N rows: read from the file (or `array`), or
    predicted batch by batch from the inputs."""
    if classes == PRED:
        return PredictedClasses(handle, output, inputs, n)
    if array is not None:
        values = np.asarray(array)
        check_dtype(values, API_ARRAY)
        return ArraySource(values, API_ARRAY)
    (source,) = read_arrays(classes, ["classes"], param("class_index", "file")).values()
    return source


class PredictedClasses(ArraySource):
    """Each sample's top class as the model predicts it: argmax over the output's last axis
    (summed over its other positions), in inference mode whatever --training says. Rows are
    predicted when a batch is read (in the reader thread, while the tape works on the last
    batch); `counts` tallies the classes made so far."""

    def __init__(self, handle: ModelHandle, output: int, inputs: list[ArraySource], n: int):
        super().__init__(np.empty((n,), np.int32), "predicted classes")
        self.inputs = inputs
        self.dtypes = [input_dtype(info.dtype) for info in handle.inputs]
        self.counts: dict[int, int] = {}
        specs = [
            tf.TensorSpec((None, *info.shape), tf.as_dtype(dt))
            for info, dt in zip(handle.inputs, self.dtypes, strict=True)
        ]

        def predict(xs):
            y = handle.call(list(xs), training=False)[output]
            if y.shape.rank == 1:  # one unit: class 0
                return tf.zeros(tf.shape(y), tf.int32)
            y = tf.reshape(tf.cast(y, tf.float32), [tf.shape(y)[0], -1, tf.shape(y)[-1]])
            return tf.argmax(tf.reduce_sum(y, axis=1), axis=-1, output_type=tf.int32)

        self._predict = Compiled(predict, [specs])

    def read(self, start: int, stop: int, dtype: Any = None) -> np.ndarray:
        xs = [s.read(start, stop, d) for s, d in zip(self.inputs, self.dtypes, strict=True)]
        classes = self._predict(xs).numpy()
        for value, count in zip(*np.unique(classes, return_counts=True), strict=True):
            self.counts[int(value)] = self.counts.get(int(value), 0) + int(count)
        return classes.astype(dtype or np.int32)

    def release(self) -> None:
        pass
