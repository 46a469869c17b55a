"""The loader table: which strategy claims which path, what each handle can do, and the one
place that decides a path's format. Real files of every kind, no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradcli.commands import cli_flags
from gradcli.errors import ModelError, UsageError, render
from gradcli.io.modelfiles import Loader, ModelFormat, model_format


@pytest.fixture(scope="session")
def kinds(tmp_path_factory, keras, tf):
    """One small real model of each kind gradcli loads, with the strategy that must claim it."""
    d = tmp_path_factory.mktemp("kinds")
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, activation="tanh", name="dense")(inp))
    model.compile(loss="mse")
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    model.export(str(d / "export"), verbose=False)

    import tf_keras

    tfk = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2, name="d")])
    tfk.compile(loss="mse")
    tfk.save(str(d / "tfk_saved"), save_format="tf")

    class Affine(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2) / 10)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def serve(self, x):
            return tf.tanh(x @ self.w)

    tf.saved_model.save(Affine(), str(d / "module"))
    return {
        "dir": d,
        "model": model,
        "cases": {
            # path: (format, strategy name, loader, handle class name)
            d / "m.keras": (ModelFormat.KERAS, "keras archive", Loader.KERAS, "KerasHandle"),
            d / "m.h5": (
                ModelFormat.H5,
                "legacy HDF5",
                Loader.KERAS_NO_COMPILE,  # Keras 3 cannot read the .h5's compile config
                "KerasHandle",
            ),
            d / "tfk_saved": (
                ModelFormat.SAVEDMODEL,
                "tf.keras 2 SavedModel",
                Loader.TF_KERAS,
                "KerasHandle",
            ),
            d / "export": (
                ModelFormat.SAVEDMODEL,
                "serving SavedModel",
                Loader.TF_SAVED_MODEL,
                "ServingHandle",
            ),
            d / "module": (
                ModelFormat.SAVEDMODEL,
                "serving SavedModel",
                Loader.TF_SAVED_MODEL,
                "ServingHandle",
            ),
        },
    }


def test_each_path_is_claimed_by_its_strategy_and_loaded_as_it_says(kinds):
    from gradcli.load.loaders import STRATEGIES, load_model, strategy_for

    for path, (fmt, name, loader, handle_class) in kinds["cases"].items():
        assert model_format(path) is fmt, path
        strategy = strategy_for(path)
        assert (strategy.name, strategy.format) == (name, fmt), path
        # the first claiming strategy in table order is the one used
        assert strategy is next(s for s in STRATEGIES if s.format is fmt and s.claims(path))
        handle = load_model(path)
        assert type(handle).__name__ == handle_class == strategy.handle.__name__, path
        assert handle.loader == loader and handle.format == fmt, path
        # what info and JSON show: exactly the old strings
        record = json.loads(json.dumps({"format": handle.format, "loader": handle.loader}))
        assert record == {"format": fmt.value, "loader": loader.value}
        assert f"{handle.loader}" == loader.value


def test_loader_and_format_names_are_the_documented_strings():
    assert [x.value for x in ModelFormat] == ["keras", "h5", "savedmodel"]
    assert [x.value for x in Loader] == [
        "keras",
        "keras (compile config skipped)",
        "tf_keras",
        "tf_keras (Keras 3 misreads this file's input shape)",
        "tf.saved_model",
    ]


def test_capabilities_of_each_handle_kind(kinds, tf):
    """has_layers / supports_training say what a handle can do, and the handles keep to it;
    the call of every kind gives the same gradient as the Keras model itself."""
    from gradcli.engine.batched import GradientEngine
    from gradcli.engine.objective import build_objective
    from gradcli.load.handles import ModelHandle
    from gradcli.load.loaders import load_model

    d = kinds["dir"]
    keras_handle = load_model(d / "m.keras")
    serving = load_model(d / "export")
    summary = load_model(d / "export", describe_only=True)
    assert (keras_handle.has_layers, keras_handle.supports_training) == (True, True)
    assert (serving.has_layers, serving.supports_training) == (False, False)
    assert (summary.has_layers, summary.supports_training) == (False, False)
    assert type(summary).__name__ == "SavedModelSummary" and summary.loader == "tf.saved_model"

    assert [r.path for r in keras_handle.layers] == ["x", "dense"]
    assert keras_handle.find_layer("dense").class_name == "Dense"
    for layerless in (serving, summary):
        assert layerless.layers == []
        with pytest.raises(ModelError, match="has no layers, so wrt-layer cannot work on it"):
            layerless.find_layer("dense")
    objective = build_objective(serving, output=None, class_index=None, loss=None)
    with pytest.raises(UsageError, match="needs a Keras model"):
        GradientEngine(serving, objective, wrt_inputs=True, training=True)
    with pytest.raises(TypeError):
        ModelHandle()  # an abstract base: only the kinds above exist

    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    reference = kinds["model"]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = tf.reduce_sum(reference(xt))
    expected = tape.gradient(y, xt).numpy()
    for handle in (keras_handle, serving, load_model(d / "m.h5")):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = tf.reduce_sum(handle.call([xt])[0])
        np.testing.assert_allclose(tape.gradient(y, xt).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_format_is_decided_in_one_place(tmp_path, kinds):
    """check_model_path, find_models and load_model agree with formats.model_format."""
    from gradcli.io.paths import check_model_path, find_models
    from gradcli.load.loaders import load_model

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "empty_dir").mkdir()
    (tree / "notes.txt").write_text("not a model")
    (tree / "sub" / "w.HDF5").write_bytes((kinds["dir"] / "m.h5").read_bytes())
    (tree / "a.keras").write_bytes((kinds["dir"] / "m.keras").read_bytes())
    saved = tree / "sub" / "saved"
    saved.mkdir()
    pb = (kinds["dir"] / "module" / "saved_model.pb").read_bytes()
    (saved / "saved_model.pb").write_bytes(pb)
    expected = {
        tree / "a.keras": ModelFormat.KERAS,
        tree / "sub" / "w.HDF5": ModelFormat.H5,
        saved: ModelFormat.SAVEDMODEL,
        tree / "notes.txt": None,
        tree / "empty_dir": None,
    }
    for path, fmt in expected.items():
        assert model_format(path) is fmt, path
    assert find_models(tree) == sorted(p for p, f in expected.items() if f is not None)

    with pytest.raises(ModelError) as light:
        check_model_path(str(tree / "notes.txt"))
    with pytest.raises(ModelError) as loader:
        load_model(tree / "notes.txt")
    assert str(light.value) == str(loader.value)
    assert "unknown model format '.txt'; expected .keras, .h5, .hdf5 or a SavedModel" in str(
        light.value
    )
    with pytest.raises(ModelError, match="a directory without saved_model.pb is not a"):
        load_model(tree / "empty_dir")
    # a wrong file type is refused by the strategy's validation, even with unsafe=True
    (tree / "fake.h5").write_bytes(b"PK\x03\x04 not hdf5")
    with pytest.raises(ModelError, match="not an HDF5 file"):
        load_model(tree / "fake.h5", unsafe=True)


def test_refusals_name_parameters_for_python_and_flags_for_the_cli(tmp_path, keras):
    """A safe-mode refusal says `unsafe=` to a Python caller and `--unsafe` on the CLI."""
    from gradcli.load.loaders import load_model

    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp))
    model.save(tmp_path / "code.keras")
    with pytest.raises(ModelError) as caught:
        load_model(tmp_path / "code.keras")
    assert "rerun with unsafe= if you trust this file" in str(caught.value)
    assert "rerun with --unsafe if you trust this file" in render(caught.value, cli_flags())
    handle = load_model(tmp_path / "code.keras", unsafe=True)
    np.testing.assert_allclose(handle.call([np.ones((1, 2), np.float32)])[0], [[2.0, 2.0]])


def test_light_modules_import_neither_tensorflow_nor_numpy():
    code = (
        "import sys, gradcli.io.paths, gradcli.io.modelfiles\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.strip() == "[]"


def test_the_table_covers_every_format_and_every_handle_states_its_capabilities():
    """Each format ends with a strategy that claims all its remaining paths (so a path of a
    known format always finds a loader), and every handle class says what it can do."""
    from gradcli.load.handles import KerasHandle, ModelHandle
    from gradcli.load.loaders import STRATEGIES
    from gradcli.load.savedmodels import SavedModelSummary, ServingHandle

    for fmt in ModelFormat:
        mine = [s for s in STRATEGIES if s.format is fmt]
        assert mine, fmt
        assert mine[-1].claims(Path("/no/such/model")), fmt
        for s in mine:
            assert s.steps and len({step.name for step in s.steps}) == len(s.steps), s.name
            assert issubclass(s.handle, ModelHandle)
    capabilities = {
        cls: (cls.has_layers, cls.supports_training)
        for cls in (KerasHandle, ServingHandle, SavedModelSummary)
    }
    assert capabilities == {
        KerasHandle: (True, True),
        ServingHandle: (False, False),
        SavedModelSummary: (False, False),
    }
