"""TracIn bench: `gradcli influence` against influenciae (deel-ai), same model, checkpoints, data.

Run with `python bench/influenciae_compare.py` from gradcli's venv (part of `make bench`; about
two minutes, most of it TensorFlow start-ups). influenciae is never a gradcli dependency: it
goes into its own venv, bench-out/influenciae-venv, which borrows TensorFlow and tf-keras from
gradcli's venv (a .pth file) and holds influenciae alone (`pip install --no-deps`).

Why so: influenciae's newest release (0.3.0, 2024) requires `tensorflow>=2.7,<2.10`, and no
TensorFlow before 2.12 has wheels for Python 3.11, so `pip install influenciae` does not
resolve. It runs next to TensorFlow 2.21 with `TF_USE_LEGACY_KERAS=1` (its `tf.keras` is then
tf_keras: it uses Keras 2 APIs such as `Reduction.NONE`), but not on Keras 3 models: its
compiled `_jacobian` fails while tracing ("numpy() is only available when eager execution is
enabled"; this script shows the line). So its side rebuilds the checkpoints of
bench/tracin_noise.py in tf_keras from their saved weights: the same architecture, the same
numbers. `InfluenceModel(start_layer=0, last_layer=-1)` watches every layer's weights, as
gradcli does by default (influenciae's own default is one layer).

What is compared, on bench/tracin_noise.py's 1,200 training and 200 test samples and its 3
checkpoints with the learning rates gradcli read from them:
- the self-influence of every training sample, and the 200 x 1,200 score matrix: largest
  difference relative to the largest value (float32 rounding is ~1e-6);
- time at equal work, whole processes from the shell: `gradcli influence` (TensorFlow start,
  loading and checking the .keras checkpoints, hashing, writing the .npz) against a script
  doing the same with influenciae (TensorFlow start, rebuilding the models from their
  weights, writing an .npz); medians of 3 interleaved runs. And the call alone, TensorFlow
  already imported: `gradcli.influence(...)` (the Python API; loading and checking the
  checkpoints inside the timing) against influenciae's TracIn calls (its models built before).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench-out" / "influenciae-venv"
DATA = ROOT / "bench-out" / "tracin_noise"
OUT = ROOT / "bench-out" / "influenciae_compare"
VERSION = "0.3.0"
BATCH, REPEAT = 256, 3


def prepare_venv() -> Path:
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # TensorFlow and tf-keras from gradcli's venv, not a second 2 GB install
    Path(site, "gradcli-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    print(f"installing influenciae {VERSION} (--no-deps) into {VENV}")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, f"influenciae=={VERSION}"], check=True)
    return python


def plain_install_error(python: Path) -> str:
    """pip's own answer to `pip install influenciae` (a dry run, nothing installed)."""
    done = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            f"influenciae=={VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    return lines[0] if lines else "(pip resolved it: nothing to explain)"


