"""Models as they come in the wild: text models with Embedding tables, token-id inputs,
out-of-range classes and labels, and a legacy `.h5` whose input shape Keras 3 misreads.

Every gradient is compared with a plain `tf.GradientTape` on the model built in memory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_process

VOCAB, T, N = 50, 6, 7


def npz(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != "__gradcli__"}


# ------------------------------------------------------------------ models


def _keras3_models(keras, d) -> dict:
    """Keras 3: an Embedding+LSTM classifier whose input is declared float32 (as tf.keras
    2 text models were by default) and an Embedding+Dense bag of words with int32 ids."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((T,), name="tokens")  # float32: the ids are cast inside Embedding
    h = keras.layers.Embedding(VOCAB, 4, name="emb")(tokens)
    h = keras.layers.LSTM(3, name="lstm")(h)
    lstm = keras.Model(tokens, keras.layers.Dense(3, name="out")(h), name="text_lstm")
    lstm.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    ids = keras.Input((T,), dtype="int32", name="ids")
    h = keras.layers.Embedding(VOCAB, 4, name="emb")(ids)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    bow = keras.Model(ids, keras.layers.Dense(3, activation="softmax", name="out")(h), name="bow")
    bow.compile(loss="sparse_categorical_crossentropy")
    out = {}
    for name, model in (("lstm", lstm), ("bow", bow)):
        for suffix in ("keras", "h5"):
            model.save(d / f"{name}.{suffix}")
            out[f"{name}.{suffix}"] = (d / f"{name}.{suffix}", model)
    return out


def _tf_keras_models(d) -> dict:
    """The same two models written by tf.keras 2 (the tf_keras package) as SavedModels."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    tokens = tf_keras.Input((T,), name="tokens")
    h = tf_keras.layers.Embedding(VOCAB, 4, name="emb")(tokens)
    h = tf_keras.layers.LSTM(3, name="lstm")(h)
    lstm = tf_keras.Model(tokens, tf_keras.layers.Dense(3, name="out")(h))
    lstm.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    ids = tf_keras.Input((T,), dtype="int32", name="ids")
    h = tf_keras.layers.Embedding(VOCAB, 4, name="emb")(ids)
    h = tf_keras.layers.GlobalAveragePooling1D(name="pool")(h)
    bow = tf_keras.Model(ids, tf_keras.layers.Dense(3, activation="softmax", name="out")(h))
    bow.compile(loss="sparse_categorical_crossentropy")
    out = {}
    for name, model in (("lstm", lstm), ("bow", bow)):
        model.save(str(d / f"tfk_{name}"), save_format="tf")
        out[f"{name}.savedmodel"] = (d / f"tfk_{name}", model)
    return out


@pytest.fixture(scope="session")
def text(tmp_path_factory, keras):
    d = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(N, T))
    ids[1, :3] = ids[0, 0]  # a token repeated within and across samples
    np.save(d / "ids.npy", ids)
    np.save(d / "labels.npy", rng.integers(0, 3, size=(N,)))
    models = {**_keras3_models(keras, d), **_tf_keras_models(d)}
    return {"dir": d, "ids": ids, "labels": np.load(d / "labels.npy"), "models": models}


FORMATS = [
    f"{m}.{f}" for m in ("lstm", "bow") for f in ("keras", "h5", "savedmodel")
]  # fmt: skip


def _per_sample_loss(model, ids, labels):
    import tf_keras

    from gradcli.load.backend import keras

    from_logits = model.layers[-1].get_config().get("activation") == "linear"
    api = tf_keras if isinstance(model, tf_keras.Model) else keras
    return api.losses.sparse_categorical_crossentropy(labels, model(ids), from_logits=from_logits)


def _reference_weight_grads(model, ids, labels) -> dict[str, np.ndarray]:
    """The dense full-batch mean gradient from one plain tape (IndexedSlices densified)."""
    from gradcli.load.backend import tf
    from gradcli.load.handles import _variable_path

    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(_per_sample_loss(model, ids, labels))
    grads = tape.gradient(loss, variables)
    assert any(isinstance(g, tf.IndexedSlices) for g in grads)  # the case under test
    return {
        _variable_path(v): tf.convert_to_tensor(g).numpy()
        for v, g in zip(variables, grads, strict=True)
    }


def _reference_embedding_grad(model, ids, labels) -> np.ndarray:
    """d loss_i / d (embedding output)_i, by capturing the Embedding's output in the tape."""
    from gradcli.load.backend import tf

    emb = model.get_layer("emb")
    original = emb.call
    seen = []

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        tape.watch(out)
        seen.append(out)
        return out

    with tf.GradientTape() as tape:
        object.__setattr__(emb, "call", call)
        try:
            total = tf.reduce_sum(_per_sample_loss(model, ids, labels))
        finally:
            emb.__dict__.pop("call", None)
    return tape.gradient(total, seen[0]).numpy()


