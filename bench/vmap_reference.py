"""Hand-written per-sample gradients, what bench/persample.py times gradcli against: a
single-sample tape vectorized over the batch with tf.vectorized_map, in a tf.function. Every
g_i np.savez'd, or with `norms` each sample's gradient norm, its squared norms summed inside
the map (what a script that wants only norms does), np.save'd. It imports nothing from
gradcli: run as a process, it is the script a user would write; imported, bench/persample.py
times its `step` in the same process as gradcli's engine.

usage: vmap_reference.py MODEL X.npy OUT [norms]   (BENCH_BATCH rows a call, default 64; the
objective is the sum of the model's outputs, as `gradcli wrt-weights` without --class or
--target)
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf


def make_step(model, sample_shape, dtype, norms: bool):
    """A tf.function (B, *sample_shape) -> each sample's squared gradient norm summed over the
    trainable variables (B,) if `norms`, else the g_i, one (B, *shape) per variable."""
    variables = [v.value for v in model.trainable_variables]
    spec = tf.TensorSpec((None, *sample_shape), tf.as_dtype(dtype))

    @tf.function(input_signature=[spec])
    def step(xb):
        def one(x1):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(model(x1[None], training=False))
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, variables)]
            if norms:
                return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
            return grads

        return tf.vectorized_map(one, xb)

    return step


def main() -> None:
    batch = int(os.environ.get("BENCH_BATCH", "64"))
    model_path, x_path, out_path = sys.argv[1:4]
    norms = sys.argv[4:] == ["norms"]
    model = keras.saving.load_model(model_path)
    x = np.load(x_path)
    step = make_step(model, x.shape[1:], x.dtype, norms)
    batches = [step(x[s : s + batch]) for s in range(0, len(x), batch)]
    if norms:
        np.save(out_path, np.sqrt(np.concatenate([b.numpy() for b in batches])))
    else:
        parts = zip(*[[g.numpy() for g in b] for b in batches], strict=True)
        np.savez(
            out_path,
            **{
                v.path: np.concatenate(p)
                for v, p in zip(model.trainable_variables, parts, strict=True)
            },
        )


if __name__ == "__main__":
    main()
