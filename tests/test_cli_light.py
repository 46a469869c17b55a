"""The light CLI: help, version and option errors answer without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import ROOT

COMMANDS = ["info", "wrt-input", "wrt-layer", "wrt-weights", "jacobian", "check"]


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from gradcli.cli import main\n"
        "for args in (['--help'], ['--version'], ['wrt-input', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tf_keras', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("clean")


def test_help_is_fast_and_version_matches():
    from gradcli._version import __version__

    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gradcli", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"gradcli {__version__}"
    assert elapsed < 3.0  # generous: the goal (0.5 s) is measured in `make bench`


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command):
    r = cli(command, "--help")
    assert r.code == 0
    assert "Usage:" in r.out
    assert len(r.out.splitlines()) > 5


def test_top_level_help_lists_commands_and_exit_codes(cli):
    r = cli("--help")
    assert r.code == 0
    for command in COMMANDS:
        assert command in r.out
    assert "Exit codes" in r.out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["wrt-input", "m.keras"], "Missing argument 'INPUT'"),
        (["wrt-input", "--bogus", "m.keras", "x.npy"], "No such option: --bogus"),
        (["wrt-input", "m.keras", "x.npy", "--method", "magic"], "magic"),
        (["wrt-input", "m.keras", "x.npy", "--batch-size", "0"], "batch-size"),
        (["wrt-input", "m.keras", "x.npy", "--fail-on", "purple"], "--fail-on 'purple'"),
        (["wrt-weights", "m.keras", "x.npy", "--shard", "5/2"], "--shard"),
        (["wrt-input", "m.keras", "x.npy", "--baseline", "b.npy"], "--baseline goes with"),
        (["check", "m.keras", "x.npy", "--wrt", "layers"], "layers"),
        (["nonsense"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli, args, fragment):
    r = cli(*args)
    assert r.code == 2
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_remote_and_missing_models_exit_3_without_tensorflow(cli, tmp_path):
    for model in ("hf://org/model", "gs://bucket/m.keras", "https://x.org/m.keras"):
        r = cli("info", model)
        assert r.code == 3
        assert "remote paths are not supported" in r.err
    r = cli("wrt-input", tmp_path / "missing.keras", tmp_path / "x.npy")
    assert r.code == 3
    assert r.err.strip() == f"error: {tmp_path / 'missing.keras'}: no such file or directory"
    r = cli("info", tmp_path)
    assert r.code == 3


def test_progress_bar_renders_worker_events_on_a_terminal():
    import io

    from rich.console import Console

    from gradcli.cli.progress import ProgressBar

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)
    with ProgressBar(console, enabled=True) as update:
        update({"event": "progress", "index": 0, "model": "m.keras", "done": 50, "total": 100})
        update({"event": "progress", "index": 0, "model": "m.keras", "done": 100, "total": 100})
    assert "m.keras" in buffer.getvalue() and "model 1" not in buffer.getvalue()
    with ProgressBar(console, enabled=False) as update:
        assert update is None
