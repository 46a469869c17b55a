"""wrt-input: every objective, model kind and method against a plain GradientTape reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLES, load, npz

BATCHES = ["1", "3", "7"]  # 3 does not divide N = 7


def grads(cli, tmp_path, *args):
    out = tmp_path / "g.npz"
    r = cli(*args, "-o", out)
    assert r.code == 0, r.err
    return npz(out), r


def tape_input_grad(tf, model, xs, objective):
    """Reference: one sample at a time, so no batch effect can leak in."""
    result = [[] for _ in xs]
    for i in range(len(xs[0])):
        sample = [tf.constant(x[i : i + 1]) for x in xs]
        with tf.GradientTape() as tape:
            tape.watch(sample)
            out = model(sample if len(sample) > 1 else sample[0], training=False)
            o = objective(out, i)
        for k, g in enumerate(tape.gradient(o, sample)):
            result[k].append(g.numpy()[0])
    return [np.stack(r) for r in result]


@pytest.mark.parametrize("batch", BATCHES)
def test_linear_model_gradient_is_kernel_row_sum(cli, models, tmp_path, batch):
    g, _ = grads(
        cli, tmp_path, "wrt-input", models["linear"], models["dir"] / "x5.npy", "-b", batch
    )
    kernel = load(models["linear"]).get_layer("dense").kernel.numpy()
    np.testing.assert_allclose(g["x"], np.tile(kernel.sum(axis=1), (7, 1)), rtol=1e-6)


@pytest.mark.parametrize("batch", ["1", "4"])
def test_class_score_on_sequential_without_input(cli, models, tmp_path, tf, batch):
    x = np.load(models["dir"] / "x5.npy")
    g, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["seqni"],
        models["dir"] / "x5.npy",
        "--class",
        "2",
        "-b",
        batch,
    )
    model = load(models["seqni"])
    (ref,) = tape_input_grad(tf, model, [x], lambda y, i: y[:, 2])
    key = model.inputs[0].name
    np.testing.assert_allclose(g[key], ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch", ["1", "4", "7"])
def test_compiled_loss_is_per_sample(cli, models, tmp_path, tf, keras, batch):
    x = np.load(models["dir"] / "x5.npy")
    y = np.load(models["dir"] / "labels4.npy")
    g, r = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["seqni"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "labels4.npy",
        "-b",
        batch,
    )
    model = load(models["seqni"])

    def loss(out, i):
        return keras.losses.sparse_categorical_crossentropy(y[i : i + 1], out, from_logits=True)

    (ref,) = tape_input_grad(tf, model, [x], loss)
    np.testing.assert_allclose(g[model.inputs[0].name], ref, rtol=1e-5, atol=1e-7)


def test_multi_output_compiled_weighted_losses(cli, models, tmp_path, tf, keras):
    xs = npz(models["dir"] / "two_x.npz")
    ys = npz(models["dir"] / "two_y.npz")
    for batch in ("2", "7"):
        g, r = grads(
            cli,
            tmp_path,
            "wrt-input",
            models["two_io"],
            models["dir"] / "two_x.npz",
            "--target",
            models["dir"] / "two_y.npz",
            "-b",
            batch,
        )
        model = load(models["two_io"])

        def loss(out, i):
            ce = keras.losses.sparse_categorical_crossentropy(
                ys["cls"][i : i + 1], out["cls"], from_logits=True
            )
            mse = keras.losses.mean_squared_error(ys["reg"][i : i + 1], out["reg"])
            return ce + 0.5 * mse

        ref_a, ref_b = tape_input_grad(tf, model, [xs["a"], xs["b"]], loss)
        np.testing.assert_allclose(g["a"], ref_a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g["b"], ref_b, rtol=1e-5, atol=1e-7)


def test_output_and_class_on_multi_output(cli, models, tmp_path, tf):
    xs = npz(models["dir"] / "two_x.npz")
    model = load(models["two_io"])
    g, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--output",
        "cls",
        "--class",
        "1",
        "-b",
        "3",
    )
    ref = tape_input_grad(tf, model, [xs["a"], xs["b"]], lambda y, i: y["cls"][:, 1])
    np.testing.assert_allclose(g["a"], ref[0], rtol=1e-5, atol=1e-7)
    g, _ = grads(
        cli, tmp_path, "wrt-input", models["two_io"], models["dir"] / "two_x.npz", "--output", "1"
    )
    ref = tape_input_grad(tf, model, [xs["a"], xs["b"]], lambda y, i: y["reg"])
    np.testing.assert_allclose(g["b"], ref[1], rtol=1e-5, atol=1e-7)
    # default: the sum of every output
    g, _ = grads(cli, tmp_path, "wrt-input", models["two_io"], models["dir"] / "two_x.npz")
    ref = tape_input_grad(
        tf,
        model,
        [xs["a"], xs["b"]],
        lambda y, i: tf.reduce_sum(y["cls"]) + tf.reduce_sum(y["reg"]),
    )
    np.testing.assert_allclose(g["a"], ref[0], rtol=1e-5, atol=1e-7)


def test_class_on_multi_output_needs_output(cli, models):
    r = cli("wrt-input", models["two_io"], models["dir"] / "two_x.npz", "--class", "0")
    assert r.code == 2
    assert "needs --output" in r.err
    r = cli("wrt-input", models["two_io"], models["dir"] / "two_x.npz", "--output", "nope")
    assert r.code == 2
    assert "cls, reg" in r.err


def test_explicit_loss_from_logits(cli, models, tmp_path, tf, keras):
    x = np.load(models["dir"] / "x5.npy")
    y = np.load(models["dir"] / "labels4.npy")
    g, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["seqni"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "labels4.npy",
        "--loss",
        "sparse_categorical_crossentropy",
        "--from-logits",
        "-b",
        "2",
    )
    model = load(models["seqni"])
    (ref,) = tape_input_grad(
        tf,
        model,
        [x],
        lambda out, i: keras.losses.sparse_categorical_crossentropy(
            y[i : i + 1], out, from_logits=True
        ),
    )
    np.testing.assert_allclose(g[model.inputs[0].name], ref, rtol=1e-5, atol=1e-7)
    r = cli(
        "wrt-input",
        models["linear"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "y3.npy",
        "--loss",
        "mse",
        "--from-logits",
    )
    assert r.code == 2 and "does not apply" in r.err
    r = cli(
        "wrt-input",
        models["linear"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "y3.npy",
        "--loss",
        "no_such_loss",
    )
    assert r.code == 2 and "unknown loss" in r.err


def test_legacy_h5_loss_from_training_config(cli, models, tmp_path, tf, keras):
    x = np.load(models["dir"] / "x5.npy")
    y = np.load(models["dir"] / "y1.npy")
    g, r = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["legacy_h5"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "y1.npy",
        "-b",
        "3",
    )
    model = keras.saving.load_model(models["legacy_h5"], compile=False)
    (ref,) = tape_input_grad(
        tf, model, [x], lambda out, i: keras.losses.mean_squared_error(y[i : i + 1], out)
    )
    np.testing.assert_allclose(next(iter(g.values())), ref, rtol=1e-5, atol=1e-7)


def test_savedmodel_export_through_serving_function(cli, models, tmp_path, tf, keras):
    x = np.load(models["dir"] / "x5.npy")
    y = np.load(models["dir"] / "y3.npy")
    kernel = load(models["linear"]).get_layer("dense").kernel.numpy()
    g, _ = grads(
        cli, tmp_path, "wrt-input", models["linear_export"], models["dir"] / "x5.npy", "-b", "3"
    )
    np.testing.assert_allclose(g["x"], np.tile(kernel.sum(axis=1), (7, 1)), rtol=1e-6)
    g, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["linear_export"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "y3.npy",
        "--loss",
        "mse",
    )
    model = load(models["linear"])
    (ref,) = tape_input_grad(
        tf, model, [x], lambda out, i: keras.losses.mean_squared_error(y[i : i + 1], out)
    )
    np.testing.assert_allclose(g["x"], ref, rtol=1e-5, atol=1e-7)


def test_nested_model(cli, models, tmp_path, tf):
    x = np.load(models["dir"] / "x5.npy")
    g, _ = grads(cli, tmp_path, "wrt-input", models["nested"], models["dir"] / "x5.npy", "-b", "2")
    (ref,) = tape_input_grad(tf, load(models["nested"]), [x], lambda y, i: tf.reduce_sum(y))
    np.testing.assert_allclose(g["features"], ref, rtol=1e-5, atol=1e-7)


def test_gradxinput(cli, models, tmp_path):
    x = np.load(models["dir"] / "x5.npy")
    kernel = load(models["linear"]).get_layer("dense").kernel.numpy()
    g, r = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["linear"],
        models["dir"] / "x5.npy",
        "--method",
        "gradxinput",
    )
    np.testing.assert_allclose(g["x"], x * kernel.sum(axis=1), rtol=1e-6)


def test_smoothgrad_degenerates_to_vanilla_and_is_repeatable(cli, models, tmp_path):
    img = models["dir"] / "img.npy"
    vanilla, _ = grads(cli, tmp_path, "wrt-input", models["cnn"], img, "--class", "0")
    sg1, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        img,
        "--class",
        "0",
        "-m",
        "smoothgrad",
        "--samples",
        "1",
        "--noise",
        "0",
    )
    np.testing.assert_allclose(sg1["image"], vanilla["image"], rtol=1e-5, atol=1e-7)
    a, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        img,
        "--class",
        "0",
        "-m",
        "smoothgrad",
        "--samples",
        "6",
        "--seed",
        "3",
        "-b",
        "4",
    )
    b, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        img,
        "--class",
        "0",
        "-m",
        "smoothgrad",
        "--samples",
        "6",
        "--seed",
        "3",
        "-b",
        "1",
    )
    c, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        img,
        "--class",
        "0",
        "-m",
        "smoothgrad",
        "--samples",
        "6",
        "--seed",
        "4",
    )
    np.testing.assert_allclose(a["image"], b["image"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(a["image"], c["image"])


def test_smoothgrad_matches_reference(cli, models, tmp_path, tf):
    from gradcli.methods.common import MethodOptions
    from gradcli.methods.noise_tunnel import smoothgrad_noise

    x = np.load(models["dir"] / "img.npy")
    g, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        models["dir"] / "img.npy",
        "--class",
        "1",
        "-m",
        "smoothgrad",
        "--samples",
        "4",
        "--noise",
        "0.2",
        "--seed",
        "9",
        "-b",
        "3",
    )
    opts = MethodOptions("smoothgrad", samples=4, noise=0.2, seed=9)
    model = load(models["cnn"])
    ref = []
    for i in range(len(x)):
        noisy = tf.constant(x[i] + smoothgrad_noise(x[i], i, 0, opts))
        with tf.GradientTape() as tape:
            tape.watch(noisy)
            o = tf.reduce_sum(model(noisy)[:, 1])
        ref.append(tape.gradient(o, noisy).numpy().mean(axis=0))
    np.testing.assert_allclose(g["image"], np.stack(ref), rtol=1e-4, atol=1e-6)
    noise = smoothgrad_noise(x[0], 0, 0, opts)
    spread = x[0].max() - x[0].min()
    assert abs(noise.std() / spread - 0.2) < 0.02


def test_integrated_gradients_reference_and_completeness(cli, models, tmp_path, tf):
    x = np.load(models["dir"] / "img.npy")
    out = tmp_path / "ig.npz"
    r = cli(
        "wrt-input",
        models["cnn"],
        models["dir"] / "img.npy",
        "--class",
        "0",
        "-m",
        "integrated",
        "--steps",
        "128",
        "-b",
        "100",
        "--json",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["completeness"]["max_rel_gap"] < 0.01
    model = load(models["cnn"])
    alphas = (np.arange(128) + 0.5) / 128
    path = tf.constant((alphas[:, None, None, None] * x[0][None]).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(path)
        o = tf.reduce_sum(model(path)[:, 0])
    ref = x[0] * tape.gradient(o, path).numpy().mean(axis=0)
    np.testing.assert_allclose(npz(out)["image"][0], ref, rtol=1e-4, atol=1e-6)
    delta = model(x[:1])[0, 0] - model(np.zeros_like(x[:1]))[0, 0]
    assert abs(ref.sum() - float(delta)) < 0.01 * abs(float(delta))


def test_integrated_gradients_baseline_file_and_batch_independence(cli, models, tmp_path):
    base = tmp_path / "base.npy"
    np.save(base, np.full((8, 8, 2), 0.5, np.float32))
    a, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        models["dir"] / "img.npy",
        "-m",
        "integrated",
        "--steps",
        "16",
        "--baseline",
        base,
        "-b",
        "16",
    )
    b, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        models["dir"] / "img.npy",
        "-m",
        "integrated",
        "--steps",
        "16",
        "--baseline",
        base,
        "-b",
        "1000",
    )
    np.testing.assert_allclose(a["image"], b["image"], rtol=1e-5, atol=1e-7)
    zero, _ = grads(
        cli,
        tmp_path,
        "wrt-input",
        models["cnn"],
        models["dir"] / "img.npy",
        "-m",
        "integrated",
        "--steps",
        "16",
    )
    assert not np.allclose(a["image"], zero["image"])


def test_json_record(cli, models):
    r = cli("wrt-input", models["two_io"], models["dir"] / "two_x.npz", "--json")
    assert r.code == 0
    lines = r.out.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    for key in (
        "version",
        "command",
        "model",
        "format",
        "n",
        "objective",
        "method",
        "tensors",
        "gates",
    ):
        assert key in rec
    assert rec["n"] == 7 and rec["command"] == "wrt-input" and rec["method"] == "vanilla"
    assert [t["name"] for t in rec["tensors"]] == ["a", "b"]
    t = rec["tensors"][0]
    for key in ("shape", "l2", "mean_abs", "max_abs", "zero_fraction", "nonfinite", "status"):
        assert key in t
    assert t["shape"] == [7, 4] and t["status"] == "ok"


def test_table_figures_match_the_arrays(cli, models, tmp_path):
    g, r = grads(cli, tmp_path, "wrt-input", models["linear"], models["dir"] / "x5.npy")
    l2 = float(np.linalg.norm(g["x"]))
    assert f"{l2:.4g}" in r.out
    assert "ok" in r.out


def test_top_features_of_the_tabular_sample(cli):
    r = cli(
        "wrt-input",
        SAMPLES / "tabular_mlp.keras",
        SAMPLES / "tabular_x.npy",
        "--top",
        "3",
        "--json",
    )
    assert r.code == 0
    top = json.loads(r.out)["tensors"][0]["top"]
    assert sorted(f["feature"] for f in top) == [1, 4, 7]


def test_png_heatmaps(cli, models, tmp_path):
    r = cli(
        "wrt-input",
        models["cnn"],
        models["dir"] / "img.npy",
        "--png",
        tmp_path / "png",
        "--png-limit",
        "3",
    )
    assert r.code == 0, r.err
    files = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert files == ["image_0000.png", "image_0001.png", "image_0002.png"]
    assert (tmp_path / "png" / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "--png", tmp_path / "p2")
    assert r.code == 2 and "not image-like" in r.err


def test_nonfinite_gate(cli, models):
    r = cli("wrt-input", models["nan"], models["dir"] / "x5.npy", "--json")
    assert r.code == 0
    rec = json.loads(r.out)
    assert rec["tensors"][0]["status"] == "nonfinite" and rec["gates"] == []
    r = cli(
        "wrt-input", models["nan"], models["dir"] / "x5.npy", "--json", "--fail-on", "nonfinite"
    )
    assert r.code == 1
    rec = json.loads(r.out)
    assert rec["gates"] == ["nonfinite"] and rec["tensors"][0]["tripped"]
    r = cli("wrt-input", models["nan"], models["dir"] / "x5.npy", "--fail-on", "nonfinite")
    assert r.code == 1 and "gate" in r.out


def test_norm_bounds(cli, models):
    r = cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "--max-norm", "1e-9")
    assert r.code == 1 and "too-large" in r.out
    r = cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "--min-norm", "1e9", "--json")
    assert r.code == 1 and json.loads(r.out)["gates"] == ["too-small"]
