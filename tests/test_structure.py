"""Architecture contracts: one error funnel (Python names vs CLI flags), a light `--help`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import run_process


def test_api_names_parameters_the_cli_names_flags(models, cli):
    """The same error: a Python caller is told `class_index=9`, the CLI user `--class 9`;
    in process, through the worker, and in a directory run's per-model record alike."""
    import gradcli
    from gradcli.errors import UsageError

    x = np.zeros((2, 5), np.float32)
    with pytest.raises(UsageError) as info:
        gradcli.wrt_input(models["linear"], x, class_index=9)
    text = str(info.value)
    assert text.startswith("class_index=9: output 'dense' has shape (N, 3), 3 classes")
    assert "--class" not in text
    with pytest.raises(UsageError, match=r"^loss= needs target= "):
        gradcli.wrt_input(models["linear"], x, loss="mse")

    expected = "error: --class 9: output 'dense' has shape (N, 3), 3 classes; K must be in 0..2\n"
    r = cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "--class", "9")
    assert (r.code, r.err) == (2, expected)
    r = run_process("wrt-input", models["linear"], models["dir"] / "x5.npy", "--class", "9")
    assert (r.code, r.err) == (2, expected)
    r = cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "--loss", "mse")
    assert r.code == 2
    assert r.err.startswith("error: --loss needs --target (the labels")


def test_help_imports_neither_tensorflow_nor_numpy():
    code = (
        "import sys\n"
        "from gradcli.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "for cmd in ('wrt-input', 'check'):\n"
        "    try:\n"
        "        main([cmd, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('numpy', 'tensorflow', 'keras') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Usage" in proc.stdout
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_a_registered_method_runs_through_the_engine(models, keras):
    """A method is one table entry: registering one (here: 2 * vanilla, two rows per sample
    on the tape) is all the API needs; its attributions match the analytic gradient."""
    import gradcli
    from gradcli import methods
    from gradcli.methods.common import Attribution, tape_in_chunks
    from gradcli.methods.spec import MethodSpec

    def doubled(engine, batch, options, rows_per_call):
        stacked = [np.concatenate([x, x]) for x in batch.inputs]
        targets = [np.concatenate([t, t]) for t in batch.targets]
        grads = tape_in_chunks(engine, stacked, targets, rows_per_call)
        n = len(batch.inputs[0])
        return Attribution([g[:n] + g[n:] for g in grads])

    methods.register(MethodSpec("doubled", "2 d o / d x", doubled, expansion=2))
    try:
        x = np.load(models["dir"] / "x5.npy")
        g = gradcli.wrt_input(models["linear"], x, method="doubled", batch_size=4)["x"]
    finally:
        del methods.METHODS["doubled"]
    kernel = keras.saving.load_model(models["linear"]).get_layer("dense").kernel.numpy()
    np.testing.assert_allclose(g, np.tile(2 * kernel.sum(axis=1), (len(x), 1)), rtol=1e-6)


def test_format_json_is_the_json_switch_and_table_the_default(models, cli):
    """--format picks the renderer from the formats table; --json is its alias."""
    import json

    args = ("wrt-input", models["linear"], models["dir"] / "x5.npy")
    as_json = cli(*args, "--json")
    formatted = cli(*args, "--format", "json")
    assert as_json.code == formatted.code == 0
    a, b = json.loads(as_json.out), json.loads(formatted.out)
    assert a == b and a["tensors"][0]["name"] == "x"
    table = cli(*args, "--format", "table")
    assert table.out == cli(*args).out and "x" in table.out and "{" not in table.out
    bad = cli(*args, "--format", "yaml")
    assert bad.code == 2 and "yaml" in bad.err


def test_records_round_trip_through_their_dataclasses(models, cli):
    """Record/TensorRow read a record's common keys as attributes and give the same JSON
    object back (same keys, same order): the golden record and a real check run's."""
    import json

    from test_report import RECORD

    from gradcli.present.records import Record

    r = cli("check", models["linear"], models["dir"] / "x5.npy", "--json")
    real = json.loads(r.out)
    for data in (RECORD, real):
        rec = Record.from_json(data)
        back = rec.to_json()
        assert back == data and list(back) == list(data)
        assert [list(t) for t in back["tensors"]] == [list(t) for t in data["tensors"]]
    rec = Record.from_json(RECORD)
    assert (rec.command, rec.n, rec.gates) == ("wrt-weights", 4, ["disconnected"])
    assert rec.tensors[1].status == "disconnected" and rec.tensors[1].l2 is None
    assert rec.tensors[0].extra["relative"] == 0.5 and rec.extra["out"] == "w.npz"
    assert Record.from_json(real).tensors[0].extra["autodiff"] == real["tensors"][0]["autodiff"]
