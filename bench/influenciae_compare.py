"""TracIn bench: influenciae (deel-ai) against gradcli's TracIn reference, same model and data.

Run with `python bench/influenciae_compare.py` from gradcli's venv (about 2 minutes the first
time, most of it installing). influenciae is never a gradcli dependency: it goes into its own
venv, bench-out/influenciae-venv, and this script re-runs itself there.

Can influenciae run here? Its newest release (0.3.0, 2024) requires `tensorflow>=2.7,<2.10`,
and no TensorFlow before 2.12 has wheels for Python 3.11 (this machine's only Python), so
`pip install influenciae` fails to resolve. What makes it run: installing it with `--no-deps`
next to tensorflow and tf-keras of the same version as gradcli's (2.21), with
`TF_USE_LEGACY_KERAS=1`, so that its `tf.keras` (it imports `tensorflow.keras.losses.Reduction`
and calls `tf.keras.Model` APIs of Keras 2) is tf_keras. It cannot take Keras 3 models: its compiled
`_jacobian` (a `tf.function` taking the model and its variables as arguments) fails while
tracing with "NotImplementedError: numpy() is only available when eager execution is enabled"
(the script shows it), and its reduction check wants `Reduction.NONE`, not Keras 3's None. So
the checkpoints of bench/tracin_noise.py are rebuilt in tf_keras from their saved weights: the
same architecture, the same numbers. Its default `InfluenceModel` watches the weights of one
layer only (the last with weights before the logits); here `start_layer=0, last_layer=-1`
watches all of them, as the reference does.

What is compared, on bench/tracin_noise.py's 1,200 training and 200 test samples and its 3
checkpoints with their saved learning rates:
- self-influence of every training sample (influenciae `compute_influence_values`) and the
  200 x 1,200 score matrix (`estimate_influence_values_in_batches`) against the reference
  that bench/tracin_noise.py computed with Keras 3 in gradcli's venv: largest difference
  relative to the largest score (float32 rounding is ~1e-6);
- time at equal work, in this one process on the same tf_keras models: influenciae versus the
  reference pipeline the command will use (one compiled `tf.vectorized_map` per-sample tape
  per checkpoint and batch, NumPy accumulation with gradcli.attribution). The command itself
  does not exist yet, so this is the engine's way, not `gradcli influence`'s wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench-out" / "influenciae-venv"
DATA = ROOT / "bench-out" / "tracin_noise"
VERSION = "0.3.0"
BATCH, REPEAT = 256, 3


def in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def prepare() -> int:
    """From gradcli's venv: the data, the venv, then this script again inside it."""
    if not (DATA / "reference.npz").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "tracin_noise.py")], check=True)
    python = VENV / "bin" / "python"
    if not python.exists():
        import tensorflow as tf

        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        print(f"installing influenciae {VERSION} (--no-deps) with tensorflow {tf.__version__}")
        subprocess.run([*pip, "--no-deps", f"influenciae=={VERSION}"], check=True)
        subprocess.run(
            [*pip, f"tensorflow=={tf.__version__}", f"tf-keras=={tf.__version__}", "matplotlib"],
            check=True,
        )
    print("why not a plain install:", plain_install_error(python))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([str(python), __file__], env=env).returncode


def plain_install_error(python: Path) -> str:
    """pip's own answer to `pip install influenciae` (a dry run, nothing installed)."""
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", f"influenciae=={VERSION}"],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    return lines[0] if lines else "(pip resolved it: nothing to explain)"


def keras3_error() -> str:
    """What influenciae does with a Keras 3 model (TF_USE_LEGACY_KERAS unset): the last line."""
    code = (
        "import numpy as np, tensorflow as tf, keras\n"
        "from deel.influenciae.common import InfluenceModel\n"
        "from deel.influenciae.trac_in import TracIn\n"
        "m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.Dense(2)])\n"
        "loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction='none')\n"
        "t = TracIn([InfluenceModel(m, start_layer=0, last_layer=-1, loss_function=loss)], 0.1)\n"
        "x, y = np.zeros((4, 2), 'float32'), np.zeros(4, 'int64')\n"
        "ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)\n"
        "[v.numpy() for _, v in t.compute_influence_values(ds)]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode == 0:
        return "none: it ran on a Keras 3 model"
    return done.stderr.strip().splitlines()[-1].strip()


def models(tf_keras, data_dir: Path) -> list:
    out = []
    for path in sorted(data_dir.glob("ckpt-*.weights.npz")):
        model = tf_keras.Sequential(
            [
                tf_keras.Input((20,)),
                tf_keras.layers.Dense(32, activation="relu"),
                tf_keras.layers.Dense(4),
            ]
        )
        with np.load(path) as weights:
            model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
        out.append(model)
    return out


def reference_pipeline(tf, tf_keras, nets, lrs, x, y, x_test, y_test):
    """The engine's way: compiled per-sample tapes, NumPy accumulation (gradcli.attribution)."""
    sys.path.insert(0, str(ROOT))
    from gradcli import attribution

    loss = tf_keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf_keras.losses.Reduction.NONE
    )

    def per_sample_fn(model):
        @tf.function
        def grads(xb, yb):
            def one(args):
                xi, yi = args
                with tf.GradientTape() as tape:
                    value = loss(yi[None], model(xi[None]))[0]
                g = tape.gradient(value, model.trainable_variables)
                return tf.concat([tf.reshape(v, [-1]) for v in g], 0)

            return tf.vectorized_map(one, (xb, yb))

        return grads

    fns = [per_sample_fn(m) for m in nets]

    def train_blocks():
        for part in attribution.batch_slices(len(x), BATCH):
            yield part, [f(x[part], y[part]).numpy() for f in fns]

    def self_only():
        acc = attribution.Accumulator({})
        for part, train in train_blocks():
            own = sum(attribution.self_terms(e, g) for e, g in zip(lrs, train, strict=True))
            acc.add(np.arange(part.start, part.stop), own)
        return acc.result().self_influence

    def matrix():
        test = [f(x_test, y_test).numpy() for f in fns]
        acc = attribution.Accumulator({}, n_test=len(x_test), k=10, keep_matrix=True)
        for part, train in train_blocks():
            scores = sum(
                attribution.checkpoint_scores(e, g, t)
                for e, g, t in zip(lrs, train, test, strict=True)
            )
            acc.add(np.arange(part.start, part.stop), np.zeros(len(scores)), scores)
        return acc.result().matrix

    return self_only, matrix


