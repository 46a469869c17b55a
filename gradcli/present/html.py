"""`--html FILE`: a run's records as one self-contained HTML page, for people (a CI artifact,
a mail attachment): the run's header (model, input, objective, method, provenance, gates and
verdict), a sortable table per model with tripped gates highlighted, its pictures inlined and
its charts drawn as inline SVG; for a directory of models, first the trajectory of every
layer's gradient norm over the checkpoints, then a summary table and one section per model.

The page loads nothing (no network; a Content-Security-Policy admits only its own style
element, its one script and data: images) and shows every text from a file escaped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gradcli.present.gates import worst
from gradcli.present.htmlkit import (
    CSP,
    SCRIPT,
    STYLE,
    Locate,
    Table,
    cell,
    code,
    esc,
    facts,
    num_cell,
    number,
    row_class,
    status_cell,
)
from gradcli.present.htmlrecords import body
from gradcli.present.records import Kind, Record
from gradcli.present.svgcharts import trajectory_chart
from gradcli.present.trajectory import checkpoint_labels, trajectory

_BOUNDS = {
    "too-large": "L2 above",
    "too-small": "L2 below",
    "low-cosine": "cosine below",
    "high-rel-diff": "rel diff above",
    "low-rank-corr": "lowest sample's rank correlation below",
}


def write_file(
    records: list[Record], path: str | os.PathLike, locate: Locate | None = None
) -> None:
    """The page, written to `path` (present.reports stages it with the run's outputs)."""
    Path(path).write_bytes(render_file(records, locate))


def render_file(records: Iterable[Record], locate: Locate | None = None) -> bytes:
    """The page for a run's records, UTF-8. `locate(path)`: where a picture a record names is
    now (its staged file, before the run's outputs are committed); default: that path."""
    return page(list(records), locate).encode("utf-8")


def page(recs: list[Record], locate: Locate | None = None) -> str:
    command = str(recs[0].get("command", "")) if recs else ""
    runs = recs[0].get("runs") if recs and recs[0].get("against") else None
    if runs:  # --against: the diff of two runs of one command
        command = f"{runs[0].get('command', '')} --against"
    many = len(recs) > 1
    if not recs:
        title, main = f"gradcli {command}", '<p class="note">no results</p>'
    elif many:
        title = f"gradcli {command}: {len(recs)} models"
        main = _many(recs, locate)
    else:
        title = f"gradcli {command}: {recs[0].get('model', '')}"
        main = _one(recs[0], locate)
    version = next((str(r["version"]) for r in recs if r.get("version")), "")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="gradcli {esc(version)}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{_verdict(recs)}</header><main>{main}</main>"
        f'<footer><p class="note">gradcli {esc(version)} · one file, nothing loaded from '
        f"elsewhere</p></footer><script>{SCRIPT}</script></body></html>\n"
    )


def _verdict(recs: list[Record]) -> str:
    errors = sum(1 for r in recs if r.get("error"))
    tripped = sorted({str(g) for r in recs for g in r.get("gates") or []})
    code_ = max([int(r.get("exit_code", 0) or 0) for r in recs], default=0)
    if errors:
        text, css = f"error ({errors} of {len(recs)})", "error"
    elif tripped:
        text, css = "gates tripped: " + ", ".join(tripped), "tripped"
    else:
        text, css = "passed", ""
    cls = f"verdict {css}".strip()
    return (
        f'<p><span class="{cls}">{esc(text)}</span> <span class="note">exit code {code_}</span></p>'
    )


# ------------------------------------------------------------------ one model


def _one(rec: Record, locate: Locate | None) -> str:
    return facts(_run_facts(rec)) + _provenance(rec) + "<h2>results</h2>" + body(rec, locate)


def _run_facts(rec: Record) -> list[tuple[str, str]]:
    """What the run was: the model, input and target with their hashes, and the gates."""
    prov = rec.get("provenance") or {}
    model = prov.get("model") or {}
    loader = ", ".join(esc(v) for v in (rec.get("format"), rec.get("loader")) if v)
    pairs = [("model", code(rec.get("model")) + (f" ({loader})" if loader else ""))]
    if model.get("sha256"):
        pairs.append(("model sha256", code(model["sha256"])))
    for key in ("input", "target"):
        item = prov.get(key)
        if isinstance(item, dict) and item.get("path"):
            sha = f" · sha256 {code(item['sha256'])}" if item.get("sha256") else ""
            pairs.append((key, code(item["path"]) + sha))
    if rec.kind != Kind.MODEL and not rec.get("error"):  # what a model is: no gates
        pairs.append(("gates", _gates(rec)))
        pairs.append(("exit code", number(rec.get("exit_code"))))
    return pairs


