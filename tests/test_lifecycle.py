"""Process life and output integrity, with real processes and real signals.

A killed or failed run changes nothing at its output paths, leaves no temp files after
SIGTERM/SIGINT, and no worker outlives gradcli; FIFOs, devices and symlink loops are refused
or walked in seconds; `-` reads INPUT from stdin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, npz, run_process
from gradcli.errors import first_line
from gradcli.io.outputs import Outputs
from gradcli.io.paths import find_models, remove_stale_temps

HOOKS = Path(__file__).with_name("lifecycle_hooks.py")
MODEL = SAMPLES / "tabular_mlp.keras"
X = SAMPLES / "tabular_x.npy"
OLD = b"the previous result"


# ------------------------------------------------------------------ helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (what /proc says; no psutil)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _reference() -> np.ndarray:
    """d sum(model(x)) / dx for MODEL on X by a plain tape."""
    from conftest import load
    from gradcli.load.backend import tf

    model = load(MODEL)
    x = tf.constant(np.load(X))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x))
    return tape.gradient(y, x).numpy()


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", **extra}
    env.pop("GRADCLI_INPROCESS", None)
    return env


@dataclass
class Case:
    """One gradcli run, killed with `sig` sent to `target` at `moment`."""

    moment: str
    sig: signal.Signals
    target: str  # gradcli | group | worker
    root: Path
    proc: subprocess.Popen | None = None
    worker: int | None = None
    killed_at: float = 0.0
    exited_at: float = 0.0
    worker_gone_at: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def out(self) -> Path:
        return self.out_dir / "g.npz"

    @property
    def mark(self) -> Path:
        return self.root / "mark"

    def start(self) -> None:
        self.out_dir.mkdir(parents=True)
        self.out.write_bytes(OLD)
        args = ["wrt-input", MODEL, X, "-o", self.out, "-b", "2", "-q"]
        env = _env()
        if self.moment != "startup":
            args += ["--import", HOOKS]
            env.update(GRADCLI_TEST_HOOK=self.moment, GRADCLI_TEST_MARK=str(self.mark))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradcli", *map(str, args)],
            cwd=ROOT,
            env=env,
            stdout=open(self.root / "stdout", "wb"),  # noqa: SIM115 - closed with the process
            stderr=open(self.root / "stderr", "wb"),  # noqa: SIM115
            start_new_session=True,  # gradcli leads its own process group
        )

    def ready(self) -> bool:
        if self.worker is None:
            kids = _children(self.proc.pid)
            self.worker = kids[0] if kids else None
        if self.worker is None:
            return False
        return self.moment == "startup" or self.mark.exists()

    def kill(self) -> None:
        if (
            self.moment == "startup"
            and "tensorflow" in Path(f"/proc/{self.worker}/maps").read_text()
        ):
            self.notes.append("TensorFlow was already loaded")
        self.killed_at = time.monotonic()
        if self.target == "gradcli":
            os.kill(self.proc.pid, self.sig)
        elif self.target == "group":
            os.killpg(self.proc.pid, self.sig)
        else:
            os.kill(self.worker, self.sig)

    def finish(self) -> None:
        self.proc.wait(timeout=60)
        self.exited_at = time.monotonic()
        deadline = self.exited_at + 5
        while time.monotonic() < deadline and _alive(self.worker):
            time.sleep(0.02)
        if not _alive(self.worker):
            self.worker_gone_at = time.monotonic()

    def stderr(self) -> str:
        return (self.root / "stderr").read_text()


def _run_cases(tmp_path: Path, moment: str) -> list[Case]:
    cases = [
        Case(moment, sig, target, tmp_path / f"{sig.name}-{target}")
        for sig in (signal.SIGKILL, signal.SIGTERM)
        for target in ("gradcli", "group", "worker")
    ]
    for case in cases:
        case.start()
    try:
        waiting = list(cases)
        deadline = time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            for case in list(waiting):
                assert case.proc.poll() is None, (
                    f"{case.target}: gradcli ended early\n{case.stderr()}"
                )
                if case.ready():
                    case.kill()
                    waiting.remove(case)
            time.sleep(0.02)
        assert not waiting, "never reached the moment to kill"
        for case in cases:
            case.finish()
    finally:
        for case in cases:
            if case.proc.poll() is None:
                os.killpg(case.proc.pid, signal.SIGKILL)
                case.proc.wait()
    return cases


def _check(case: Case) -> None:
    what = f"{case.moment}, {case.sig.name} to {case.target}"
    err = case.stderr()
    # no process outlives gradcli by more than a second
    assert case.worker_gone_at is not None, f"{what}: the worker outlived gradcli"
    assert case.worker_gone_at - case.exited_at < 1.0, what
    # -o keeps its old content: every moment here is before the commit
    assert case.out.read_bytes() == OLD, what
    leftovers = sorted(p.name for p in case.out_dir.iterdir() if p.name != "g.npz")
    code = case.proc.returncode
    if case.sig == signal.SIGTERM:
        assert leftovers == [], f"{what}: {leftovers}"
        assert code == 143, f"{what}: exit {code}\n{err}"
        assert "Traceback" not in err
        if case.target == "worker" or case.moment != "startup":
            assert err.strip().endswith("terminated"), f"{what}: {err}"
    elif case.target == "worker":
        # a SIGKILLed worker is not a oneDNN crash: no rerun, its own message, exit 4
        assert code == 4, f"{what}: exit {code}\n{err}"
        assert "warning" not in err
        assert "killed (SIGKILL)" in err and "--batch-size" in err, err
        assert leftovers == [], f"{what}: {leftovers}"
    else:
        assert code == -signal.SIGKILL, what
        if case.target == "gradcli":
            # the orphaned worker cleans up after itself before it goes
            assert leftovers == [], f"{what}: {leftovers}"
        # killed together, nobody could clean up: the next run removes the leftovers
        assert sorted(p.name for p in remove_stale_temps(case.out)) == leftovers, what
        assert sorted(p.name for p in case.out_dir.iterdir()) == ["g.npz"], what


@pytest.mark.parametrize("moment", ["startup", "midbatch", "commit"])
def test_killed_runs_change_nothing_and_leave_no_process(tmp_path, moment):
    cases = _run_cases(tmp_path, moment)
    for case in cases:
        _check(case)


def test_hooked_run_completes_with_the_new_result(tmp_path):
    """The hook only delays: the same run, not killed, writes the full result."""
    out = tmp_path / "g.npz"
    out.write_bytes(OLD)
    r = run_process(
        "wrt-input", MODEL, X, "-o", out, "-b", "2", "-q", "--import", HOOKS, "--json",
        env=_env(GRADCLI_TEST_HOOK="commit", GRADCLI_TEST_MARK=str(tmp_path / "m"),
                 GRADCLI_TEST_SLEEP="0"),
    )  # fmt: skip
    assert r.code == 0, r.err
    np.testing.assert_allclose(npz(out)["features"], _reference(), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "m").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "m"]


# ------------------------------------------------------------------ outputs checked up front


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory nobody can create files in, root included (root ignores permissions)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    for d in (Path("/sys/kernel"), Path("/proc/self")):
        try:
            (d / "probe").open("w").close()
        except OSError:
            return d
    pytest.skip("no directory here is read-only for root")


@pytest.mark.parametrize("where", ["read-only", "parent-is-a-file"])
def test_unwritable_png_fails_before_work_and_keeps_out(tmp_path, where):
    out = tmp_path / "out.npz"
    out.write_bytes(OLD)
    parent = _unwritable_dir(tmp_path) if where == "read-only" else out
    png = parent / "flow.png"
    start = time.monotonic()
    r = run_process("wrt-weights", MODEL, X, "-o", out, "--png", png)
    assert r.code == 3, r.err
    assert r.err.startswith(f"error: --png {png}: cannot write"), r.err
    assert r.err.count("\n") == 1 and ".tmp" not in r.err
    assert time.monotonic() - start < 5  # refused before TensorFlow loads (3.5 s alone)
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.npz"] + (["ro"] if (tmp_path / "ro").exists() else [])
    )


def test_devices_are_refused_and_never_get_a_suffix(tmp_path):
    r = run_process("wrt-input", MODEL, X, "-o", "/dev/full")
    assert r.code == 3
    assert "error: --out /dev/full: is a character device, not a regular file" in r.err
    assert not Path("/dev/full.npz").exists()
    r = run_process("wrt-input", MODEL, X, "-o", tmp_path)
    assert r.code == 3 and "is a directory" in r.err


def test_outputs_commit_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.png"
    a.write_bytes(b"old a")
    with Outputs() as outputs:
        outputs.stage_file(a).write_bytes(b"new a")
        outputs.stage_file(b).write_bytes(b"new b")
        assert a.read_bytes() == b"old a" and not b.exists()
        outputs.commit()
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.png"]
    # the second rename fails (a non-empty directory is in the way): the first is undone
    b.unlink()
    b.mkdir()
    (b / "x").write_text("x")
    outputs = Outputs()
    outputs.stage_file(a).write_bytes(b"newer a")
    outputs.stage_file(b).write_bytes(b"newer b")
    with pytest.raises(Exception, match="cannot write"):
        outputs.commit()
    assert a.read_bytes() == b"new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.png"]
    # a heatmap directory arrives whole; an abort leaves nothing
    with Outputs() as outputs:
        stage = outputs.stage_dir(tmp_path / "maps")
        (stage / "x_0000.png").write_bytes(b"png")
        outputs.commit()
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["x_0000.png"]
    with pytest.raises(RuntimeError), Outputs() as outputs:
        outputs.stage_file(a).write_bytes(b"never")
        outputs.stage_dir(tmp_path / "maps")
        raise RuntimeError
    assert a.read_bytes() == b"new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.png", "maps"]


def test_stale_temps_are_removed_only_when_their_process_is_gone(tmp_path):
    out = tmp_path / "g.npz"
    dead = subprocess.Popen(["true"])
    dead.wait()
    from gradcli.io.paths import _HOST

    stale = tmp_path / f".g.npz.{dead.pid}@{_HOST}.abcd1234.tmp"
    live = tmp_path / f".g.npz.{os.getppid()}@{_HOST}.abcd1234.part"
    other = tmp_path / f".other.npz.{dead.pid}@{_HOST}.abcd1234.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    (tmp_path / f".g.npz.{dead.pid}@{_HOST}.dir12345.tmp").mkdir()
    removed = remove_stale_temps(out, started=time.time() + 1)
    assert sorted(p.name for p in removed) == sorted(
        [stale.name, f".g.npz.{dead.pid}@{_HOST}.dir12345.tmp"]
    )
    assert live.exists() and other.exists()
    assert remove_stale_temps(out, started=0) == []  # too new to be a leftover of an old run


# ------------------------------------------------------------------ inputs that would hang


def test_fifo_inputs_are_refused_at_once(tmp_path):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    cases = [
        ("wrt-input", MODEL, fifo),
        ("wrt-input", MODEL, X, "--target", fifo),
        ("wrt-input", MODEL, X, "-m", "integrated", "--baseline", fifo),
        ("info", fifo.with_name("m.keras")),
    ]
    os.mkfifo(tmp_path / "m.keras")
    for args in cases:
        start = time.monotonic()
        r = run_process(*args, timeout=20)
        assert time.monotonic() - start < 5
        assert r.code == 3, r.err
        assert "is a FIFO (named pipe), not a regular file" in r.err
        assert r.err.count("\n") == 1


def test_model_directory_with_fifo_and_symlink_loops(tmp_path):
    d = tmp_path / "models"
    (d / "sub").mkdir(parents=True)
    (d / "a.keras").write_bytes(MODEL.read_bytes())
    os.mkfifo(d / "b.keras")
    (d / "loop").symlink_to("..")  # two loops: 2**depth paths if followed blindly
    (d / "sub" / "up").symlink_to("../..")
    (d / "same").symlink_to("sub")  # one directory under two names: listed once
    (d / "dangling").symlink_to("nowhere")
    assert find_models(d) == [d / "a.keras", d / "b.keras"]
    start = time.monotonic()
    r = run_process("wrt-weights", d, X, "--json", timeout=60)
    assert time.monotonic() - start < 30
    records = [json.loads(line) for line in r.out.splitlines()]
    assert [Path(rec["model"]).name for rec in records] == ["a.keras", "b.keras"]
    assert records[0]["exit_code"] == 0
    assert "is a FIFO (named pipe)" in records[1]["error"] and records[1]["exit_code"] == 3
    assert r.code == 3


def test_stdin_as_input_equals_the_file(tmp_path):
    data = X.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "gradcli", "wrt-input", str(MODEL), "-", "-o", str(tmp_path / "s")],
        input=data,
        capture_output=True,
        cwd=ROOT,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(
        npz(tmp_path / "s.npz")["features"], _reference(), rtol=1e-5, atol=1e-6
    )
    r = subprocess.run(
        [sys.executable, "-m", "gradcli", "wrt-input", str(MODEL), "-"],
        input=b"not an array",
        capture_output=True,
        text=False,
        cwd=ROOT,
        env=_env(),
        timeout=60,
    )
    assert r.returncode == 3
    assert b"input - (stdin): neither a .npy nor an .npz" in r.stderr
    r = run_process("wrt-input", MODEL, "-", "--target", "-")
    assert r.code == 2 and "only one of input and target can be -" in r.err


def test_stdin_npz_is_read_by_key(tmp_path):
    from gradcli.io.arrays import read_arrays

    np.savez(tmp_path / "x.npz", a=np.ones((3, 2), np.float32), b=np.zeros((3, 4), np.int8))
    saved = os.dup(0)
    r, w = os.pipe()
    try:
        os.write(w, (tmp_path / "x.npz").read_bytes())
        os.close(w)
        os.dup2(r, 0)
        got = read_arrays("-", ["b", "a"], "input")
        assert got["a"].label == "input - (stdin)[a]"
        np.testing.assert_array_equal(got["a"].read(0, 3), np.ones((3, 2)))
        np.testing.assert_array_equal(got["b"].read(0, 3), np.zeros((3, 4)))
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)


# ------------------------------------------------------------------ messages


def test_first_line_carries_tensorflows_reason():
    text = (
        "Graph execution error:\n\nDetected at node EagerPyFunc defined at (most recent call "
        'last):\n  File "m.py", line 10, in <module>\n\nValueError: boom\nTraceback (most '
        "recent call last):\n\n  File ...\n\n\t [[{{node EagerPyFunc}}]] [Op:__inference_f_8]"
    )
    assert first_line(ValueError(text)) == "Graph execution error: ValueError: boom"
    label = (
        "Graph execution error:\n\nDetected at node Sparse defined at (most recent call last):"
        '\n  File "x.py", line 1, in g\n\nReceived a label value of 7 which is outside the '
        "valid range of [0, 3).  Label values: 7 1\n\t [[{{node Sparse}}]]"
    )
    assert first_line(RuntimeError(label)).startswith(
        "Graph execution error: Received a label value of 7"
    )
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("\n\nfirst\nsecond")) == "first"
    assert first_line(ValueError("nothing after:")) == "nothing after:"
