"""`check` tells a wrong gradient from finite-difference noise on ReLU / max-pool CNNs.

Three small models: a BatchNorm + ReLU + MaxPool 2-D CNN fed inputs with repeated values
(max-pool windows with ties), a deep 1-D residual dilated CNN with small weights (directional
derivatives of 1e-9 to 1e-6), and a model whose custom layer's gradient is 3x the true one.
The healthy ones must pass, although the old criterion (|ad - fd| / max(|ad|, |fd|) > rtol,
which the JSON's `rel_error` still reports) flags them; the 3x-wrong one must fail.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

TRIPLE = textwrap.dedent(
    '''
    """A Dense-like layer whose custom gradient is 3x the true one (test-only)."""
    import keras
    import tensorflow as tf


    @keras.saving.register_keras_serializable(package="gradcli_test_check")
    class TripleGradDense(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.kernel = self.add_weight(
                shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
            )

        def call(self, x):
            @tf.custom_gradient
            def matmul(a, b):
                def grad(dy):
                    return (
                        3.0 * tf.matmul(dy, b, transpose_b=True),
                        3.0 * tf.matmul(a, dy, transpose_a=True),
                    )

                return tf.matmul(a, b), grad

            return matmul(x, tf.convert_to_tensor(self.kernel))

        def get_config(self):
            return {**super().get_config(), "units": self.units}
    '''
)


@pytest.fixture(scope="session")
def check_models(tmp_path_factory):
    import importlib.util

    import keras
    from keras import layers

    d = tmp_path_factory.mktemp("check_models")
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)

    # BatchNorm + ReLU + MaxPool; 4x4 blocks of equal pixels tie in the pooling windows
    inp = keras.Input((8, 8, 2), name="image")
    h = inp
    for filters in (4, 4):
        h = layers.Conv2D(filters, 3, padding="same")(h)
        h = layers.BatchNormalization()(h)
        h = layers.ReLU()(h)
        h = layers.MaxPooling2D(2)(h)
    out = layers.Dense(3)(layers.Flatten()(h))
    cnn = keras.Model(inp, out)
    cnn.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.round(rng.random((48, 2, 2, 2)) * 4) / 4
    x = np.repeat(np.repeat(x, 4, 1), 4, 2).astype("float32")
    y = rng.integers(0, 3, 48)
    cnn.fit(x, y, epochs=3, batch_size=16, verbose=0)
    cnn.save(d / "cnn.keras")
    cnn.save(d / "cnn.h5")
    np.save(d / "cnn_x.npy", x[:24])
    np.save(d / "cnn_y.npy", y[:24])

    # deep residual dilated 1-D CNN with small weights: 44 tensors, tiny derivatives
    inp = keras.Input((48, 4))
    h = layers.Conv1D(8, 1)(inp)
    small = keras.initializers.RandomNormal(stddev=0.02)
    for k in range(10):
        r = layers.BatchNormalization()(h)
        r = layers.ReLU()(r)
        r = layers.Conv1D(
            8, 3, dilation_rate=2 ** (k % 4), padding="same", kernel_initializer=small
        )(r)
        r = layers.MaxPooling1D(3, strides=1, padding="same")(r)
        h = layers.Add()([h, r])
    head = keras.initializers.RandomNormal(stddev=1e-3)
    out = layers.Dense(1, activation="sigmoid", kernel_initializer=head)(
        layers.GlobalAveragePooling1D()(h)
    )
    res = keras.Model(inp, out)
    res.compile("adam", "binary_crossentropy")
    xs = np.eye(4, dtype="float32")[rng.integers(0, 4, (96, 48))]  # one-hot "DNA"
    ys = rng.integers(0, 2, (96, 1)).astype("float32")
    res.fit(xs, ys, epochs=1, batch_size=32, verbose=0)
    res.save(d / "res.keras")
    np.save(d / "res_x.npy", xs)
    np.save(d / "res_y.npy", ys)

    # a custom layer whose gradient is 3x wrong, registered by a module given to --import
    module = d / "triple_grad.py"
    module.write_text(TRIPLE)
    spec = importlib.util.spec_from_file_location("gradcli_test_triple_grad", module)
    triple = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(triple)
    inp = keras.Input((6,))
    out = triple.TripleGradDense(3)(layers.Dense(8, activation="tanh")(inp))
    keras.Model(inp, out).save(d / "triple.keras")
    np.save(d / "triple_x.npy", rng.standard_normal((16, 6)).astype("float32"))
    return d


def _reference_directional(model, x, y, loss, wrt, seed, directions, n=None):
    """<g, v> for the directions `check` draws, g from a plain float32 GradientTape."""
    import tensorflow as tf

    n = len(x) if n is None else n
    x = tf.constant(x[:n])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
        o = loss(out) if y is None else loss(y[:n], out)
        total = tf.reduce_mean(o)
    sources = [x] if wrt == "input" else model.trainable_variables
    grads = [g.numpy().astype(np.float64) for g in tape.gradient(total, sources)]
    rng = np.random.default_rng(seed)
    result = []
    for g in grads:
        row = []
        for _ in range(directions):
            v = rng.standard_normal(g.shape)
            v /= np.linalg.norm(v)
            row.append(float(np.sum(g * v)))
        result.append(row)
    return result


def _old_criterion_flags(rec: dict) -> list[str]:
    """The rows the previous criterion (relative error alone) would have failed."""
    return [
        t["name"]
        for t in rec["tensors"]
        if t["rel_error"] is not None and t["rel_error"] > rec["rtol"]
    ]


@pytest.mark.parametrize("name", ["cnn.keras", "cnn.h5"])
@pytest.mark.parametrize("wrt", ["weights", "input"])
def test_check_passes_a_healthy_relu_maxpool_cnn(cli, check_models, name, wrt):
    import keras

    d = check_models
    r = cli("check", d / name, d / "cnn_x.npy", "--target", d / "cnn_y.npy", "--wrt", wrt, "--json")
    assert r.code == 0, r.out + r.err
    rec = json.loads(r.out)
    assert rec["precision"] == "float64"
    assert rec["gates"] == []
    assert {t["status"] for t in rec["tensors"]} == {"ok"}
    for t in rec["tensors"]:
        # the allowance is the FD error estimate plus rtol, and the error stays within it
        for a, f, e in zip(t["autodiff"], t["finite_diff"], t["fd_error"], strict=True):
            assert e >= 0 and np.isfinite(e)
            assert t["error_ratio"] <= 1.0
            if not t.get("rechecks"):
                assert abs(a - f) <= rec["rtol"] * max(abs(a), abs(f)) + e
    # the autodiff side is the model's true gradient: an independent tape agrees
    model = keras.saving.load_model(d / "cnn.keras")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    ref = _reference_directional(
        model,
        np.load(d / "cnn_x.npy"),
        np.load(d / "cnn_y.npy"),
        loss,
        wrt,
        0,
        3,
        rec.get("samples"),
    )
    assert rec.get("samples") == (16 if wrt == "weights" else None)
    for t, expected in zip(rec["tensors"], ref, strict=True):
        np.testing.assert_allclose(t["autodiff"], expected, rtol=2e-3, atol=1e-7)
    if wrt == "input" and name == "cnn.keras":
        # the ties sit exactly on max-pool kinks: relative error alone says "mismatch"
        assert _old_criterion_flags(rec) == ["image"]
        assert any(t.get("rechecks") for t in rec["tensors"])


def test_check_passes_a_deep_residual_cnn_with_tiny_derivatives(cli, check_models):
    import keras

    d = check_models
    r = cli(
        "check",
        d / "res.keras",
        d / "res_x.npy",
        "--target",
        d / "res_y.npy",
        "--wrt",
        "weights",
        "--json",
    )
    assert r.code == 0, r.out + r.err
    rec = json.loads(r.out)
    assert len(rec["tensors"]) == 44
    assert rec["gates"] == [] and {t["status"] for t in rec["tensors"]} == {"ok"}
    # 96 samples given, the weights check uses the first 16 and says so
    assert rec["n"] == 96 and rec["samples"] == 16
    tiny = [abs(a) for t in rec["tensors"] for a in t["autodiff"]]
    assert min(tiny) < 1e-7
    # relative error alone would fail rows that are only finite-difference noise and kinks
    assert len(_old_criterion_flags(rec)) >= 3
    model = keras.saving.load_model(d / "res.keras")
    loss = keras.losses.BinaryCrossentropy(reduction=None)
    ref = _reference_directional(
        model, np.load(d / "res_x.npy"), np.load(d / "res_y.npy"), loss, "weights", 0, 3, n=16
    )
    for t, expected in zip(rec["tensors"], ref, strict=True):
        np.testing.assert_allclose(t["autodiff"], expected, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("wrt", ["weights", "input"])
def test_check_fails_a_three_times_wrong_custom_gradient(cli, check_models, wrt):
    d = check_models
    r = cli(
        "check",
        d / "triple.keras",
        d / "triple_x.npy",
        "--import",
        d / "triple_grad.py",
        "--wrt",
        wrt,
        "--json",
    )
    assert r.code == 1, r.out + r.err
    rec = json.loads(r.out)
    assert rec["precision"] == "float64" and rec["gates"] == ["mismatch"]
    # every gradient flows back through the 3x layer: every row fails, at every step
    for t in rec["tensors"]:
        assert t["status"] == "mismatch" and t["tripped"]
        np.testing.assert_allclose(
            np.array(t["autodiff"]) / np.array(t["finite_diff"]), 3.0, rtol=1e-4
        )
        assert t["error_ratio"] > 100
        for tries in t["rechecks"]:
            assert [r_["where"] for r_ in tries] == ["point", "jittered"]
            for r_ in tries:
                assert r_["autodiff"] / r_["finite_diff"] == pytest.approx(3.0, rel=1e-3)


def test_check_table_shows_the_error_estimate(cli, check_models):
    d = check_models
    r = cli("check", d / "triple.keras", d / "triple_x.npy", "--import", d / "triple_grad.py")
    assert r.code == 1
    assert "fd error" in r.out and "ratio" in r.out and "mismatch" in r.out


def test_check_reports_progress_per_direction(check_models):
    from gradcli.commands import COMMANDS
    from gradcli.process import supervisor

    d = check_models
    events: list[dict] = []
    job = COMMANDS["check"].job(
        model=str(d / "cnn.keras"),
        input=str(d / "cnn_x.npy"),
        target=str(d / "cnn_y.npy"),
        wrt="weights",
        directions=2,
    )
    outcome = supervisor.run_inprocess(
        job, debug=False, on_record=lambda rec: None, on_progress=events.append
    )
    assert outcome.exit_code == 0
    rows = len(outcome.records[0]["tensors"])
    assert {e["total"] for e in events} == {2 * rows}
    done = [e["done"] for e in events]
    assert done == list(range(1, 2 * rows + 1))


def test_check_with_a_nan_is_a_mismatch_and_valid_json(cli, check_models, tmp_path):
    d = check_models
    x = np.load(d / "triple_x.npy")[:4]
    x[1, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    r = cli(
        "check", d / "triple.keras", tmp_path / "x.npy", "--import", d / "triple_grad.py", "--json"
    )
    assert r.code == 1, r.err
    rec = json.loads(r.out)  # strict JSON: NaN became null
    t = rec["tensors"][0]
    assert t["status"] == "mismatch" and t["tripped"]
    assert t["rel_error"] is None and t["error_ratio"] is None
    assert t["finite_diff"] == [None, None, None]