# ------------------------------------------------------------------ Embedding models


@pytest.fixture(scope="session")
def handles(text):
    """Each saved model loaded once the CLI's way (tf.keras LSTM SavedModels load slowly);
    the Python API runs the CLI's runners on them."""
    from gradcli import load_model

    return {case: load_model(path) for case, (path, _) in text["models"].items()}


def api_run(handles, text, case, command, **options):
    import gradcli

    fn = getattr(gradcli, command.replace("-", "_"))
    target = options.pop("target", text["labels"])
    args = (handles[case], text["ids"])
    if command == "wrt-layer":
        args = (*args, options.pop("layers"))
    if command != "jacobian":
        options["target"] = target
    result = (
        fn(*args, **options) if command == "check" else fn(*args, **options, return_record=True)
    )
    return result.arrays, result.record


@pytest.mark.parametrize("case", FORMATS)
def test_wrt_weights_gives_the_dense_table_gradient(handles, text, case):
    _, model = text["models"][case]
    got, rec = api_run(handles, text, case, "wrt-weights")
    ref = _reference_weight_grads(model, text["ids"].astype(np.float32), text["labels"])
    assert sorted(got) == sorted(ref)
    for key in ref:  # the table and every other variable
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-5, atol=1e-7, err_msg=key)
    table = got["emb/embeddings"]
    used = np.unique(text["ids"])
    untouched = np.setdiff1d(np.arange(VOCAB), used)
    assert np.all(table[untouched] == 0) and np.all(np.abs(table[used]).sum(axis=1) > 0)
    rows = {t["name"]: t for t in rec["tensors"]}
    assert rows["emb/embeddings"]["sparse"] == {"rows_touched": len(used), "rows": VOCAB}
    assert "sparse" not in rows["out/kernel"]
    assert rows["emb/embeddings"]["status"] == "ok"
    assert rows["emb/embeddings"]["zero_fraction"] == pytest.approx(len(untouched) / VOCAB)
    expected_l2 = float(np.linalg.norm(ref["emb/embeddings"]))
    assert rows["emb/embeddings"]["l2"] == pytest.approx(expected_l2, rel=1e-5)


@pytest.mark.parametrize("batch", ["1", "3", str(N)])
def test_wrt_weights_cli_sparse_sums_do_not_depend_on_the_batch_size(cli, text, tmp_path, batch):
    path, model = text["models"]["lstm.h5"]
    d = text["dir"]
    out = tmp_path / "w.npz"
    r = cli("wrt-weights", path, d / "ids.npy", "--target", d / "labels.npy", "-b", batch,
            "-o", out, "--json")  # fmt: skip
    assert r.code == 0, r.err
    ref = _reference_weight_grads(model, text["ids"].astype(np.float32), text["labels"])
    got = npz(out)
    assert sorted(got) == sorted(ref)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-5, atol=1e-7, err_msg=key)
    (table,) = [t for t in json.loads(r.out)["tensors"] if t["name"] == "emb/embeddings"]
    assert table["sparse"] == {"rows_touched": len(np.unique(text["ids"])), "rows": VOCAB}


def test_table_shows_sparse_rows(cli, text):
    path, _ = text["models"]["bow.keras"]
    d = text["dir"]
    r = cli("wrt-weights", path, d / "ids.npy", "--target", d / "labels.npy")
    assert r.code == 0, r.err
    used = len(np.unique(text["ids"]))
    assert f"emb/embeddings: sparse gradient, {used} of {VOCAB} rows touched" in r.out


