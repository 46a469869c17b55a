"""jacobian and check against references; the Python API gives what the CLI gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load, npz


def test_jacobian_of_linear_model_is_the_kernel(cli, models, tmp_path):
    out = tmp_path / "j.npz"
    r = cli("jacobian", models["linear"], models["dir"] / "x5.npy", "-o", out, "-b", "3")
    assert r.code == 0, r.err
    j = npz(out)["x"]
    kernel = load(models["linear"]).get_layer("dense").kernel.numpy()
    assert j.shape == (7, 3, 5)
    np.testing.assert_allclose(j, np.broadcast_to(kernel.T, (7, 3, 5)), rtol=1e-6)


def test_jacobian_multi_input_against_tape(cli, models, tmp_path, tf):
    xs = npz(models["dir"] / "two_x.npz")
    out = tmp_path / "j.npz"
    r = cli(
        "jacobian",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--output",
        "cls",
        "-o",
        out,
        "-b",
        "4",
    )
    assert r.code == 0, r.err
    j = npz(out)
    model = load(models["two_io"])
    a, b = tf.constant(xs["a"][2:3]), tf.constant(xs["b"][2:3])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        y = model([a, b])["cls"]
    np.testing.assert_allclose(
        j["a"][2], tape.jacobian(y, a).numpy()[0, :, 0], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        j["b"][2], tape.jacobian(y, b).numpy()[0, :, 0], rtol=1e-5, atol=1e-7
    )
    assert j["a"].shape == (7, 3, 4) and j["b"].shape == (7, 3, 3)


def test_jacobian_refuses_too_many_elements_and_ambiguous_output(cli, models, tmp_path):
    r = cli(
        "jacobian",
        models["linear"],
        models["dir"] / "x5.npy",
        "--max-elements",
        "100",
        "-o",
        tmp_path / "j.npz",
    )
    assert r.code == 2
    assert "105" in r.err and "--max-elements" in r.err
    assert not (tmp_path / "j.npz").exists()
    r = cli("jacobian", models["two_io"], models["dir"] / "two_x.npz")
    assert r.code == 2 and "--output" in r.err


@pytest.mark.parametrize("wrt", ["input", "weights"])
def test_check_passes_on_a_correct_model(cli, models, wrt):
    r = cli(
        "check",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--target",
        models["dir"] / "two_y.npz",
        "--wrt",
        wrt,
        "--json",
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["precision"] == "float64"
    assert rec["tensors"] and all(t["status"] == "ok" for t in rec["tensors"])
    assert max(t["rel_error"] for t in rec["tensors"]) < 1e-6


def test_check_finite_differences_are_real(cli, models):
    # a step so large that central differences of tanh layers are visibly off; the error
    # estimate (the forward/backward gap: curvature) says so, or a recheck at eps / 8 does
    r = cli(
        "check",
        models["nested"],
        models["dir"] / "x5.npy",
        "--eps",
        "3",
        "--rtol",
        "1e-6",
        "--json",
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    t = rec["tensors"][0]
    assert t["status"] == "ok" and t["rel_error"] > 1e-2
    rechecks = t.get("rechecks") or [[] for _ in t["autodiff"]]
    for a, f, e, tries in zip(
        t["autodiff"], t["finite_diff"], t["fd_error"], rechecks, strict=True
    ):
        assert e > 1e-4
        assert abs(a - f) <= 1e-6 * max(abs(a), abs(f)) + e or any(x["ratio"] <= 1 for x in tries)
    ad = t["autodiff"]
    # the autodiff side does not depend on eps
    r2 = json.loads(cli("check", models["nested"], models["dir"] / "x5.npy", "--json").out)
    np.testing.assert_allclose(ad, r2["tensors"][0]["autodiff"], rtol=1e-9)
    assert r2["tensors"][0]["rel_error"] < 1e-6


def test_check_autodiff_is_directional_derivative(cli, models):
    # linear model, sum objective: d mean_i o_i along v is <row sums of W / N, v>
    r = cli(
        "check",
        models["linear"],
        models["dir"] / "x5.npy",
        "--json",
        "--directions",
        "2",
        "--seed",
        "5",
    )
    rec = json.loads(r.out)
    kernel = load(models["linear"]).get_layer("dense").kernel.numpy().astype(np.float64)
    rng = np.random.default_rng(5)
    for ad in rec["tensors"][0]["autodiff"]:
        v = rng.standard_normal((7, 5))
        v /= np.linalg.norm(v)
        assert ad == pytest.approx(float(np.sum(kernel.sum(axis=1) * v) / 7), rel=1e-9)


def test_api_matches_cli(cli, models, tmp_path):
    import gradcli

    xs = npz(models["dir"] / "two_x.npz")
    ys = npz(models["dir"] / "two_y.npz")
    out = tmp_path / "w.npz"
    assert (
        cli(
            "wrt-weights",
            models["two_io"],
            models["dir"] / "two_x.npz",
            "--target",
            models["dir"] / "two_y.npz",
            "-o",
            out,
        ).code
        == 0
    )
    api = gradcli.wrt_weights(models["two_io"], xs, ys, batch_size=3)
    ref = npz(out)
    assert sorted(api) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(api[k], ref[k], rtol=1e-5, atol=1e-7)
    model = load(models["seqni"])
    x = np.load(models["dir"] / "x5.npy")
    g = gradcli.wrt_input(model, x, class_index=1)
    out = tmp_path / "i.npz"
    assert (
        cli("wrt-input", models["seqni"], models["dir"] / "x5.npy", "--class", "1", "-o", out).code
        == 0
    )
    np.testing.assert_allclose(next(iter(g.values())), next(iter(npz(out).values())), rtol=1e-6)
    layer = gradcli.wrt_layer(models["nested"], x, "block/post")
    assert layer["block/post"].shape == (7, 4)


def test_api_errors_are_gradcli_errors(models):
    import gradcli
    from gradcli.errors import InputError, UsageError

    with pytest.raises(InputError):
        gradcli.wrt_input(models["two_io"], np.zeros((2, 4), np.float32))
    with pytest.raises(UsageError):
        gradcli.wrt_input(models["linear"], np.zeros((2, 5), np.float32), class_index=9)


def test_model_code_that_needs_autograph_still_works(tf):
    """The tape is traced without AutoGraph; a tf.keras 2 layer with `if tensor:` in its
    call (tf-keras converts it only when AutoGraph is on) gets a second trace with it."""
    import tf_keras

    import gradcli
    from gradcli.load.handles import KerasHandle

    class Doubler(tf_keras.layers.Layer):
        def call(self, x):
            if tf.reduce_sum(x) > 0:  # a Python bool of a tensor: needs AutoGraph
                return x * 2.0
            return x * 3.0

    inp = tf_keras.Input((3,), name="x")
    model = tf_keras.Model(inp, Doubler()(inp))
    handle = KerasHandle(model, Path("<doubler>"), "keras", "tf_keras", None)
    x = np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]], np.float32)
    g = gradcli.wrt_input(handle, x, batch_size=1)
    np.testing.assert_allclose(g["x"], [[2.0] * 3, [3.0] * 3])
