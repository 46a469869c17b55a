"""What only a real process shows: the worker, crashes, interrupts, atomic output, stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, npz, run_process

# A custom layer (loaded with --import) that behaves like TensorFlow's oneDNN crash: when armed
# (CRASHY_ARMED=1, set only for the gradcli processes under test) it kills its process with
# SIGSEGV whenever oneDNN is on, and is an identity otherwise. It also can sleep.
CRASHY = textwrap.dedent("""
    import os, signal, time
    import keras

    @keras.saving.register_keras_serializable(package="test")
    class Crashy(keras.layers.Layer):
        def __init__(self, sleep=0.0, **kwargs):
            super().__init__(**kwargs)
            self.sleep = sleep

        def call(self, x):
            armed = os.environ.get("CRASHY_ARMED") == "1"
            if armed and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0":
                os.kill(os.getpid(), signal.SIGSEGV)
            if self.sleep:
                time.sleep(self.sleep)
            return x

        def get_config(self):
            return {**super().get_config(), "sleep": self.sleep}
""")


ARMED = {"CRASHY_ARMED": "1"}


@pytest.fixture(scope="session")
def crashy(tmp_path_factory, keras):
    d = tmp_path_factory.mktemp("crashy")
    (d / "crashy_layer.py").write_text(CRASHY)
    sys.path.insert(0, str(d))
    try:
        import crashy_layer
    finally:
        sys.path.remove(str(d))
    # sleepy sleeps at each call: when the model is built and loaded, and again when traced
    for name, sleep in (("crashy", 0.0), ("sleepy", 4.0)):
        x = keras.Input((4,), name="x")
        h = crashy_layer.Crashy(sleep=sleep, name="crash")(x)
        model = keras.Model(x, keras.layers.Dense(2, name="dense")(h))
        model.save(d / f"{name}.keras")
    np.save(d / "x.npy", np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))
    return d


def test_worker_result_equals_in_process_and_stdout_is_only_json(cli, tmp_path):
    args = ["wrt-input", SAMPLES / "tabular_mlp.keras", SAMPLES / "tabular_x.npy", "--json"]
    r = run_process(*args, "-o", tmp_path / "p.npz")
    assert r.code == 0, r.err
    assert r.err == ""  # TensorFlow's start-up chatter stays out of the user's terminal
    lines = r.out.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["command"] == "wrt-input"
    assert cli(*args, "-o", tmp_path / "i.npz").code == 0
    np.testing.assert_array_equal(
        npz(tmp_path / "p.npz")["features"], npz(tmp_path / "i.npz")["features"]
    )


def test_errors_from_the_worker_are_one_line(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 11), np.float32))
    r = run_process("wrt-input", SAMPLES / "tabular_mlp.keras", tmp_path / "bad.npy")
    assert r.code == 3
    assert r.out == ""
    assert r.err.strip().count("\n") == 0
    assert "expected shape (N, 10)" in r.err and "Traceback" not in r.err
    r = run_process("wrt-input", SAMPLES / "tabular_mlp.keras", tmp_path / "bad.npy", "--debug")
    assert r.code == 3 and "Traceback" in r.err


@pytest.mark.parametrize("command", ["wrt-input", "wrt-weights"])
def test_crash_with_onednn_on_is_rerun_with_it_off(crashy, tmp_path, command):
    out = tmp_path / "g.npz"
    r = run_process(
        command,
        crashy / "crashy.keras",
        crashy / "x.npy",
        "--import",
        crashy / "crashy_layer.py",
        "--json",
        "-o",
        out,
        env=ARMED,
    )
    assert r.code == 0, r.err
    warnings = r.err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: TensorFlow crashed (SIGSEGV)")
    assert "oneDNN off" in warnings[0]
    assert len(r.out.splitlines()) == 1  # one record, none from the crashed attempt
    # the identity layer then Dense: d sum(y) / dx = row sums of the kernel
    from conftest import load

    sys.path.insert(0, str(crashy))
    try:
        import crashy_layer  # noqa: F401 - registers the layer for loading

        kernel = load(crashy / "crashy.keras").get_layer("dense").kernel.numpy()
    finally:
        sys.path.remove(str(crashy))
    if command == "wrt-input":
        np.testing.assert_allclose(npz(out)["x"], np.tile(kernel.sum(axis=1), (6, 1)), rtol=1e-6)
    else:  # d mean_i sum(x_i W + b) / dW = outer(mean x, 1); / db = 1
        x = np.load(crashy / "x.npy")
        got = npz(out)
        np.testing.assert_allclose(
            got["dense/kernel"], np.tile(x.mean(axis=0)[:, None], (1, 2)), rtol=1e-5
        )
        np.testing.assert_allclose(got["dense/bias"], np.ones(2), rtol=1e-6)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "g.npz"]
    assert leftovers == []


def test_crash_without_fallback_is_exit_4(crashy, tmp_path):
    for extra, env in (([], {**ARMED, "TF_ENABLE_ONEDNN_OPTS": "1"}), (["--onednn", "on"], ARMED)):
        r = run_process(
            "wrt-weights",
            crashy / "crashy.keras",
            crashy / "x.npy",
            "--import",
            crashy / "crashy_layer.py",
            "-o",
            tmp_path / "w.npz",
            *extra,
            env=env,
        )
        assert r.code == 4
        assert r.err.strip().startswith("error: TensorFlow crashed (SIGSEGV)")
        assert "--onednn off" in r.err
        assert r.out == ""
        assert list(tmp_path.iterdir()) == []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_leaves_no_output_and_exits_130(crashy, tmp_path):
    out = tmp_path / "g.npz"
    out.write_bytes(b"previous result")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    env.pop("GRADCLI_INPROCESS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradcli",
            "wrt-input",
            str(crashy / "sleepy.keras"),
            str(crashy / "x.npy"),
            "--import",
            str(crashy / "crashy_layer.py"),
            "-o",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a shell starts background jobs with SIGINT ignored, and Python then never turns
        # it into KeyboardInterrupt: give gradcli the disposition a terminal would
        preexec_fn=_default_sigint,
    )
    # wait until the worker is computing (its temp file exists), then press Ctrl-C
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        time.sleep(0.2)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), "worker never started"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]
    assert "Traceback" not in stderr


def test_console_script_is_installed():
    script = ROOT / ".venv" / "bin" / "gradcli"
    if not script.exists():
        pytest.skip("not running from the project's .venv")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("gradcli ")


def test_closed_stdout_stops_quietly(tmp_path):
    cmd = (
        f"{sys.executable} -m gradcli wrt-weights {SAMPLES / 'checkpoints'} "
        f"{SAMPLES / 'tabular_x.npy'} --json 2>err.txt | head -c 10 >/dev/null; "
        "echo ${PIPESTATUS[0]}; cat err.txt"
    )
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "0", proc.stdout
    assert "Traceback" not in proc.stdout and "error" not in proc.stdout


def test_a_sigterm_whose_exception_python_drops_still_stops_the_run():
    """A signal handler that runs inside a weakref callback (as one did inside an import's
    module-lock cleanup while gradcli was starting) has its exception printed and dropped by
    Python: the run went on and committed its output. The SIGTERM is remembered, and the
    checks before handing over the job and before each commit raise it."""
    script = textwrap.dedent("""
        import os, signal, weakref
        from gradcli.process import supervisor

        supervisor.handle_sigterm()

        class Thing:
            pass

        thing = Thing()
        ref = weakref.ref(thing, lambda _: [os.kill(os.getpid(), signal.SIGTERM), sum(range(9))])
        del thing  # the handler raises inside the callback: printed, dropped
        print("carried on")
        try:
            supervisor.check_terminated()
        except supervisor.Terminated:
            print("stopped")
    """)
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.stdout.split() == ["carried", "on", "stopped"], r.stdout + r.stderr
    assert "Exception ignored" in r.stderr


def test_the_worker_leaves_without_the_interpreter_teardown():
    """With TensorFlow loaded, the interpreter's teardown takes about 0.7 s that the user
    waits for: the worker skips it (worker.leave), but still does what a normal exit does
    for us: other threads joined, atexit handlers run, buffered output flushed, its code."""
    script = textwrap.dedent("""
        import atexit, sys, threading, time
        from gradcli.process.worker import leave

        class Teardown:
            def __del__(self):
                sys.stdout.write("teardown\\n")
                sys.stdout.flush()

        kept = Teardown()  # a module global: destroyed only by the interpreter's teardown
        atexit.register(lambda: sys.stdout.write("atexit\\n"))
        threading.Thread(target=lambda: (time.sleep(0.3), sys.stdout.write("thread "))).start()
        sys.stdout.write("buffered ")
        sys.stderr.write("err")
        leave(7)
    """)
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 7, r.stderr
    assert r.stdout == "buffered thread atexit\n"
    assert r.stderr == "err"