def test_gradient_sum_scatters_rows_like_the_dense_sum():
    from gradcli.engine.sparse import GradientSum, SparseGradient

    rng = np.random.default_rng(1)
    dense = GradientSum((9, 2))
    sparse = GradientSum((9, 2))
    reference = np.zeros((9, 2))
    for _ in range(3):
        idx = rng.integers(0, 9, size=5)
        idx[1] = idx[0]  # duplicates in one batch add up
        vals = rng.normal(size=(5, 2)).astype(np.float32)
        np.add.at(reference, idx, vals.astype(np.float64))
        g = SparseGradient(vals, idx, (9, 2))
        sparse.add(g)
        dense.add(g.dense())
    np.testing.assert_allclose(sparse.total, reference, rtol=1e-12)
    np.testing.assert_allclose(dense.total, reference, rtol=1e-6)
    assert sparse.sparse and not dense.sparse
    assert sparse.rows_touched == int(np.count_nonzero(np.abs(reference).sum(axis=1)))


@pytest.mark.parametrize("case", FORMATS)
def test_wrt_layer_on_the_embedding(handles, text, case):
    _, model = text["models"][case]
    got, _ = api_run(handles, text, case, "wrt-layer", layers=["emb"])
    ref = _reference_embedding_grad(model, text["ids"].astype(np.float32), text["labels"])
    np.testing.assert_allclose(got["emb"], ref, rtol=2e-5, atol=1e-8)


def test_wrt_layer_cli_on_the_embedding(cli, text, tmp_path):
    path, model = text["models"]["bow.h5"]
    d = text["dir"]
    out = tmp_path / "l.npz"
    r = cli(
        "wrt-layer", path, d / "ids.npy", "--layer", "emb", "--target", d / "labels.npy", "-o", out
    )
    assert r.code == 0, r.err
    ref = _reference_embedding_grad(model, text["ids"].astype(np.float32), text["labels"])
    np.testing.assert_allclose(npz(out)["emb"], ref, rtol=2e-5, atol=1e-8)


TOKEN_MESSAGE = "holds token ids (it feeds Embedding layer 'emb')"
HINT = "use `wrt-layer --layer emb` for the gradient at the embedded vectors"
PY_HINT = HINT.replace("--layer ", "layers=")  # what a Python caller reads


@pytest.mark.parametrize("case", FORMATS)
@pytest.mark.parametrize("command", ["wrt-input", "jacobian", "check"])
def test_token_inputs_have_no_input_gradient(handles, text, case, command):
    """Declared int32 (bow) or float32 (lstm): the graph shows the ids feed the Embedding."""
    from gradcli.errors import GradientError

    options = {"wrt": "input"} if command == "check" else {}
    with pytest.raises(GradientError) as info:
        api_run(handles, text, case, command, target=None, **options)
    assert TOKEN_MESSAGE in str(info.value) and PY_HINT in str(info.value)


@pytest.mark.parametrize("case", ["lstm.keras", "bow.savedmodel"])
@pytest.mark.parametrize("command", ["wrt-input", "jacobian", "check"])
def test_token_inputs_cli(cli, text, tmp_path, case, command):
    path, _ = text["models"][case]
    out = tmp_path / "x.npz"
    extra = ["--wrt", "input"] if command == "check" else ["-o", out]
    r = cli(command, path, text["dir"] / "ids.npy", *extra)
    assert r.code == 4, r.err
    assert TOKEN_MESSAGE in r.err and HINT in r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert not out.exists()


def test_token_message_from_a_real_process(text):
    path, _ = text["models"]["lstm.h5"]
    r = run_process("wrt-input", path, text["dir"] / "ids.npy")
    assert r.code == 4
    assert r.err.strip().startswith("error: input 'tokens' " + TOKEN_MESSAGE), r.err
    assert r.out == ""


def test_check_wrt_weights_passes_an_embedding_model(cli, text):
    path, _ = text["models"]["bow.keras"]
    d = text["dir"]
    r = cli(
        "check", path, d / "ids.npy", "--wrt", "weights", "--target", d / "labels.npy", "--json"
    )
    assert r.code == 0, r.err
    rows = {t["name"]: t for t in json.loads(r.out)["tensors"]}
    assert rows["emb/embeddings"]["status"] == "ok"