def _gates(rec: Record) -> str:
    limits = rec.get("limits") or {}
    given = [f"{esc(k)}: {_BOUNDS.get(k, 'limit')} {number(v)}" for k, v in limits.items()]
    tripped = rec.get("gates") or []
    text = "; ".join(given) if given else "no norm bounds"
    if tripped:
        return f'{text} · <span class="errtext">tripped: {esc(", ".join(tripped))}</span>'
    return text + " · none tripped"


def _provenance(rec: Record) -> str:
    prov = rec.get("provenance")
    if not isinstance(prov, dict):
        return ""
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _flatten(prov))
    return f'<details><summary>provenance</summary><dl class="facts">{rows}</dl></details>'


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        out = []
        for i, v in enumerate(value):
            out += _flatten(v, f"{prefix}[{i}]")
        return out
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value) or "[]")]
    return [(prefix, "null" if value is None else value)]


# ------------------------------------------------------------------ a directory of models


def _many(recs: list[Record], locate: Locate | None) -> str:
    labels = checkpoint_labels([str(r.get("model", "")) for r in recs])
    parts = [facts(_shared_facts(recs))]
    traj = trajectory(recs)
    if traj is not None:
        parts.append(
            "<h2>trajectory</h2><figure>"
            + trajectory_chart(traj)
            + f"<figcaption>{esc(traj.quantity)} at each model, in directory order (log scale)"
            + (", and |g|/|\u03b8| below" if traj.has_ratios else "")
            + ". Markers above: a dot for a model whose gates passed, a cross for tripped "
            "gates (its column shaded red), a square for an error (shaded gray). Hover a line "
            "or a marker for its name.</figcaption></figure>"
        )
    parts.append("<h2>models</h2>" + _summary(recs, labels))
    for i, (rec, label) in enumerate(zip(recs, labels, strict=True)):
        parts.append(
            f'<section id="model-{i}"><h2>{i}. {code(label)}</h2>'
            + facts(_run_facts(rec))
            + _provenance(rec)
            + body(rec, locate)
            + "</section>"
        )
    return "".join(parts)


def _shared_facts(recs: list[Record]) -> list[tuple[str, str]]:
    """What every model of the run shares: the input, target, objective, method, versions."""
    ok = [r for r in recs if not r.get("error")]
    failed = f" ({len(recs) - len(ok)} failed)" if len(ok) < len(recs) else ""
    pairs = [("models", f"{len(recs)}{failed}")]

    def shared(get) -> object:
        values = [get(r) for r in ok]
        return values[0] if values and all(v == values[0] for v in values) else None

    for key in ("input", "target"):
        path = shared(lambda r, k=key: ((r.get("provenance") or {}).get(k) or {}).get("path"))
        if path:
            pairs.append((key, code(path)))
    for key in ("objective", "method"):
        value = shared(lambda r, k=key: r.get(k))
        if value:
            pairs.append((key, esc(value)))
    versions = shared(lambda r: (r.get("provenance") or {}).get("versions"))
    if isinstance(versions, dict):
        pairs.append(("versions", esc(" · ".join(f"{k} {v}" for k, v in versions.items()))))
    return pairs


def _summary(recs: list[Record], labels: list[str]) -> str:
    table = Table(
        [("#", True), ("model", False), ("format", False), ("N", True), ("tensors", True)]
        + [("largest L2", True), ("worst", False), ("result", False)]
    )
    for i, (rec, label) in enumerate(zip(recs, labels, strict=True)):
        link = f'<td class="mono"><a href="#model-{i}">{esc(label)}</a></td>'
        if rec.get("error"):
            table.row(
                [num_cell(i), link, cell("-"), num_cell(None), num_cell(None), num_cell(None)]
                + [cell("-"), f'<td class="errtext">error: {esc(rec["error"])}</td>'],
                "error",
            )
            continue
        tensors = rec.get("tensors") or []
        norms = [t.get("l2") for t in tensors if isinstance(t.get("l2"), int | float)]
        gates = rec.get("gates") or []
        result = f"gates tripped: {', '.join(gates)}" if gates else "ok"
        statuses = [str(t.get("status")) for t in tensors]
        table.row(
            [num_cell(i), link, cell(rec.get("format", "")), num_cell(rec.get("n"))]
            + [num_cell(len(tensors)), num_cell(max(norms) if norms else None)]
            + [status_cell(worst(statuses).value if statuses else "-", bool(gates))]
            + [cell(result)],
            row_class({"tripped": bool(gates)}),
        )
    return table.html()
