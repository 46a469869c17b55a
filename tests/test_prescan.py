"""A command line certain to fail parsing starts no worker (cli/prescan.py): a typo answers
as fast as --help. The scan must never call a good command line bad (the worker would then
start late, after parsing), so its table is checked against the commands Typer builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from gradcli.cli.prescan import HELP_FLAGS, certainly_fails, command_options
from gradcli.commands import worker_commands
from gradcli.process import supervisor


def _click_options(name: str) -> dict[str, bool]:
    """option name -> takes a value, as Typer built command `name`."""
    import typer

    from gradcli.cli.app import app

    command = typer.main.get_command(app).commands[name]
    found = {}
    for param in command.params:
        if param.param_type_name == "option":
            for option in (*param.opts, *param.secondary_opts):
                found[option] = not param.is_flag
    return found


@pytest.mark.parametrize("name", sorted(worker_commands()))
def test_the_scan_knows_every_option_typer_builds(name):
    scanned = {k: a.takes_value for k, a in command_options(name).items() if k not in HELP_FLAGS}
    assert scanned == _click_options(name)


GOOD = [
    ["wrt-input", "m.keras", "x.npy", "--class", "3", "-q", "--json"],
    ["wrt-input", "m.keras", "x.npy", "-c", "-1", "--format", "markdown", "--batch-size", "8"],
    ["wrt-input", "m.keras", "x.npy", "--class=pred", "--method", "smoothgrad", "-o", "g.npz"],
    ["wrt-input", "m.keras", "x.npy", "--class", "y.npy", "--onednn", "off", "--debug"],
    ["wrt-weights", "m.keras", "x.npy", "--per-sample", "--per-sample-arrays", "--shard", "0/2"],
    ["wrt-layer", "m.keras", "x.npy", "--layer", "--json"],  # --json is --layer's value
    ["wrt-input", "m.keras", "x.npy", "-qc0"],  # combined short flags: not read, so not judged
    ["wrt-input", "m.keras", "--", "--clas"],  # after --, an argument
    ["check", "m.keras", "x.npy", "--wrt", "input"],
    ["wrt-input", "m.keras", "x.npy", "--fail-on", "nonfinite,zero", "--fail-on", "vanishing"],
    ["nonsense", "--clas"],  # not a command it knows: Typer says so, the scan does not judge
]
BAD = [
    ["wrt-input", "m.keras", "x.npy", "--clas", "0"],
    ["wrt-input", "m.keras", "x.npy", "--class", "abc"],
    ["wrt-input", "m.keras", "x.npy", "--class"],
    ["wrt-input", "m.keras", "x.npy", "--json=yes"],
    ["wrt-input", "m.keras", "x.npy", "--format", "yaml"],
    ["wrt-input", "m.keras", "x.npy", "--method", "nope"],
    ["wrt-input", "m.keras", "x.npy", "--batch-size", "0"],
    ["wrt-input", "m.keras", "x.npy", "--batch-size", "many"],
    ["wrt-input", "m.keras", "x.npy", "--fail-on", "purple"],
    ["wrt-weights", "m.keras", "x.npy", "--shard", "5/2"],
    ["info", "m.keras", "--verbose"],
]


@pytest.mark.parametrize("argv", GOOD, ids=" ".join)
def test_a_good_command_line_is_never_called_bad(argv):
    assert not certainly_fails(argv)


@pytest.mark.parametrize("argv", BAD, ids=" ".join)
def test_a_command_line_typer_refuses_is_called_bad(argv, cli):
    assert certainly_fails(argv)
    assert cli(*argv).code == 2  # and Typer (or the flag's conversion) does refuse it


def test_no_worker_starts_for_a_certain_mistake(monkeypatch, capsys):
    from gradcli.cli import launch

    monkeypatch.delenv("GRADCLI_INPROCESS", raising=False)
    spawned = []
    monkeypatch.setattr(supervisor, "_spawn", lambda env, debug: spawned.append(env))
    previous = supervisor.signal.getsignal(supervisor.signal.SIGTERM)
    try:
        for argv in (BAD[0], BAD[1]):
            with pytest.raises(SystemExit) as done:
                launch.main(argv)
            assert done.value.code == 2
    finally:
        supervisor.signal.signal(supervisor.signal.SIGTERM, previous)
    assert spawned == []
    assert capsys.readouterr().err.count("error: ") == 2


def _workers_of(pid: int) -> list[str]:
    marker = f"{supervisor.PARENT_VAR}={pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(entry.name)
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--clas", "0"], "No such option: --clas"), (["--class", "abc"], "--class 'abc'")],
)
def test_a_typo_in_a_real_process_exits_2_with_one_line_and_leaves_no_worker(
    models, args, fragment
):
    env = {**os.environ}
    env.pop("GRADCLI_INPROCESS", None)
    x = models["dir"] / "x5.npy"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradcli", "wrt-input", str(models["linear"]), str(x), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert _workers_of(proc.pid) == []
