"""Run a job in a child process and survive TensorFlow crashing it.

TensorFlow's oneDNN CPU kernels can kill the process (SIGSEGV, SIGABRT) on some gradients.
The light CLI process never imports TensorFlow: it starts `python -P -m gradcli.process.worker`
(see _spawn: nothing in the working directory is importable there), relays
its results as they arrive, and if the child dies from SIGSEGV, SIGABRT or SIGBUS with oneDNN
on, runs the models not yet done once more with oneDNN off. Temporary files of a crashed
attempt are removed; results already relayed are not repeated.

The worker's life is tied to this process: it gets the job on a pipe that stays open as a
lifeline until it exits, and the kernel sends it SIGTERM when this process dies (see
worker.py). A worker whose parent is gone stops and never commits its output files.

One file on purpose (about 400 lines): starting, prestarting, relaying, retrying and stopping
the worker share its process state, and reading them together is how they stay consistent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradcli.commands import worker_commands
from gradcli.commands.wire import job_to_wire
from gradcli.errors import ExitCode, GradcliError, GradientError, exit_code, first_line, param
from gradcli.process.safepath import worker_env

ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"
JOB_FD_VAR = "GRADCLI_JOB_FD"
PARENT_VAR = "GRADCLI_SUPERVISOR"
# the signals oneDNN's failures end a process with; only these trigger the rerun
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (clean up, stop), but exits 143."""


_sigterm_seen = False  # a SIGTERM arrived: see check_terminated


def raise_terminated(signum: int, frame: Any) -> None:
    global _sigterm_seen
    _sigterm_seen = True
    raise Terminated


def check_terminated() -> None:
    """Raise Terminated if a SIGTERM has arrived. The handler's own exception can be lost:
    Python runs a signal handler at the next bytecode boundary, and when that falls inside a
    weakref callback or a __del__ (an import's module-lock cleanup, say) it prints "Exception
    ignored in ..." and carries on. So the run checks here before each step it cannot take
    back: handing the job to the worker, committing outputs."""
    if _sigterm_seen:
        raise Terminated


def sigterm_handled() -> None:
    """The stop a SIGTERM asked for has happened (exit 143 reported): a caller that lives on
    (tests, notebooks) starts its next run afresh."""
    global _sigterm_seen
    _sigterm_seen = False


def handle_sigterm() -> Any:
    """Make SIGTERM raise Terminated in the main thread (a no-op outside it); the handler
    it replaces is returned, to be restored by a caller that lives on (tests, notebooks)."""
    try:
        return signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread
        return None


@dataclass
class Outcome:
    exit_code: int
    records: list[dict] = field(default_factory=list)
    error: BaseException | None = None
    traceback: str | None = None


