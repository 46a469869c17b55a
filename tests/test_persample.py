"""wrt-weights --per-sample: per-sample gradients against N single-sample GradientTapes.

Every reference is a plain `tf.GradientTape` per sample, with the objective written out by
hand (the model's loss, weights included, or its class score); tr Σ, SNR and B_simple are
recomputed from those references by their definitions (two-pass, around the mean).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import load, npz, run_process

N = 7


@pytest.fixture(scope="session")
def ps_models(tmp_path_factory, keras):
    """Five small models (MLP, CNN, BatchNorm, Embedding, two outputs) with their data."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    d = tmp_path_factory.mktemp("persample")
    m: dict = {"dir": d}

    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="fc1")(inp)
    mlp = keras.Model(inp, keras.layers.Dense(4, name="fc2")(h), name="mlp")
    mlp.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    mlp.save(d / "mlp.keras")
    np.save(d / "mlp_x.npy", rng.normal(size=(N, 6)).astype(np.float32))
    np.save(d / "mlp_y.npy", rng.integers(0, 4, size=(N,)))
    m["mlp"] = (d / "mlp.keras", d / "mlp_x.npy", ["-t", d / "mlp_y.npy"])

    # strided "same", dilated and 1x1-output convolutions (the last one takes the Gram form)
    img = keras.Input((9, 9, 2), name="image")
    c = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="tanh", name="c1")(img)
    c = keras.layers.Conv2D(16, 2, dilation_rate=2, activation="tanh", name="c2")(c)
    c = keras.layers.Conv2D(16, 3, activation="tanh", name="c3")(c)
    c = keras.layers.Flatten(name="flat")(c)
    cnn = keras.Model(img, keras.layers.Dense(3, name="logits")(c), name="cnn")
    cnn.save(d / "cnn.keras")
    np.save(d / "cnn_x.npy", rng.normal(size=(N, 9, 9, 2)).astype(np.float32))
    m["cnn"] = (d / "cnn.keras", d / "cnn_x.npy", ["--class", "1"])

    inp = keras.Input((5,), name="x")
    h = keras.layers.Dense(6, name="pre")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("tanh", name="act")(h)
    bn = keras.Model(inp, keras.layers.Dense(2, name="out")(h), name="bn_model")
    layer = bn.get_layer("bn")
    layer.moving_mean.assign(rng.normal(size=6).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype(np.float32))
    layer.gamma.assign(rng.uniform(0.5, 1.5, size=6).astype(np.float32))
    bn.compile(loss="mse")
    bn.save(d / "bn.keras")
    np.save(d / "bn_x.npy", rng.normal(size=(N, 5)).astype(np.float32))
    np.save(d / "bn_y.npy", rng.normal(size=(N, 2)).astype(np.float32))
    m["bn"] = (d / "bn.keras", d / "bn_x.npy", ["-t", d / "bn_y.npy"])

    # token ids (repeated within a sample) -> causal dilated Conv1D -> Dense on a sequence
    ids = keras.Input((6,), dtype="int32", name="ids")
    e = keras.layers.Embedding(12, 4, name="emb")(ids)
    e = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="tanh", name="cv")(
        e
    )
    e = keras.layers.Dense(16, activation="tanh", name="seq")(e)
    e = keras.layers.GlobalAveragePooling1D(name="pool")(e)
    emb = keras.Model(ids, keras.layers.Dense(2, name="head")(e), name="emb_model")
    emb.compile(loss="mse")
    emb.save(d / "emb.keras")
    tokens = rng.integers(0, 12, size=(N, 6))
    tokens[:, 4] = tokens[:, 1]
    tokens[0, :] = 3  # one id six times: the rows must be summed before squaring
    np.save(d / "emb_x.npy", tokens.astype(np.int32))
    np.save(d / "emb_y.npy", rng.normal(size=(N, 2)).astype(np.float32))
    m["emb"] = (d / "emb.keras", d / "emb_x.npy", ["-t", d / "emb_y.npy"])

    # LayerNormalization takes the general path; --training makes it the Jacobian's
    inp = keras.Input((5,), name="x")
    h = keras.layers.Dense(6, activation="tanh", name="pre")(inp)
    h = keras.layers.LayerNormalization(name="ln")(h)
    ln = keras.Model(inp, keras.layers.Dense(2, name="out")(h), name="ln_model")
    ln.compile(loss="mse")
    ln.save(d / "ln.keras")
    m["ln"] = (d / "ln.keras", d / "bn_x.npy", ["-t", d / "bn_y.npy"])

    # one Dense layer called twice: its g_i is the sum over both calls (general path)
    inp = keras.Input((5,), name="x")
    tied = keras.layers.Dense(5, activation="tanh", name="tied")
    shared = keras.Model(inp, keras.layers.Dense(2, name="out")(tied(tied(inp))), name="shared")
    shared.compile(loss="mse")
    shared.save(d / "shared.keras")
    m["shared"] = (d / "shared.keras", d / "bn_x.npy", ["-t", d / "bn_y.npy"])

    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    t = keras.layers.Dense(8, activation="tanh", name="trunk")(
        keras.layers.Concatenate(name="concat")([a, b])
    )
    cls = keras.layers.Dense(3, name="cls")(t)
    reg = keras.layers.Dense(1, name="reg")(t)
    two = keras.Model([a, b], {"cls": cls, "reg": reg}, name="two")
    two.compile(
        loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.5},
    )
    two.save(d / "two.keras")
    np.savez(
        d / "two_x.npz",
        a=rng.normal(size=(N, 4)).astype(np.float32),
        b=rng.normal(size=(N, 3)).astype(np.float32),
    )
    np.savez(
        d / "two_y.npz",
        cls=rng.integers(0, 3, size=(N,)),
        reg=rng.normal(size=(N, 1)).astype(np.float32),
    )
    m["two"] = (d / "two.keras", d / "two_x.npz", ["-t", d / "two_y.npz"])
    return m