def test_token_uses_found_in_the_graph(text):
    from gradcli.engine.tokens import token_uses
    from gradcli.load.loaders import load_model

    handle = load_model(text["models"]["lstm.keras"][0])
    assert handle.inputs[0].dtype == "float32"  # the declared dtype says nothing of ids
    use = token_uses(handle)[0]
    assert use.tables == ["emb"] and use.lookup and use.cast


# ------------------------------------------------------------------ classes and labels


@pytest.fixture(scope="session")
def sequence(tmp_path_factory, keras):
    """(N, T, C) outputs: a fixed-length tagger and one whose length is open (N, ?, 3)."""
    d = tmp_path_factory.mktemp("sequence")
    keras.utils.set_random_seed(0)
    out = {"dir": d}
    for name, length in (("fixed", 5), ("open", None)):
        ids = keras.Input((length,), dtype="int32", name="ids")
        h = keras.layers.Embedding(VOCAB, 4, name="emb")(ids)
        m = keras.Model(ids, keras.layers.Dense(3, name="tags")(h), name=name)
        m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.save(d / f"{name}.keras")
        out[name] = d / f"{name}.keras"
    rng = np.random.default_rng(0)
    np.save(d / "ids.npy", rng.integers(0, VOCAB, size=(4, 5)))
    good = rng.integers(0, 3, size=(4, 5))
    np.save(d / "tags.npy", good)
    bad = good.copy()
    bad[2, 3] = 3
    np.save(d / "tags_bad.npy", bad)
    return out


@pytest.mark.parametrize(
    ("model", "k", "expected"),
    [
        ("fixed", "3", "output 'tags' has shape (N, 5, 3), 3 classes on its last axis"),
        ("open", "400", "output 'tags' has shape (N, ?, 3), 3 classes on its last axis"),
    ],
)
def test_class_out_of_range_on_a_sequence_output(cli, sequence, tmp_path, model, k, expected):
    out = tmp_path / "o.npz"
    r = cli("wrt-layer", sequence[model], sequence["dir"] / "ids.npy", "--layer", "emb",
            "--class", k, "-o", out)  # fmt: skip
    assert r.code == 2, r.err
    assert expected in r.err and "K must be in 0..2" in r.err
    assert not out.exists()


