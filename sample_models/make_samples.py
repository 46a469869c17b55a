"""Generate small, deterministic sample models + data for gradcli demos and tests.

Usage:
    python sample_models/make_samples.py [OUTPUT_DIR]     (or: make samples)

OUTPUT_DIR defaults to the folder this script lives in. Rerunning overwrites
all outputs. Everything trains on synthetic data in a few seconds on CPU.
"""

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # must be set before TensorFlow is imported
os.environ["KERAS_BACKEND"] = "tensorflow"  # model.export() needs the TF backend
sys.dont_write_bytecode = True

import keras  # noqa: E402

SEED = 0


def reseed():
    keras.utils.set_random_seed(SEED)
    return np.random.default_rng(SEED)


# --------------------------------------------------------------------------
# 1. shapes CNN
# --------------------------------------------------------------------------
def make_shapes(rng, n, size=28):
    """Images with one shape: 0 = filled square, 1 = ring, 2 = cross/plus."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x = rng.uniform(0.0, 0.15, (n, size, size)).astype(np.float32)  # background noise
    y = np.arange(n) % 3
    rng.shuffle(y)
    for i in range(n):
        r = rng.uniform(4.0, 8.0)  # half-size / radius
        cy, cx = rng.uniform(r + 1, size - r - 2, 2)
        inten = rng.uniform(0.7, 1.0)
        if y[i] == 0:
            mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        elif y[i] == 1:
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            mask = np.abs(d - r) <= 1.0
        else:
            t = 1.0
            mask = ((np.abs(yy - cy) <= t) & (np.abs(xx - cx) <= r)) | (
                (np.abs(xx - cx) <= t) & (np.abs(yy - cy) <= r)
            )
        x[i][mask] = inten
    x = np.clip(x, 0.0, 1.0)[..., None].astype(np.float32)
    return x, y.astype(np.int64)


def build_shapes_cnn():
    inp = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool2")(h)
    # Global max pooling (instead of Flatten) makes the class evidence come from the
    # strongest local feature responses, so input gradients concentrate on the shape.
    h = keras.layers.GlobalMaxPooling2D(name="gpool")(h)
    h = keras.layers.Dense(32, activation="relu", name="dense")(h)
    out = keras.layers.Dense(3, name="logits")(h)
    model = keras.Model(inp, out, name="shapes_cnn")
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def do_shapes(out):
    rng = reseed()
    x, y = make_shapes(rng, 3600)
    xtr, ytr, xte, yte = x[:3000], y[:3000], x[3000:], y[3000:]
    model = build_shapes_cnn()
    model.fit(xtr, ytr, epochs=5, batch_size=64, verbose=0)
    _, acc = model.evaluate(xte, yte, verbose=0)
    model.save(out / "shapes_cnn.keras")
    # 16 held-out samples, a balanced-ish mix of classes
    idx = np.concatenate([np.where(yte == c)[0][: 6 if c == 0 else 5] for c in range(3)])
    idx = np.sort(idx)
    np.save(out / "shapes_x.npy", xte[idx].astype(np.float32))
    np.save(out / "shapes_y.npy", yte[idx].astype(np.int64))
    return {"shapes_cnn.keras": f"held-out accuracy {acc:.4f}"}


# --------------------------------------------------------------------------
# 2. tabular MLP (+ export, + checkpoints)
# --------------------------------------------------------------------------
def make_tabular(rng, n):
    x = rng.standard_normal((n, 10)).astype(np.float32)
    y = 3 * x[:, 1] - 2 * x[:, 4] + 1.5 * x[:, 7] ** 2 + 0.05 * rng.standard_normal(n)
    return x, y.astype(np.float32)[:, None]


def build_tabular_mlp():
    inp = keras.Input((10,), name="features")
    h = keras.layers.Dense(32, activation="relu", name="hidden1")(inp)
    h = keras.layers.Dense(16, activation="relu", name="hidden2")(h)
    out = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inp, out, name="tabular_mlp")
    model.compile(optimizer="adam", loss="mse")
    return model


def do_tabular(out):
    rng = reseed()
    x, y = make_tabular(rng, 8064)
    xtr, ytr, xte, yte = x[:8000], y[:8000], x[8000:], y[8000:]
    # fresh held-out set for the metric (the saved 64 samples are held out too)
    xval, yval = make_tabular(rng, 1000)
    model = build_tabular_mlp()
    model.fit(xtr, ytr, epochs=30, batch_size=64, verbose=0)
    mse = model.evaluate(xval, yval, verbose=0)
    model.save(out / "tabular_mlp.keras")
    np.save(out / "tabular_x.npy", xte)
    np.save(out / "tabular_y.npy", yte)

    export_dir = out / "tabular_export"
    if export_dir.exists():
        shutil.rmtree(export_dir)
    model.export(str(export_dir), verbose=False)

    # checkpoints: same architecture at epoch 0, 2, 10
    ckdir = out / "checkpoints"
    if ckdir.exists():
        shutil.rmtree(ckdir)
    ckdir.mkdir()
    reseed()
    ck = build_tabular_mlp()
    ck.optimizer.build(ck.trainable_variables)  # so epoch_00 reloads without a warning
    ck.save(ckdir / "epoch_00.keras")
    ck.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    ck.save(ckdir / "epoch_02.keras")
    m2 = ck.evaluate(xval, yval, verbose=0)
    ck.fit(xtr, ytr, epochs=8, batch_size=64, verbose=0)
    ck.save(ckdir / "epoch_10.keras")
    m10 = ck.evaluate(xval, yval, verbose=0)
    return {
        "tabular_mlp.keras": f"held-out MSE {mse:.4f}",
        "tabular_export/": "SavedModel export of tabular_mlp",
        "checkpoints/epoch_02.keras": f"held-out MSE {m2:.4f}",
        "checkpoints/epoch_10.keras": f"held-out MSE {m10:.4f}",
    }


# --------------------------------------------------------------------------
# 3. two inputs / two outputs
# --------------------------------------------------------------------------
def make_two_io(rng, n):
    a = rng.standard_normal((n, 8)).astype(np.float32)
    b = rng.standard_normal((n, 4)).astype(np.float32)
    s = a[:, 0] + a[:, 1] - b[:, 0]
    cls = np.digitize(s, [-0.8, 0.8]).astype(np.int64)  # 3 roughly balanced classes
    reg = 2 * a[:, 2] - b[:, 1] + 0.5 * b[:, 2] + 0.05 * rng.standard_normal(n)
    return a, b, cls, reg.astype(np.float32)[:, None]


def do_two_io(out):
    rng = reseed()
    a, b, cls, reg = make_two_io(rng, 3032)
    ina = keras.Input((8,), name="a")
    inb = keras.Input((4,), name="b")
    h = keras.layers.Concatenate(name="concat")([ina, inb])
    h = keras.layers.Dense(32, activation="relu", name="trunk")(h)
    ocls = keras.layers.Dense(3, name="cls")(h)
    oreg = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model([ina, inb], [ocls, oreg], name="two_io")
    model.compile(
        optimizer="adam",
        loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.5},
    )
    tr, te = slice(0, 3000), slice(3000, None)
    model.fit(
        {"a": a[tr], "b": b[tr]},
        {"cls": cls[tr], "reg": reg[tr]},
        epochs=15,
        batch_size=64,
        verbose=0,
    )
    va, vb, vcls, vreg = make_two_io(rng, 1000)
    pc, pr = model.predict({"a": va, "b": vb}, verbose=0)
    acc = float(np.mean(pc.argmax(-1) == vcls))
    mse = float(np.mean((pr - vreg) ** 2))
    model.save(out / "two_io.keras")
    np.savez(out / "two_io_x.npz", a=a[te], b=b[te])
    np.savez(out / "two_io_y.npz", cls=cls[te], reg=reg[te])
    return {"two_io.keras": f"held-out cls accuracy {acc:.4f}, reg MSE {mse:.4f}"}


# --------------------------------------------------------------------------
# 4. legacy Sequential (no Input layer) saved as HDF5
# --------------------------------------------------------------------------
def make_six(rng, n):
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = x[:, 0] - 0.5 * x[:, 3] + 0.3 * x[:, 5] ** 2 + 0.05 * rng.standard_normal(n)
    return x, y.astype(np.float32)[:, None]


def do_legacy(out):
    rng = reseed()
    x, y = make_six(rng, 2032)
    model = keras.Sequential(
        [
            keras.layers.Dense(16, activation="relu", name="d1"),
            keras.layers.Dense(8, activation="relu", name="d2"),
            keras.layers.Dense(1, name="d3"),
        ],
        name="seqni",
    )
    model.compile(optimizer="adam", loss="mse")
    model.fit(x[:2000], y[:2000], epochs=20, batch_size=64, verbose=0)
    xv, yv = make_six(rng, 1000)
    mse = model.evaluate(xv, yv, verbose=0)
    path = out / "legacy_mlp.h5"
    if path.exists():
        path.unlink()
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # silence the expected "HDF5 is legacy" warning
    try:
        model.save(path)  # legacy HDF5 on purpose
    finally:
        absl_log.setLevel(level)
    np.save(out / "legacy_x.npy", x[2000:])
    np.save(out / "legacy_y.npy", y[2000:])
    return {"legacy_mlp.h5": f"held-out MSE {mse:.4f}"}


# --------------------------------------------------------------------------
# 6. nested Sequential inside a functional model
# --------------------------------------------------------------------------
def do_nested(out):
    rng = reseed()
    x, _ = make_six(rng, 2000)
    y = np.stack([np.tanh(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], axis=1).astype(np.float32)
    block = keras.Sequential(
        [
            keras.layers.Dense(16, activation="tanh", name="a"),
            keras.layers.Dense(8, activation="tanh", name="b"),
        ],
        name="block",
    )
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(16, activation="tanh", name="pre")(inp)
    h = block(h)
    outp = keras.layers.Dense(2, name="head")(h)
    model = keras.Model(inp, outp, name="nested")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x[:1800], y[:1800], epochs=20, batch_size=64, verbose=0)
    mse = model.evaluate(x[1800:], y[1800:], verbose=0)
    model.save(out / "nested.keras")
    return {"nested.keras": f"held-out MSE {mse:.4f}"}


def main(argv):
    out = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    metrics = {}
    for step in (do_shapes, do_tabular, do_two_io, do_legacy, do_nested):
        metrics.update(step(out))
    elapsed = time.perf_counter() - t0

    def size(p):
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size

    names = [
        "shapes_cnn.keras",
        "shapes_x.npy",
        "shapes_y.npy",
        "tabular_mlp.keras",
        "tabular_x.npy",
        "tabular_y.npy",
        "tabular_export/",
        "two_io.keras",
        "two_io_x.npz",
        "two_io_y.npz",
        "legacy_mlp.h5",
        "legacy_x.npy",
        "legacy_y.npy",
        "nested.keras",
        "checkpoints/epoch_00.keras",
        "checkpoints/epoch_02.keras",
        "checkpoints/epoch_10.keras",
    ]
    print(f"\nWrote samples to {out} in {elapsed:.1f} s")
    for n in names:
        print(f"  {n:28s} {size(out / n) / 1024:8.1f} KiB  {metrics.get(n, '')}")


if __name__ == "__main__":
    main(sys.argv)