def _objective(tf, name, model, d, i):
    """o_i written out by hand for sample i of each fixture model."""
    if name == "mlp":
        x, y = np.load(d / "mlp_x.npy")[i : i + 1], int(np.load(d / "mlp_y.npy")[i])
        return -tf.nn.log_softmax(model(x, training=False))[0, y]
    if name == "cnn":
        return model(np.load(d / "cnn_x.npy")[i : i + 1], training=False)[0, 1]
    if name in ("bn", "emb", "ln", "shared"):
        stem = "bn" if name in ("ln", "shared") else name
        x, y = np.load(d / f"{stem}_x.npy")[i : i + 1], np.load(d / f"{stem}_y.npy")[i]
        return tf.reduce_mean(tf.square(y - model(x, training=False)[0]))
    xs, ys = npz(d / "two_x.npz"), npz(d / "two_y.npz")
    out = model([xs["a"][i : i + 1], xs["b"][i : i + 1]], training=False)
    ce = -tf.nn.log_softmax(out["cls"])[0, int(ys["cls"][i])]
    return ce + 0.5 * tf.reduce_mean(tf.square(ys["reg"][i] - out["reg"][0]))


_REFERENCES: dict = {}


def references(tf, ps_models, name):
    """{variable path: (N, *shape)} from one GradientTape per sample."""
    if name not in _REFERENCES:
        model = load(ps_models[name][0])
        grads = {v.path: [] for v in model.trainable_variables}
        for i in range(N):
            with tf.GradientTape() as tape:
                o = _objective(tf, name, model, ps_models["dir"], i)
            for v, g in zip(
                model.trainable_variables, tape.gradient(o, model.trainable_variables), strict=True
            ):
                grads[v.path].append(tf.convert_to_tensor(g).numpy())
        _REFERENCES[name] = {k: np.stack(v).astype(np.float64) for k, v in grads.items()}
    return _REFERENCES[name]


def spread_reference(g: np.ndarray) -> dict:
    """tr Σ, SNR, B_simple by their definitions, from per-sample gradients (N, P)."""
    mean = g.mean(axis=0)
    trace = np.square(g - mean).sum() / (len(g) - 1)
    g_sq = np.square(mean).sum()
    with np.errstate(divide="ignore"):  # no noise at all: SNR is infinite
        return {
            "g_norm": np.sqrt(g_sq),
            "trace_cov": trace,
            "snr": g_sq / (trace / len(g)),
            "b_simple": trace / g_sq,
        }


