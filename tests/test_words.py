"""Messages and codes in gradcli's words: damaged archives, packages to --import, option
values that do not fit the model, --png names, help text, the progress bar, token inputs."""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pytest

from conftest import SAMPLES, run_process

CNN = SAMPLES / "shapes_cnn.keras"
X = SAMPLES / "shapes_x.npy"


# ------------------------------------------------------------------ damaged archives


def _rewrite(src, dest, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def damaged(tmp_path, kind):
    path = tmp_path / f"{kind}.keras"
    data = CNN.read_bytes()
    if kind == "not_zip":
        path.write_bytes(b"hello, not a zip at all")
    elif kind == "truncated":
        path.write_bytes(data[:3000])
    elif kind == "magic":
        path.write_bytes(b"XX" + data[2:])
    elif kind == "corrupt_member":
        flipped = bytearray(data)
        middle = len(flipped) // 2
        flipped[middle : middle + 64] = bytes(b ^ 0xFF for b in flipped[middle : middle + 64])
        path.write_bytes(bytes(flipped))
    elif kind == "no_config":
        _rewrite(CNN, path, lambda name, d: None if name == "config.json" else d)
    return path


@pytest.mark.parametrize(
    "kind, words",
    [
        ("not_zip", "not a .keras archive (expected a zip file)"),
        ("magic", "not a .keras archive (expected a zip file)"),
        ("truncated", "a damaged .keras archive, truncated or corrupt (File is not a zip"),
        ("corrupt_member", "a damaged .keras archive, corrupt (Bad CRC-32 for file"),
        ("no_config", "not a Keras model archive: it has no config.json"),
    ],
)
def test_damaged_keras_archives_in_gradclis_words(cli, tmp_path, kind, words):
    path = damaged(tmp_path, kind)
    for command in (["info", path], ["wrt-input", path, X]):
        r = cli(*command)
        assert r.code == 3, r.err
        assert r.err.startswith(f"error: {path}: ") and words in r.err
        assert "File not found" not in r.err and "filepath=" not in r.err
        assert r.err.count("\n") == 1


def test_a_registered_package_names_its_import(tmp_path):
    """A config naming classes of a package (as keras_hub models do) says which --import
    loads it; with it, the model loads (real processes: nothing imported beforehand)."""
    (tmp_path / "blocks_i24.py").write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='blocks_i24')\n"
        "class Doubler(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2 * x\n"
    )
    make = (
        "import sys; sys.path.insert(0, {d!r}); import keras, blocks_i24\n"
        "i = keras.Input((4,), name='x')\n"
        "keras.Model(i, keras.layers.Dense(2)(blocks_i24.Doubler()(i))).save({p!r})\n"
    ).format(d=str(tmp_path), p=str(tmp_path / "m.keras"))
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", make], check=True, capture_output=True)
    r = run_process("info", tmp_path / "m.keras")
    assert r.code == 3
    assert "its config names classes of the package 'blocks_i24' (e.g. blocks_i24>Doubler)" in r.err
    assert "rerun with --import blocks_i24" in r.err and r.err.count("\n") == 1
    r = run_process("info", tmp_path / "m.keras", "--import", tmp_path / "blocks_i24.py")
    assert r.code == 0, r.err


# ------------------------------------------------------------------ one rule for codes


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["wrt-layer", CNN, X, "--layer", "conv9"], 2, "--layer conv9: no such layer"),
        (["wrt-layer", CNN, X, "--layer", "40"], 2, "--layer 40: index out of range"),
        (["wrt-input", CNN, X, "-m", "gradcam", "--layer", "nope"], 2, "--layer nope"),
        (["wrt-input", CNN, X, "--output", "nope"], 2, "--output 'nope': no such output"),
        (["wrt-input", CNN, X, "--class", "3"], 2, "--class 3: output 'logits' has shape"),
        (["wrt-input", CNN, X, "--class", "X"], 3, "class 2 (sample"),
        (["wrt-input", CNN, X, "--target", "X"], 3, "label 2 (sample"),
    ],
)
def test_an_option_value_that_does_not_fit_is_2_a_file_is_3(cli, tmp_path, args, code, words):
    bad = tmp_path / "two_classes.npy"
    np.save(bad, np.full(16, 2))
    loss = ["--loss", "sparse_categorical_crossentropy"] if "--target" in args else []
    narrow = tmp_path / "narrow.keras"
    if "X" in args:  # a model with 2 classes, so class/label 2 is out of range
        from gradcli.load.backend import keras

        x = keras.Input((28, 28, 1), name="image")
        h = keras.layers.GlobalAveragePooling2D()(x)
        keras.Model(x, keras.layers.Dense(2, name="logits")(h)).save(narrow)
        args = [narrow if a == CNN else a for a in args]
    r = cli(*[bad if a == "X" else a for a in args], *loss)
    assert r.code == code, r.err
    assert words in r.err and r.err.count("\n") == 1


def test_png_named_like_a_file_is_refused_not_made_a_directory(cli, tmp_path):
    r = cli("wrt-input", CNN, X, "--class", "pred", "--png", tmp_path / "out" / "q.png")
    assert r.code == 2
    assert "looks like a file name; give a directory, e.g. --png" in r.err
    assert not (tmp_path / "out").exists()
    (tmp_path / "maps.png").mkdir()  # an existing directory of that name is a directory
    r = cli("wrt-input", CNN, X, "--class", "pred", "--png", tmp_path / "maps.png",
            "--png-limit", "1")  # fmt: skip
    assert r.code == 0, r.err


