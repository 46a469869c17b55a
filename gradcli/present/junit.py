"""`--junit FILE`: a run's records as a JUnit XML report (junitparser), for CI test reporters.

One testsuite per model (a diff: one per pair of files), one testcase per tensor (classname:
the model, name: the tensor), a `failure` for a tripped gate with its figure in the message,
an `error` for a model that could not be loaded or computed. Text from files goes through
escaping.xml (no character XML 1.0 forbids); the XML writer escapes the rest. Written to a
temp file that the run's output transaction renames into place with its other outputs.
"""

from __future__ import annotations

import os

from gradcli.present.escape import xml
from gradcli.present.records import Kind, Record, TensorRow
from gradcli.present.table import figure, fmt

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


def failure_message(row: TensorRow, limits: dict | None = None) -> str:
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
    value = figure(row, key)
    text = f"{status}: {what} {fmt(value, 6) if value is not None else 'undefined'}"
    limit = (limits or {}).get(status)
    if limit is not None:
        text += f" (limit {fmt(limit, 6)})"
    return text


def build_junit(records: list[Record]):
    """The JUnitXml document of a run's records."""
    from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite

    doc = JUnitXml("gradcli")
    for rec in records:
        command = rec.get("command", "")
        model = xml(rec.get("model", ""))
        suite = TestSuite(f"gradcli {command} {model}")
        if rec.get("error"):
            case = TestCase("load and compute", classname=model)
            case.result = [Error(xml(str(rec.error)), "error")]
            suite.add_testcase(case)
        elif rec.kind in (Kind.MODEL, Kind.INFLUENCE):  # no tensors, no gates: it ran
            suite.add_testcase(TestCase(command, classname=model))
        limit = (rec.get("sharpness") or {}).get("limit")
        if rec.kind == Kind.CURVATURE and limit is not None and not rec.get("error"):
            suite.add_testcase(_sharpness_case(rec, model, limit))
        for row in rec.tensors:
            case = TestCase(xml(row.name), classname=model)
            if row.tripped:
                status = str(row.get("status"))
                case.result = [Failure(xml(failure_message(row, rec.get("limits"))), status)]
            suite.add_testcase(case)
        doc.add_testsuite(suite)
    return doc


def _sharpness_case(rec: Record, model: str, limit: float):
    """hessian --max-sharpness: a testcase of its own, failed when the largest eigenvalue
    exceeds the limit (or is not a number)."""
    from junitparser import Failure, TestCase

    case = TestCase("sharpness (largest Hessian eigenvalue)", classname=model)
    block = rec.get("sharpness")
    if block.get("tripped"):
        value = block.get("value")
        shown = fmt(value, 6) if value is not None else "undefined"
        message = f"too-sharp: largest eigenvalue {shown} (limit {fmt(limit, 6)})"
        case.result = [Failure(message, "too-sharp")]
    return case


def write_file(records: list[Record], path: str | os.PathLike, locate=None) -> None:
    """The report, written to `path` (present.reports stages it with the run's outputs; it
    names no output file, so `locate` is not needed)."""
    build_junit(records).write(str(path), pretty=True)
