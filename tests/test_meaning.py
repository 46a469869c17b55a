"""What a user means: no silent constant objective, `vanishing` gradients, the default CAM
layer, and the README's first one-liner giving a real map on the demo CNN."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, load, run_process


@pytest.fixture(scope="module")
def probs(tmp_path_factory, keras):
    """Classifiers whose outputs are distributions: a softmax Dense, a Softmax layer, a
    sigmoid pair [p, 1 - p] (only its values tell), a model.export of the first; a
    saturated one (logits x 10); and a two-output model with one softmax head."""
    keras.utils.set_random_seed(11)
    d = tmp_path_factory.mktemp("probs")
    base = keras.saving.load_model(SAMPLES / "shapes_cnn.keras")
    w, b = base.get_layer("logits").get_weights()
    x = keras.Input((28, 28, 1), name="image")
    h = x
    for layer in base.layers[1:-1]:
        h = layer(h)

    def head(name, scale=1.0, activation="softmax"):
        dense = keras.layers.Dense(3, activation=activation, name=name)
        dense.build((None, 32))
        dense.set_weights([w * scale, b * scale])
        return dense(h)

    m = {"dir": d}
    softmax = keras.Model(x, head("probs"))
    softmax.save(d / "softmax.keras")
    softmax.export(str(d / "softmax_export"), verbose=False)
    keras.Model(x, keras.layers.Softmax(name="sm")(head("z", activation=None))).save(
        d / "softmax_layer.keras"
    )
    p = keras.layers.Dense(1, activation="sigmoid", name="p")(h)
    pair = keras.layers.Concatenate(name="pair")([p, keras.layers.Rescaling(-1.0, 1.0)(p)])
    keras.Model(x, pair).save(d / "sigmoid_pair.keras")
    keras.Model(x, head("probs", scale=10.0)).save(d / "saturated.keras")
    two = keras.Model(
        x, {"probs2": head("probs2"), "score": keras.layers.Dense(1, name="score")(h)}
    )
    two.save(d / "two_heads.keras")
    for name in ("softmax", "softmax_export", "softmax_layer", "sigmoid_pair", "saturated"):
        m[name] = d / (name if name.endswith("export") else f"{name}.keras")
    m["two_heads"] = d / "two_heads.keras"
    return m


X = SAMPLES / "shapes_x.npy"
Y = SAMPLES / "shapes_y.npy"


# ------------------------------------------------------------------ the constant objective


@pytest.mark.parametrize(
    "case, command, why",
    [
        ("softmax", "wrt-input", "'probs', a softmax (layer 'probs')"),
        ("softmax", "wrt-weights", "'probs', a softmax (layer 'probs')"),
        ("softmax_layer", "wrt-layer", "'sm', a softmax (layer 'sm')"),
        ("sigmoid_pair", "wrt-input", "whose values sum to 1 over its last axis"),
        ("softmax_export", "wrt-input", "whose values sum to 1 over its last axis"),
    ],
)
def test_sum_of_a_softmax_is_refused_through_a_real_process(probs, tmp_path, case, command, why):
    out = tmp_path / "g.npz"
    layer = ["--layer", "conv2"] if command == "wrt-layer" else []
    r = run_process(command, probs[case], X, *layer, "-o", out)
    assert r.code == 2, r.err
    assert r.err.startswith("error: the objective would be the sum of output ") and why in r.err
    for hint in ("--class pred", "--class K", "--class LABELS.npy", "--target LABELS"):
        assert hint in r.err
    assert ("--logits" in r.err) == (case in ("softmax", "softmax_layer"))
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert r.out == "" and not out.exists()


def test_check_refuses_it_too_and_a_class_or_target_passes(cli, probs):
    r = cli("check", probs["softmax"], X)
    assert r.code == 2 and "--class pred" in r.err
    for args in (["--class", "pred"], ["--target", Y, "--loss", "sparse_categorical_crossentropy"]):
        r = cli("wrt-input", probs["softmax"], X, *args, "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["tensors"][0]["status"] == "ok"


def test_a_softmax_among_other_outputs_is_a_note(cli, probs):
    r = cli("wrt-input", probs["two_heads"], X, "--json")
    assert r.code == 0, r.err
    assert "note: the objective sums every output, and output 'probs2', a softmax" in r.err
    assert json.loads(r.out)["notes"]


# ------------------------------------------------------------------ vanishing


@pytest.mark.parametrize(
    "args, rows",
    [
        (["wrt-input"], ["image"]),
        (["wrt-input", "-m", "gradcam"], ["image", "cam@pool2"]),
        (["wrt-layer", "--layer", "conv2"], ["conv2"]),
        (["wrt-weights"], None),
    ],
)
def test_vanishing_trips_on_a_saturated_model_not_on_a_healthy_one(cli, probs, args, rows):
    command, *rest = args
    r = cli(command, probs["saturated"], X, *rest, "--class", "pred", "--json",
            "--fail-on", "vanishing")  # fmt: skip
    assert r.code == 1, r.err
    rec = json.loads(r.out)
    assert rec["gates"] == ["vanishing"]
    statuses = {t["name"]: t["status"] for t in rec["tensors"]}
    assert set(statuses.values()) == {"vanishing"}
    assert rows is None or sorted(statuses) == sorted(rows)
    assert all(t["sensitivity"] < 1.2e-4 for t in rec["tensors"])
    assert "vanishing: the gradient is at float-noise level" in r.err and "--logits" in r.err
    # the same model's logits, and the healthy sample CNN, are ok
    for model, extra in ((probs["saturated"], ["--logits"]), (SAMPLES / "shapes_cnn.keras", [])):
        r = cli(command, model, X, *rest, "--class", "pred", *extra, "--json",
                "--fail-on", "vanishing")  # fmt: skip
        assert r.code == 0, r.err
        rec = json.loads(r.out)
        assert {t["status"] for t in rec["tensors"]} == {"ok"}
        assert min(t["sensitivity"] for t in rec["tensors"]) > 1e-3


def test_vanishing_is_only_a_gate_when_asked(cli, probs):
    r = cli("wrt-input", probs["saturated"], X, "--class", "pred", "--json")
    assert r.code == 0
    assert json.loads(r.out)["tensors"][0]["status"] == "vanishing"


def test_sensitivity_gives_no_verdict_on_a_zero_tensor():
    from gradcli.engine.sensitivity import Sensitivity
    from gradcli.present.figures import TensorStats

    s = Sensitivity()
    s.add_objective(np.ones(4, np.float32))
    s.add(("input", 0), 1e-30, 0.0)  # an all-zero input: no verdict
    s.add(("input", 1), 1e-30, 4.0)
    assert s.share(("input", 0)) is None
    stats = TensorStats("x")
    s.apply(stats, s.share(("input", 1)))
    assert stats.vanishing and stats.extra["sensitivity"] == pytest.approx(0.5e-15)


# ------------------------------------------------------------------ the default CAM layer


def test_default_cam_layer_is_more_than_1x1(cli, keras, tmp_path):
    """MobileNetV3Small (random weights, 32x32) ends in 1x1 convolutions after pooling:
    its `logits` conv gave a constant map; the default is now the last map above 1x1."""
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, minimalistic=True, classes=4,
        include_preprocessing=False,
    )  # fmt: skip
    model.save(tmp_path / "mnv3.keras")
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("wrt-input", tmp_path / "mnv3.keras", tmp_path / "x.npy", "-m", "gradcam",
            "--class", "0", "--logits", "--json")  # fmt: skip
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    layer = rec["cam"]["layer"]
    assert rec["cam"]["default"] and layer != "logits" and "pad" not in layer
    spatial = next(t["shape"][1:] for t in rec["tensors"] if t["name"] == f"cam@{layer}")
    assert max(spatial) > 1
    after = [ly.name for ly in model.layers][[ly.name for ly in model.layers].index(layer) + 1 :]
    assert all(
        len(model.get_layer(n).output.shape) != 4 or max(model.get_layer(n).output.shape[1:3]) <= 1
        for n in after
        if not n.endswith("_pad")
    )


def test_a_cam_of_the_loss_says_so(cli):
    r = cli("wrt-input", SAMPLES / "shapes_cnn.keras", X, "--target", Y, "-m", "gradcam")
    assert r.code == 0, r.err
    assert "note: with --target a CAM explains the loss" in r.err
    assert "--class LABELS.npy" in r.err


# ------------------------------------------------------------------ the README's tagline


def test_the_readme_first_one_liner_gives_a_real_map_on_the_demo_cnn(cli, tmp_path):
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"```\n(gradcli [^\n]+)\n```", readme).group(1)
    args = shlex.split(line)[1:]
    swap = {"model.keras": SAMPLES / "shapes_cnn.keras", "images.npy": X}
    args = [str(swap.get(a, a)) for a in args]
    png = args.index("--png") + 1
    args[png] = str(tmp_path / args[png])
    r = cli(*args, "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    row = rec["tensors"][0]
    assert row["status"] == "ok" and row["sensitivity"] > 0.1 and row["l2"] > 1.0
    assert len(rec["png"]) == 16
    g = np.load(X)  # the map's panel is not blank: bright pixels where the shapes are
    from matplotlib.image import imread

    panel = imread(rec["png"][0])[40:280, 310:560, :3]
    assert panel.max() > 0.9 and panel.mean() < 0.5 and g.shape[0] == 16


def test_reference_gradient_of_the_tagline(cli, tf, tmp_path):
    """--class pred on the demo CNN against a plain tape of each image's top logit."""
    out = tmp_path / "g.npz"
    r = cli("wrt-input", SAMPLES / "shapes_cnn.keras", X, "--class", "pred", "-o", out)
    assert r.code == 0, r.err
    model = load(SAMPLES / "shapes_cnn.keras")
    x = tf.constant(np.load(X))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=False)
        total = tf.reduce_sum(tf.reduce_max(y, axis=1))
    with np.load(out) as got:
        np.testing.assert_allclose(got["image"], tape.gradient(total, x).numpy(), atol=1e-6)
