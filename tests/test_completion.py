"""Shell completion (Typer's protocol for bash, zsh and fish): scripts, installation, and
completions answered by a real process that imports neither NumPy nor TensorFlow and
starts no worker; `--layer` names read from the model file, as `gradcli info` lists them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from gradcli.cli.completion import CONFIG_LIMIT, layer_names
from gradcli.cli.launch import COMPLETE_VAR

BIN = Path(sys.executable).parent

# runs the program as its console script does, then says what it imported
PROBE = (
    "import sys\n"
    "from gradcli.cli.launch import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "heavy = sorted(m for m in ('numpy', 'tensorflow', 'keras', 'h5py') if m in sys.modules)\n"
    "print('HEAVY', heavy, file=sys.stderr)\n"
)


def complete(env: dict[str, str]) -> tuple[list[str], list[str], float]:
    """(completion lines, heavy modules imported, seconds) of one completion request."""
    full = {k: v for k, v in os.environ.items() if k not in ("COMP_WORDS", "COMP_CWORD")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - start
    heavy = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 0 and heavy.startswith("HEAVY"), proc.stderr
    return [x for x in proc.stdout.splitlines() if x], eval(heavy[len("HEAVY") :]), elapsed


def bash_words(*words: str) -> dict[str, str]:
    return {
        COMPLETE_VAR: "complete_bash",
        "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1),
    }


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_the_script_of_the_shell_named(cli, shell):
    r = cli("--show-completion", shell)
    assert r.code == 0
    assert f"{COMPLETE_VAR}=complete_{shell}" in r.out
    assert r.out.count("gradcli") >= 2


def test_install_completion_writes_the_shells_own_files(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for shell, installed in (
        ("bash", ".bash_completions/gradcli.sh"),
        ("zsh", ".zfunc/_gradcli"),
        ("fish", ".config/fish/completions/gradcli.fish"),
    ):
        r = cli("--install-completion", shell)
        assert r.code == 0, r.err
        assert f"{shell} completion installed in {tmp_path / installed}" in r.out
        assert f"complete_{shell}" in (tmp_path / installed).read_text()
    assert f"source '{tmp_path}/.bash_completions/gradcli.sh'" in (tmp_path / ".bashrc").read_text()
    assert "fpath+=~/.zfunc" in (tmp_path / ".zshrc").read_text()
    r = cli("--install-completion", "tcsh")
    assert r.code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in r.err


def test_a_completion_request_is_light_and_fast(models):
    lines, heavy, elapsed = complete(bash_words("gradcli", "wrt-l"))
    assert lines == ["wrt-layer"] and heavy == []
    args = ("gradcli", "wrt-layer", str(models["nested"]), "x.npy", "--layer", "block/")
    lines, heavy, elapsed = complete(bash_words(*args))
    assert set(lines) == {p for p, _ in layer_names(models["nested"]) if p.startswith("block/")}
    assert heavy == []  # a .keras config is read with zipfile and json
    assert elapsed < 3.0  # about 0.4 s here; generous for a busy machine
    lines, heavy, _ = complete(bash_words("gradcli", "wrt-layer", str(models["legacy_h5"]), "x"))
    assert lines == []  # completing INPUT: files, the shell's own business


def test_layer_names_complete_in_zsh_and_fish_with_their_classes(models):
    line = f"gradcli wrt-input {models['cnn']} img.npy -m gradcam --target y.npy -l "
    lines, _, _ = complete({COMPLETE_VAR: "complete_zsh", "_TYPER_COMPLETE_ARGS": line})
    assert '"conv":"Conv2D"' in "\n".join(lines)
    lines, heavy, _ = complete(
        {
            COMPLETE_VAR: "complete_fish",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
            "_TYPER_COMPLETE_ARGS": f"gradcli wrt-layer {models['legacy_h5']} x.npy --layer h",
        }
    )
    assert lines == ["h1\tDense", "h2\tDense"]
    assert "h5py" in heavy and "tensorflow" not in heavy  # an .h5's config needs h5py


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_bash_script_completes_in_bash(models):
    """The script --show-completion prints, sourced by a real bash, asked as the tab key asks."""
    script = (
        "source <(gradcli --show-completion bash)\n"
        f"COMP_WORDS=(gradcli wrt-layer {models['nested']} x.npy --layer b)\n"
        "COMP_CWORD=5\n"
        "_gradcli_completion gradcli\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "--norc", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    expected = [p for p, _ in layer_names(models["nested"]) if p.startswith("b")]
    assert proc.stdout.split() == expected and "block/inner/deep" in expected


def test_completion_starts_no_worker(monkeypatch, capsys, models):
    """launch.main would start the TensorFlow worker for `wrt-input MODEL INPUT`; asked for
    completions it must not (control: the same argv without the variable does)."""
    from gradcli.cli import launch
    from gradcli.process import supervisor

    spawned = []
    monkeypatch.setattr(supervisor, "_spawn", lambda env, debug: spawned.append(env))
    monkeypatch.delenv("GRADCLI_INPROCESS", raising=False)
    argv = ["wrt-input", str(models["linear"]), "x.npy"]
    supervisor.prestart(argv)
    assert len(spawned) == 1  # the control: this argv does start a worker
    supervisor._prestarted = None
    spawned.clear()
    for key, value in bash_words("gradcli", "wrt-input", "--cl").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        launch.main(argv)
    assert exit_info.value.code == 0 and spawned == []
    assert capsys.readouterr().out.split() == ["--class"]


@pytest.mark.parametrize("name", ["nested", "seqni", "legacy_h5", "two_io", "cnn"])
def test_layer_names_are_the_ones_gradcli_info_lists(cli, models, name):
    r = cli("info", models[name], "--json")
    assert r.code == 0
    listed = [(layer["name"], layer["class"]) for layer in json.loads(r.out)["layers"]]
    assert layer_names(models[name]) == listed


def test_hostile_or_odd_files_complete_nothing(tmp_path):
    fifo = tmp_path / "pipe.keras"
    os.mkfifo(fifo)
    assert layer_names(fifo) == []  # never opened: it would block the shell
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    big = tmp_path / "big.keras"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b" " * (CONFIG_LIMIT + 1))  # 16 MiB of blanks: 16 KB stored
    words = ("gradcli", "wrt-layer")
    for path in (fifo, tmp_path / "junk.keras", big, tmp_path / "missing.keras", tmp_path):
        lines, heavy, _ = complete(bash_words(*words, str(path), "x.npy", "--layer", ""))
        assert (lines, heavy) == ([], [])
