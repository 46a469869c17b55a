"""SquareGrad and VarGrad (the SmoothGrad noise), --logits (against a twin model rebuilt without
the softmax/sigmoid) and wrt-layer --activations, each against a plain-tape reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load, npz, run_process

N = 7


@pytest.fixture(scope="session")
def heads(tmp_path_factory, keras):
    """Models ending in softmax/sigmoid in each way --logits undoes, one that does not."""
    keras.utils.set_random_seed(11)
    L = keras.layers
    d = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(2)
    np.save(d / "x.npy", rng.normal(size=(N, 5)).astype(np.float32) * 2)
    m: dict = {"dir": d}

    def mlp(last, name, extra=None):
        x = keras.Input((5,), name="x")
        h = L.Dense(8, activation="tanh", name="h")(x)
        y = last(h)
        if extra is not None:
            y = extra(y)
        keras.Model(x, y).save(d / f"{name}.keras")
        m[name] = d / f"{name}.keras"

    # large weights: saturated probabilities, where the logit gradient differs the most
    init = keras.initializers.RandomNormal(stddev=3.0)
    mlp(L.Dense(3, activation="softmax", name="probs", kernel_initializer=init), "softmax")
    mlp(L.Dense(1, activation="sigmoid", name="p", kernel_initializer=init), "sigmoid")
    mlp(L.Dense(3, name="z", kernel_initializer=init), "layer", L.Softmax(name="sm"))
    mlp(L.Dense(3, name="z", kernel_initializer=init), "linear")

    x = keras.Input((5,), name="x")
    block = keras.Sequential(
        [L.Dense(8, activation="tanh", name="a"), L.Dense(3, activation="softmax", name="b")],
        name="block",
    )
    keras.Model(x, block(x)).save(d / "nested.keras")
    m["nested"] = d / "nested.keras"
    return m


def twin_logits(keras, path):
    """The loaded model rebuilt with a linear head (same weights): its output is the logit."""
    model = load(path)
    L = keras.layers
    x = keras.Input((5,))
    if path.stem == "nested":
        a, b = model.get_layer("block").layers
    else:
        a = model.get_layer("h")
        b = [lay for lay in model.layers if isinstance(lay, L.Dense)][-1]
    h = L.Dense(8, activation="tanh")(x)
    y = L.Dense(b.units)(h)
    twin = keras.Model(x, y)
    twin.layers[1].set_weights(a.get_weights())
    twin.layers[2].set_weights(b.get_weights())
    return twin


def tape_grad(tf, model, x, objective):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(objective(model(xt)))
    return tape.gradient(total, xt).numpy()


def run(cli, tmp_path, *args):
    out = tmp_path / "g.npz"
    r = cli(*args, "-o", out, "--json")
    assert r.code == 0, r.err
    return npz(out), json.loads(r.out)


# ------------------------------------------------------------------ SquareGrad, VarGrad


@pytest.mark.parametrize("batch", ["1", "3"])
def test_one_sample_no_noise_squaregrad_is_g2_and_vargrad_zero(cli, heads, tmp_path, batch):
    x = heads["dir"] / "x.npy"
    vanilla, _ = run(cli, tmp_path, "wrt-input", heads["softmax"], x, "-c", "0", "-b", batch)
    common = ("--class", "0", "--samples", "1", "--noise", "0", "-b", batch)
    sq, rec = run(cli, tmp_path, "wrt-input", heads["softmax"], x, "-m", "squaregrad", *common)
    var, _ = run(cli, tmp_path, "wrt-input", heads["softmax"], x, "-m", "vargrad", *common)
    assert np.abs(vanilla["x"]).max() > 0
    np.testing.assert_allclose(sq["x"], vanilla["x"].astype(np.float64) ** 2, rtol=1e-5)
    assert np.all(var["x"] == 0)
    assert rec["method"] == "squaregrad" and rec["samples"] == 1


@pytest.mark.parametrize("batch", ["1", "3"])
def test_squaregrad_vargrad_match_reference_with_smoothgrad_noise(cli, heads, tmp_path, tf, batch):
    from gradcli.methods.common import MethodOptions
    from gradcli.methods.noise_tunnel import smoothgrad_noise

    path = heads["dir"] / "x.npy"
    x = np.load(path)
    args = ("--class", "2", "--samples", "5", "--noise", "0.3", "--seed", "4", "-b", batch)
    sq, _ = run(cli, tmp_path, "wrt-input", heads["softmax"], path, "-m", "squaregrad", *args)
    var, _ = run(cli, tmp_path, "wrt-input", heads["softmax"], path, "-m", "vargrad", *args)
    sg, _ = run(cli, tmp_path, "wrt-input", heads["softmax"], path, "-m", "smoothgrad", *args)
    model = load(heads["softmax"])
    opts = MethodOptions("smoothgrad", samples=5, noise=0.3, seed=4)
    g = np.stack(
        [
            tape_grad(tf, model, x[i] + smoothgrad_noise(x[i], i, 0, opts), lambda y: y[:, 2])
            for i in range(N)
        ]
    ).astype(np.float64)  # (N, samples, 5)
    np.testing.assert_allclose(sq["x"], (g**2).mean(axis=1), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(var["x"], g.var(axis=1), rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(sg["x"], g.mean(axis=1), rtol=1e-4, atol=1e-9)
    assert var["x"].max() > 1e-6  # the noise really moves the gradient


# ------------------------------------------------------------------ --logits


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "layer", "nested"])
def test_logits_equal_the_twin_without_softmax(cli, heads, tmp_path, tf, keras, name):
    path = heads["dir"] / "x.npy"
    x = np.load(path)
    before = heads[name].read_bytes()
    got, rec = run(cli, tmp_path, "wrt-input", heads[name], path, "--class", "0", "--logits")
    twin = twin_logits(keras, heads[name])
    ref = tape_grad(tf, twin, x, lambda y: y[:, 0])
    np.testing.assert_allclose(got["x"], ref, rtol=1e-5, atol=1e-6)
    assert "class 0 logit of" in rec["objective"]
    # the probability gradient is a different thing (saturated): the test can fail
    probs, _ = run(cli, tmp_path, "wrt-input", heads[name], path, "--class", "0")
    assert not np.allclose(probs["x"], ref, rtol=1e-2)
    assert heads[name].read_bytes() == before


def test_logits_sum_objective_and_wrt_layer(cli, heads, tmp_path, tf, keras):
    path = heads["dir"] / "x.npy"
    x = np.load(path)
    got, rec = run(cli, tmp_path, "wrt-input", heads["softmax"], path, "--logits", "-b", "3")
    twin = twin_logits(keras, heads["softmax"])
    ref = tape_grad(tf, twin, x, lambda y: tf.reduce_sum(y, axis=1))
    np.testing.assert_allclose(got["x"], ref, rtol=1e-5, atol=1e-6)
    assert rec["objective"] == "sum of logits of probs"
    # wrt-layer: d logit_1 / d h = the last kernel's column 1, for every sample
    layer, rec = run(
        cli, tmp_path, "wrt-layer", heads["softmax"], path, "-l", "h", "--class", "1", "--logits"
    )
    kernel = load(heads["softmax"]).get_layer("probs").kernel.numpy()
    np.testing.assert_allclose(layer["h"], np.tile(kernel[:, 1], (N, 1)), rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "nested"])
def test_logits_weight_gradients_mean_and_per_sample(cli, heads, tmp_path, tf, keras, name):
    """wrt-weights --logits, plain and --per-sample (a Dense head: the ghost-norm path, whose
    capture of the pre-activation must agree with --logits' own), against the twin model."""
    path = heads["dir"] / "x.npy"
    x = np.load(path)
    twin = twin_logits(keras, heads[name])
    per_sample = []
    for i in range(N):
        with tf.GradientTape() as tape:
            o = tf.reduce_sum(twin(x[i : i + 1])[:, 2])
        per_sample.append([g.numpy() for g in tape.gradient(o, twin.trainable_variables)])
    mean = [np.mean([p[k] for p in per_sample], axis=0) for k in range(4)]
    norms = np.sqrt([sum(float(np.sum(g**2)) for g in p) for p in per_sample])
    got, _ = run(cli, tmp_path, "wrt-weights", heads[name], path, "--class", "2", "--logits")
    weights = [got[k] for k in got if not k.startswith("__")]
    for g, want in zip(weights, mean, strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    got, _ = run(
        cli,
        tmp_path,
        "wrt-weights",
        heads[name],
        path,
        "--class",
        "2",
        "--logits",
        "--per-sample",
        "-b",
        "3",
    )
    np.testing.assert_allclose(got["per_sample/norm"], norms, rtol=1e-4)


def test_logits_refused_clearly(cli, heads):
    x = heads["dir"] / "x.npy"
    r = cli("wrt-input", heads["linear"], x, "--class", "0", "--logits")
    assert r.code == 2 and "Traceback" not in r.err and r.err.count("\n") == 1
    assert r.err.startswith("error: --logits: output") and "not a softmax or sigmoid" in r.err
    assert "'z'" in r.err
    y = heads["dir"] / "y.npy"
    np.save(y, np.zeros(N, dtype=np.int64))
    r = cli("wrt-input", heads["softmax"], x, "--target", y, "--logits")
    assert r.code == 2 and "--logits goes with --class" in r.err


def test_logits_in_a_real_process(heads, tmp_path, tf, keras):
    out = tmp_path / "p.npz"
    r = run_process("wrt-input", heads["nested"], heads["dir"] / "x.npy", "-c", "2", "--logits",
                    "-o", out)  # fmt: skip
    assert r.code == 0, r.err
    assert "class 2 logit of" in r.out
    x = np.load(heads["dir"] / "x.npy")
    ref = tape_grad(tf, twin_logits(keras, heads["nested"]), x, lambda y: y[:, 2])
    np.testing.assert_allclose(npz(out)["x"], ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ --activations


def test_wrt_layer_activations(cli, heads, tmp_path, keras):
    path = heads["dir"] / "x.npy"
    x = np.load(path)
    got, rec = run(
        cli, tmp_path, "wrt-layer", heads["nested"], path, "-l", "block/a", "-l", "block",
        "--class", "1", "--activations", "-b", "3",
    )  # fmt: skip
    model = load(heads["nested"])
    block = model.get_layer("block")
    a_ref = keras.Model(block.inputs, block.get_layer("a").output)(x).numpy()
    np.testing.assert_allclose(got["block/a/activation"], a_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["block/activation"], model(x).numpy(), rtol=1e-6, atol=1e-7)
    # the gradient keys are unchanged: d p_1 / d p = one-hot column 1
    np.testing.assert_allclose(got["block"], np.tile([0.0, 1.0, 0.0], (N, 1)))
    assert [t["name"] for t in rec["tensors"]] == [
        "block/a",
        "block",
        "block/a/activation",
        "block/activation",
    ]
    assert sorted(got) == sorted(t["name"] for t in rec["tensors"])
