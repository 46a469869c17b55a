"""--class pred and --class FILE.npy: one class per sample, in every command and method,
against a plain GradientTape with the same per-sample class picks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cam import reference_a_g, reference_cam, resize_2d

from conftest import load, npz

N = 7


@pytest.fixture(scope="module")
def three(tmp_path_factory, keras):
    """A small CNN on 8x8x2 images with 3 class logits, and classes that mix all three."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    d = tmp_path_factory.mktemp("classes")
    x = keras.Input((8, 8, 2), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="conv")(x)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, keras.layers.Dense(3, name="logits")(h))
    model.save(d / "cnn3.keras")
    images = rng.uniform(size=(N, 8, 8, 2)).astype(np.float32)
    np.save(d / "x.npy", images)
    labels = np.array([0, 1, 2, 2, 1, 0, 1])
    np.save(d / "labels.npy", labels)
    pred = np.argmax(model(images, training=False).numpy(), axis=-1)
    np.save(d / "pred.npy", pred)
    assert len(set(pred.tolist())) > 1 or len(set(labels.tolist())) == 3
    return {"dir": d, "model": d / "cnn3.keras", "x": images, "labels": labels, "pred": pred}


def picked(tf, classes):
    """The per-sample objective o_i = y[i, k_i]."""
    k = tf.constant(np.asarray(classes, np.int32))
    return lambda y: tf.gather(y, k, axis=1, batch_dims=1)


def input_grad(tf, model, x, objective):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(objective(model(xt, training=False)))
    return tape.gradient(total, xt).numpy()


def run(cli, tmp_path, *args):
    out = tmp_path / "g.npz"
    r = cli(*args, "-o", out, "--json")
    assert r.code == 0, r.err
    return npz(out), json.loads(r.out)


CLASS_ARGS = ["pred", "labels"]


def class_arg(three, which):
    return (
        ("pred", three["pred"])
        if which == "pred"
        else (three["dir"] / "labels.npy", three["labels"])
    )


@pytest.mark.parametrize("which", CLASS_ARGS)
@pytest.mark.parametrize("method", ["vanilla", "gradxinput", "integrated"])
def test_wrt_input_methods_per_sample_class(cli, three, tmp_path, tf, which, method):
    arg, classes = class_arg(three, which)
    x = three["x"]
    got, rec = run(
        cli, tmp_path, "wrt-input", three["model"], three["dir"] / "x.npy", "--class", arg,
        "-m", method, "--steps", "64", "-b", "3",
    )  # fmt: skip
    model = load(three["model"])
    objective = picked(tf, classes)
    if method == "integrated":
        alphas = ((np.arange(64) + 0.5) / 64).astype(np.float32)
        path = (alphas[None, :, None, None, None] * x[:, None]).reshape(-1, 8, 8, 2)
        g = input_grad(tf, model, path, picked(tf, np.repeat(classes, 64)))
        ref = x * g.reshape(N, 64, 8, 8, 2).mean(axis=1)
    else:
        ref = input_grad(tf, model, x, objective)
        ref = x * ref if method == "gradxinput" else ref
    np.testing.assert_allclose(got["image"], ref, rtol=1e-4, atol=1e-6)
    counts = {str(k): int(v) for k, v in zip(*np.unique(classes, return_counts=True), strict=True)}
    assert rec["classes"] == {"source": "pred" if which == "pred" else "file", "counts": counts}
    assert rec["tensors"][0]["status"] == "ok"