class WorkerFailed(GradcliError):
    """The worker reported an error (its exit code and message are kept)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = (
            ExitCode(code) if code in ExitCode._value2member_map_ else ExitCode.GRADIENT
        )


def onednn_setting(mode: str, environ: dict[str, str]) -> tuple[str | None, bool]:
    """The TF_ENABLE_ONEDNN_OPTS value for the first attempt, and whether a retry is allowed."""
    if mode == "on":
        return "1", False
    if mode == "off":
        return "0", False
    if ONEDNN_VAR in environ:  # the user's own setting is respected as it is
        return None, False
    return None, True  # TensorFlow's default (on), with the fallback armed


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run(
    job: Any,
    *,
    debug: bool,
    onednn: str,
    on_record: Callable[[dict], None],
    on_progress: Callable[[dict], None] | None = None,
    warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> Outcome:
    """Run `job` (a command's options dataclass, built without TensorFlow) in a worker."""
    value, may_retry = onednn_setting(onednn, dict(os.environ))
    done: set[int] = set()
    records: list[dict] = []
    attempt = 0
    while True:
        attempt += 1
        env = _worker_env(value)
        line = job_to_wire(job, skip=done, debug=debug)
        result, returncode = _attempt(line, env, debug, done, records, on_record, on_progress)
        if result is not None:
            return result
        # the worker died from a signal
        if -returncode in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            raise Terminated
        if -returncode == signal.SIGKILL:
            err = GradientError(
                "the worker process was killed (SIGKILL), most likely by the kernel's "
                f"out-of-memory killer; try a smaller {param('batch_size')}"
            )
            return Outcome(int(ExitCode.GRADIENT), records, err)
        if may_retry and attempt == 1 and -returncode in CRASH_SIGNALS:
            warn(
                f"warning: TensorFlow crashed ({_signal_name(returncode)}) in "
                f"its oneDNN CPU kernels; computing again with oneDNN off "
                f"({ONEDNN_VAR}=0: same results, roughly 2-3x slower)"
            )
            value = "0"
            continue
        on = value != "0" and os.environ.get(ONEDNN_VAR, "1") != "0"
        hint = " (--onednn off may avoid it)" if on else ""
        err = GradientError(
            f"TensorFlow crashed ({_signal_name(returncode)}) while computing"
            f"{hint}; rerun with --debug to see its output"
        )
        return Outcome(int(ExitCode.GRADIENT), records, err)


def _attempt(
    line: bytes,
    env: dict,
    debug: bool,
    done: set[int],
    records: list[dict],
    on_record: Callable[[dict], None],
    on_progress: Callable[[dict], None] | None,
) -> tuple[Outcome | None, int]:
    """One worker run: its outcome, or None when a signal killed it; and its return code."""
    temps: list[str] = []
    error: Outcome | None = None
    worker = _take_prestarted(env, debug) or _spawn(env, debug)
    proc, lifeline = worker.proc, worker.lifeline
    with worker.raw_err as raw_err:
        try:
            # the job, then nothing: the worker sees EOF on this pipe when we are gone
            # (a worker that died before its job, e.g. killed while prestarted, is reported
            # from its exit status below, as any other)
            check_terminated()
            with contextlib.suppress(BrokenPipeError):
                os.write(lifeline, line)
            for raw in proc.stdout:
                check_terminated()
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                kind = event.get("event")
                if kind == "result":
                    done.add(int(event["index"]))
                    records.append(event["record"])
                    on_record(event["record"])
                elif kind == "progress" and on_progress:
                    on_progress(event)
                elif kind == "temp":
                    temps.append(event["path"])
                elif kind == "error":
                    error = Outcome(
                        int(event["code"]),
                        records,
                        WorkerFailed(event["message"], int(event["code"])),
                        event.get("traceback"),
                    )
            returncode = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM, or stdout closed under us: no partial output
            with _signals_held():
                _stop(proc, lifeline)
                lifeline = -1
                _remove(temps)
            raise
        finally:
            if proc.poll() is None:
                _stop(proc, lifeline)
            elif lifeline >= 0:
                os.close(lifeline)
        if returncode < 0:
            _remove(temps)
            return None, returncode
        if error is not None:
            _remove(temps)
            return error, returncode
        if returncode == int(ExitCode.INTERRUPTED):
            _remove(temps)
            raise KeyboardInterrupt
        if returncode == int(ExitCode.TERMINATED):
            _remove(temps)
            raise Terminated
        if returncode not in (0, 1) and not records:
            raw_err.seek(0)
            tail = raw_err.read().decode("utf-8", "replace").strip()
            _remove(temps)
            detail = f": {first_line(RuntimeError(tail.splitlines()[-1]))}" if tail else ""
            return Outcome(
                int(ExitCode.GRADIENT),
                records,
                GradientError(f"the worker process failed (exit {returncode}){detail}"),
            ), returncode
        return Outcome(returncode, records), returncode


@dataclass
class Worker:
    """A started worker process: waiting for its job on the lifeline pipe."""

    proc: subprocess.Popen
    lifeline: int  # our end of the job pipe; closing it tells the worker we are gone
    raw_err: Any  # a temp file holding its stderr (unless debug)
    env: dict[str, str]  # the environment it was started with (before our own variables)
    debug: bool


def _spawn(env: dict[str, str], debug: bool) -> Worker:
    """Start the worker; it begins importing TensorFlow at once. `-P` and a clean
    PYTHONPATH (safepath.py): `-m` would put the working directory first on sys.path, and a
    `numpy.py` or `gradcli/` planted where gradcli runs would run in the worker."""
    raw_err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the attempt or discard
    job_r, lifeline = os.pipe()
    full = {**worker_env(env), JOB_FD_VAR: str(job_r), PARENT_VAR: str(os.getpid())}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "gradcli.process.worker"],
            stdout=subprocess.PIPE,
            stderr=None if debug else raw_err,
            env=full,
            pass_fds=(job_r,),
        )
    except BaseException:
        os.close(lifeline)
        raw_err.close()
        raise
    finally:
        os.close(job_r)
    return Worker(proc, lifeline, raw_err, dict(env), debug)


