"""Hostile files and working directories: nothing a file holds becomes code or a forged
verdict. The working directory (real processes: only a process shows its sys.path), `diff`'s
arithmetic, malformed provenance, outputs that collide or overwrite inputs, the directory
walk, declared sizes that overflow, a model swapped while it is read, and --junit committed
with -o, all or nothing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from junitparser import JUnitXml

from conftest import npz, run_process
from gradcli.present.escape import printable

HOOKS = Path(__file__).with_name("lifecycle_hooks.py")
GRADCLI = str(Path(sys.executable).with_name("gradcli"))  # the console script users run


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", **extra}
    env.pop("GRADCLI_INPROCESS", None)
    return env


def _one_error_line(err: str, *parts: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)


# ------------------------------------------------------------------ the working directory


def _plant(where: Path, mark: Path) -> None:
    """Modules that gradcli's processes import, each leaving `mark` behind if ever run."""
    code = f"open({str(mark)!r}, 'a').write(__name__ + '\\n')\nraise ImportError('planted')\n"
    for name in ("numpy", "tensorflow", "keras", "typer", "rich", "h5py", "junitparser"):
        (where / f"{name}.py").write_text(code)
    (where / "gradcli").mkdir()
    for name in ("__init__", "worker", "__main__", "cli"):
        (where / "gradcli" / f"{name}.py").write_text(code.replace("raise ImportError", "#"))


