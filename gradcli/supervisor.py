"""Run a job in a child process and survive TensorFlow crashing it.

TensorFlow's oneDNN CPU kernels can kill the process (SIGSEGV, SIGABRT) on some gradients.
The light CLI process never imports TensorFlow: it starts `python -m gradcli.worker`, relays
its results as they arrive, and if the child dies from a signal with oneDNN on, runs the
models not yet done once more with oneDNN off. Temporary files of a crashed attempt are
removed; results already relayed are not repeated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ExitCode, GradcliError, GradientError

ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"


@dataclass
class Outcome:
    exit_code: int
    records: list[dict] = field(default_factory=list)
    error: GradcliError | None = None
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
    """Run `job` (a jobs.Job, built without importing TensorFlow) in a worker process."""
    value, may_retry = onednn_setting(onednn, dict(os.environ))
    done: set[int] = set()
    records: list[dict] = []
    attempt = 0
    while True:
        attempt += 1
        env = dict(os.environ)
        if value is not None:
            env[ONEDNN_VAR] = value
        data = asdict(job)
        data["skip"] = sorted(set(data.get("skip") or []) | done)
        data["debug"] = debug
        result, returncode = _attempt(data, env, debug, done, records, on_record, on_progress)
        if result is not None:
            return result
        # the worker died from a signal
        if may_retry and attempt == 1:
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
    data: dict,
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
    with tempfile.TemporaryFile() as raw_err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gradcli.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug else raw_err,
            env=env,
        )
        try:
            proc.stdin.write(json.dumps(data).encode("utf-8"))
            proc.stdin.close()
            for line in proc.stdout:
                try:
                    event = json.loads(line)
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
        except BaseException:  # Ctrl-C, or stdout closed under us: no half-written output
            _stop(proc)
            _remove(temps)
            raise
        finally:
            if proc.poll() is None:
                _stop(proc)
        if returncode < 0:
            _remove(temps)
            return None, returncode
        if error is not None:
            _remove(temps)
            return error, returncode
        if returncode == int(ExitCode.INTERRUPTED):
            _remove(temps)
            raise KeyboardInterrupt
        if returncode not in (0, 1) and not records:
            raw_err.seek(0)
            tail = raw_err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
            _remove(temps)
            detail = f": {tail[-1][:300]}" if tail else ""
            return Outcome(
                int(ExitCode.GRADIENT),
                records,
                GradientError(f"the worker process failed (exit {returncode}){detail}"),
            ), returncode
        return Outcome(returncode, records), returncode


def _stop(proc: subprocess.Popen) -> None:
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        proc.wait()


def _remove(paths: list[str]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def run_inprocess(
    job: Any,
    *,
    debug: bool,
    on_record: Callable[[dict], None],
    on_progress: Callable[[dict], None] | None = None,
) -> Outcome:
    """The same run without a child process (GRADCLI_INPROCESS=1): faster to start, used by
    tests and notebooks, but a TensorFlow crash then ends the caller too."""
    import traceback

    from .runner import run_job

    records: list[dict] = []

    def emit(event: str, **fields: Any) -> None:
        if event == "result":
            records.append(fields["record"])
            on_record(fields["record"])
        elif event == "progress" and on_progress:
            on_progress({"event": event, **fields})

    try:
        code = run_job(job, emit)
    except GradcliError as exc:
        return Outcome(int(exc.exit_code), records, exc, traceback.format_exc() if debug else None)
    except MemoryError:
        return Outcome(
            int(ExitCode.GRADIENT),
            records,
            GradientError("out of memory; try a smaller --batch-size"),
        )
    return Outcome(code, records)
