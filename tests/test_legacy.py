"""Real-world models: tf.keras 2 SavedModels, old .h5 files, and TensorFlow's oneDNN crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, npz, run_process


@pytest.fixture(scope="session")
def legacy(tmp_path_factory):
    import legacy_builders

    d = tmp_path_factory.mktemp("legacy")
    saved = legacy_builders.build_tfkeras_savedmodel(d / "tfk_saved")
    old = legacy_builders.build_old_h5(d / "old.h5")
    return {"dir": d, "saved": saved, "old": old}


def _two_head(tf, w, x):
    """The SavedModel's forward pass written out by hand from its weights."""
    h = tf.tanh(x @ w["h_kernel"] + w["h_bias"])
    s = h * w["alpha"]
    return h, s, s @ w["cls_kernel"] + w["cls_bias"], s @ w["reg_kernel"] + w["reg_bias"]


def _targets(legacy):
    d = legacy["dir"]
    w = legacy["saved"]
    np.save(d / "x.npy", w["x"])
    np.savez(d / "y.npz", cls=w["y_cls"], reg=w["y_reg"])
    return d / "x.npy", d / "y.npz"


def _per_sample_loss(tf, w, cls, reg):
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=w["y_cls"], logits=cls)
    mse = tf.reduce_mean((reg - w["y_reg"]) ** 2, axis=1)
    return ce + 0.5 * mse


