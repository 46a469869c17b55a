"""Shared fixtures: small models built once per session, and a way to run the CLI in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# provenance's "written" time pinned (reproducible-builds convention): two runs' records
# compare equal, goldens stay deterministic
os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")


# what starting a real process looks like in a test's source (or a helper's it calls)
PROCESS_WORDS = ("run_process(", "subprocess.", "sys.executable", "Popen(", "os.fork(")


def _starts_processes(fn, depth: int = 2) -> bool:
    """Whether a test function (or a module-level helper it calls, two levels deep) starts a
    real process: read from its source, so a new test is classified without a list."""
    import ast
    import inspect
    import textwrap

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    if any(word in source for word in PROCESS_WORDS):
        return True
    if depth == 0:
        return False
    tree = ast.parse(textwrap.dedent(source))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    helpers = [getattr(inspect.getmodule(fn), n, None) for n in names]
    return any(
        inspect.isfunction(h) and h is not fn and _starts_processes(h, depth - 1) for h in helpers
    )


def pytest_collection_modifyitems(config, items):
    """Tests that start real processes are `slow`: `make test-fast` (-m "not slow") skips
    them, `make test` runs everything."""
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and _starts_processes(fn):
            item.add_marker(pytest.mark.slow)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `gradcli ARGS` in this process (GRADCLI_INPROCESS=1: no worker process)."""
    from gradcli.cli import main

    monkeypatch.setenv("GRADCLI_INPROCESS", "1")

    def run(*args: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Result(code if isinstance(code, int) else 0, captured.out, captured.err)

    return run


def run_process(*args: str, env: dict | None = None, timeout: int = 180) -> Result:
    """The real thing: `python -m gradcli ARGS` in a subprocess (with its worker)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("GRADCLI_INPROCESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gradcli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# ------------------------------------------------------------------ models


@pytest.fixture(scope="session")
def tf():
    from gradcli.load.backend import tf as tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def keras():
    from gradcli.load.backend import keras as k

    return k


@pytest.fixture(scope="session")
def models(tmp_path_factory, keras):
    """Small models saved to disk, with inputs and targets; built once (a few seconds)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("models")
    m: dict[str, Path] = {"dir": d}

    # linear: the input gradient of sum(y) is the row sum of the kernel (analytic)
    inp = keras.Input((5,), name="x")
    lin = keras.Model(inp, keras.layers.Dense(3, name="dense")(inp), name="linear")
    lin.compile(loss="mse")
    lin.save(d / "linear.keras")
    m["linear"] = d / "linear.keras"
    np.save(d / "x5.npy", rng.normal(size=(7, 5)).astype(np.float32))
    np.save(d / "y3.npy", rng.normal(size=(7, 3)).astype(np.float32))

    # Sequential built without an Input, called on data
    seq = keras.Sequential(
        [
            keras.layers.Dense(8, activation="tanh", name="d1"),
            keras.layers.Dense(6, activation="relu", name="d2"),
            keras.layers.Dense(4, name="d3"),
        ],
        name="seqni",
    )
    seq(np.zeros((2, 5), np.float32))
    seq.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seq.save(d / "seqni.keras")
    m["seqni"] = d / "seqni.keras"
    np.save(d / "labels4.npy", rng.integers(0, 4, size=(7,)))

    # the same as a legacy .h5 compiled with a string loss (its compile config fails)
    seq_h5 = keras.Sequential(
        [keras.layers.Dense(4, activation="tanh", name="h1"), keras.layers.Dense(1, name="h2")],
        name="legacy",
    )
    seq_h5(np.zeros((1, 5), np.float32))
    seq_h5.compile(loss="mse", optimizer="adam")
    seq_h5.save(d / "legacy.h5")
    m["legacy_h5"] = d / "legacy.h5"
    np.save(d / "y1.npy", rng.normal(size=(7, 1)).astype(np.float32))

    # nested two levels deep: outer -> block (functional) -> inner (Sequential)
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(6, activation="tanh", name="deep")], name="inner"
    )
    bin_ = keras.Input((6,))
    block = keras.Model(
        bin_, keras.layers.Dense(4, activation="tanh", name="post")(inner(bin_)), name="block"
    )
    x = keras.Input((5,), name="features")
    h = keras.layers.Dense(6, activation="tanh", name="pre")(x)
    nested = keras.Model(x, keras.layers.Dense(2, name="head")(block(h)), name="nested")
    nested.compile(loss="mse")
    nested.save(d / "nested.keras")
    m["nested"] = d / "nested.keras"
    np.save(d / "y2.npy", rng.normal(size=(7, 2)).astype(np.float32))

    # two inputs, two outputs, compiled per-output losses with weights
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    t = keras.layers.Dense(8, activation="tanh", name="trunk")(
        keras.layers.Concatenate(name="concat")([a, b])
    )
    cls = keras.layers.Dense(3, name="cls")(t)
    reg = keras.layers.Dense(1, name="reg")(
        keras.layers.Dense(4, activation="tanh", name="reg_hidden")(t)
    )
    two = keras.Model([a, b], {"cls": cls, "reg": reg}, name="two_io")
    two.compile(
        loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.5},
    )
    two.save(d / "two_io.keras")
    m["two_io"] = d / "two_io.keras"
    np.savez(
        d / "two_x.npz",
        a=rng.normal(size=(7, 4)).astype(np.float32),
        b=rng.normal(size=(7, 3)).astype(np.float32),
    )
    np.savez(
        d / "two_y.npz",
        cls=rng.integers(0, 3, size=(7,)),
        reg=rng.normal(size=(7, 1)).astype(np.float32),
    )

    # a small smooth CNN on 8x8x2 "images" (for IG and PNGs)
    img = keras.Input((8, 8, 2), name="image")
    c = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="conv")(img)
    c = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    cnn = keras.Model(img, keras.layers.Dense(2, name="logits")(c), name="cnn")
    cnn.save(d / "cnn.keras")
    m["cnn"] = d / "cnn.keras"
    np.save(d / "img.npy", rng.uniform(size=(5, 8, 8, 2)).astype(np.float32))

    # the linear model as a Keras 3 SavedModel export (serving function, no layers)
    lin.export(str(d / "linear_export"), verbose=False)
    m["linear_export"] = d / "linear_export"

    # a NaN in a weight
    nan_inp = keras.Input((5,), name="x")
    nan_model = keras.Model(nan_inp, keras.layers.Dense(2, name="bad")(nan_inp))
    kernel = nan_model.get_layer("bad").kernel.numpy()
    kernel[0, 0] = np.nan
    nan_model.get_layer("bad").kernel.assign(kernel)
    nan_model.save(d / "nan.keras")
    m["nan"] = d / "nan.keras"
    return m


def load(path: Path):
    from gradcli.load.backend import keras

    return keras.saving.load_model(path)


def npz(path: Path) -> dict[str, np.ndarray]:
    """The tensors of an .npz (a result's provenance entry, `__gradcli__`, left out)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != "__gradcli__"}
