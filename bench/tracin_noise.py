"""TracIn bench: self-influence finds planted label noise (issue 29's experiment, no command yet).

Run with `python bench/tracin_noise.py [--samples N] [--separation S] [--out DIR]` (about
25 s on 2 cores, half of it importing TensorFlow).

What it does, with plain TensorFlow/Keras and gradcli's NumPy TracIn modules only (no gradcli
command exists yet):
1. data: N points in 20 dimensions from 4 Gaussian classes (unit spread, centres drawn with
   spread S = 0.8: overlapping a little, so that a few clean points are hard too); 5% of the labels
   are flipped to another class (the planted noise); 200 clean test points;
2. training: an MLP (20-32-4, logits) with SGD on an ExponentialDecay schedule, 30 epochs;
   checkpoints `ckpt-1.keras` .. `ckpt-3.keras` after epochs 10, 20, 30, with the optimizer;
3. per checkpoint (in natural order): the learning rate read from the file (config.json and the
   saved iteration count, `gradcli.checkpoints`), checked against what Keras reads after
   loading; per-sample gradients of the per-sample loss with `tf.vectorized_map` over a plain
   `tf.GradientTape`, in batches;
4. TracIn with `gradcli.attribution`: self-influence of every training sample; per test sample
   the top-10 proponents and opponents; the same run in 3 shards, merged, compared bit for bit;
   and the scores again through a 256-dimensional projection (`gradcli.projection`);
5. report: precision at K (K = the number of flipped labels) of the top-K self-influence,
   against chance (5%) and against ranking by the last checkpoint's loss; timings.

Everything it computed is saved to DIR (default bench-out/tracin_noise) for
bench/influenciae_compare.py: the data, the checkpoints, each checkpoint's weights as an .npz
(for a tf_keras rebuild), and the reference scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gradcli import attribution, checkpoints, projection  # noqa: E402

FEATURES, CLASSES, NOISE, EPOCHS, EVERY, BATCH = 20, 4, 0.05, 30, 10, 32
TOP, PROJ_DIM, SHARDS, GRAD_BATCH = 10, 256, 3, 256


def make_data(n: int, separation: float = 0.8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES)) * separation

    def draw(count):
        y = rng.integers(0, CLASSES, count)
        return (centers[y] + rng.normal(size=(count, FEATURES))).astype("float32"), y

    x, clean = draw(n)
    flipped = np.sort(rng.choice(n, int(round(NOISE * n)), replace=False))
    y = clean.copy()
    y[flipped] = (clean[flipped] + rng.integers(1, CLASSES, flipped.size)) % CLASSES
    x_test, y_test = draw(200)
    return {"x": x, "y": y, "clean": clean, "flipped": flipped, "x_test": x_test, "y_test": y_test}


def build(keras):
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(CLASSES, name="logits"),
        ]
    )


def train(keras, data, out: Path) -> list[Path]:
    keras.utils.set_random_seed(0)
    model = build(keras)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=400, decay_rate=0.5)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=loss)
    saved = []
    for c in range(EPOCHS // EVERY):
        model.fit(data["x"], data["y"], batch_size=BATCH, epochs=EVERY, verbose=0, shuffle=True)
        path = out / f"ckpt-{c + 1}.keras"
        model.save(path)
        np.savez(out / f"ckpt-{c + 1}.weights.npz", *[v.numpy() for v in model.weights])
        saved.append(path)
    return saved


def saved_rate(path: Path) -> float:
    """What the command's loader will do: config.json and the saved iteration count."""
    import h5py

    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
        with z.open("model.weights.h5") as member, h5py.File(member, "r") as h:
            iterations = int(h["optimizer/vars/0"][()])
    return checkpoints.saved_learning_rate(checkpoints.optimizer_config(config), iterations, path)


