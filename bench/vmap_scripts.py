"""The hand-written per-sample script bench/persample.py times gradcli against: what a user
would write with `tf.vectorized_map`, written out to bench-out/ and run as processes."""

VMAP_SCRIPT = r'''"""Hand-written per-sample gradients (from bench/persample.py): a single-sample
tape vectorized over the batch with tf.vectorized_map, in a tf.function. Every g_i
np.savez'd, or with `norms` each sample's gradient norm, its squared norms summed inside the
map (what a script that wants only norms does), np.save'd.

usage: vmap.py MODEL X.npy OUT [norms]   (BENCH_BATCH rows a call, default 64; the objective
is the sum of the model's outputs, as `gradcli wrt-weights` without --class or --target)
"""
import os
import sys

import keras
import numpy as np
import tensorflow as tf

BATCH = int(os.environ.get("BENCH_BATCH", "64"))
model_path, x_path, out_path = sys.argv[1:4]
NORMS = sys.argv[4:] == ["norms"]
model = keras.saving.load_model(model_path)
x = np.load(x_path)
variables = [v.value for v in model.trainable_variables]
spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))


@tf.function(input_signature=[spec])
def step(xb):
    def one(x1):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(x1[None], training=False))
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, variables)]
        if NORMS:
            return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return grads

    out = tf.vectorized_map(one, xb)
    return tf.sqrt(out) if NORMS else out


batches = [step(x[s:s + BATCH]) for s in range(0, len(x), BATCH)]
if NORMS:
    np.save(out_path, np.concatenate([b.numpy() for b in batches]))
else:
    parts = zip(*[[g.numpy() for g in b] for b in batches])
    np.savez(
        out_path,
        **{v.path: np.concatenate(p) for v, p in zip(model.trainable_variables, parts)},
    )
'''
