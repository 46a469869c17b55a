"""Every model format loads; bad models and arrays get exit 3 and one line, never a traceback."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from conftest import SAMPLES


def _info(cli, path):
    r = cli("info", path, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_info_keras_functional_multi_io(cli, models):
    info = _info(cli, models["two_io"])
    assert info["format"] == "keras"
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == [("a", [4]), ("b", [3])]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [("cls", [3]), ("reg", [1])]
    assert "sparse_categorical_crossentropy" in info["loss"] and "0.5" in info["loss"]
    names = [layer["name"] for layer in info["layers"]]
    assert names[:4] == ["a", "b", "concat", "trunk"]
    assert info["layers"][3]["params"] == 8 * 7 + 8


def test_info_sequential_without_input(cli, models):
    info = _info(cli, models["seqni"])
    assert [layer["name"] for layer in info["layers"]] == ["d1", "d2", "d3"]
    assert [layer["index"] for layer in info["layers"]] == [0, 1, 2]
    assert info["inputs"][0]["shape"] == [5]
    assert info["outputs"][0]["shape"] == [4]
    assert info["layers"][1]["output_shape"] == "(N, 6)"


def test_info_nested_paths(cli, models):
    info = _info(cli, models["nested"])
    rows = {layer["name"]: layer for layer in info["layers"]}
    assert "block/inner/deep" in rows and "block/post" in rows
    assert rows["block/inner/deep"]["index"] is None
    assert rows["block"]["index"] == 2
    assert rows["block/inner/deep"]["params"] == 6 * 6 + 6


def test_info_legacy_h5_with_string_loss(cli, models):
    info = _info(cli, models["legacy_h5"])
    assert info["format"] == "h5"
    assert info["loss"] == "mse"
    assert "training_config" in info["loss_note"]
    assert [layer["name"] for layer in info["layers"]] == ["h1", "h2"]


def test_info_savedmodel_export(cli, models):
    info = _info(cli, models["linear_export"])
    assert info["format"] == "savedmodel"
    assert info["endpoint"] == "serve"
    assert info["inputs"][0]["shape"] == [5]
    assert info["outputs"][0]["shape"] == [3]
    assert info["loss"] == "unknown"
    assert info["layers"] == []


def test_info_table(cli, models):
    r = cli("info", models["nested"])
    assert r.code == 0
    assert "block/inner/deep" in r.out
    assert "compiled loss: mean_squared_error" in r.out or "compiled loss: mse" in r.out


def test_info_directory_lists_every_model_sorted(cli):
    r = cli("info", SAMPLES / "checkpoints", "--json")
    assert r.code == 0
    lines = [json.loads(line) for line in r.out.splitlines()]
    assert [rec["model"].rsplit("/", 1)[-1] for rec in lines] == [
        "epoch_00.keras",
        "epoch_02.keras",
        "epoch_10.keras",
    ]


@pytest.fixture
def bad_models(tmp_path, models):
    good = models["linear"].read_bytes()
    (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(2000))
    (tmp_path / "truncated.keras").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (tmp_path / "model.txt").write_text("hello")
    (tmp_path / "notsaved").mkdir()
    (tmp_path / "notsaved" / "saved_model.pb").write_bytes(b"garbage")
    return tmp_path


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("random.keras", "not a .keras archive"),
        ("truncated.keras", "a damaged .keras archive, truncated or corrupt"),
        ("random.h5", "cannot load"),
        ("model.txt", "unknown model format"),
        ("notsaved", "cannot load the SavedModel"),
    ],
)
def test_bad_model_files_exit_3(cli, bad_models, name, fragment):
    r = cli("info", bad_models / name)
    assert r.code == 3, r.err
    line = r.err.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert fragment in line
    assert "Traceback" not in r.err


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/gradcli-pickle-ran",))


@pytest.fixture
def bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ok.npy", rng.normal(size=(3, 5)).astype(np.float32))
    np.save(tmp_path / "wrong_shape.npy", np.zeros((3, 6), np.float32))
    np.save(tmp_path / "wrong_rank.npy", np.zeros((3, 5, 1), np.float32))
    np.save(tmp_path / "strings.npy", np.array([["a"] * 5] * 3))
    np.save(tmp_path / "zero.npy", np.zeros((0, 5), np.float32))
    np.save(tmp_path / "pickled.npy", np.array([Boom()], dtype=object), allow_pickle=True)
    np.save(tmp_path / "scalar.npy", np.float32(1))
    (tmp_path / "random.npy").write_bytes(rng.bytes(500))
    full = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(full[:-20])
    np.savez(
        tmp_path / "missing_key.npz",
        other=np.zeros((3, 5), np.float32),
        more=np.zeros((3, 5), np.float32),
    )
    np.savez(tmp_path / "pickled.npz", x=np.array([Boom()], dtype=object))
    np.save(tmp_path / "ints.npy", np.arange(15).reshape(3, 5))
    np.save(tmp_path / "bools.npy", np.ones((3, 5), bool))
    return tmp_path


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("wrong_shape.npy", "expected shape (N, 5) for input 'x', got (3, 6)"),
        ("wrong_rank.npy", "expected shape (N, 5) for input 'x', got (3, 5, 1)"),
        ("strings.npy", "holds strings"),
        ("zero.npy", "has 0 samples"),
        ("pickled.npy", "never unpickles"),
        ("pickled.npz", "never unpickles"),
        ("scalar.npy", "is a scalar"),
        ("random.npy", "not a .npy file"),
        ("truncated.npy", "truncated"),
        ("missing_key.npz", "no array for 'x'"),
        ("missing.npy", "no such file"),
    ],
)
def test_bad_inputs_exit_3_with_one_line(cli, models, bad_inputs, name, fragment):
    marker = "/tmp/gradcli-pickle-ran"
    import os

    if os.path.exists(marker):
        os.remove(marker)
    r = cli("wrt-input", models["linear"], bad_inputs / name)
    assert r.code == 3, (r.code, r.err)
    line = r.err.strip()
    assert "\n" not in line, r.err
    assert line.startswith("error: ")
    assert fragment in line
    assert not os.path.exists(marker), "the pickle payload ran"


def test_integer_and_bool_inputs_are_cast(cli, models, bad_inputs):
    from conftest import load

    model = load(models["linear"])
    kernel = model.get_layer("dense").kernel.numpy()
    for name in ("ints.npy", "bools.npy"):
        r = cli("wrt-input", models["linear"], bad_inputs / name, "-o", bad_inputs / f"{name}.npz")
        assert r.code == 0, r.err
        g = np.load(bad_inputs / f"{name}.npz")["x"]
        np.testing.assert_allclose(g, np.tile(kernel.sum(axis=1), (3, 1)), rtol=1e-6)


def test_target_sample_count_must_match(cli, models, tmp_path):
    np.save(tmp_path / "y.npy", np.zeros((4, 3), np.float32))
    r = cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "--target", tmp_path / "y.npy")
    assert r.code == 3
    assert "has 4 samples, but the input has 7" in r.err


def test_unknown_compiled_loss_needs_loss(cli, models):
    r = cli(
        "wrt-input",
        models["linear_export"],
        models["dir"] / "x5.npy",
        "--target",
        models["dir"] / "y3.npy",
    )
    assert r.code == 2
    assert "--loss" in r.err


def test_pickle_payload_module_never_ran():
    import os

    assert not os.path.exists("/tmp/gradcli-pickle-ran")
    assert pickle  # the payload class above is what np.save pickled


def test_lambda_layer_needs_unsafe(cli, keras, tmp_path):
    inp = keras.Input((3,), name="x")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp))
    model.save(tmp_path / "lambda.keras")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    r = cli("wrt-input", tmp_path / "lambda.keras", tmp_path / "x.npy")
    assert r.code == 3
    assert "--unsafe" in r.err and "\n" not in r.err.strip()
    out = tmp_path / "g.npz"
    r = cli("wrt-input", tmp_path / "lambda.keras", tmp_path / "x.npy", "--unsafe", "-o", out)
    assert r.code == 0, r.err
    np.testing.assert_allclose(np.load(out)["x"], np.full((2, 3), 2.0))


def test_gradcli_debug_env_shows_the_traceback(cli, models, bad_inputs, monkeypatch):
    r = cli("wrt-input", models["linear"], bad_inputs / "wrong_shape.npy")
    assert r.code == 3 and "Traceback" not in r.err
    monkeypatch.setenv("GRADCLI_DEBUG", "1")
    r = cli("wrt-input", models["linear"], bad_inputs / "wrong_shape.npy")
    assert r.code == 3
    assert "Traceback" in r.err and r.err.strip().endswith("got (3, 6)")