def _flat(ref: dict, names: list[str]) -> np.ndarray:
    return np.concatenate([ref[n].reshape(N, -1) for n in names], axis=1)


def check_spread(block: dict, g: np.ndarray) -> None:
    want = spread_reference(g)
    # tr Σ = (sum ||g_i||^2 - N ||G||^2) / (N - 1) in float32 squares: exact to ~1e-6 of the
    # sum; below that gradcli reports 0 (and SNR, infinite, as null)
    floor = 1e-5 * np.square(g).sum() / (len(g) - 1)
    assert block["g_norm"] == pytest.approx(want["g_norm"], rel=1e-4)
    assert block["trace_cov"] == pytest.approx(want["trace_cov"], rel=1e-4, abs=floor)
    if want["trace_cov"] > 100 * floor:
        for key in ("snr", "b_simple"):
            assert block[key] == pytest.approx(want[key], rel=1e-4), key
    elif block["trace_cov"] == 0:
        assert block["snr"] is None and block["b_simple"] == 0
    norms = np.sqrt(np.square(g).sum(axis=1))
    assert block["sample_norm"]["median"] == pytest.approx(np.median(norms), rel=1e-4)
    assert block["sample_norm"]["max"] == pytest.approx(norms.max(), rel=1e-4)


def run_json(cli, tmp_path, *args):
    out = tmp_path / "g.npz"
    r = cli(*args, "--json", "-o", out)
    assert r.code == 0, r.err
    return npz(out), json.loads(r.out)