def timed(command: list, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__gradcli__"}


def main() -> None:
    if not (DATA / "scores.npz").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "tracin_noise.py")], check=True)
    python = prepare_venv()
    OUT.mkdir(parents=True, exist_ok=True)
    with np.load(DATA / "self.npz") as f:
        lrs = [c["lr"] for c in json.loads(str(f["__gradcli__"]))["checkpoints"]]
    ck, x, y = DATA / "checkpoints", DATA / "x.npy", DATA / "y.npy"
    test = ["--test", DATA / "x_test.npy", "--test-target", DATA / "y_test.npy"]
    gradcli = [sys.executable, "-m", "gradcli", "influence", ck, x, "-t", y, "-q"]
    jobs = {
        "self-influence of 1,200": (
            [*gradcli, "--self", "-o", OUT / "gradcli_self.npz"],
            OUT / "influenciae_self.npz",
        ),
        "200 x 1,200 score matrix": (
            [*gradcli, *test, "--matrix", "-o", OUT / "gradcli_matrix.npz"],
            OUT / "influenciae_matrix.npz",
        ),
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    side_env = {**env, "TF_USE_LEGACY_KERAS": "1"}
    walls: dict[tuple[str, str], list[float]] = {}
    computes: dict[str, list[float]] = {}
    for _ in range(REPEAT):
        for job, (command, side_out) in jobs.items():  # interleaved, round by round
            seconds, _ = timed([str(c) for c in command], env)
            walls.setdefault((job, "gradcli"), []).append(seconds)
            kind = "self" if "self" in job else "matrix"
            side = [str(python), __file__, kind, str(side_out), ",".join(map(repr, lrs))]
            seconds, printed = timed(side, side_env)
            walls.setdefault((job, "influenciae"), []).append(seconds)
            computes.setdefault((job, "influenciae"), []).append(float(printed.split()[-1]))
            _, printed = timed([sys.executable, __file__, "api", kind], env)
            computes.setdefault((job, "gradcli"), []).append(float(printed.split()[-1]))
    ours_self = arrays(OUT / "gradcli_self.npz")["self_influence"]
    ours_matrix = arrays(OUT / "gradcli_matrix.npz")["matrix"]
    theirs_self = arrays(OUT / "influenciae_self.npz")["values"]
    theirs_matrix = arrays(OUT / "influenciae_matrix.npz")["values"]
    print(f"influenciae {VERSION} (tf_keras), plain install: {plain_install_error(python)}")
    print(f"Keras 3 model given to influenciae: {keras3_error(python)}")
    print(f"1,200 train x 200 test samples, 3 checkpoints, lr {', '.join(f'{e:.5f}' for e in lrs)}")
    for name, a, b in [
        ("self-influence", ours_self, theirs_self),
        ("score matrix", ours_matrix, theirs_matrix),
    ]:
        err = np.abs(a - b).max() / np.abs(b).max()
        print(f"  {name}: max |gradcli - influenciae| / max |value| = {err:.1e}")

    def median(runs: list[float]) -> float:
        return sorted(runs)[len(runs) // 2]

    for job in jobs:
        for what, found in (("whole processes", walls), ("the call alone", computes)):
            ours, theirs = median(found[job, "gradcli"]), median(found[job, "influenciae"])
            print(
                f"  {job}, {what}: gradcli {ours:.2f} s, influenciae {theirs:.2f} s "
                f"(medians of {REPEAT}): influenciae / gradcli = {theirs / ours:.2f}"
            )


def keras3_error(python: Path) -> str:
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
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    if done.returncode == 0:
        return "none: it ran on a Keras 3 model"
    return done.stderr.strip().splitlines()[-1].strip()


def gradcli_call(kind: str) -> None:
    """In gradcli's venv, TensorFlow imported: the time of the Python API's call alone (its
    checkpoints loaded and checked, as influenciae's side builds its models untimed)."""
    import tensorflow  # noqa: F401

    import gradcli

    test = {"test": DATA / "x_test.npy", "test_target": DATA / "y_test.npy", "matrix": True}
    start = time.perf_counter()
    gradcli.influence(
        DATA / "checkpoints",
        DATA / "x.npy",
        DATA / "y.npy",
        self_influence=kind == "self",
        **({} if kind == "self" else test),
    )
    print(f"compute {time.perf_counter() - start:.3f}")


# ------------------------------------------------------------------ influenciae's side


def influenciae_side(kind: str, out: str, rates: str) -> None:
    """In the influenciae venv: the same work as the gradcli command, from the same files."""
    import tensorflow as tf
    import tf_keras
    from deel.influenciae.common import InfluenceModel
    from deel.influenciae.trac_in import TracIn

    lrs = [float(v) for v in rates.split(",")]
    nets = []
    for path in sorted((DATA / "weights").glob("ckpt-*.npz")):
        model = tf_keras.Sequential(
            [
                tf_keras.Input((20,)),
                tf_keras.layers.Dense(32, activation="relu"),
                tf_keras.layers.Dense(4),
            ]
        )
        with np.load(path) as weights:
            model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
        nets.append(model)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf_keras.losses.Reduction.NONE
    )
    wrapped = [InfluenceModel(m, start_layer=0, last_layer=-1, loss_function=loss) for m in nets]
    tracin = TracIn(wrapped, lrs)
    x, y = np.load(DATA / "x.npy"), np.load(DATA / "y.npy")
    start = time.perf_counter()
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    if kind == "self":
        values = np.concatenate(
            [v.numpy().ravel() for _, v in tracin.compute_influence_values(train)]
        )
    else:
        xt, yt = np.load(DATA / "x_test.npy"), np.load(DATA / "y_test.npy")
        test = tf.data.Dataset.from_tensor_slices((xt, yt)).batch(BATCH)
        rows = []
        for _, per_train in tracin.estimate_influence_values_in_batches(test, train):
            rows.append(np.concatenate([v.numpy() for _, v in per_train], axis=1))
        values = np.concatenate(rows, axis=0)
    seconds = time.perf_counter() - start
    np.savez(out, values=values)
    print(f"compute {seconds:.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        influenciae_side(*sys.argv[1:])
    elif len(sys.argv) == 3 and sys.argv[1] == "api":
        gradcli_call(sys.argv[2])
    else:
        main()