def compare() -> None:
    import tensorflow as tf
    import tf_keras
    from deel.influenciae.common import InfluenceModel
    from deel.influenciae.trac_in import TracIn

    with np.load(DATA / "data.npz") as d:
        x, y, x_test, y_test = d["x"], d["y"], d["x_test"], d["y_test"]
    with np.load(DATA / "reference.npz") as r:
        ref_self, ref_scores, lrs = r["self_influence"], r["scores"], [float(v) for v in r["lr"]]
    nets = models(tf_keras, DATA)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf_keras.losses.Reduction.NONE
    )
    # every layer's weights (start 0 .. last -1); influenciae's default watches one layer only
    wrapped = [InfluenceModel(m, start_layer=0, last_layer=-1, loss_function=loss) for m in nets]
    tracin = TracIn(wrapped, lrs)
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(BATCH)

    def influenciae_self():
        return np.concatenate(
            [v.numpy().ravel() for _, v in tracin.compute_influence_values(train_ds)]
        )

    def influenciae_matrix():
        rows = []
        for _, per_train in tracin.estimate_influence_values_in_batches(test_ds, train_ds):
            rows.append(np.concatenate([v.numpy() for _, v in per_train], axis=1))
        return np.concatenate(rows, axis=0)

    our_self, our_matrix = reference_pipeline(tf, tf_keras, nets, lrs, x, y, x_test, y_test)
    jobs = {
        "self-influence of 1,200": {"influenciae": influenciae_self, "reference": our_self},
        "200 x 1,200 score matrix": {"influenciae": influenciae_matrix, "reference": our_matrix},
    }
    timings = {(job, who): [] for job, pair in jobs.items() for who in pair}
    outputs = {}
    for _ in range(REPEAT + 1):  # the first round traces: not timed
        for job, pair in jobs.items():
            for who, fn in pair.items():  # interleaved, round by round
                start = time.perf_counter()
                outputs[job, who] = fn()
                timings[job, who].append(time.perf_counter() - start)
    inf_self = outputs["self-influence of 1,200", "influenciae"]
    inf_scores = outputs["200 x 1,200 score matrix", "influenciae"]
    mine = outputs["200 x 1,200 score matrix", "reference"]
    scale = np.abs(ref_scores).max()
    print(f"influenciae {VERSION} with tensorflow {tf.__version__} + tf_keras (legacy Keras)")
    print(f"Keras 3 model given to influenciae: {keras3_error()}")
    print(f"{len(x)} train x {len(x_test)} test samples, {len(nets)} checkpoints, lr {lrs}")
    for name, a, b in [
        ("influenciae self-influence vs reference", inf_self, ref_self),
        ("influenciae score matrix vs reference", inf_scores, ref_scores),
        ("same-process pipeline vs reference", mine, ref_scores),
    ]:
        err = np.abs(a - b).max() / (np.abs(b).max() if "self" in name else scale)
        print(f"  {name}: max |difference| / max |score| = {err:.1e}")
    for job in jobs:
        medians = {}
        for who in jobs[job]:
            runs = sorted(timings[job, who][1:])
            medians[who] = runs[len(runs) // 2]
            print(
                f"  {job}, {who:>11}: median {medians[who]:.3f} s (min {runs[0]:.3f}, "
                f"{REPEAT} runs)"
            )
        print(
            f"  {job}: the reference is {medians['influenciae'] / medians['reference']:.0f}x faster"
        )


if __name__ == "__main__":
    if in_bench_venv():
        compare()
    else:
        sys.exit(prepare())
