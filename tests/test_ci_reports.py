"""CI reports: --junit parsed back with junitparser (failing testcase named model x tensor,
errors for broken models), --format markdown against golden text."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from junitparser import Error, Failure, JUnitXml
from test_report import RECORD

from conftest import run_process
from gradcli.commands.display import typed
from gradcli.present.markdown import render_markdown


def cases(path) -> dict[tuple[str, str], object]:
    xml = JUnitXml.fromfile(str(path))
    return {(case.classname, case.name): case for suite in xml for case in suite}


def test_junit_names_the_failing_tensor_with_its_figure(cli, models, tmp_path):
    report = tmp_path / "junit.xml"
    r = cli(
        "wrt-weights",
        models["linear"],
        models["dir"] / "x5.npy",
        "--max-norm",
        "0.5",
        "--junit",
        report,
        "--json",
    )
    assert r.code == 1, r.err
    rec = json.loads(r.out)
    found = cases(report)
    model = str(models["linear"])
    assert set(found) == {(model, "dense/kernel"), (model, "dense/bias")}
    for t in rec["tensors"]:
        result = found[(model, t["name"])].result
        if t["tripped"]:
            (failure,) = result
            assert isinstance(failure, Failure)
            assert failure.type == "too-large"
            assert failure.message.startswith(f"too-large: L2 norm {t['l2']:.6g}")
            assert failure.message.endswith("(limit 0.5)")
        else:
            assert result == []
    assert any(t["tripped"] for t in rec["tensors"])


def test_junit_of_a_directory_has_an_error_per_broken_model(models, tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    (d / "good.keras").write_bytes(models["nested"].read_bytes())
    (d / "nan.keras").write_bytes(models["nan"].read_bytes())  # a NaN weight: NaN loss
    (d / "broken.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    report = tmp_path / "reports" / "j.xml"
    report.parent.mkdir()
    r = run_process(
        "wrt-weights",
        d,
        models["dir"] / "x5.npy",
        "-t",
        models["dir"] / "y2.npy",
        "--loss",
        "mse",
        "--fail-on",
        "nonfinite",
        "--junit",
        report,
        "--json",
    )
    assert r.code == 3, r.err
    records = {json.loads(line)["model"]: json.loads(line) for line in r.out.splitlines()}
    xml = JUnitXml.fromfile(str(report))
    suites = {s.name: s for s in xml}
    assert len(suites) == 3
    broken = suites[f"gradcli wrt-weights {d / 'broken.keras'}"]
    (case,) = list(broken)
    assert isinstance(case.result[0], Error)
    assert case.result[0].message == records[str(d / "broken.keras")]["error"]
    assert (broken.errors, broken.failures) == (1, 0)
    nan = suites[f"gradcli wrt-weights {d / 'nan.keras'}"]
    failed = {c.name: c.result[0].message for c in nan if c.result}
    rows = records[str(d / "nan.keras")]["tensors"]
    assert set(failed) == {t["name"] for t in rows if t["tripped"]} == {"bad/kernel", "bad/bias"}
    for t in rows:
        assert failed[t["name"]] == f"nonfinite: non-finite elements {t['nonfinite']}"
    assert suites[f"gradcli wrt-weights {d / 'good.keras'}"].failures == 0
    assert sorted(p.name for p in report.parent.iterdir()) == ["j.xml"]  # no temp left


def test_junit_for_diff_gates(cli, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, w=np.array([1.0, 2.0, 3.0]), v=np.array([1.0, 0.0]))
    np.savez(b, w=np.array([1.0, 2.0, -3.0]), v=np.array([1.0, 0.0]))
    report = tmp_path / "d.xml"
    r = cli("diff", a, b, "--min-cosine", "0.99", "--junit", report)
    assert r.code == 1
    found = cases(report)
    key = f"{a} vs {b}"
    assert found[(key, "v")].result == []
    (failure,) = found[(key, "w")].result
    cosine = (1 + 4 - 9) / 14
    assert failure.message == f"low-cosine: cosine {cosine:.6g} (limit 0.99)"


def test_junit_path_is_checked_before_any_work(cli, models, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    r = cli(
        "wrt-input",
        models["linear"],
        models["dir"] / "x5.npy",
        "--junit",
        blocker / "j.xml",
    )
    assert r.code == 3 and r.err.startswith("error: --junit ") and r.err.count("\n") == 1
    r = cli("diff", tmp_path / "a.npz", tmp_path / "a.npz", "--junit", "/dev/null")
    assert r.code == 3 and r.err.startswith("error: --junit /dev/null")


def test_junit_is_not_written_when_the_run_fails(cli, models, tmp_path):
    report = tmp_path / "j.xml"
    r = cli("wrt-input", models["linear"], models["dir"] / "y3.npy", "--junit", report)
    assert r.code == 3
    assert not report.exists()


# ------------------------------------------------------------------ Markdown

DIFF = {
    "command": "diff",
    "model": "new.npz vs old.npz",
    "a": "new.npz",
    "b": "old.npz",
    "per_sample": True,
    "top_percent": 10.0,
    "tensors": [
        {
            "name": "x",
            "shape": [8, 32],
            "cosine": 0.99871234,
            "rel_diff": 0.05123,
            "max_abs_diff": 0.0123,
            "sign_agreement": 0.96875,
            "rank_corr": 0.9512,
            "rank_corr_min": 0.8811,
            "top_overlap": 0.875,
            "status": "low-rank-corr",
            "tripped": True,
        },
        {"name": "y", "shape": [8, 2], "status": "only-in-a", "tripped": False},
    ],
    "gates": ["low-rank-corr"],
    "warnings": ["method differs: A name=smoothgrad, B name=vanilla"],
    "exit_code": 1,
}

GOLDEN_WEIGHTS = """\
**`m.keras`** · wrt-weights · N=4 · objective: sum of out · ✗ disconnected