@pytest.mark.parametrize("model", ["fixed", "open"])
def test_class_on_a_sequence_output_sums_that_class_over_positions(cli, sequence, tmp_path, model):
    out = tmp_path / "o.npz"
    r = cli("wrt-layer", sequence[model], sequence["dir"] / "ids.npy", "--layer", "emb",
            "--class", "2", "-o", out, "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["objective"] == "class 2 of tags (summed over positions)"
    g = npz(out)["emb"]  # o_i = sum_t tags[i, t, 2]: d o / d emb[i, t] = kernel[:, 2] at every t
    kernel = np.asarray(_load_keras(sequence[model]).get_layer("tags").kernel)
    expected = np.broadcast_to(kernel[:, 2], g.shape)
    np.testing.assert_allclose(g, expected, rtol=1e-6)


def _load_keras(path):
    from gradcli.load.backend import keras

    return keras.saving.load_model(path)


def test_class_out_of_range_on_a_flat_output(cli, text):
    path, _ = text["models"]["bow.keras"]
    r = cli("wrt-weights", path, text["dir"] / "ids.npy", "--class", "3")
    assert r.code == 2
    assert "--class 3: output 'out' has shape (N, 3), 3 classes; K must be in 0..2" in r.err


@pytest.mark.parametrize("bad", [7, -1])
def test_sparse_labels_out_of_range_on_a_flat_output(cli, text, tmp_path, bad):
    path, _ = text["models"]["lstm.keras"]
    labels = text["labels"].copy()
    labels[4] = bad
    target = tmp_path / "labels_bad.npy"
    np.save(target, labels)
    out = tmp_path / "w.npz"
    r = cli("wrt-weights", path, text["dir"] / "ids.npy", "--target", target, "-o", out)
    assert r.code == 3, r.err
    assert f"{target}: label {bad} (sample 4) is out of range" in r.err
    assert "3 classes: labels must be in 0..2" in r.err
    assert not out.exists()


def test_sparse_labels_out_of_range_on_a_sequence_output(cli, sequence, tmp_path):
    d = sequence["dir"]
    for command in ("wrt-layer", "check"):
        extra = ["--layer", "emb"] if command == "wrt-layer" else ["--wrt", "weights"]
        r = cli(command, sequence["fixed"], d / "ids.npy", *extra, "--target", d / "tags_bad.npy")
        assert r.code == 3, r.err
        assert "tags_bad.npy: label 3 (sample 2) is out of range" in r.err
        assert "'tags', which has 3 classes: labels must be in 0..2" in r.err
    r = cli("wrt-layer", sequence["fixed"], d / "ids.npy", "--layer", "emb",
            "--target", d / "tags.npy")  # fmt: skip
    assert r.code == 0, r.err


def test_label_scan_is_chunked_and_honours_ignore_class():
    from gradcli.engine.labels import _first_out_of_range
    from gradcli.io.arrays import ArraySource

    labels = np.zeros((1000, 3), np.int64)
    labels[777, 1] = 5
    src = ArraySource(labels, "target t.npy")
    assert _first_out_of_range(src, 3, None, chunk_values=30) == (5, 777)
    labels[777, 1] = -1
    assert _first_out_of_range(src, 3, -1, chunk_values=30) is None
    floats = ArraySource(np.array([0.0, 2.0, np.nan, 3.0]), "target f.npy")
    assert _first_out_of_range(floats, 3, None) == (3, 3)


# ------------------------------------------------------------------ legacy Reshape .h5


@pytest.fixture(scope="session")
def reshape_h5(tmp_path_factory):
    """A Sequential `.h5` whose first layer is a Reshape carrying `batch_input_shape`.

    Written by tf_keras; the explicit InputLayer tf_keras 2.21 adds to the config is then
    removed with h5py, as tf.keras-era files (Keras 2.x) wrote it: the first layer holds
    the input shape itself. Keras 3.15 reads such a file with an extra input axis.
    """
    import h5py
    import tf_keras

    d = tmp_path_factory.mktemp("reshape")
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Reshape((8, 3, 1), input_shape=(8, 3), name="reshape"),
            tf_keras.layers.Conv2D(2, 3, activation="tanh", name="conv"),
            tf_keras.layers.GlobalAveragePooling2D(name="gap"),
            tf_keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile(loss="mse")
    path = d / "audio.h5"
    model.save(str(path), save_format="h5")
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layers = config["config"]["layers"]
        if layers[0]["class_name"] == "InputLayer":
            del layers[0]
        assert layers[0]["config"]["batch_input_shape"] == [None, 8, 3]
        f.attrs["model_config"] = json.dumps(config)
    x = np.random.default_rng(2).normal(size=(5, 8, 3)).astype(np.float32)
    np.save(d / "x.npy", x)
    return {"path": path, "model": model, "x": x, "dir": d}


def test_keras3_misreads_the_legacy_reshape_file(reshape_h5, keras):
    loaded = keras.saving.load_model(reshape_h5["path"], compile=False)
    assert tuple(loaded.inputs[0].shape) != (None, 8, 3)  # the bug this works around


def test_legacy_reshape_h5_loads_with_its_declared_input(cli, reshape_h5, tf, tmp_path):
    r = cli("info", reshape_h5["path"], "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert [i["shape"] for i in info["inputs"]] == [[8, 3]]
    assert info["loader"].startswith("tf_keras")
    out = tmp_path / "g.npz"
    r = cli("wrt-input", reshape_h5["path"], reshape_h5["dir"] / "x.npy", "--class", "1", "-o", out)
    assert r.code == 0, r.err
    x = tf.constant(reshape_h5["x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = reshape_h5["model"](x)[:, 1]
    ref = tape.gradient(y, x).numpy()
    (got,) = npz(out).values()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)


def test_an_unused_input_is_a_clear_error_in_wrt_input_and_jacobian(keras):
    import gradcli
    from gradcli.errors import GradientError

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(2, name="d")(a))
    xs = [np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)]
    for fn in (gradcli.wrt_input, gradcli.jacobian):
        with pytest.raises(GradientError, match="input 'b' has no gradient"):
            fn(model, xs)
