"""CAM methods (gradcam, gradcam++, layercam) against hand-written references: a plain
GradientTape for A and dA, the published formulas in NumPy, and tf.image.resize / np.interp for
the resize; a 2-D CNN, a 1-D CNN and a nested backbone; --class and --target; batch 1, 3, N."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load, npz, run_process

N = 7
BATCHES = ["1", "3", str(N)]
METHODS = ["gradcam", "gradcam++", "layercam"]


@pytest.fixture(scope="session")
def cams(tmp_path_factory, keras):
    """A 2-D CNN, a 1-D CNN and a CNN whose conv layers sit in a nested backbone."""
    keras.utils.set_random_seed(3)
    L = keras.layers
    d = tmp_path_factory.mktemp("cam")
    rng = np.random.default_rng(5)
    m: dict = {"dir": d}

    x = keras.Input((12, 12, 3), name="img")
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = L.Conv2D(6, 3, strides=2, padding="same", activation="tanh", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    y = L.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(x, y)
    model.save(d / "cnn2d.keras")
    m["cnn2d"] = d / "cnn2d.keras"
    np.save(d / "x2d.npy", rng.normal(size=(N, 12, 12, 3)).astype(np.float32))
    np.save(d / "y2d.npy", rng.integers(0, 3, size=N))

    x = keras.Input((20, 2), name="wave")
    h = L.Conv1D(5, 3, padding="same", activation="relu", name="c1")(x)
    h = L.Conv1D(4, 3, strides=2, padding="valid", activation="tanh", name="c2")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    y = L.Dense(3, name="scores")(h)
    keras.Model(x, y).save(d / "cnn1d.keras")
    m["cnn1d"] = d / "cnn1d.keras"
    np.save(d / "x1d.npy", rng.normal(size=(N, 20, 2)).astype(np.float32))

    inner = keras.Input((10, 10, 1))
    b = L.Conv2D(4, 3, activation="relu", name="bc1")(inner)
    b = L.Conv2D(5, 3, activation="tanh", name="bc2")(b)
    backbone = keras.Model(inner, b, name="backbone")
    x = keras.Input((10, 10, 1), name="pic")
    h = L.GlobalAveragePooling2D(name="gap")(backbone(x))
    y = L.Dense(2, activation="softmax", name="probs")(h)
    keras.Model(x, y).save(d / "nested.keras")

    # channels_first (N, K, h, w) at the CAM layer; CPU convolutions are channels_last only,
    # so the conv runs between two Permutes and the CAM layer is a channels_first padding
    x = keras.Input((3, 12, 12), name="chw")
    h = L.Permute((2, 3, 1))(x)
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(h)
    h = L.Permute((3, 1, 2))(h)
    h = L.ZeroPadding2D(1, data_format="channels_first", name="pad")(h)
    h = L.GlobalAveragePooling2D(data_format="channels_first", name="gap")(h)
    y = L.Dense(3, name="scores")(h)
    keras.Model(x, y).save(d / "cfirst.keras")
    m["cfirst"] = d / "cfirst.keras"
    np.save(d / "xc.npy", rng.normal(size=(N, 3, 12, 12)).astype(np.float32))
    m["nested"] = d / "nested.keras"
    np.save(d / "xn.npy", rng.normal(size=(N, 10, 10, 1)).astype(np.float32))
    np.save(d / "yn.npy", rng.integers(0, 2, size=N))
    return m


# ------------------------------------------------------------------ references


def reference_a_g(tf, keras, path, layer, x, objective):
    """A and d o_i / d A from a plain tape: the model split by hand at `layer`."""
    model = load(path)
    if path.name == "nested.keras":
        backbone = model.get_layer("backbone")
        rest_inner = ["bc2"] if layer == "bc1" else []
        features = keras.Model(backbone.inputs, backbone.get_layer(layer).output)
        rest = [backbone.get_layer(n) for n in rest_inner] + [
            model.get_layer("gap"),
            model.get_layer("probs"),
        ]
    else:
        names = [lay.name for lay in model.layers]
        features = keras.Model(model.inputs, model.get_layer(layer).output)
        rest = model.layers[names.index(layer) + 1 :]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        a = features(xt)
        tape.watch(a)
        h = a
        for lay in rest:
            h = lay(h)
        total = tf.reduce_sum(objective(h))
    g = tape.gradient(total, a)
    return a.numpy().astype(np.float64), g.numpy().astype(np.float64)


def reference_cam(method, a, g):
    """The published formulas, written out for channels-last (B, *spatial, K)."""
    axes = tuple(range(1, a.ndim - 1))
    if method == "gradcam":
        w = g.mean(axis=axes, keepdims=True)
        cam = (w * a).sum(-1)
    elif method == "layercam":
        cam = (np.maximum(g, 0) * a).sum(-1)
    else:  # Grad-CAM++, closed form for exp(score); alphas normalised per channel
        num = g**2
        den = 2 * g**2 + g**3 * a.sum(axis=axes, keepdims=True)
        alpha = np.where(den != 0, num / np.where(den != 0, den, 1), 0)
        s = alpha.sum(axis=axes, keepdims=True)
        alpha = alpha / np.where(s != 0, s, 1)
        w = (alpha * np.maximum(g, 0)).sum(axis=axes, keepdims=True)
        cam = (w * a).sum(-1)
    return np.maximum(cam, 0)


def resize_2d(tf, cam, size):
    return tf.image.resize(cam[..., None], size, method="bilinear").numpy()[..., 0]


def resize_1d(cam, length):
    """Linear interpolation with half-pixel centres, in NumPy."""
    t = cam.shape[1]
    where = np.clip((np.arange(length) + 0.5) * t / length - 0.5, 0, t - 1)
    return np.stack([np.interp(where, np.arange(t), row) for row in cam])


def run_cam(cli, tmp_path, *args):
    out = tmp_path / "cam.npz"
    r = cli("wrt-input", *args, "-o", out, "--json")
    assert r.code == 0, r.err
    return npz(out), json.loads(r.out)


def sparse_ce(y):
    def objective(probs):
        import tensorflow as tf

        p = tf.gather(probs, y, axis=1, batch_dims=1)
        return -tf.math.log(p)

    return objective


# ------------------------------------------------------------------ 2-D, 1-D, nested


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
def test_cam_2d_class(cli, cams, tmp_path, tf, keras, method, batch):
    x = np.load(cams["dir"] / "x2d.npy")
    got, rec = run_cam(
        cli, tmp_path, cams["cnn2d"], cams["dir"] / "x2d.npy", "-m", method, "--class", "1",
        "--layer", "c2", "-b", batch,
    )  # fmt: skip
    a, g = reference_a_g(tf, keras, cams["cnn2d"], "c2", x, lambda y: y[:, 1])
    ref = reference_cam(method, a, g)
    assert ref.max() > 0  # the test can fail: the maps are not trivially zero
    np.testing.assert_allclose(got["cam@c2"], ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["img"], resize_2d(tf, ref, (12, 12)), rtol=2e-4, atol=1e-6)
    assert rec["cam"] == {
        "layer": "c2",
        "class": "Conv2D",
        "default": False,
        "map": "cam@c2",
        "resized": ["img"],
    }
    assert [t["name"] for t in rec["tensors"]] == ["img", "cam@c2"]
    assert rec["tensors"][0]["shape"] == [N, 12, 12] and rec["tensors"][1]["shape"] == [N, 6, 6]


@pytest.mark.parametrize("method", METHODS)
def test_cam_2d_target_loss(cli, cams, tmp_path, tf, keras, method):
    x = np.load(cams["dir"] / "x2d.npy")
    y = np.load(cams["dir"] / "y2d.npy")
    got, rec = run_cam(
        cli, tmp_path, cams["cnn2d"], cams["dir"] / "x2d.npy", "-m", method,
        "--target", cams["dir"] / "y2d.npy", "--loss", "sparse_categorical_crossentropy",
        "--layer", "c1", "-b", "3",
    )  # fmt: skip
    a, g = reference_a_g(tf, keras, cams["cnn2d"], "c1", x, sparse_ce(y))
    ref = reference_cam(method, a, g)
    assert ref.max() > 0
    np.testing.assert_allclose(got["cam@c1"], ref, rtol=2e-4, atol=1e-6)
    assert rec["objective"].startswith("per-sample loss")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
def test_cam_1d(cli, cams, tmp_path, tf, keras, method, batch):
    x = np.load(cams["dir"] / "x1d.npy")
    got, rec = run_cam(
        cli, tmp_path, cams["cnn1d"], cams["dir"] / "x1d.npy", "-m", method, "--class", "2",
        "-b", batch,
    )  # fmt: skip
    # default layer: c2, the last one with a (N, t, K) output
    assert rec["cam"]["layer"] == "c2" and rec["cam"]["default"] is True
    a, g = reference_a_g(tf, keras, cams["cnn1d"], "c2", x, lambda y: y[:, 2])
    ref = reference_cam(method, a, g)
    assert ref.shape == (N, 9) and ref.max() > 0
    np.testing.assert_allclose(got["cam@c2"], ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["wave"], resize_1d(ref, 20), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
def test_cam_nested_backbone_by_path(cli, cams, tmp_path, tf, keras, method, batch):
    x = np.load(cams["dir"] / "xn.npy")
    got, rec = run_cam(
        cli, tmp_path, cams["nested"], cams["dir"] / "xn.npy", "-m", method, "--class", "0",
        "--layer", "backbone/bc1", "-b", batch,
    )  # fmt: skip
    a, g = reference_a_g(tf, keras, cams["nested"], "bc1", x, lambda y: y[:, 0])
    ref = reference_cam(method, a, g)
    assert ref.max() > 0
    np.testing.assert_allclose(got["cam@backbone/bc1"], ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["pic"], resize_2d(tf, ref, (10, 10)), rtol=2e-4, atol=1e-6)
    assert rec["cam"]["layer"] == "backbone/bc1" and rec["cam"]["default"] is False


@pytest.mark.parametrize("method", METHODS)
def test_cam_nested_default_layer_and_target(cli, cams, tmp_path, tf, keras, method):
    x = np.load(cams["dir"] / "xn.npy")
    y = np.load(cams["dir"] / "yn.npy")
    got, rec = run_cam(
        cli, tmp_path, cams["nested"], cams["dir"] / "xn.npy", "-m", method,
        "--target", cams["dir"] / "yn.npy", "--loss", "sparse_categorical_crossentropy",
    )  # fmt: skip
    assert rec["cam"]["layer"] == "backbone/bc2" and rec["cam"]["default"] is True
    assert rec["provenance"]["method"]["layer"] == "backbone/bc2"  # the default, recorded
    a, g = reference_a_g(tf, keras, cams["nested"], "bc2", x, sparse_ce(y))
    ref = reference_cam(method, a, g)
    assert ref.max() > 0
    np.testing.assert_allclose(got["cam@backbone/bc2"], ref, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_cam_channels_first(cli, cams, tmp_path, tf, keras, method):
    x = np.load(cams["dir"] / "xc.npy")
    png = tmp_path / "png"
    got, rec = run_cam(
        cli, tmp_path, cams["cfirst"], cams["dir"] / "xc.npy", "-m", method, "--class", "1",
        "-b", "3", "--png", png, "--png-limit", "1",
    )  # fmt: skip
    assert rec["cam"]["layer"] == "pad" and rec["cam"]["default"] is True
    a, g = reference_a_g(tf, keras, cams["cfirst"], "pad", x, lambda y: y[:, 1])
    a, g = np.moveaxis(a, 1, -1), np.moveaxis(g, 1, -1)  # (N, 14, 14, 4)
    ref = reference_cam(method, a, g)
    assert ref.shape == (N, 14, 14) and ref.max() > 0
    np.testing.assert_allclose(got["cam@pad"], ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["chw"], resize_2d(tf, ref, (12, 12)), rtol=2e-4, atol=1e-6)
    assert [p.name for p in png.iterdir()] == ["chw_0000.png"]


# ------------------------------------------------------------------ usage, pictures, process


def test_cam_errors_and_pointers(cli, cams):
    x2 = cams["dir"] / "x2d.npy"
    r = cli("wrt-input", cams["cnn2d"], x2, "--layer", "c2")
    assert r.code == 2 and "--layer goes with a CAM method" in r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    r = cli("wrt-layer", cams["cnn2d"], x2, "--layer", "c2", "--method", "gradcam")
    assert r.code == 2
    assert "gradcli wrt-input MODEL INPUT --method gradcam --layer L" in r.err
    r = cli("wrt-input", cams["cnn2d"], x2, "-m", "gradcam", "--layer", "gap")
    assert r.code == 2 and "spatial output" in r.err and "'gap'" in r.err
    r = cli("wrt-input", cams["cnn2d"], x2, "-m", "gradcam", "--layer", "nope")
    assert r.code == 2 and "--layer nope: no such layer" in r.err


def test_cam_table_and_png(cli, cams, tmp_path):
    png = tmp_path / "png"
    r = cli(
        "wrt-input", cams["cnn2d"], cams["dir"] / "x2d.npy", "-m", "gradcam++", "--class", "0",
        "--png", png, "--png-limit", "2", "--top", "3",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert (
        "CAM layer: c2 (Conv2D, the default: the last layer whose output is more than 1x1)" in r.out
    )
    assert "cam@c2" in r.out and "top 3 features of img" in r.out
    assert sorted(p.name for p in png.iterdir()) == ["img_0000.png", "img_0001.png"]
    strip = tmp_path / "strip"
    r = cli(
        "wrt-input", cams["cnn1d"], cams["dir"] / "x1d.npy", "-m", "layercam",
        "--png", strip, "--png-limit", "1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert [p.name for p in strip.iterdir()] == ["wave_0000.png"]


def test_cam_in_a_real_process(cams, tmp_path, tf, keras):
    out = tmp_path / "p.npz"
    r = run_process(
        "wrt-input", cams["nested"], cams["dir"] / "xn.npy", "-m", "gradcam", "--class", "1",
        "-o", out, "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    x = np.load(cams["dir"] / "xn.npy")
    a, g = reference_a_g(tf, keras, cams["nested"], "bc2", x, lambda y: y[:, 1])
    np.testing.assert_allclose(
        npz(out)["cam@backbone/bc2"], reference_cam("gradcam", a, g), rtol=2e-4, atol=1e-6
    )
    r = run_process("wrt-layer", cams["nested"], cams["dir"] / "xn.npy", "-l", "gap", "-m", "x")
    assert r.code == 2 and r.err.startswith("error: wrt-layer has no --method")