@pytest.mark.parametrize("method", ["smoothgrad", "squaregrad", "vargrad"])
def test_noise_tunnel_keeps_each_sample_class_on_its_copies(cli, three, tmp_path, tf, method):
    from gradcli.methods.common import MethodOptions
    from gradcli.methods.noise_tunnel import smoothgrad_noise

    x, classes = three["x"], three["labels"]
    got, _ = run(
        cli, tmp_path, "wrt-input", three["model"], three["dir"] / "x.npy", "--class",
        three["dir"] / "labels.npy", "-m", method, "--samples", "3", "--seed", "4", "-b", "2",
    )  # fmt: skip
    opts = MethodOptions(method, samples=3, noise=0.15, seed=4)
    model = load(three["model"])
    noisy = np.stack([x[i] + smoothgrad_noise(x[i], i, 0, opts) for i in range(N)])
    g = input_grad(tf, model, noisy.reshape(-1, 8, 8, 2), picked(tf, np.repeat(classes, 3)))
    g = g.reshape(N, 3, 8, 8, 2).astype(np.float64)
    ref = {"smoothgrad": g.mean(1), "squaregrad": (g**2).mean(1), "vargrad": g.var(1)}[method]
    np.testing.assert_allclose(got["image"], ref, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("which", CLASS_ARGS)
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_cams_per_sample_class(cli, three, tmp_path, tf, keras, which, method):
    arg, classes = class_arg(three, which)
    got, rec = run(
        cli, tmp_path, "wrt-input", three["model"], three["dir"] / "x.npy", "--class", arg,
        "-m", method, "-b", "4",
    )  # fmt: skip
    assert rec["cam"]["layer"] == "conv"
    a, g = reference_a_g(tf, keras, three["model"], "conv", three["x"], picked(tf, classes))
    ref = reference_cam(method, a, g)
    np.testing.assert_allclose(got["cam@conv"], ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["image"], resize_2d(tf, ref, (8, 8)), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("which", CLASS_ARGS)
def test_wrt_layer_per_sample_class(cli, three, tmp_path, tf, keras, which):
    arg, classes = class_arg(three, which)
    got, _ = run(
        cli, tmp_path, "wrt-layer", three["model"], three["dir"] / "x.npy", "--layer", "conv",
        "--class", arg, "-b", "3",
    )  # fmt: skip
    _, g = reference_a_g(tf, keras, three["model"], "conv", three["x"], picked(tf, classes))
    np.testing.assert_allclose(got["conv"], g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("which", CLASS_ARGS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_wrt_weights_per_sample_class(cli, three, tmp_path, tf, which, per_sample):
    arg, classes = class_arg(three, which)
    extra = ["--per-sample"] if per_sample else []
    got, rec = run(
        cli, tmp_path, "wrt-weights", three["model"], three["dir"] / "x.npy", "--class", arg,
        "-b", "3", *extra,
    )  # fmt: skip
    model = load(three["model"])
    objective = picked(tf, classes)
    with tf.GradientTape() as tape:
        mean = tf.reduce_mean(objective(model(tf.constant(three["x"]), training=False)))
    grads = tape.gradient(mean, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads, strict=True):
        np.testing.assert_allclose(got[v.path], g.numpy(), rtol=1e-4, atol=1e-7)
    if per_sample:  # each g_i against its own single-sample tape with its own class
        norms = []
        for i in range(N):
            with tf.GradientTape() as tape:
                o = model(tf.constant(three["x"][i : i + 1]), training=False)[0, classes[i]]
            grads = tape.gradient(o, model.trainable_variables)
            norms.append(np.sqrt(sum(float(np.sum(g.numpy() ** 2)) for g in grads)))
        np.testing.assert_allclose(got["per_sample/norm"], norms, rtol=1e-4)


def test_check_per_sample_class(cli, three):
    r = cli("check", three["model"], three["dir"] / "x.npy", "--class", "pred", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["tensors"][0]["status"] == "ok"


def test_pred_is_the_argmax_file_and_the_python_array(cli, three, tmp_path):
    import gradcli

    by_pred, rec = run(cli, tmp_path, "wrt-input", three["model"], three["dir"] / "x.npy",
                       "--class", "pred")  # fmt: skip
    by_file, _ = run(cli, tmp_path, "wrt-input", three["model"], three["dir"] / "x.npy",
                     "--class", three["dir"] / "pred.npy")  # fmt: skip
    np.testing.assert_array_equal(by_pred["image"], by_file["image"])
    api = gradcli.wrt_input(three["model"], three["x"], class_index=three["pred"])
    np.testing.assert_allclose(api["image"], by_pred["image"], rtol=1e-6, atol=1e-8)
    assert rec["objective"] == "predicted class of logits"
    assert rec["provenance"]["objective"]["class"] == "pred"


def test_class_file_in_objective_and_provenance(cli, three, tmp_path):
    import hashlib

    labels = three["dir"] / "labels.npy"
    _, rec = run(cli, tmp_path, "wrt-input", three["model"], three["dir"] / "x.npy",
                 "--class", labels)  # fmt: skip
    assert rec["objective"] == "class per sample from labels.npy of logits"
    given = rec["provenance"]["objective"]["class"]
    assert given == {"path": str(labels), "sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}


@pytest.mark.parametrize(
    "values, fragment",
    [
        ([0, 1, 2, 5, 0, 0, 0], "class 5 (sample 3) is out of range for output 'logits', which "
         "has 3 classes: classes must be in 0..2"),
        ([0, 1, -1, 0, 0, 0, 0], "class -1 (sample 2) is out of range"),
        ([0, 1.5, 0, 0, 0, 0, 0], "class 1.5 (sample 1) is not an integer"),
        ([0, 1, 2], "has 3 samples, but the input has 7"),
    ],
)  # fmt: skip
def test_class_file_checked_like_sparse_labels(cli, three, tmp_path, values, fragment):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array(values))
    r = cli("wrt-input", three["model"], three["dir"] / "x.npy", "--class", bad)
    assert r.code == 3, r.err
    assert str(bad) in r.err and fragment in r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--class", "first"], "--class 'first': expected a class index K, pred"),
        (["--class", "pred", "--target", "LABELS"], "--class and --target are exclusive"),
        (["--class", "3"], "--class 3: output 'logits' has shape (N, 3)"),
    ],
)
def test_class_usage_errors(cli, three, tmp_path, args, fragment):
    args = [str(three["dir"] / "labels.npy") if a == "LABELS" else a for a in args]
    r = cli("wrt-input", three["model"], three["dir"] / "x.npy", *args)
    assert r.code == 2, r.err
    assert fragment in r.err


def test_missing_class_file_is_exit_3(cli, three, tmp_path):
    r = cli("wrt-input", three["model"], three["dir"] / "x.npy", "--class", tmp_path / "no.npy")
    assert r.code == 3 and "no.npy" in r.err