def test_png_and_out_make_missing_directories_alike(cli, tmp_path):
    out, png = tmp_path / "a" / "b" / "g.npz", tmp_path / "c" / "d" / "maps"
    r = cli("wrt-input", CNN, X, "--class", "pred", "-o", out, "--png", png, "--png-limit", "1")
    assert r.code == 0, r.err
    assert out.is_file() and sorted(p.name for p in png.iterdir()) == ["image_0000.png"]


def test_png_style_usage(cli):
    r = cli("wrt-input", CNN, X, "-m", "vargrad", "--png-style", "signed", "--png", "maps")
    assert r.code == 2 and "--png-style signed: vargrad is never negative" in r.err
    r = cli("wrt-input", CNN, X, "--png-style", "signed")
    assert r.code == 2 and "--png-style goes with --png" in r.err


# ------------------------------------------------------------------ help and option errors


def test_help_summaries_are_whole_sentences_and_metavars_plain(cli):
    r = cli("--help")
    commands = r.out.split("Commands:")[1]
    assert "..." not in commands
    entries = dict(re.findall(r"^  (\S+) +(.*(?:\n {4,}.*)*)", commands, re.M))
    assert sorted(entries) == sorted(
        [
            "info",
            "wrt-input",
            "wrt-layer",
            "wrt-weights",
            "jacobian",
            "check",
            "hessian",
            "diff",
            "influence",
            "merge",
        ]
    )
    for text in entries.values():  # each a whole first sentence, wrapped, never cut
        assert " ".join(text.split()).endswith(".")
    for command, usage in (
        ("wrt-input", "Usage: gradcli wrt-input [OPTIONS] MODEL INPUT"),
        ("diff", "Usage: gradcli diff [OPTIONS] A B"),
        ("info", "Usage: gradcli info [OPTIONS] MODEL"),
        ("influence", "Usage: gradcli influence [OPTIONS] CHECKPOINTS TRAIN"),
        ("merge", "Usage: gradcli merge [OPTIONS] SHARD.npz..."),
    ):
        text = cli(command, "--help").out
        assert usage in text
        assert "{" not in text and "<str>" not in text and "<int" not in text
        assert "<float" not in text


def test_diff_help_speaks_of_results_not_models():
    r = run_process("diff", "--help")
    assert r.code == 0
    assert "tensorflow" not in r.out.lower() and "model" not in r.out.lower()


@pytest.mark.parametrize(
    "args, words",
    [
        (["-m", "foo"], "'foo' is not one of 'vanilla'"),
        (["--steps", "many"], "Invalid value for '--steps': expected an integer"),
        (["--noise", "lots"], "Invalid value for '--noise': expected a number"),
    ],
)
def test_option_errors_without_pydantic_words(cli, args, words):
    r = cli("wrt-input", CNN, X, *args)
    assert r.code == 2
    assert words in r.err and "Value error" not in r.err and "Input should" not in r.err


def test_progress_bar_names_the_model_not_model_1():
    from rich.console import Console

    from gradcli.cli.progress import ProgressBar

    console = Console(file=open("/dev/null", "w"), force_terminal=True)  # noqa: SIM115
    with ProgressBar(console, enabled=True) as update:
        update({"index": 0, "model": "shapes_cnn.keras", "done": 3, "total": 16})
        update({"index": 1, "model": "a" * 60 + ".keras", "done": 1, "total": 16})
        names = [task.description for task in update.__self__.bar.tasks]
    assert names[0] == "shapes_cnn.keras" and "model 1" not in names
    assert len(names[1]) <= 40 and names[1].endswith(".keras")


# ------------------------------------------------------------------ token inputs


def test_several_integer_inputs_name_the_embedding_first(tmp_path, keras):
    import gradcli
    from gradcli.errors import GradientError

    ids = keras.Input((6,), dtype="int32", name="token_ids")
    mask = keras.Input((6,), dtype="int32", name="padding_mask")
    e = keras.layers.Embedding(50, 8, name="token_embedding")(ids)
    m = keras.layers.Identity(name="mask_in")(mask)
    h = keras.layers.GlobalAveragePooling1D()(e, mask=keras.ops.cast(m, "bool"))
    model = keras.Model({"padding_mask": mask, "token_ids": ids}, keras.layers.Dense(2)(h))
    x = {"token_ids": np.ones((2, 6), np.int32), "padding_mask": np.ones((2, 6), np.int32)}
    for fn in (gradcli.wrt_input, gradcli.jacobian):
        with pytest.raises(GradientError) as info:
            fn(model, x)
        text = str(info.value)
        assert text.startswith("input 'token_ids' holds token ids (it feeds Embedding layer ")
        assert "use `wrt-layer layers=token_embedding`" in text  # parameters as Python names them
        assert text.endswith("the integer input(s) 'padding_mask' have no gradient either")
    only_mask = keras.Model(mask, keras.layers.Dense(2)(keras.layers.Identity(name="m2")(mask)))
    with pytest.raises(GradientError, match="`wrt-layer layers=m2` gives the gradient at"):
        gradcli.wrt_input(only_mask, x["padding_mask"])