| tensor | shape | L2 | max \\|g\\| | non-finite | status |
|---|---|---:|---:|---:|---|
| `d/kernel` | (3, 2) | 1.5 | 0.75 | 0 | ok |
| `e/kernel` | (2, 1) | - | - | - | **✗ disconnected** |
"""

GOLDEN_DIFF = """\
**diff** `new.npz` vs `old.npz` (reference: B) · ✗ low-rank-corr

| tensor | shape | cosine | rel diff | max abs diff | sign agree | rank ρ mean (min) \
| top 10% overlap | status |
|---|---|---:|---:|---:|---:|---:|---:|---|
| `x` | (8, 32) | 0.998712 | 0.0512 | 0.0123 | 0.9688 | 0.951 (0.881) | 0.875 \
| **✗ low-rank-corr** |
| `y` | (8, 2) | - | - | - | - | - | - | only-in-a |
> warning: method differs\\: A name\\=smoothgrad\\, B name\\=vanilla
"""

GOLDEN_MANY = """\
### gradcli wrt-weights: 2 model(s)

| model | result | detail |
|---|---|---|
| `m.keras` | ✗ disconnected | `e/kernel` |
| `bad.keras` | error | not a Keras file |

**`m.keras`** · wrt-weights · N=4 · objective: sum of out · ✗ disconnected

| tensor | shape | L2 | max \\|g\\| | non-finite | status |
|---|---|---:|---:|---:|---|
| `e/kernel` | (2, 1) | - | - | - | **✗ disconnected** |
"""


def test_markdown_golden():
    assert render_markdown(typed([RECORD])) == GOLDEN_WEIGHTS
    assert render_markdown(typed([DIFF])) == GOLDEN_DIFF
    error = {
        "command": "wrt-weights",
        "model": "bad.keras",
        "error": "not a Keras file",
        "exit_code": 3,
        "tensors": [],
        "gates": [],
    }
    assert render_markdown(typed([copy.deepcopy(RECORD), error])) == GOLDEN_MANY


@pytest.mark.parametrize("command", ["wrt-input", "info"])
def test_markdown_from_the_cli(cli, models, command):
    args = [command, models["linear"]] + ([models["dir"] / "x5.npy"] if command != "info" else [])
    r = cli(*args, "--format", "markdown")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    if command == "info":
        assert lines[0] == "### gradcli info: 1 model(s)"
        assert lines[4] == f"| `{models['linear']}` | ok | 2 layers, loss mse |"
    else:
        assert lines[0].startswith(f"**`{models['linear']}`** · wrt-input · N=7")
        assert lines[2] == "| tensor | shape | L2 | max \\|g\\| | non-finite | status |"
        assert lines[4].startswith("| `x` | (7, 5) | ")


def test_pre_commit_hook_checks_the_files_it_is_given(models, tmp_path):
    """pre-commit's calling convention: the changed files are appended to `entry`."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from conftest import ROOT

    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    assert re.search(r"^- id: gradcli-check$", text, re.M)
    entry = re.search(r"^  entry: (.*)$", text, re.M).group(1)
    files = re.compile(re.search(r"^  files: (.*)$", text, re.M).group(1))
    assert files.search("models/m.keras") and files.search("old.h5")
    assert not files.search("x.npy")
    env = {k: v for k, v in os.environ.items() if k != "GRADCLI_INPROCESS"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT)

    def hook(*paths):
        return subprocess.run(
            [*shlex.split(entry), *map(str, paths)],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )

    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip archive")
    # one call (each file costs a TensorFlow start): the good file passes silently, the
    # bad one stops the loop with gradcli's exit code, the last is never reached
    failed = hook(models["linear"], bad, tmp_path / "never.keras")
    assert (failed.returncode, failed.stdout) == (3, "")
    assert failed.stderr.startswith(f"error: {bad}") and failed.stderr.count("\n") == 1
