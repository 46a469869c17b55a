"""TracIn bench: self-influence finds planted label noise, through the real `gradcli influence`.

Run with `python bench/tracin_noise.py [--samples N] [--out DIR] [--quick]` (part of `make
bench`; about a minute on 2 cores, most of it six TensorFlow start-ups).

1. data: N points in 20 dimensions from 4 Gaussian classes (unit spread, centres drawn with
   spread 0.8: overlapping a little, so that a few clean points are hard too); 5% of the
   labels are flipped to another class (the planted noise); 200 clean test points;
2. training: an MLP (20-32-4, logits) with SGD on an ExponentialDecay schedule, 30 epochs;
   checkpoints `ckpt-1.keras` .. `ckpt-3.keras` after epochs 10, 20, 30, with the optimizer
   (so `--lr saved` reads each one's rate from its schedule and iteration count);
3. `gradcli influence` (a real process each time): self-influence of every training sample
   (`--self`); the 200 x N score matrix with each test sample's top 10 (`--test ... --matrix`);
   the same in 3 shards (`--shard K/3`) combined by `gradcli merge`, compared bit for bit;
   the matrix again through a 256-number projection (`--proj-dim 256`);
4. report: precision at K (K = the number of flipped labels) of the top-K self-influence,
   against chance (5%) and against ranking by the last checkpoint's loss (a strong baseline
   for this kind of noise); the projected scores against the exact ones; wall times.

`--quick`: the self-influence run only (tests/test_attribution_math.py runs that, with
gradcli and the training in its own process). Everything is kept in DIR
(default bench-out/tracin_noise) for bench/influenciae_compare.py: the data, the checkpoints,
each checkpoint's weights (weights/, for a tf_keras rebuild) and the command's outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES, CLASSES, NOISE, EPOCHS, EVERY, BATCH = 20, 4, 0.05, 30, 10, 32
TOP, PROJ_DIM, SHARDS = 10, 256, 3


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


def fit_checkpoints(keras, data: dict, out: Path) -> None:
    """Train the MLP; 3 checkpoints in out/checkpoints, their weights in out/weights."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(CLASSES, name="logits"),
        ]
    )
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=400, decay_rate=0.5)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=loss)
    for sub in ("checkpoints", "weights"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for c in range(EPOCHS // EVERY):
        model.fit(data["x"], data["y"], batch_size=BATCH, epochs=EVERY, verbose=0, shuffle=True)
        model.save(out / "checkpoints" / f"ckpt-{c + 1}.keras")
        np.savez(out / "weights" / f"ckpt-{c + 1}.npz", *[v.numpy() for v in model.weights])


def train(out: Path) -> None:
    """fit_checkpoints in a child process: this one never imports TensorFlow, as a user of
    the command would not."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, __file__, "--fit", str(out)], check=True, env=env)


def process(*args: str) -> None:
    """`gradcli ARGS` in a real process (this venv's)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "gradcli", *args]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def precision_at_k(values: np.ndarray, flipped: np.ndarray) -> float:
    top = np.argsort(-values, kind="stable")[: len(flipped)]
    return len(set(top.tolist()) & set(flipped.tolist())) / len(flipped)


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__gradcli__"}


def provenance(path: Path) -> dict:
    with np.load(path) as f:
        return json.loads(str(f["__gradcli__"]))


def main(argv: list[str] | None = None, command=process, keras=None) -> dict:
    """The experiment; `command(*args)` runs gradcli (default: a real process each time) and
    `keras`, when given, trains in this process (the test suite's shortcuts)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "tracin_noise")
    parser.add_argument("--quick", action="store_true", help="the self-influence run only")
    parser.add_argument("--fit", type=Path, help=argparse.SUPPRESS)  # train()'s child
    args = parser.parse_args(argv)
    if args.fit is not None:
        import keras as keras_module

        with np.load(args.fit / "data.npz") as d:
            fit_checkpoints(keras_module, {k: d[k] for k in d.files}, args.fit)
        return {}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def gradcli(*words: object) -> float:
        start = time.perf_counter()
        command(*map(str, words), "-q")
        return time.perf_counter() - start

    data = make_data(args.samples)
    np.savez(out / "data.npz", **data)
    for key in ("x", "y", "x_test", "y_test"):
        np.save(out / f"{key}.npy", data[key])
    start = time.perf_counter()
    if keras is None:
        train(out)
    else:
        fit_checkpoints(keras, data, out)
    times["train and save 3 checkpoints"] = time.perf_counter() - start
    ck, x, y = out / "checkpoints", out / "x.npy", out / "y.npy"
    test = ["--test", out / "x_test.npy", "--test-target", out / "y_test.npy"]
    times["gradcli influence --self"] = gradcli(
        "influence", ck, x, "-t", y, "--self", "-o", out / "self.npz"
    )
    own = arrays(out / "self.npz")
    flipped, k = data["flipped"], len(data["flipped"])
    found = {
        "k": k,
        "precision": precision_at_k(own["self_influence"], flipped),
        "loss": precision_at_k(own["loss"], flipped),
        "lr": [c["lr"] for c in provenance(out / "self.npz")["checkpoints"]],
    }
    if not args.quick:
        whole = out / "scores.npz"
        times["gradcli influence --test (200) --matrix"] = gradcli(
            "influence", ck, x, "-t", y, *test, "--self", "--matrix", "--top", TOP, "-o", whole
        )
        shards = []
        for s in range(SHARDS):
            shards.append(out / f"shard-{s}.npz")
            times[f"gradcli influence --shard {s}/{SHARDS}"] = gradcli(
                "influence", ck, x, "-t", y, *test, "--self", "--matrix", "--top", TOP,
                "--shard", f"{s}/{SHARDS}", "-o", shards[-1],
            )  # fmt: skip
        times["gradcli merge"] = gradcli("merge", *shards, "-o", out / "merged.npz")
        merged, exact = arrays(out / "merged.npz"), arrays(whole)
        found["shards_equal"] = merged.keys() == exact.keys() and all(
            merged[n].dtype == exact[n].dtype and np.array_equal(merged[n], exact[n], True)
            for n in exact
        )
        projected = out / "projected.npz"
        times[f"gradcli influence --proj-dim {PROJ_DIM}"] = gradcli(
            "influence", ck, x, "-t", y, *test, "--matrix", "--top", TOP,
            "--proj-dim", PROJ_DIM, "-o", projected,
        )  # fmt: skip
        p = arrays(projected)
        found["projected_error"] = float(
            np.abs(p["matrix"] - exact["matrix"]).max() / np.abs(exact["matrix"]).max()
        )
        found["top_overlap"] = float(
            np.mean(
                [
                    len(set(a) & set(b)) / TOP
                    for a, b in zip(exact["proponent_rows"], p["proponent_rows"], strict=True)
                ]
            )
        )
    report(args.samples, found, times)
    return found


def report(n: int, found: dict, times: dict[str, float]) -> None:
    k = found["k"]
    print(f"TracIn planted-noise bench: {n} training samples, {k} labels flipped ({NOISE:.0%})")
    print(f"learning rates read from the checkpoints: {', '.join(f'{e:.5f}' for e in found['lr'])}")
    p = found["precision"]
    print(
        f"precision at K={k}, top-K self-influence: {p:.1%} "
        f"({p / NOISE:.1f}x chance of {NOISE:.0%})"
    )
    print(f"  ranking by the last checkpoint's loss instead: {found['loss']:.1%}")
    if "shards_equal" in found:
        print(
            f"  {SHARDS} shards merged equal the unsharded run bit for bit: {found['shards_equal']}"
        )
        print(
            f"  {PROJ_DIM}-number projection: max |error| / max |score| = "
            f"{found['projected_error']:.3f}; top-{TOP} proponents shared with the exact "
            f"scores: {found['top_overlap']:.0%} on average"
        )
    for name, seconds in times.items():
        print(f"  {seconds:6.2f} s  {name}")


if __name__ == "__main__":
    main()
