"""Real runs for the HTML report tests: small models saved to disk (one with hostile names,
checkpoints of a real short training run, a 100-layer model, noisy pictures), the CLI run
in this process for its `--json` records, and the page of some records."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

# Text that must stay text on the page. No `/` (Keras names and file names cannot hold it):
# `</script>` comes in through npz keys, which can.
HOSTILE_FILE = "<img src=x onerror=alert(1)>\"'&amp;\x1b[2J"
HOSTILE_INPUT = "x\"'<svg onload=alert(2)>\x07"
HOSTILE_BROKEN = "<script>alert(3)<\\script>\x07"
HOSTILE_KEYS = ("</script><script>alert(4)</script>", "<img src=x onerror=alert(5)>\"'\r\n")
HOSTILE_LAYERS = ('<b onmouseover=alert(6)>"\x1b[31m', "<iframe src=javascript:alert(7)>'\u202e")
# layers that are computed take TensorFlow's node-name alphabet only: `_`, `>` and `.` left
COMPUTED_LAYERS = ("f_>x.", "d._>y_")


def json_run(*args: object) -> tuple[int, list[dict], str]:
    """`gradcli ARGS` in this process (no worker): exit code, the JSON records, stderr."""
    from gradcli.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = os.environ.get("GRADCLI_INPROCESS")
    os.environ["GRADCLI_INPROCESS"] = "1"
    code: object = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    finally:
        if before is None:
            os.environ.pop("GRADCLI_INPROCESS", None)
        else:
            os.environ["GRADCLI_INPROCESS"] = before
    records = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return (code if isinstance(code, int) else 0), records, err.getvalue()


def render(records: list[dict], locate=None) -> bytes:
    """The HTML page of `--json` records, as `--html` writes it (typed as the CLI types them)."""
    from gradcli.commands.display import typed
    from gradcli.present.html import render_file

    return render_file(typed(records), locate)


def hostile_zoo(keras, root: Path) -> dict[str, Path]:
    """A model with a hostile file and input name (computed), a broken file beside it with a
    hostile name, a described-only model with hostile layer names, npz files with hostile
    keys."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    zoo = root / "zoo"
    zoo.mkdir(parents=True)
    x_in = keras.Input((4, 4, 1), name=HOSTILE_INPUT)
    flat = keras.layers.Flatten(name=COMPUTED_LAYERS[0])(x_in)
    out = keras.layers.Dense(2, activation="tanh", name=COMPUTED_LAYERS[1])(flat)
    model = keras.Model(x_in, out, name="net")
    model.compile(loss="mse")
    paths = {"zoo": zoo, "model": zoo / f"{HOSTILE_FILE}.keras"}
    model.save(paths["model"])
    (zoo / f"{HOSTILE_BROKEN}.keras").write_bytes(b"not a zip archive")
    paths["x"] = root / "x.npy"
    np.save(paths["x"], rng.uniform(size=(3, 4, 4, 1)).astype(np.float32))
    paths["y"] = root / "y.npy"
    np.save(paths["y"], rng.normal(size=(3, 2)).astype(np.float32))

    named_in = keras.Input((3,), name="v")
    hidden = keras.layers.Dense(4, name=HOSTILE_LAYERS[0])(named_in)
    named = keras.Model(named_in, keras.layers.Dense(1, name=HOSTILE_LAYERS[1])(hidden))
    paths["named"] = root / "named.keras"
    named.save(paths["named"])

    values = rng.normal(size=(4, 6))
    for name, scale in (("a", 1.0), ("b", 1.5)):
        paths[name] = root / f"{name}.npz"
        np.savez(paths[name], **{HOSTILE_KEYS[0]: values * scale, HOSTILE_KEYS[1]: values})
    return paths


# each hostile run and the names its page must show as text
HOSTILE_RUNS = {
    "wrt-input": (HOSTILE_FILE, HOSTILE_INPUT),
    "directory": (HOSTILE_FILE, HOSTILE_BROKEN),
    "info": HOSTILE_LAYERS,
    "diff": HOSTILE_KEYS,
}


def hostile_records(keras, root: Path) -> dict[str, list[dict]]:
    """The records of each run of HOSTILE_RUNS on the hostile zoo (exit 0, 1 or 3)."""
    paths = hostile_zoo(keras, root)
    runs = {
        "wrt-input": ("wrt-input", paths["model"], paths["x"], "--class", "0", "--png", root / "p"),
        "directory": ("wrt-weights", paths["zoo"], paths["x"], "--target", paths["y"]),
        "info": ("info", paths["named"]),
        "diff": ("diff", paths["a"], paths["b"], "--max-rel-diff", "0.1"),
    }
    out = {}
    for name, args in runs.items():
        code, records, err = json_run(*args, "--json")
        assert records and code in (0, 1, 3), err
        out[name] = records
    return out


def training_checkpoints(keras, root: Path, epochs: int = 3) -> dict[str, Path]:
    """A tiny regression MLP trained on synthetic data for a few epochs: the untrained model
    and one checkpoint per epoch (Keras' ModelCheckpoint), as a training run leaves them."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    ckpt = root / "checkpoints"
    ckpt.mkdir(parents=True)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, :1] - 0.5 * x[:, 3:4] + 0.1 * rng.normal(size=(96, 1))).astype(np.float32)
    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="tanh", name="h1")(inp)
    h = keras.layers.Dropout(0.1, name="drop")(h)  # no variables: not in the flow summary
    h = keras.layers.Dense(4, activation="tanh", name="h2")(h)
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(h), name="mlp")
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.05))
    model.save(ckpt / "epoch_00.keras")
    save = keras.callbacks.ModelCheckpoint(str(ckpt / "epoch_{epoch:02d}.keras"))
    model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[save], verbose=0, shuffle=False)
    paths = {"dir": ckpt, "x": root / "train_x.npy", "y": root / "train_y.npy"}
    np.save(paths["x"], x[:48])
    np.save(paths["y"], y[:48])
    return paths


def deep_checkpoints(keras, root: Path, layers: int = 100, copies: int = 1) -> dict[str, Path]:
    """A directory of `copies` models of `layers` Dense layers each (the page's size budget;
    one by default: loading a 100-layer model takes seconds)."""
    d = root / "deep"
    d.mkdir(parents=True)
    for k in range(copies):
        keras.utils.set_random_seed(10 + k)
        model = keras.Sequential(
            [keras.Input((3,), name="x")]
            + [
                keras.layers.Dense(3, activation="tanh", name=f"dense_{i:03d}")
                for i in range(layers)
            ]
        )
        model.compile(loss="mse")
        model.save(d / f"step_{k}.keras")
    rng = np.random.default_rng(3)
    np.save(root / "deep_x.npy", rng.normal(size=(8, 3)).astype(np.float32))
    np.save(root / "deep_y.npy", rng.normal(size=(8, 3)).astype(np.float32))
    return {"dir": d, "x": root / "deep_x.npy", "y": root / "deep_y.npy"}


def noisy_pictures_model(keras, root: Path, n: int = 16, size: int = 96) -> dict[str, Path]:
    """A small CNN on noise images: its heatmaps are the hardest pictures to compress."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((size, size, 3), name="photo")
    c = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="conv")(inp)
    c = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(c))
    model.save(root / "noisy.keras")
    images = np.random.default_rng(4).uniform(size=(n, size, size, 3)).astype(np.float32)
    np.save(root / "noisy_x.npy", images)
    return {"model": root / "noisy.keras", "x": root / "noisy_x.npy"}
