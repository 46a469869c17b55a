"""A Python API a notebook user can discover: dir(), explicit keywords, a Result with
figures and gates, check and diff, and no TensorFlow start-up noise."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, load, npz

CNN = SAMPLES / "shapes_cnn.keras"


def test_dir_lists_the_api_without_loading_tensorflow():
    code = (
        "import sys, gradcli\n"
        "names = [n for n in dir(gradcli) if not n.startswith('_')]\n"
        "print(','.join(names)); print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    names, loaded = done.stdout.split()
    assert set(names.split(",")) >= {
        "wrt_input", "wrt_layer", "wrt_weights", "jacobian", "check", "diff", "load_model",
        "Result",
    }  # fmt: skip
    assert loaded == "False"


def test_explicit_keywords_with_the_clis_names():
    import gradcli

    params = inspect.signature(gradcli.wrt_input).parameters
    for name in ("class_index", "method", "layer", "samples", "steps", "fail_on", "logits"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "--class" in (gradcli.api.__doc__ or "") and "class_index" in gradcli.wrt_input.__doc__
    x = np.load(SAMPLES / "shapes_x.npy")
    with pytest.raises(TypeError, match=r"wrt_input\(\) got an unexpected keyword .*'clas_index'"):
        gradcli.wrt_input(CNN, x, clas_index=3)


def test_result_has_arrays_figures_and_gates(tf):
    import gradcli

    x, y = np.load(SAMPLES / "shapes_x.npy"), np.load(SAMPLES / "shapes_y.npy")
    r = gradcli.wrt_weights(CNN, x, y, fail_on="zero", max_norm=1e-6, return_record=True)
    assert isinstance(r, gradcli.Result) and not r.ok
    assert r.gates == ["too-large"]
    model = load(CNN)
    with tf.GradientTape() as tape:
        loss = model.loss(y, model(x, training=False))  # the compiled loss, mean over N
    for v, g in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(r.arrays[v.path], g.numpy(), rtol=1e-4, atol=1e-7)
        assert r.figures[v.path]["l2"] == pytest.approx(float(np.linalg.norm(g.numpy())), 1e-4)
        assert r.figures[v.path]["status"] == "too-large"
    assert r.record["command"] == "wrt-weights" and "provenance" in r.record
    plain = gradcli.wrt_weights(CNN, x, y)
    assert sorted(plain) == sorted(r.arrays)
    with pytest.raises(gradcli.api.UsageError, match="fail_on='nope'"):
        gradcli.wrt_input(CNN, x, fail_on="nope")


def test_check_and_diff_in_the_api(cli, tmp_path):
    import gradcli

    x = np.load(SAMPLES / "shapes_x.npy")[:4]
    checked = gradcli.check(CNN, x, class_index="pred", directions=2)
    assert checked.ok and checked.figures["image"]["status"] == "ok"
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out, cls in ((a, "0"), (b, "1")):
        assert cli("wrt-input", CNN, SAMPLES / "shapes_x.npy", "--class", cls, "-o", out).code == 0
    same = gradcli.diff(a, a, min_cosine=0.999)
    assert same.ok and same.figures["image"]["cosine"] == pytest.approx(1.0)
    differ = gradcli.diff(a, b, min_cosine=0.999)
    assert differ.gates == ["low-cosine"]
    ga, gb = npz(a)["image"].ravel(), npz(b)["image"].ravel()
    cosine = float(ga @ gb / np.linalg.norm(ga) / np.linalg.norm(gb))
    assert differ.figures["image"]["cosine"] == pytest.approx(cosine, rel=1e-6)
    assert any("class" in line for line in differ.notes + differ.record.get("warnings", []))


def test_no_tensorflow_start_up_lines_in_a_notebook(tmp_path):
    """TensorFlow's C++ logging writes oneDNN/CUDA/cuInit lines to fd 2 at start-up, which a
    notebook shows under the cell; the API keeps them out (stderr of a real process)."""
    code = (
        "import numpy as np, gradcli\n"
        f"g = gradcli.wrt_input({str(CNN)!r}, np.load({str(SAMPLES / 'shapes_x.npy')!r}),"
        " class_index='pred')\n"
        "print(g['image'].shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(16, 28, 28, 1)"
    assert done.stderr == "", done.stderr
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # asked for: shown
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert "oneDNN" in done.stderr or "cuda" in done.stderr.lower()
