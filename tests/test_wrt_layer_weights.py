"""wrt-layer and wrt-weights against GradientTape references; the health gates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLES, load, npz


def run(cli, tmp_path, *args):
    out = tmp_path / "g.npz"
    r = cli(*args, "-o", out)
    assert r.code == 0, r.err
    return npz(out), r


# ------------------------------------------------------------------ wrt-layer
# References recompute the forward pass from the chosen activation: a = layers before it,
# then watch a and run the layers after it.


def _seq_reference(tf, model, x, split, objective):
    a = tf.constant(x)
    for layer in model.layers[:split]:
        a = layer(a)
    with tf.GradientTape() as tape:
        tape.watch(a)
        y = a
        for layer in model.layers[split:]:
            y = layer(y)
        o = objective(y)
    return a.numpy(), tape.gradient(o, a).numpy()


@pytest.mark.parametrize("spec", ["d2", "1"])
@pytest.mark.parametrize("batch", ["1", "3"])
def test_sequential_without_input_by_name_and_index(cli, models, tmp_path, tf, spec, batch):
    x = np.load(models["dir"] / "x5.npy")
    g, _ = run(
        cli,
        tmp_path,
        "wrt-layer",
        models["seqni"],
        models["dir"] / "x5.npy",
        "--layer",
        spec,
        "--class",
        "3",
        "-b",
        batch,
    )
    model = load(models["seqni"])
    _, ref = _seq_reference(tf, model, x, 2, lambda y: tf.reduce_sum(y[:, 3]))
    assert list(g) == ["d2"]
    np.testing.assert_allclose(g["d2"], ref, rtol=1e-5, atol=1e-7)


def test_layer_two_levels_deep_and_two_layers_together(cli, models, tmp_path, tf):
    x = np.load(models["dir"] / "x5.npy")
    g, r = run(
        cli,
        tmp_path,
        "wrt-layer",
        models["nested"],
        models["dir"] / "x5.npy",
        "--layer",
        "block/inner/deep",
        "--layer",
        "pre",
        "-b",
        "2",
    )
    assert sorted(g) == ["block/inner/deep", "pre"]
    model = load(models["nested"])
    block = model.get_layer("block")
    deep = block.get_layer("inner").get_layer("deep")
    pre = model.get_layer("pre")(tf.constant(x))
    a = deep(pre)
    with tf.GradientTape() as tape:
        tape.watch(a)
        o = tf.reduce_sum(model.get_layer("head")(block.get_layer("post")(a)))
    np.testing.assert_allclose(
        g["block/inner/deep"], tape.gradient(o, a).numpy(), rtol=1e-5, atol=1e-7
    )
    with tf.GradientTape() as tape:
        tape.watch(pre)
        o = tf.reduce_sum(model.get_layer("head")(block(pre)))
    np.testing.assert_allclose(g["pre"], tape.gradient(o, pre).numpy(), rtol=1e-5, atol=1e-7)
    assert "block/inner/deep" in r.out


def test_multi_output_with_output_and_class(cli, models, tmp_path, tf):
    xs = npz(models["dir"] / "two_x.npz")
    g, _ = run(
        cli,
        tmp_path,
        "wrt-layer",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--layer",
        "trunk",
        "--output",
        "cls",
        "--class",
        "2",
        "-b",
        "4",
    )
    model = load(models["two_io"])
    h = model.get_layer("concat")([tf.constant(xs["a"]), tf.constant(xs["b"])])
    t = model.get_layer("trunk")(h)
    with tf.GradientTape() as tape:
        tape.watch(t)
        o = tf.reduce_sum(model.get_layer("cls")(t)[:, 2])
    np.testing.assert_allclose(g["trunk"], tape.gradient(o, t).numpy(), rtol=1e-5, atol=1e-7)


def test_layer_gradient_with_compiled_loss(cli, models, tmp_path, tf, keras):
    xs = npz(models["dir"] / "two_x.npz")
    ys = npz(models["dir"] / "two_y.npz")
    g, _ = run(
        cli,
        tmp_path,
        "wrt-layer",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--layer",
        "reg_hidden",
        "--target",
        models["dir"] / "two_y.npz",
        "-b",
        "3",
    )
    model = load(models["two_io"])
    t = model.get_layer("trunk")(model.get_layer("concat")([xs["a"], xs["b"]]))
    hidden = model.get_layer("reg_hidden")(t)
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        reg = model.get_layer("reg")(hidden)
        o = tf.reduce_sum(0.5 * keras.losses.mean_squared_error(ys["reg"], reg))
    np.testing.assert_allclose(
        g["reg_hidden"], tape.gradient(o, hidden).numpy(), rtol=1e-5, atol=1e-7
    )


def test_input_layer_gradient_equals_wrt_input(cli, models, tmp_path):
    g, _ = run(
        cli, tmp_path, "wrt-layer", models["linear"], models["dir"] / "x5.npy", "--layer", "x"
    )
    kernel = load(models["linear"]).get_layer("dense").kernel.numpy()
    np.testing.assert_allclose(g["x"], np.tile(kernel.sum(axis=1), (7, 1)), rtol=1e-6)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("d22", "--layer d22: no such layer"),
        ("7", "--layer 7: index out of range"),
    ],
)
def test_unknown_layer_is_a_usage_error(cli, models, spec, fragment):
    # an option value that does not fit the model is exit 2, naming the option
    r = cli("wrt-layer", models["seqni"], models["dir"] / "x5.npy", "--layer", spec)
    assert r.code == 2
    assert fragment in r.err
    if spec == "d22":
        assert "did you mean" in r.err and "d2" in r.err


def test_savedmodel_has_no_layers(cli, models):
    r = cli("wrt-layer", models["linear_export"], models["dir"] / "x5.npy", "--layer", "dense")
    assert r.code == 3
    assert "no layers" in r.err and "wrt-input" in r.err


def test_sample_sequential_h5_layer_by_index(cli, tmp_path, tf, keras):
    x = np.load(SAMPLES / "legacy_x.npy")
    g, _ = run(
        cli,
        tmp_path,
        "wrt-layer",
        SAMPLES / "legacy_mlp.h5",
        SAMPLES / "legacy_x.npy",
        "--layer",
        "0",
    )
    model = keras.saving.load_model(SAMPLES / "legacy_mlp.h5", compile=False)
    _, ref = _seq_reference(tf, model, x, 1, tf.reduce_sum)
    np.testing.assert_allclose(g["d1"], ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ wrt-weights


def _mean_weight_grads(tf, model, variables, objective_sum, n):
    with tf.GradientTape() as tape:
        o = objective_sum()
    return [g.numpy() / n for g in tape.gradient(o, variables)]


@pytest.mark.parametrize("batch", ["1", "3", "7"])
def test_weights_full_batch_mean_with_weighted_losses(cli, models, tmp_path, tf, keras, batch):
    xs = npz(models["dir"] / "two_x.npz")
    ys = npz(models["dir"] / "two_y.npz")
    g, r = run(
        cli,
        tmp_path,
        "wrt-weights",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--target",
        models["dir"] / "two_y.npz",
        "-b",
        batch,
    )
    model = load(models["two_io"])
    # Keras's own reduction of its compiled losses: the batch mean, as SPEC requires
    with tf.GradientTape() as tape:
        out = model([xs["a"], xs["b"]])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            ys["cls"], out["cls"]
        ) + 0.5 * keras.losses.MeanSquaredError()(ys["reg"], out["reg"])
    ref = tape.gradient(loss, model.trainable_variables)
    for v, gv in zip(model.trainable_variables, ref, strict=True):
        np.testing.assert_allclose(g[v.path], gv.numpy(), rtol=1e-5, atol=1e-7)
    assert set(g) == {v.path for v in model.trainable_variables}


@pytest.mark.parametrize("batch", ["1", "3", "7"])
def test_weights_on_savedmodel(cli, models, tmp_path, tf, keras, batch):
    x = np.load(models["dir"] / "x5.npy")
    y = np.load(models["dir"] / "y3.npy")
    g, _ = run(
        cli,
        tmp_path,
        "wrt-weights",
        models["linear_export"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "y3.npy",
        "--loss",
        "mse",
        "-b",
        batch,
    )
    model = load(models["linear"])
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x))
    kg, bg = tape.gradient(loss, model.trainable_variables)
    assert sorted(g) == ["dense/bias", "dense/kernel"]
    np.testing.assert_allclose(g["dense/kernel"], kg.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g["dense/bias"], bg.numpy(), rtol=1e-5, atol=1e-7)


def test_weights_nested_variables_and_flow(cli, models, tmp_path, tf):
    x = np.load(models["dir"] / "x5.npy")
    out = tmp_path / "w.npz"
    r = cli(
        "wrt-weights",
        models["nested"],
        models["dir"] / "x5.npy",
        "-o",
        out,
        "--json",
        "--png",
        tmp_path / "flow.png",
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    model = load(models["nested"])
    with tf.GradientTape() as tape:
        o = tf.reduce_sum(model(x))
    ref = tape.gradient(o, model.trainable_variables)
    g = npz(out)
    for v, gv in zip(model.trainable_variables, ref, strict=True):
        np.testing.assert_allclose(g[v.path], gv.numpy() / 7, rtol=1e-5, atol=1e-7)
    layers = [s["layer"] for s in rec["layer_summary"]]
    assert layers == ["pre", "block/inner/deep", "block/post", "head"]
    kernel = next(t for t in rec["tensors"] if t["name"] == "pre/kernel")
    theta = model.get_layer("pre").kernel.numpy()
    assert kernel["relative"] == pytest.approx(
        np.linalg.norm(g["pre/kernel"]) / np.linalg.norm(theta), rel=1e-5
    )
    assert (tmp_path / "flow.png").read_bytes()[:4] == b"\x89PNG"


def test_nan_weight_trips_nonfinite_gate(cli, models):
    # d sum(y) / d kernel is x whatever the kernel holds: a loss makes the NaN reach the gradient
    loss = ["--target", models["dir"] / "y2.npy", "--loss", "mse"]
    r = cli("wrt-weights", models["nan"], models["dir"] / "x5.npy", *loss)
    assert r.code == 0
    assert "nonfinite" in r.out
    r = cli(
        "wrt-weights",
        models["nan"],
        models["dir"] / "x5.npy",
        *loss,
        "--fail-on",
        "nonfinite",
        "--json",
    )
    assert r.code == 1
    rec = json.loads(r.out)
    assert rec["gates"] == ["nonfinite"]


def test_other_head_is_disconnected(cli, models, tmp_path):
    out = tmp_path / "w.npz"
    r = cli(
        "wrt-weights",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--output",
        "cls",
        "--json",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    status = {t["name"]: t["status"] for t in rec["tensors"]}
    assert status["reg/kernel"] == "disconnected" and status["reg_hidden/kernel"] == "disconnected"
    assert status["cls/kernel"] == "ok" and status["trunk/kernel"] == "ok"
    # disconnected variables are reported, not written as zeros
    assert "reg/kernel" not in npz(out) and "cls/kernel" in npz(out)
    r = cli(
        "wrt-weights",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--output",
        "cls",
        "--fail-on",
        "disconnected,nonfinite",
    )
    assert r.code == 1
    assert "disconnected" in r.out and "gates tripped: disconnected" in r.out


def test_zero_gradient_gate(cli, models, tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((3, 5), np.float32))
    r = cli("wrt-weights", models["linear"], tmp_path / "zeros.npy", "--json", "--fail-on", "zero")
    rec = json.loads(r.out)
    status = {t["name"]: t["status"] for t in rec["tensors"]}
    assert status == {"dense/kernel": "zero", "dense/bias": "ok"}
    assert r.code == 1


def test_directory_of_models_with_shards(cli, tmp_path, monkeypatch):
    args = [
        "wrt-weights",
        SAMPLES / "checkpoints",
        SAMPLES / "tabular_x.npy",
        "--target",
        SAMPLES / "tabular_y.npy",
        "--json",
    ]
    r = cli(*args, "-o", tmp_path / "all")
    assert r.code == 0, r.err
    records = [json.loads(line) for line in r.out.splitlines()]
    assert len(records) == 3
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "epoch_00.npz",
        "epoch_02.npz",
        "epoch_10.npz",
    ]
    shard = [json.loads(line) for line in cli(*args, "--shard", "1/2").out.splitlines()]
    assert [rec["model"] for rec in shard] == [records[1]["model"]]
    assert shard[0]["tensors"] == records[1]["tensors"]
    for name in ("JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")  # sbatch --array=1-2: the second task
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "2")
    auto = [json.loads(line) for line in cli(*args, "--shard", "auto").out.splitlines()]
    assert auto == shard


def test_directory_failure_of_one_model_goes_on(cli, models, tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    (d / "a_good.keras").write_bytes(models["linear"].read_bytes())
    (d / "b_broken.keras").write_bytes(b"PK\x03\x04 not really")
    (d / "c_good.keras").write_bytes(models["linear"].read_bytes())
    r = cli("wrt-weights", d, models["dir"] / "x5.npy", "--json")
    assert r.code == 3
    records = [json.loads(line) for line in r.out.splitlines()]
    assert [rec.get("error") is None for rec in records] == [True, False, True]
    assert records[1]["exit_code"] == 3
    r = cli("wrt-weights", d, models["dir"] / "x5.npy")
    # the model column, its folded lines joined (a long temporary path wraps anywhere)
    column = "".join(line.split("│")[0].strip() for line in r.out.splitlines()[3:])
    assert r.code == 3 and str(d / "b_broken.keras") in column and "error" in r.out


def test_integer_input_has_no_input_gradient_but_layer_gradients_work(cli, keras, tf, tmp_path):
    tokens = keras.Input((4,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(10, 3, name="emb")(tokens)
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten(name="flat")(emb))
    model = keras.Model(tokens, out)
    model.save(tmp_path / "emb.keras")
    ids = np.array([[1, 2, 3, 4], [9, 8, 7, 6]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    r = cli("wrt-input", tmp_path / "emb.keras", tmp_path / "ids.npy")
    assert r.code == 4
    assert "integer" in r.err and "wrt-layer" in r.err
    g, _ = run(
        cli, tmp_path, "wrt-layer", tmp_path / "emb.keras", tmp_path / "ids.npy", "--layer", "emb"
    )
    kernel = model.get_layer("out").kernel.numpy().reshape(4, 3)
    np.testing.assert_allclose(g["emb"], np.broadcast_to(kernel, (2, 4, 3)), rtol=1e-6)