def test_tfkeras_savedmodel_info(cli, legacy):
    r = cli("info", legacy["saved"]["path"], "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["format"] == "savedmodel" and info["loader"] == "tf_keras"
    assert [o["name"] for o in info["outputs"]] == ["cls", "reg"]
    assert [i["name"] for i in info["inputs"]] == ["x"]
    assert [layer["name"] for layer in info["layers"]] == ["x", "h", "scale", "cls", "reg"]
    assert "sparse" in info["loss"].lower() and "0.5" in info["loss"]


def test_tfkeras_savedmodel_revives_unregistered_custom_layer_in_worker(legacy):
    r = run_process("info", legacy["saved"]["path"], "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert "scale" in [layer["name"] for layer in info["layers"]]


def test_tfkeras_savedmodel_gradients(cli, legacy, tf, tmp_path):
    w = legacy["saved"]
    x_path, y_path = _targets(legacy)
    x = tf.constant(w["x"])
    # wrt-input with the compiled per-output losses and weights
    r = cli("wrt-input", w["path"], x_path, "--target", y_path, "-o", tmp_path / "i.npz", "-b", "3")
    assert r.code == 0, r.err
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, _, cls, reg = _two_head(tf, w, x)
        o = tf.reduce_sum(_per_sample_loss(tf, w, cls, reg))
    np.testing.assert_allclose(
        npz(tmp_path / "i.npz")["x"], tape.gradient(o, x).numpy(), rtol=1e-5, atol=1e-6
    )
    # wrt-layer on the custom layer
    r = cli(
        "wrt-layer",
        w["path"],
        x_path,
        "--layer",
        "scale",
        "--output",
        "reg",
        "-o",
        tmp_path / "l.npz",
    )
    assert r.code == 0, r.err
    _, s, _, _ = _two_head(tf, w, x)
    with tf.GradientTape() as tape:
        tape.watch(s)
        o = tf.reduce_sum(s @ w["reg_kernel"] + w["reg_bias"])
    np.testing.assert_allclose(
        npz(tmp_path / "l.npz")["scale"], tape.gradient(o, s).numpy(), rtol=1e-5, atol=1e-6
    )
    # wrt-weights: the full-batch mean of the weighted losses
    r = cli("wrt-weights", w["path"], x_path, "--target", y_path, "-o", tmp_path / "w.npz")
    assert r.code == 0, r.err
    names = ["h_kernel", "h_bias", "alpha", "cls_kernel", "cls_bias", "reg_kernel", "reg_bias"]
    variables = {n: tf.Variable(w[n]) for n in names}
    with tf.GradientTape() as tape:
        _, _, cls, reg = _two_head(tf, variables, x)
        o = tf.reduce_mean(_per_sample_loss(tf, w, cls, reg))
    ref = dict(zip(names, tape.gradient(o, [variables[n] for n in names]), strict=True))
    got = npz(tmp_path / "w.npz")
    assert sorted(got) == sorted(
        ["h/kernel", "h/bias", "scale/alpha", "cls/kernel", "cls/bias", "reg/kernel", "reg/bias"]
    )
    np.testing.assert_allclose(got["scale/alpha"], ref["alpha"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["h/kernel"], ref["h_kernel"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["reg/bias"], ref["reg_bias"].numpy(), rtol=1e-5, atol=1e-6)


def test_old_h5_loads_with_loss_from_training_config(cli, legacy, tf, tmp_path):
    old = legacy["old"]
    r = cli("info", old["path"], "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["loss"] == "mse"
    assert "training_config" in info["loss_note"]
    d = legacy["dir"]
    np.save(d / "old_x.npy", old["x"])
    y = np.ones((len(old["x"]), 2), np.float32)
    np.save(d / "old_y.npy", y)
    r = cli(
        "wrt-input",
        old["path"],
        d / "old_x.npy",
        "--target",
        d / "old_y.npy",
        "-o",
        tmp_path / "g.npz",
    )
    assert r.code == 0, r.err
    x = tf.constant(old["x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = tf.nn.relu(x @ old["d1_kernel"] + old["d1_bias"])
        out = h @ old["out_kernel"] + old["out_bias"]
        o = tf.reduce_sum(tf.reduce_mean((out - y) ** 2, axis=1))
    got = next(iter(npz(tmp_path / "g.npz").values()))
    np.testing.assert_allclose(got, tape.gradient(o, x).numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the oneDNN crash

REFERENCE = textwrap.dedent("""
    import os, sys
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import numpy as np, keras, tensorflow as tf
    model = keras.saving.load_model(sys.argv[1])
    x = tf.constant(np.load(sys.argv[2]))
    with tf.GradientTape() as tape:
        tape.watch(x)
        o = tf.reduce_sum(model(x))
    gx, gk = tape.gradient(o, [x, model.trainable_variables[0]])
    np.savez(sys.argv[3], x=gx.numpy(), k=gk.numpy() / len(x))
""")


@pytest.fixture(scope="session")
def crash_case(tmp_path_factory):
    import legacy_builders

    d = tmp_path_factory.mktemp("onednn")
    model, x = legacy_builders.build_onednn_crash_case(batch_size=16)
    model.save(d / "strided.keras")
    np.save(d / "x.npy", np.asarray(x))
    (d / "reference.py").write_text(REFERENCE)
    proc = subprocess.run(
        [
            sys.executable,
            str(d / "reference.py"),
            str(d / "strided.keras"),
            str(d / "x.npy"),
            str(d / "ref.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.mark.parametrize("command, key", [("wrt-input", "image"), ("wrt-weights", "conv/kernel")])
def test_onednn_crash_falls_back_and_matches_reference(crash_case, tmp_path, command, key):
    d = crash_case
    out = tmp_path / "g.npz"
    r = run_process(command, d / "strided.keras", d / "x.npy", "-o", out, "--json", "-b", "16")
    assert r.code == 0, r.err
    lines = r.err.strip().splitlines()
    # oneDNN's crash here is heap corruption: it usually happens (the kernel gradient,
    # Conv2DBackpropFilter) but not every time, so this checks results, with zero or one
    # warning; the fallback itself is tested deterministically in test_process.py
    assert len(lines) <= 1, r.err
    for line in lines:
        assert line.startswith("warning: TensorFlow crashed (SIG")
    assert len(r.out.splitlines()) == 1
    ref = npz(d / "ref.npz")
    np.testing.assert_allclose(
        npz(out)[key], ref["x" if command == "wrt-input" else "k"], rtol=1e-5, atol=1e-5
    )


def test_tfkeras_savedmodel_with_lambda_needs_unsafe(cli, tmp_path):
    import tf_keras

    inp = tf_keras.Input((3,), name="x")
    model = tf_keras.Model(inp, tf_keras.layers.Lambda(lambda t: t * 2.0, name="dbl")(inp))
    model.save(str(tmp_path / "lam"), save_format="tf")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    r = cli("wrt-input", tmp_path / "lam", tmp_path / "x.npy")
    assert r.code == 3
    assert "dbl" in r.err and "--unsafe" in r.err
    out = tmp_path / "g.npz"
    r = cli("wrt-input", tmp_path / "lam", tmp_path / "x.npy", "--unsafe", "-o", out)
    assert r.code == 0, r.err
    np.testing.assert_allclose(npz(out)["x"], np.full((2, 3), 2.0))
