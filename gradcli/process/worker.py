"""The child process that does the TensorFlow work of one CLI run (see supervisor.py).

It reads a Job as JSON from the pipe named by GRADCLI_JOB_FD (stdin when run by hand) and
writes JSON events, one per line, to the pipe that was its stdout; its own fd 1 is pointed
at stderr so stray prints cannot corrupt the protocol. Its stdin stays the user's (INPUT -).

Its life is tied to the supervisor's: the kernel sends it SIGTERM when the supervisor dies
(prctl PR_SET_PDEATHSIG on Linux), and a thread watches the job pipe, which the supervisor
keeps open: at EOF the supervisor is gone, and the worker removes its temp files and exits
at once, even while the main thread is inside TensorFlow. Every commit of output files runs
under a guard that refuses it once the supervisor is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import NoReturn

_PR_SET_PDEATHSIG = 1


class _Lifeline:
    """The supervisor's liveness, as seen from the worker."""

    def __init__(self, fd: int, parent: int | None) -> None:
        self.fd = fd
        self.parent = parent
        self.gone = threading.Event()
        self.lock = threading.Lock()  # held while output files are renamed into place
        self.temps: list[str] = []

    def alive(self) -> bool:
        if self.gone.is_set():
            return False
        if self.parent is not None and os.getppid() != self.parent:
            return False
        try:  # the supervisor writes nothing after the job: readable means EOF
            readable, _, _ = select.select([self.fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def watch(self) -> None:
        """Thread body: block until the supervisor closes the pipe (or dies), then stop."""
        try:
            while os.read(self.fd, 4096):
                pass
        except OSError:
            pass
        self.gone.set()
        with self.lock:  # a commit already under way finishes; none starts after this
            for temp in self.temps:
                _remove(temp)
            os._exit(143)

    @contextlib.contextmanager
    def committing(self):
        from gradcli.process.supervisor import Terminated, check_terminated

        with self.lock:
            if not self.alive():
                raise Terminated
            check_terminated()  # a SIGTERM whose exception was lost on the way
            yield


def _remove(path: str) -> None:
    import shutil

    p = Path(path)
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _arm_parent_death(parent: int | None) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies; stop now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - the lifeline still works
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(143)


# Keras imports matplotlib.pyplot at start-up (for keras.visualization, about 0.4-0.9 s) when
# it is installed; the worker never draws through Keras, and pictures.py imports matplotlib
# itself when a run writes a PNG.
_NOT_AT_START = ("matplotlib",)


class _Deferred:
    """A meta-path finder that makes `import matplotlib` fail while Keras is imported (Keras
    catches the ImportError and goes on without it); removed right after."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name.split(".", 1)[0] in _NOT_AT_START:
            raise ImportError(f"{name} is imported later, when a picture is drawn")
        return None


class _JobReader:
    """Reads the job line in a thread while the main thread imports TensorFlow (about 3.5 s
    on one core), then hashes the job's model and input files on the idle core (their sha256
    goes into every output's provenance: hashes.prehash)."""

    def __init__(self, fd: int) -> None:
        from gradcli.io.hashes import prehash

        self._prehash = prehash
        self._fd = fd
        self._line = b""
        self._read = threading.Event()
        threading.Thread(target=self._run, name="job-reader", daemon=True).start()

    def _run(self) -> None:
        try:
            while not self._line.endswith(b"\n"):
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    break
                self._line += chunk
        except OSError:
            pass
        finally:
            self._read.set()
        try:
            data = json.loads(self._line)
            fields = ("model", "input", "target", "baseline")
            self._prehash([data[f] for f in fields if isinstance(data.get(f), str)])
        except Exception:  # noqa: BLE001 - only a head start: the run hashes what it must itself
            pass

    def line(self) -> bytes:
        """The job line (empty when the supervisor went away without one)."""
        self._read.wait()
        return self._line


def import_backend() -> None:
    """Import TensorFlow and Keras (gradcli.load.backend) without what a run does not need."""
    if "gradcli.load.backend" in sys.modules:
        return
    blocker = None
    if not any(m in sys.modules for m in _NOT_AT_START):
        blocker = _Deferred()
        sys.meta_path.insert(0, blocker)
    try:
        from gradcli.load import backend  # noqa: F401 - the import is the point
    finally:
        if blocker is not None:
            sys.meta_path.remove(blocker)


def main() -> int:
    from gradcli.process.supervisor import Terminated

    try:
        return _main()
    except Terminated:  # SIGTERM before the job ran (e.g. while reading it)
        return 143
    except KeyboardInterrupt:
        return 130


def _main() -> int:
    from gradcli.process.supervisor import (
        JOB_FD_VAR,
        PARENT_VAR,
        Terminated,
        check_terminated,
        handle_sigterm,
    )

    parent = int(os.environ[PARENT_VAR]) if os.environ.get(PARENT_VAR) else None
    _arm_parent_death(parent)
    handle_sigterm()
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job_fd = int(os.environ.get(JOB_FD_VAR, "0"))
    # TensorFlow first: the supervisor may have started us before the command line was even
    # parsed (supervisor.prestart); the job is read meanwhile, and its files hashed
    reader = _JobReader(job_fd)
    import_backend()
    line = reader.line()
    if not line.strip():  # the supervisor went away without a job (parsing failed): no output
        return 0
    from gradcli.commands.wire import job_from_wire

    job, debug = job_from_wire(line)
    if debug:  # commands add their own `debug:` lines on stderr (shown only with --debug)
        os.environ["GRADCLI_DEBUG"] = "1"
    lifeline = None
    if job_fd != 0:
        lifeline = _Lifeline(job_fd, parent)
        threading.Thread(target=lifeline.watch, name="lifeline", daemon=True).start()

    def emit(event: str, **fields) -> None:
        if event == "temp" and lifeline is not None:
            lifeline.temps.append(fields["path"])
        protocol.write(json.dumps({"event": event, **fields}) + "\n")
        protocol.flush()

    try:
        from gradcli.errors import ExitCode, exit_code, marked

        if lifeline is not None:
            from gradcli.io.outputs import set_commit_guard

            set_commit_guard(lifeline.committing)
        try:
            check_terminated()
            code = _run(job, emit)
        except Terminated:
            return int(ExitCode.TERMINATED)
        except KeyboardInterrupt:
            return int(ExitCode.INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - out of memory too; cli._fail renders it
            emit(
                "error",
                code=exit_code(exc),
                message=marked(exc),
                traceback=traceback.format_exc() if debug else None,
            )
            return exit_code(exc)
        return code
    finally:
        with contextlib.suppress(OSError):
            protocol.close()


def _run(job, emit) -> int:
    from gradcli.jobs.runner import run_job

    return run_job(job, emit)


def leave(code: int) -> NoReturn:
    """Exit now, without the interpreter's teardown of what it loaded.

    With TensorFlow loaded that teardown takes about 0.7 s on a 2-core machine (destructors
    of modules and of TensorFlow's C++ objects; its atexit handlers take none of it), and the
    user waits for it: the supervisor returns when its worker has exited. Nothing of ours is
    left in it: output files are committed and temp files removed before this is called. What
    a normal exit would still do is done here: other non-daemon threads joined, atexit
    handlers run (logging, weakref finalizers such as temporary directories), Python's
    standard streams flushed. A stopped run (Ctrl-C, SIGTERM, gradcli gone: 130, 143) only
    flushes them: nothing is left to finish, and a thread stuck in TensorFlow must not hold it.
    """
    if code not in (130, 143):
        with contextlib.suppress(Exception):
            for thread in threading.enumerate():
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
            atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