# A worker started before the command line was parsed (see prestart), waiting for its job.
_prestarted: Worker | None = None


def prestart(argv: list[str]) -> None:
    """Start the worker now, before the command line is parsed, so that its TensorFlow import
    (about 3.5 s) overlaps the CLI's own start-up and checks: only when argv names a command
    that runs in a worker and asks for no help or version. `run` uses it when the parsed job
    wants the same environment; otherwise, or when parsing fails, it is killed unheard."""
    global _prestarted
    if _prestarted is not None or not wants_worker(argv):
        return
    onednn = _scan_option(argv, "--onednn") or "auto"
    if onednn not in ("auto", "on", "off"):
        return  # a bad value: parsing will say so
    value, _ = onednn_setting(onednn, dict(os.environ))
    debug = "--debug" in argv or os.environ.get("GRADCLI_DEBUG", "") not in ("", "0")
    handle_sigterm()  # from now on SIGTERM is a clean stop (exit 143), as once the job runs
    try:
        _prestarted = _spawn(_worker_env(value), debug)
    except OSError:  # no worker now: `run` starts one as before
        _prestarted = None


def wants_worker(argv: list[str]) -> bool:
    """argv names a command that runs in a worker, and asks for no help or version."""
    if os.environ.get("GRADCLI_INPROCESS", "") not in ("", "0") or not argv:
        return False
    if argv[0] not in worker_commands():
        return False
    # `-` (stdin): the CLI first spools stdin into a file the worker must inherit as fd 0
    return not any(a in ("-h", "--help", "-V", "--version", "-") for a in argv[1:])


def _scan_option(argv: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in argv (the last one wins, as in parsing)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _worker_env(onednn_value: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if onednn_value is not None:
        env[ONEDNN_VAR] = onednn_value
    return env


def _take_prestarted(env: dict[str, str], debug: bool) -> Worker | None:
    """The prestarted worker, if it was started with the environment this attempt wants."""
    global _prestarted
    worker, _prestarted = _prestarted, None
    if worker is None:
        return None
    if worker.env == env and worker.debug == debug:
        return worker  # even if it has died since: that is this attempt's outcome
    _discard(worker)
    return None


def discard_prestarted() -> None:
    """Kill a prestarted worker that was never given a job (parsing failed, --help, ...)."""
    global _prestarted
    worker, _prestarted = _prestarted, None
    if worker is not None:
        _discard(worker)


def _discard(worker: Worker) -> None:
    with contextlib.suppress(OSError):
        os.close(worker.lifeline)
    with contextlib.suppress(OSError):
        worker.proc.kill()  # SIGKILL: it holds no temp files yet and must print nothing
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        worker.proc.wait(timeout=5)
    if worker.proc.stdout is not None:
        worker.proc.stdout.close()
    worker.raw_err.close()


def _stop(proc: subprocess.Popen, lifeline: int) -> None:
    """Stop the worker: close its lifeline (it cleans up and exits at once, even inside
    TensorFlow's C++ code), tell it with SIGINT too; kill it if it is not gone in 5 s."""
    if lifeline >= 0:
        os.close(lifeline)
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _signals_held():
    """While cleaning up after Ctrl-C or SIGTERM, a second one must not cut the cleanup short."""
    try:
        saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        saved = {}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _remove(paths: list[str]) -> None:
    for p in paths:
        path = Path(p)
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def run_inprocess(
    job: Any,
    *,
    debug: bool,
    on_record: Callable[[dict], None],
    on_progress: Callable[[dict], None] | None = None,
) -> Outcome:
    """The same run without a child process (GRADCLI_INPROCESS=1): faster to start, used by
    tests and notebooks, but a TensorFlow crash then ends the caller too."""
    from gradcli.jobs.runner import run_job

    records: list[dict] = []

    def emit(event: str, **fields: Any) -> None:
        if event == "result":
            records.append(fields["record"])
            on_record(fields["record"])
        elif event == "progress" and on_progress:
            on_progress({"event": event, **fields})

    try:
        code = run_job(job, emit)
    except Exception as exc:  # noqa: BLE001 - out of memory too; cli._fail renders it
        return Outcome(exit_code(exc), records, exc)
    return Outcome(code, records)
