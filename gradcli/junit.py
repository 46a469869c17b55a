"""`--junit FILE`: a run's records as a JUnit XML report (junitparser), for CI test reporters.

One testsuite per model (a diff: one per pair of files), one testcase per tensor (classname:
the model, name: the tensor), a `failure` for a tripped gate with its figure in the message,
an `error` for a model that could not be loaded or computed. Written atomically.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .report import fmt

# the figure a tripped status is about, for the failure message
_FIGURE = {
    "too-large": ("L2 norm", "l2"),
    "too-small": ("L2 norm", "l2"),
    "nonfinite": ("non-finite elements", "nonfinite"),
    "zero": ("zero fraction", "zero_fraction"),
    "mismatch": ("relative error", "rel_error"),
    "low-cosine": ("cosine", "cosine"),
    "high-rel-diff": ("relative L2 difference", "rel_diff"),
    "low-rank-corr": ("lowest per-sample rank correlation", "rank_corr_min"),
}


def failure_message(row: dict, limits: dict | None = None) -> str:
    """`<status>: <figure> <value>` (and the limit, when the record names it)."""
    status = row.get("status", "")
    if status in ("only-in-a", "only-in-b"):
        return f"{status}: the tensor is in one file only"
    if status == "shape-mismatch":
        return f"{status}: shape {row.get('shape')} vs {row.get('shape_b')}"
    if status == "disconnected":
        return "disconnected: no gradient path from the objective to this tensor"
    what, key = _FIGURE.get(status, ("", ""))
    if not key:
        return status
    value = row.get(key)
    text = f"{status}: {what} {fmt(value, 6) if value is not None else 'undefined'}"
    limit = (limits or {}).get(status)
    if limit is not None:
        text += f" (limit {fmt(limit, 6)})"
    return text


def build_junit(records: list[dict]):
    """The JUnitXml document of a run's records."""
    from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite

    xml = JUnitXml("gradcli")
    for rec in records:
        command = rec.get("command", "")
        model = str(rec.get("model", ""))
        suite = TestSuite(f"gradcli {command} {model}")
        if rec.get("error"):
            case = TestCase("load and compute", classname=model)
            case.result = [Error(str(rec["error"]), "error")]
            suite.add_testcase(case)
        elif command == "info":
            suite.add_testcase(TestCase("info", classname=model))
        for row in rec.get("tensors") or []:
            case = TestCase(str(row.get("name")), classname=model)
            if row.get("tripped"):
                status = str(row.get("status"))
                case.result = [Failure(failure_message(row, rec.get("limits")), status)]
            suite.add_testcase(case)
        xml.add_testsuite(suite)
    return xml


def write_junit(records: list[dict], path: str | os.PathLike) -> None:
    """Write the report to `path` atomically (a temp file beside it, renamed into place)."""
    from .errors import InputError
    from .paths import staging_dir, temp_prefix

    dest = Path(path)
    xml = build_junit(records)
    try:
        fd, tmp = tempfile.mkstemp(dir=staging_dir(dest), prefix=temp_prefix(dest), suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        xml.write(tmp, pretty=True)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        dest.parent.mkdir(parents=True, exist_ok=True)  # missing directories, as for -o
        os.replace(tmp, dest)
    except OSError as exc:
        raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