def test_nothing_is_imported_from_the_working_directory(models, tmp_path):
    """The console script, run where numpy.py, tensorflow.py and a gradcli/ package are
    planted: each gives its real result and none of them runs. One command of each kind
    covers every command: the CLI process and the worker start the same way whatever the
    command (a model described, a gradient computed and written, a local diff)."""
    cwd, mark = tmp_path / "repo", tmp_path / "PWNED"
    cwd.mkdir()
    _plant(cwd, mark)
    d = models["dir"]
    out = tmp_path / "g.npz"
    runs = [
        ["info", models["linear"], "--json"],
        ["wrt-input", models["linear"], d / "x5.npy", "-o", out, "--json"],
        ["diff", out, out, "--json"],
    ]
    env = _env()
    for args in runs:
        proc = subprocess.run(
            [GRADCLI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr)
        assert not mark.exists(), (args, mark.read_text())
        record = json.loads(proc.stdout)
        assert record["command"] == args[0]
    kernel = np.asarray(_kernel(models["linear"]))
    x = np.load(d / "x5.npy")
    np.testing.assert_allclose(npz(out)["x"], np.tile(kernel.sum(axis=1), (len(x), 1)), rtol=1e-6)


def test_relative_pythonpath_entries_do_not_bring_the_working_directory_in(models, tmp_path):
    """`PYTHONPATH=$PYTHONPATH:/x` with PYTHONPATH unset is `:/x`: its empty entry is the
    working directory, for gradcli's own process and for its worker. (A planted gradcli/
    would be imported by Python itself before gradcli runs: the README warns.)"""
    cwd, mark = tmp_path / "repo", tmp_path / "PWNED"
    cwd.mkdir()
    _plant(cwd, mark)
    (cwd / "gradcli").rename(tmp_path / "not-here")
    (cwd / "lib").mkdir()
    (cwd / "numpy.py").rename(cwd / "lib" / "numpy.py")
    env = _env(PYTHONPATH=os.pathsep.join(["", ".", "lib", str(tmp_path / "absent")]))
    x = models["dir"] / "x5.npy"
    two_x = x.with_name("two_x.npz")
    for args in (["wrt-input", models["linear"], x], ["diff", two_x, two_x]):
        proc = subprocess.run(
            [GRADCLI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr)
        assert not mark.exists(), (args, mark.read_text())


def _kernel(path: Path):
    from conftest import load

    return load(path).get_layer("dense").kernel.numpy()


def test_python_m_gradcli_drops_the_working_directory(models, tmp_path):
    """`python -m` puts the cwd first on sys.path; gradcli's __main__ drops it before
    importing anything, so only a planted gradcli/ itself could still run (Python's own
    choice of package: the README says to run the `gradcli` script)."""
    cwd, mark = tmp_path / "repo", tmp_path / "PWNED"
    cwd.mkdir()
    _plant(cwd, mark)
    (cwd / "gradcli").rename(tmp_path / "not-here")
    two_x = models["dir"] / "two_x.npz"
    for args in (["info", models["linear"]], ["diff", two_x, two_x]):
        proc = subprocess.run(
            [sys.executable, "-m", "gradcli", *map(str, args)], cwd=cwd, env=_env(),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr)
        assert not mark.exists(), (args, mark.read_text())


def test_import_names_only_what_it_is_given(models, tmp_path):
    """--import FILE.py runs that file (and nothing beside it); a module name is looked up
    on sys.path, where the working directory is not: the error says how to give the file."""
    cwd = tmp_path / "repo"
    cwd.mkdir()
    (cwd / "layers.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('layers')\n")
    (cwd / "numpy.py").write_text("raise SystemExit('planted numpy ran')\n")
    model, x = models["linear"], models["dir"] / "x5.npy"
    proc = subprocess.run(
        [GRADCLI, "wrt-input", str(model), str(x), "--import", "layers"],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3
    _one_error_line(proc.stderr, "--import layers", "working directory", "./layers.py")
    assert not (tmp_path / "ran").exists()
    proc = subprocess.run(
        [GRADCLI, "wrt-input", str(model), str(x), "--import", "./layers.py"],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ran").read_text() == "layers"


# ------------------------------------------------------------------ diff's arithmetic


def _diff_json(cli, *args: str) -> tuple[int, dict, str]:
    r = cli("diff", *args, "--json")
    return r.code, json.loads(r.out), r.err


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """A reference cosine in exact-scaled float64 (2**-1000 is exact; fsum is exact-rounded)."""
    a = a.astype(np.float64).ravel() * 2.0**-1000
    b = b.astype(np.float64).ravel()
    dot = math.fsum(a * b)
    return dot / (math.sqrt(math.fsum(a * a)) * math.sqrt(math.fsum(b * b)))


def test_diff_gate_cannot_be_passed_by_overflow(cli, tmp_path):
    """Values near 1e308 used to overflow the sums to inf/inf = NaN, clamped to cosine 1.0:
    --min-cosine 0.999 passed a true cosine of 0.09, and --json crashed on inf."""
    a = -np.ones((4, 250))
    a[:, :2] = 1e308
    b = np.ones((4, 250), "f4")
    np.savez(tmp_path / "A.npz", g=a)
    np.savez(tmp_path / "B.npz", g=b)
    a_file, b_file = tmp_path / "A.npz", tmp_path / "B.npz"
    code, rec, err = _diff_json(cli, a_file, b_file, "--min-cosine", "0.999")
    assert code == 1, err
    (row,) = rec["tensors"]
    assert row["status"] == "low-cosine" and rec["gates"] == ["low-cosine"]
    assert row["cosine"] == pytest.approx(_cosine(a, b), rel=1e-12)
    assert row["cosine"] == pytest.approx(0.0894427191, rel=1e-9)
    # rel diff = |a - b| / |b|, about 8.9e306: finite, and the exact value
    assert row["rel_diff"] == pytest.approx(math.sqrt(8 / 1000) * 1e308, rel=1e-12)
    assert row["max_abs_diff"] == pytest.approx(1e308, rel=1e-15)
    r = cli("diff", tmp_path / "A.npz", tmp_path / "B.npz", "--min-cosine", "0.999")
    assert r.code == 1 and "0.0894427" in r.out and "RuntimeWarning" not in r.err


def test_nan_and_infinite_figures_trip_their_gates_and_stay_valid_json(cli, tmp_path):
    a = np.ones((3, 4))
    a[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", g=a)
    np.savez(tmp_path / "one.npz", g=np.ones((3, 4)))
    np.savez(tmp_path / "huge.npz", g=np.full((3, 4), 1e300))
    np.savez(tmp_path / "tiny.npz", g=np.full((3, 4), 1e-300))
    junit = tmp_path / "j.xml"
    r = cli("diff", tmp_path / "nan.npz", tmp_path / "one.npz", "--min-cosine", "0.5",
            "--json", "--junit", junit)  # fmt: skip
    assert r.code == 1, r.err
    line = r.out.strip()
    rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert json.dumps(rec, allow_nan=False)
    (row,) = rec["tensors"]
    assert row["cosine"] is None and row["rel_diff"] is None and row["max_abs_diff"] is None
    undefined = ("cosine", "rel_diff", "max_abs_diff", "rank_corr", "rank_corr_min")
    assert row["nonfinite_figures"] == dict.fromkeys(undefined, "nan")
    assert row["status"] == "low-cosine" and row["tripped"] and row["nonfinite"] == 1
    (case,) = [c for s in JUnitXml.fromfile(str(junit)) for c in s]
    assert case.result[0].message == "low-cosine: cosine nan (limit 0.5)"
    table = cli("diff", tmp_path / "nan.npz", tmp_path / "one.npz", "--min-cosine", "0.5")
    assert "│    nan │" in table.out and table.code == 1
    # |a - b| / |b| beyond float64: inf, a figure and a gate, never clamped
    code, rec, err = _diff_json(cli, tmp_path / "huge.npz", tmp_path / "tiny.npz",
                                "--max-rel-diff", "10", "--min-cosine", "0.999")  # fmt: skip
    (row,) = rec["tensors"]
    assert code == 1 and row["status"] == "high-rel-diff", err
    assert row["rel_diff"] is None and row["nonfinite_figures"] == {"rel_diff": "inf"}
    assert row["cosine"] == pytest.approx(1.0, abs=1e-15)  # the direction is the same


# ------------------------------------------------------------------ malformed provenance


def _with_provenance(path: Path, text: str | None = None, value=None) -> Path:
    entry = np.array(text) if value is None else value
    np.savez(path, g=np.ones((2, 3)), __gradcli__=entry)
    return path


GOOD = {"schema": "gradcli-provenance/1", "command": "wrt-weights", "parameters": {}}
MALFORMED = {
    "objective is a list": (json.dumps({**GOOD, "objective": [1]}), "'objective' is a list"),
    "input is a string": (json.dumps({**GOOD, "input": "x.npy"}), "'input' is a string"),
    "parameters a number": (json.dumps({**GOOD, "parameters": 3}), "'parameters' is a number"),
    "versions a list": (json.dumps({**GOOD, "versions": ["tf"]}), "'versions' is a list"),
    "sha256 a number": (json.dumps({**GOOD, "input": {"sha256": 1}}), "input.sha256 is a number"),
    "an array": (json.dumps([GOOD]), "expected a JSON object, got a list"),
    "not JSON": ("{'schema': 1}", "not valid JSON"),
    "deep": ("[" * 100_000 + "]" * 100_000, "nests 100000 levels deep"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_provenance_is_exit_3_naming_the_file(cli, tmp_path, case):
    text, what = MALFORMED[case]
    bad = _with_provenance(tmp_path / "bad.npz", text)
    good = _with_provenance(tmp_path / "good.npz", json.dumps(GOOD))
    for args in ((bad, good), (good, bad)):
        r = cli("diff", *args)
        assert r.code == 3, r.err
        side = "A" if args[0] == bad else "B"
        _one_error_line(r.err, f"error: {side} {bad}: malformed provenance (__gradcli__)", what)


def test_provenance_that_is_no_text_array_or_too_large(cli, tmp_path):
    good = _with_provenance(tmp_path / "good.npz", json.dumps(GOOD))
    two = _with_provenance(tmp_path / "two.npz", value=np.array(["{}", "{}"]))
    r = cli("diff", two, good)
    _one_error_line(r.err, "malformed provenance", "expected a 0-d unicode array, got shape (2,)")
    big = _with_provenance(tmp_path / "big.npz", json.dumps({**GOOD, "pad": "x" * (2 << 20)}))
    r = cli("diff", big, good)
    assert r.code == 3
    _one_error_line(r.err, "malformed provenance", "bytes; gradcli writes a few KiB")


def test_forged_provenance_paths_reach_stderr_escaped(cli, tmp_path):
    forged = "x\x1b[2J\n\rwarning: all gates passed\x07.npy"
    a = {**GOOD, "input": {"path": forged, "sha256": "a" * 64}}
    b = {**GOOD, "input": {"path": "x.npy", "sha256": "b" * 64}}
    r = cli("diff", _with_provenance(tmp_path / "a.npz", json.dumps(a)),
            _with_provenance(tmp_path / "b.npz", json.dumps(b)))  # fmt: skip
    assert r.code == 0, r.err
    (warning,) = [line for line in r.err.splitlines() if line.startswith("warning:")]
    assert printable(forged) in warning
    assert not any(ord(c) < 32 and c != "\n" for c in r.err)


# ------------------------------------------------------------------ outputs and inputs


def test_two_models_of_a_directory_never_map_to_one_output(cli, models, tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    (d / "m.keras").write_bytes(models["linear"].read_bytes())
    (d / "m.h5").write_bytes(models["legacy_h5"].read_bytes())
    x = models["dir"] / "x5.npy"
    for extra in ([], ["--shard", "1/2"]):  # shards write to the same directory
        r = cli("wrt-input", d, x, "-o", tmp_path / "out", *extra)
        assert r.code == 3
        _one_error_line(r.err, f"--out {tmp_path / 'out'}: ", f"{d / 'm.h5'} and {d / 'm.keras'}",
                        f"{tmp_path / 'out' / 'm.npz'}")  # fmt: skip
    r = cli("wrt-weights", d, x, "--png", tmp_path / "charts")
    _one_error_line(r.err, "--png", "m.png")
    r = cli("wrt-input", d, x, "--png", tmp_path / "maps")  # a directory of PNGs per model
    _one_error_line(r.err, "--png", str(tmp_path / "maps" / "m"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # nothing was made
    (d / "m.h5").rename(d / "n.h5")
    r = cli("wrt-input", d, x, "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.npz", "n.npz"]


def test_no_output_is_an_input_of_the_same_run(cli, models, tmp_path):
    x = tmp_path / "x.npy"
    x.write_bytes((models["dir"] / "x5.npy").read_bytes())
    model = tmp_path / "m.keras"
    model.write_bytes(models["linear"].read_bytes())
    y = tmp_path / "y.npy"
    y.write_bytes((models["dir"] / "y3.npy").read_bytes())
    (tmp_path / "alias.npz").symlink_to(x)
    os.link(y, tmp_path / "hard.xml")
    before = {p: p.read_bytes() for p in (x, model, y)}
    cases = [
        (["-o", x], "--out", "is input"),
        (["--junit", model], "--junit", "is MODEL"),
        (["-o", tmp_path / "alias.npz"], "--out", "is input"),
        (["-t", y, "--junit", tmp_path / "hard.xml"], "--junit", "is target"),
        (["-o", tmp_path / "r.npz", "--junit", tmp_path / "r.npz"], "--junit", "is also --out"),
    ]
    for extra, flag, what in cases:
        r = cli("wrt-input", model, x, *extra)
        assert r.code == 3, (extra, r.err)
        _one_error_line(r.err, f"error: {flag} ", what)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, g=np.ones(3))
    np.savez(b, g=np.ones(3))
    a_bytes = a.read_bytes()
    r = cli("diff", a, b, "--junit", a)
    _one_error_line(r.err, f"--junit {a}: is A")
    assert r.code == 3 and a.read_bytes() == a_bytes
    assert {p: p.read_bytes() for p in (x, model, y)} == before


def test_no_output_inside_a_savedmodel_it_reads(cli, models, tmp_path):
    sm = models["linear_export"]
    r = cli("wrt-input", sm, models["dir"] / "x5.npy", "-o", sm / "g.npz")
    assert r.code == 3
    _one_error_line(r.err, f"--out {sm / 'g.npz'}: is inside MODEL")
    assert not (sm / "g.npz").exists()


# ------------------------------------------------------------------ the directory walk


def test_directory_walk_lists_each_file_once_and_rows_what_cannot_be_read(cli, models, tmp_path):
    d = tmp_path / "zoo"
    (d / "sub").mkdir(parents=True)
    (d / "a.keras").write_bytes(models["linear"].read_bytes())
    os.link(d / "a.keras", d / "sub" / "hard.keras")  # one file, two names
    (d / "sub" / "alias.keras").symlink_to(d / "a.keras")
    (d / "loop").symlink_to(".")  # the loop: the model is not listed twice
    (d / "x.keras").symlink_to("gone.keras")  # dangling: a row with its error
    (d / "model.pt").write_bytes(b"torch")
    (d / "config.json").write_text("{}")
    (d / "notes.txt").write_text("")
    (d / "sub" / "weights.bin").write_bytes(b"")
    (d / ".hidden.keras").write_bytes(b"")
    r = cli("info", d, "--json")
    assert r.code == 3, r.err
    records = [json.loads(line) for line in r.out.splitlines()]
    assert [rec["model"] for rec in records] == [str(d / "a.keras"), str(d / "x.keras")]
    assert records[0]["exit_code"] == 0
    assert records[1]["error"] == f"{d / 'x.keras'}: a dangling symbolic link (to gone.keras)"
    notes = [line for line in r.err.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {d}: skipped 4 file(s) that are not models (.keras, .h5, .hdf5 or a "
        "SavedModel directory): config.json, model.pt, notes.txt and 1 more"
    ]


def test_unreadable_model_directory_is_a_row(cli, models, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    d = tmp_path / "zoo"
    (d / "locked").mkdir(parents=True)
    (d / "a.keras").write_bytes(models["linear"].read_bytes())
    (d / "locked").chmod(0)
    try:
        r = cli("info", d, "--json")
    finally:
        (d / "locked").chmod(0o755)
    assert r.code == 3
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert rows[1]["model"] == str(d / "locked") and "cannot read the directory" in rows[1]["error"]


# ------------------------------------------------------------------ declared sizes


def test_declared_shape_whose_size_overflows_int64_is_exit_3(cli, models, tmp_path):
    """(2**32, 2**32) float32 is 2**66 bytes: NumPy's int64 product wraps to 0 and passed."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**32, 2**32)}
    npy = tmp_path / "x.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as zf:  # stored: memory-mapped in place
        zf.write(npy, "x.npy")
    for path in (npy, tmp_path / "x.npz"):
        r = cli("wrt-input", models["linear"], path)
        assert r.code == 3, r.err
        _one_error_line(r.err, str(path), "(4294967296, 4294967296)",
                        "73,786,976,294,838,206,464 bytes", "more than the file holds")  # fmt: skip


# ------------------------------------------------------------------ what is hashed is loaded


def test_a_model_swapped_while_it_is_read_is_refused(models, tmp_path):
    """The worker holds after its first batch (the model loaded, its hash under way); the
    file is replaced then. The recorded sha256 would be of the new file: exit 3, no output."""
    model, x = tmp_path / "m.keras", tmp_path / "x.npy"
    model.write_bytes(models["linear"].read_bytes())
    np.save(x, np.repeat(np.load(models["dir"] / "x5.npy"), 4, axis=0))
    out, mark = tmp_path / "g.npz", tmp_path / "mark"
    out.write_bytes(b"previous")
    env = _env(GRADCLI_TEST_HOOK="midbatch", GRADCLI_TEST_MARK=str(mark), GRADCLI_TEST_SLEEP="3")
    proc = subprocess.Popen(
        [GRADCLI, "wrt-input", model, x, "-o", out, "-b", "2", "-q", "--import", HOOKS],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate()
    swap = tmp_path / "other.keras"
    swap.write_bytes(models["nested"].read_bytes())
    os.replace(swap, model)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    _one_error_line(stderr, f"model {model}: changed while gradcli was reading it")
    assert stdout == "" and out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "m.keras", "mark", "x.npy"]


# ------------------------------------------------------------------ reports are outputs


def test_junit_is_committed_with_the_npz_all_or_nothing(models, tmp_path):
    """Held at the commit: neither -o nor --junit has changed, the report waits staged beside
    its path; SIGTERM then: both keep their old content, no temp file is left."""
    out, junit, mark = tmp_path / "g.npz", tmp_path / "j.xml", tmp_path / "mark"
    out.write_bytes(b"old npz")
    junit.write_bytes(b"old report")
    args = ["wrt-input", models["linear"], models["dir"] / "x5.npy", "-o", out, "--junit", junit]
    env = _env(GRADCLI_TEST_HOOK="commit", GRADCLI_TEST_MARK=str(mark))
    proc = subprocess.Popen(
        [GRADCLI, *map(str, args), "-q", "--import", str(HOOKS)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate()
    staged = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert [n.split(".")[1] for n in staged] == ["g", "j"], staged
    assert out.read_bytes() == b"old npz" and junit.read_bytes() == b"old report"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert out.read_bytes() == b"old npz" and junit.read_bytes() == b"old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "j.xml", "mark"]
    r = run_process(*args, "--json")
    assert r.code == 0, r.err
    assert [c.name for s in JUnitXml.fromfile(str(junit)) for c in s] == ["x"]
    assert "x" in npz(out)