@pytest.mark.parametrize("batch", ["1", "3", str(N)])
@pytest.mark.parametrize("name", ["mlp", "cnn", "bn", "emb", "two"])
def test_per_sample_norms_arrays_and_spread_match_single_sample_tapes(
    cli, ps_models, tmp_path, tf, name, batch
):
    model, x, objective = ps_models[name]
    ref = references(tf, ps_models, name)
    # norms alone take the fast path's closed forms; arrays materialize every g_i
    norms_only, rec = run_json(
        cli, tmp_path, "wrt-weights", model, x, *objective, "--per-sample", "-b", batch
    )
    arrays, rec_arrays = run_json(
        cli, tmp_path, "wrt-weights", model, x, *objective, "--per-sample-arrays", "-b", batch
    )
    ps = rec["per_sample"]
    names = ps["variables"]
    assert sorted(names) == sorted(ref)
    assert not any(k.startswith("per_sample/") for k in names)
    want_norms = np.stack([np.sqrt(np.square(ref[n].reshape(N, -1)).sum(1)) for n in names], 1)
    for got in (norms_only, arrays):
        np.testing.assert_allclose(got["per_sample/norms"], want_norms, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(
            got["per_sample/norm"], np.sqrt(np.square(want_norms).sum(1)), rtol=1e-4
        )
        for n in names:  # G is the mean of the g_i, as plain wrt-weights reports it
            np.testing.assert_allclose(got[n], ref[n].mean(0), rtol=1e-4, atol=1e-7)
    assert not any(k.startswith("per_sample/") and k[11:] in names for k in norms_only)
    for n in names:
        np.testing.assert_allclose(arrays["per_sample/" + n], ref[n], rtol=1e-4, atol=1e-7)
    flat = _flat(ref, names)
    for block in (ps, rec_arrays["per_sample"]):
        check_spread(block["model"], flat)
    for row in ps["layers"]:
        cols = [v["name"] for v in ps["per_variable"] if v["layer"] == row["layer"]]
        check_spread(row, _flat(ref, cols))
    for row in ps["per_variable"]:
        check_spread(row, ref[row["name"]].reshape(N, -1))
    if name == "bn":
        assert ps["general_path"] == ["bn"]
    else:
        assert ps["general_path"] == []


def test_training_mode_general_path_uses_the_same_forward_pass(cli, ps_models, tmp_path, tf):
    model, x, objective = ps_models["ln"]
    ref = references(tf, ps_models, "ln")  # LayerNormalization: training = inference
    got, rec = run_json(
        cli, tmp_path, "wrt-weights", model, x, *objective, "--per-sample-arrays", "--training"
    )
    ps = rec["per_sample"]
    assert ps["general_path"] == ["ln"] and ps["mode"] == "training"
    for n in ps["variables"]:
        np.testing.assert_allclose(got["per_sample/" + n], ref[n], rtol=1e-4, atol=1e-7)
    check_spread(ps["model"], _flat(ref, ps["variables"]))


def test_a_layer_called_twice_takes_the_general_path(cli, ps_models, tmp_path, tf):
    model, x, objective = ps_models["shared"]
    ref = references(tf, ps_models, "shared")
    got, rec = run_json(cli, tmp_path, "wrt-weights", model, x, *objective, "--per-sample")
    ps = rec["per_sample"]
    assert ps["general_path"] == ["tied"]
    want = np.stack([np.sqrt(np.square(ref[n].reshape(N, -1)).sum(1)) for n in ps["variables"]], 1)
    np.testing.assert_allclose(got["per_sample/norms"], want, rtol=1e-4, atol=1e-7)
    check_spread(ps["model"], _flat(ref, ps["variables"]))


def test_mean_gradient_and_rows_are_unchanged_by_per_sample(cli, ps_models, tmp_path):
    model, x, objective = ps_models["emb"]
    plain, rec_plain = run_json(cli, tmp_path, "wrt-weights", model, x, *objective, "-b", "3")
    with_ps, rec_ps = run_json(
        cli, tmp_path, "wrt-weights", model, x, *objective, "-b", "3", "--per-sample"
    )
    assert set(with_ps) == set(plain) | {
        "per_sample/norm",
        "per_sample/norms",
        "per_sample/objective",
    }
    for key, value in plain.items():
        np.testing.assert_allclose(with_ps[key], value, rtol=1e-5, atol=1e-8)
    for a, b in zip(rec_plain["tensors"], rec_ps["tensors"], strict=True):
        assert a.keys() == b.keys()
        assert a["name"] == b["name"] and a["status"] == b["status"]
        assert a["l2"] == pytest.approx(b["l2"], rel=1e-5)
    assert "per_sample" not in rec_plain
    emb_row = next(t for t in rec_ps["tensors"] if t["name"] == "emb/embeddings")
    assert emb_row["sparse"]["rows_touched"] == len(np.unique(np.load(x)))


def test_one_sample_reports_undefined_spread(cli, ps_models, tmp_path, tf):
    model, x, objective = ps_models["mlp"]
    one_x, one_y = tmp_path / "x1.npy", tmp_path / "y1.npy"
    np.save(one_x, np.load(x)[:1])
    np.save(one_y, np.load(objective[1])[:1])
    got, rec = run_json(cli, tmp_path, "wrt-weights", model, one_x, "-t", one_y, "--per-sample")
    ps = rec["per_sample"]
    assert ps["model"]["trace_cov"] is None and ps["model"]["snr"] is None
    assert ps["model"]["b_simple"] is None and "N >= 2" in ps["note"]
    ref = references(tf, ps_models, "mlp")
    want = np.sqrt(sum(np.square(ref[n][0]).sum() for n in ps["variables"]))
    assert ps["model"]["g_norm"] == pytest.approx(want, rel=1e-4)
    assert got["per_sample/norm"][0] == pytest.approx(want, rel=1e-4)
    table = cli("wrt-weights", model, one_x, "-t", one_y, "--per-sample")
    assert table.code == 0, table.err
    assert "needs N >= 2" in table.out


def test_training_mode_with_batch_norm_is_refused(cli, ps_models, tmp_path):
    model, x, objective = ps_models["bn"]
    out = tmp_path / "never.npz"
    r = cli("wrt-weights", model, x, *objective, "--per-sample", "--training", "-o", out)
    assert r.code == 2
    assert r.err.startswith("error: --per-sample with --training: bn normalize with batch")
    assert r.err.count("\n") == 1 and not out.exists()


def test_table_shows_spread_and_debug_names_the_general_path(cli, ps_models, monkeypatch):
    model, x, objective = ps_models["bn"]
    monkeypatch.setenv("GRADCLI_DEBUG", "1")
    r = cli("wrt-weights", model, x, *objective, "--per-sample", "--top", "2")
    assert r.code == 0, r.err
    assert "debug: per-sample gradients of bn took the general path" in r.err
    assert "per-sample gradients g_i (N=7, inference mode)" in r.out
    assert "B_simple" in r.out and "top 2 samples by gradient norm" in r.out
    monkeypatch.delenv("GRADCLI_DEBUG")
    quiet = cli("wrt-weights", model, x, *objective, "--per-sample")
    assert "debug:" not in quiet.err


def test_directory_of_models(cli, ps_models, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    model, x, objective = ps_models["mlp"]
    for stem in ("a", "b"):
        shutil.copy(model, models / f"{stem}.keras")
    out = tmp_path / "outs"
    r = cli("wrt-weights", models, x, *objective, "--per-sample", "--json", "-o", out)
    assert r.code == 0, r.err
    records = [json.loads(line) for line in r.out.splitlines()]
    assert [rec["per_sample"]["n"] for rec in records] == [N, N]
    assert records[0]["per_sample"]["model"] == records[1]["per_sample"]["model"]
    assert "per_sample/norms" in npz(out / "b.npz")


@pytest.fixture(scope="session")
def outlier(tmp_path_factory, keras):
    """An MLP trained on three well-separated blobs; one training label flipped afterwards."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    d = tmp_path_factory.mktemp("outlier")
    centers = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], np.float32)
    y = np.repeat(np.arange(3), 20)
    x = (centers[y] + rng.normal(scale=0.5, size=(60, 2))).astype(np.float32)
    inp = keras.Input((2,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="fc1")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc2")(h))
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=40, batch_size=60, verbose=0)
    model.save(d / "blobs.keras")
    flipped = 37
    y[flipped] = (y[flipped] + 1) % 3
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    return d, flipped


def test_flipped_label_ranks_first_in_top(outlier):
    d, flipped = outlier
    r = run_process(
        "wrt-weights", d / "blobs.keras", d / "x.npy", "-t", d / "y.npy", "--top", "3", "--json"
    )
    assert r.code == 0, r.err
    ps = json.loads(r.out)["per_sample"]
    top = ps["top"]
    assert [t["index"] for t in top][0] == flipped
    # and by a margin: the clean samples were fitted
    assert top[0]["norm"] > 3 * top[1]["norm"]
    assert top[0]["norm"] == pytest.approx(ps["sample_norm"]["max"])


def test_a_tied_embedding_table_takes_the_general_path(keras, tf):
    """An output projection that reuses the embedding table (weight tying): the table's
    gradient comes from two layers, so the Embedding's own fast path would miss half."""
    import gradcli

    class TiedLogits(keras.layers.Layer):
        def __init__(self, embedding, **kwargs):
            super().__init__(**kwargs)
            self.embedding = embedding

        def call(self, h):
            return tf.matmul(h, self.embedding.embeddings, transpose_b=True)

    keras.utils.set_random_seed(3)
    ids = keras.Input((5,), dtype="int32", name="ids")
    emb = keras.layers.Embedding(9, 4, name="emb")
    h = keras.layers.GlobalAveragePooling1D(name="pool")(emb(ids))
    h = keras.layers.Dense(4, activation="tanh", name="mix")(h)
    model = keras.Model(ids, TiedLogits(emb, name="tied")(h))
    x = np.random.default_rng(3).integers(0, 9, size=(N, 5)).astype(np.int32)
    result = gradcli.wrt_weights(
        model, x, per_sample_arrays=True, class_index=2, return_record=True
    )
    got, rec = result.arrays, result.record
    ps = rec["per_sample"]
    owner = next(v["layer"] for v in ps["per_variable"] if v["name"] == "emb/embeddings")
    assert ps["general_path"] == [owner]  # the layer wrt-weights files the table under
    for v in model.trainable_variables:
        want = []
        for i in range(N):
            with tf.GradientTape() as tape:
                o = model(x[i : i + 1])[0, 2]
            want.append(tf.convert_to_tensor(tape.gradient(o, v)).numpy())
        np.testing.assert_allclose(
            got["per_sample/" + v.path], np.stack(want), rtol=1e-4, atol=1e-7
        )


def test_class_beyond_an_undeclared_class_axis_is_exit_2(cli, tf, tmp_path):
    """An output whose class axis the model leaves open (None): --class is checked against one
    sample's real output, by the gradient engine and by the per-sample engine alike."""

    class Open(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return tf.reshape(x @ self.w, [tf.shape(x)[0], -1])  # static shape (None, None)

    tf.saved_model.save(Open(), str(tmp_path / "open"))
    x = tmp_path / "x.npy"
    np.save(x, np.ones((3, 4), np.float32))
    for args in (("wrt-input",), ("wrt-weights", "--per-sample")):
        r = cli(args[0], tmp_path / "open", x, "--class", "5", *args[1:])
        assert r.code == 2, r.err
        assert "3 classes; K must be in 0..2" in r.err, r.err
        ok = cli(args[0], tmp_path / "open", x, "--class", "2", *args[1:], "--json")
        assert ok.code == 0, ok.err


# (layer, input shape): the kernel offsets' input windows against TensorFlow's own padding,
# strides and dilation, with odd and even sizes; the last ones have few output positions and
# many channels, so their norms take the Gram form
CONV_GEOMETRIES = {
    "same, stride 2, odd": (
        "Conv2D",
        dict(filters=4, kernel_size=3, strides=2, padding="same"),
        (7, 9, 2),
    ),
    "same, stride 2, even": (
        "Conv2D",
        dict(filters=4, kernel_size=(3, 2), strides=2, padding="same"),
        (8, 6, 3),
    ),
    "same, stride 3, kernel 4": (
        "Conv2D",
        dict(filters=3, kernel_size=4, strides=(3, 2), padding="same"),
        (10, 7, 2),
    ),
    "same, dilated": (
        "Conv2D",
        dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"),
        (6, 7, 2),
    ),
    "valid, stride and kernel 1": ("Conv2D", dict(filters=5, kernel_size=1, strides=2), (5, 5, 3)),
    "conv1d same, stride 2": (
        "Conv1D",
        dict(filters=4, kernel_size=3, strides=2, padding="same"),
        (9, 3),
    ),
    "conv1d causal, dilated": (
        "Conv1D",
        dict(filters=4, kernel_size=2, dilation_rate=3, padding="causal"),
        (8, 2),
    ),
    "gram, same": (
        "Conv2D",
        dict(filters=40, kernel_size=3, strides=2, padding="same"),
        (3, 3, 16),
    ),
    "gram, conv1d": ("Conv1D", dict(filters=48, kernel_size=3, padding="same"), (2, 24)),
}


@pytest.mark.parametrize("geometry", list(CONV_GEOMETRIES))
def test_conv_per_sample_gradients_match_single_sample_tapes(keras, tf, geometry):
    import gradcli

    kind, config, shape = CONV_GEOMETRIES[geometry]
    keras.utils.set_random_seed(5)
    inp = keras.Input(shape, name="x")
    h = getattr(keras.layers, kind)(activation="tanh", name="conv", **config)(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(h)))
    x = np.random.default_rng(5).normal(size=(N, *shape)).astype(np.float32)
    want = {v.path: [] for v in model.trainable_variables}
    for i in range(N):
        with tf.GradientTape() as tape:
            o = model(x[i : i + 1])[0, 1]
        grads = tape.gradient(o, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads, strict=True):
            want[v.path].append(g.numpy())
    want = {k: np.stack(v) for k, v in want.items()}
    arrays = gradcli.wrt_weights(model, x, per_sample_arrays=True, class_index=1)
    norms = gradcli.wrt_weights(model, x, per_sample=True, class_index=1)
    for path, g in want.items():
        np.testing.assert_allclose(arrays["per_sample/" + path], g, rtol=1e-4, atol=1e-6)
    ref = np.sqrt(sum(np.square(g.reshape(N, -1)).sum(1) for g in want.values()))
    for got in (arrays, norms):
        np.testing.assert_allclose(got["per_sample/norm"], ref, rtol=1e-4)