def gradient_function(tf, keras, model):
    """Per-sample gradients of the per-sample loss, flattened and concatenated (B, P)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    variables = model.trainable_variables

    @tf.function
    def per_sample(x, y):
        def one(args):
            xi, yi = args
            with tf.GradientTape() as tape:
                value = loss(yi[None], model(xi[None], training=False))[0]
            grads = tape.gradient(value, variables)
            return tf.concat([tf.reshape(g, [-1]) for g in grads], 0), value

        return tf.vectorized_map(one, (x, y))

    def run(x, y):
        parts = [per_sample(x[s], y[s]) for s in attribution.batch_slices(len(x), GRAD_BATCH)]
        return np.concatenate([p[0].numpy() for p in parts]), np.concatenate(
            [p[1].numpy() for p in parts]
        )

    sizes = [int(np.prod(v.shape)) for v in variables]
    return run, sizes


def tracin(train_grads, test_grads, etas, shard=None, keep_matrix=False) -> attribution.ShardResult:
    """Stream the train rows (or one shard) in batches, every checkpoint per block."""
    run = {"checkpoints": len(etas), "lr": etas, "batch_size": GRAD_BATCH, "top": TOP}
    acc = attribution.Accumulator(
        run, n_test=len(test_grads[0]), k=TOP, keep_matrix=keep_matrix, shard=shard
    )
    for part in attribution.batch_slices(len(train_grads[0]), GRAD_BATCH, shard):
        rows = np.arange(part.start, part.stop)
        own = sum(
            attribution.self_terms(e, g[part]) for e, g in zip(etas, train_grads, strict=True)
        )
        scores = sum(
            attribution.checkpoint_scores(e, g[part], t)
            for e, g, t in zip(etas, train_grads, test_grads, strict=True)
        )
        acc.add(rows, own, scores)
    return acc.result()


def precision_at_k(values: np.ndarray, flipped: np.ndarray) -> float:
    _, top = attribution.top_rows(values, np.arange(len(values)), len(flipped))
    return len(set(top.tolist()) & set(flipped.tolist())) / len(flipped)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--separation", type=float, default=0.8, help="class centres ~ N(0, s^2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "tracin_noise")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        times[name] = now - since
        return now

    import keras
    import tensorflow as tf

    t = lap("import TensorFlow", start)
    data = make_data(args.samples, args.separation)
    np.savez(args.out / "data.npz", **data)
    paths = checkpoints.order_checkpoints(str(p) for p in train(keras, data, args.out))
    t = lap("train and save 3 checkpoints", t)

    etas, train_grads, test_grads, last_loss = [], [], [], None
    for path in paths:
        model = keras.models.load_model(path)
        eta = saved_rate(Path(path))
        keras_eta = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        assert abs(eta - keras_eta) <= 1e-6 * keras_eta, (path, eta, keras_eta)
        grads, sizes = gradient_function(tf, keras, model)
        g, last_loss = grads(data["x"], data["y"])
        train_grads.append(g)
        test_grads.append(grads(data["x_test"], data["y_test"])[0])
        etas.append(eta)
    t = lap("per-sample gradients (3 checkpoints, train + test)", t)

    whole = tracin(train_grads, test_grads, etas, keep_matrix=True)
    t = lap("TracIn: self-influence + top-10 of 200 test samples", t)
    merged = attribution.merge(
        [tracin(train_grads, test_grads, etas, (k, SHARDS), True) for k in range(SHARDS)],
        n_train=args.samples,
    )
    shards_equal = all(
        np.array_equal(getattr(whole, n), getattr(merged, n))
        for n in attribution.ShardResult.ARRAYS
    )
    t = lap(f"the same in {SHARDS} shards, merged", t)
    seed = 29
    proj_train = [
        projection.project(np.split(g, np.cumsum(sizes)[:-1], 1), seed, PROJ_DIM)
        for g in train_grads
    ]
    proj_test = [
        projection.project(np.split(g, np.cumsum(sizes)[:-1], 1), seed, PROJ_DIM)
        for g in test_grads
    ]
    projected = tracin(proj_train, proj_test, etas)
    t = lap(f"projected to {PROJ_DIM} (NumPy reference)", t)
    total = time.perf_counter() - start

    flipped = data["flipped"]
    k = len(flipped)
    p_self = precision_at_k(whole.self_influence, flipped)
    p_proj = precision_at_k(projected.self_influence, flipped)
    p_loss = precision_at_k(last_loss, flipped)
    overlap = np.mean(
        [
            len(set(a) & set(b)) / TOP
            for a, b in zip(whole.proponent_rows, projected.proponent_rows, strict=True)
        ]
    )
    np.savez(
        args.out / "reference.npz",
        lr=np.array(etas),
        self_influence=whole.self_influence,
        scores=whole.matrix,
        proponent_rows=whole.proponent_rows,
        opponent_rows=whole.opponent_rows,
    )
    print(
        f"TracIn planted-noise bench: {args.samples} train samples, {k} labels flipped "
        f"({NOISE:.0%}), MLP {sum(sizes)} parameters, checkpoints {[Path(p).name for p in paths]}"
    )
    print(f"learning rates read from the checkpoints: {', '.join(f'{e:.5f}' for e in etas)}")
    print(
        f"precision at K={k}, top-K self-influence: {p_self:.1%} "
        f"({p_self / NOISE:.1f}x chance of {NOISE:.0%})"
    )
    print(
        f"  same through a {PROJ_DIM}-dim projection: {p_proj:.1%}; "
        f"ranking by the last checkpoint's loss instead: {p_loss:.1%}"
    )
    print(f"  top-{TOP} proponents shared by exact and projected scores: {overlap:.0%} on average")
    print(f"  {SHARDS} shards merged equal the unsharded run bit for bit: {shards_equal}")
    for name, seconds in times.items():
        print(f"  {seconds:6.2f} s  {name}")
    print(f"  {total:6.2f} s  total")
    return {
        "precision": p_self,
        "projected": p_proj,
        "loss": p_loss,
        "shards_equal": shards_equal,
        "seconds": total,
        "k": k,
    }


if __name__ == "__main__":
    main()
