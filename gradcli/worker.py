"""The child process that does the TensorFlow work of one CLI run (see supervisor.py).

It reads a Job as JSON on stdin and writes JSON events, one per line, to the pipe that was
its stdout; its own fd 1 is pointed at stderr so stray prints cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job_data = json.loads(sys.stdin.read())
    debug = bool(job_data.pop("debug", False))

    def emit(event: str, **fields) -> None:
        protocol.write(json.dumps({"event": event, **fields}) + "\n")
        protocol.flush()

    try:
        from .errors import ExitCode, GradcliError
        from .job import Job

        job = Job(**job_data)
        try:
            code = _run(job, emit)
        except GradcliError as exc:
            emit(
                "error",
                code=int(exc.exit_code),
                message=str(exc),
                traceback=traceback.format_exc() if debug else None,
            )
            return int(exc.exit_code)
        except KeyboardInterrupt:
            return int(ExitCode.INTERRUPTED)
        except MemoryError:
            emit(
                "error",
                code=int(ExitCode.GRADIENT),
                message="out of memory; try a smaller --batch-size",
                traceback=traceback.format_exc() if debug else None,
            )
            return int(ExitCode.GRADIENT)
        except Exception as exc:  # noqa: BLE001 - the one funnel for unexpected failures
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
            emit(
                "error",
                code=int(ExitCode.GRADIENT),
                message=f"{type(exc).__name__}: {first}",
                traceback=traceback.format_exc() if debug else None,
            )
            return int(ExitCode.GRADIENT)
        return code
    finally:
        protocol.close()


def _run(job, emit) -> int:
    from .runner import run_job

    return run_job(job, emit)


if __name__ == "__main__":
    sys.exit(main())
