"""The hand-written per-sample scripts bench/persample.py times gradcli against: what a user
would write with `tf.vectorized_map`, written out to bench-out/ and run as processes."""

VMAP_SCRIPT = r'''"""Hand-written per-sample gradients (from bench/persample.py): a single-sample
tape vectorized over the batch with tf.vectorized_map, in a tf.function; np.savez'd.

usage: vmap.py MODEL X.npy OUT.npz   (BENCH_BATCH rows a call, default 64; the objective is
the sum of the model's outputs, as `gradcli wrt-weights` without --class or --target)
"""
import os
import sys

import keras
import numpy as np
import tensorflow as tf

BATCH = int(os.environ.get("BENCH_BATCH", "64"))
model_path, x_path, out_path = sys.argv[1:4]
model = keras.saving.load_model(model_path)
x = np.load(x_path)
variables = [v.value for v in model.trainable_variables]
spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))


@tf.function(input_signature=[spec])
def step(xb):
    def one(x1):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(x1[None], training=False))
        return [tf.convert_to_tensor(g) for g in tape.gradient(total, variables)]

    return tf.vectorized_map(one, xb)


parts = [[] for _ in variables]
for s in range(0, len(x), BATCH):
    for acc, g in zip(parts, step(x[s:s + BATCH])):
        acc.append(g.numpy())
np.savez(out_path, **{v.path: np.concatenate(p) for v, p in zip(model.trainable_variables, parts)})
'''

VMAP_NORMS_SCRIPT = r'''"""Hand-written per-sample gradient norms (from bench/persample.py): the
same vectorized single-sample tape, each sample's squared norms summed inside the map;
np.save of the N norms.

usage: vmap_norms.py MODEL X.npy OUT.npy   (BENCH_BATCH rows a call, default 64)
"""
import os
import sys

import keras
import numpy as np
import tensorflow as tf

BATCH = int(os.environ.get("BENCH_BATCH", "64"))
model_path, x_path, out_path = sys.argv[1:4]
model = keras.saving.load_model(model_path)
x = np.load(x_path)
variables = [v.value for v in model.trainable_variables]
spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))


@tf.function(input_signature=[spec])
def step(xb):
    def one(x1):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(x1[None], training=False))
        grads = tape.gradient(total, variables)
        return tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in grads])

    return tf.sqrt(tf.vectorized_map(one, xb))


np.save(out_path, np.concatenate([step(x[s:s + BATCH]).numpy() for s in range(0, len(x), BATCH)]))
'''
