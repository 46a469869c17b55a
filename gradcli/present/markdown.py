"""`--format markdown`: a run's records as compact GitHub-flavoured Markdown tables, for
`$GITHUB_STEP_SUMMARY` and pull-request comments (no Rich, no colour: plain text).

GitHub renders this text as HTML: every string that came from a file goes through
escaping.markdown_code (names, paths: code spans) or escaping.markdown (error texts,
warnings, objectives, loss names: plain text with its punctuation escaped); numbers and
gradcli's own words are written as they are.
"""

from __future__ import annotations

from gradcli.present.escape import markdown, markdown_code
from gradcli.present.records import Kind, Record
from gradcli.present.table import figure, fmt


def _code(value: object) -> str:
    return markdown_code(value, table=True)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Cells are already Markdown (escaped where they hold text from files)."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _status(row: dict) -> str:
    status = str(row.get("status", ""))  # gradcli's own words
    return f"**✗ {status}**" if row.get("tripped") else status


def _shape(shape: list) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else markdown(d) for d in shape) + ")"


def _verdict(rec: Record) -> str:
    if rec.get("error"):
        return "error"
    if rec.get("gates"):
        return "✗ " + ", ".join(rec["gates"])
    return "ok"


def render(records: list[Record], console) -> None:
    console.file.write(render_markdown(records))
    console.file.flush()


def render_markdown(records: list[Record]) -> str:
    """The Markdown text: a summary line per run, a table per model (one table of models for
    `info` and for directory runs, where each model is a row)."""
    if not records:
        return ""
    command, kind = records[0].command, records[0].kind
    lines: list[str] = []
    if kind == Kind.CURVATURE:
        return _curvature(records)
    if kind == Kind.MODEL or (len(records) > 1 and kind != Kind.DIFF):
        lines += [f"### gradcli {command}: {len(records)} model(s)", ""]
        rows = []
        for rec in records:
            tensors = rec.get("tensors") or []
            tripped = [_code(t.name) for t in tensors if t.tripped]
            detail = markdown(rec["error"]) if rec.get("error") else ", ".join(tripped)
            if kind == Kind.MODEL and not rec.get("error"):
                detail = f"{len(rec.get('layers') or [])} layers, loss {markdown(rec.get('loss'))}"
            rows.append([_code(rec.get("model")), _verdict(rec), detail])
        lines += _table(["model", "result", "detail"], rows, set())
        if kind != Kind.MODEL:
            for rec in records:
                if any(t.tripped for t in rec.tensors):
                    lines += ["", *_gradients(rec, tripped_only=True)]
        return "\n".join(lines) + "\n"
    for rec in records:
        if lines:
            lines.append("")
        if rec.get("error"):
            lines.append(f"**{markdown_code(rec.get('model'))}**: error: {markdown(rec['error'])}")
        elif rec.kind == Kind.DIFF:
            lines += _diff(rec)
        elif rec.kind == Kind.INFLUENCE:
            from gradcli.present.influence import markdown_lines

            lines += markdown_lines(rec)
        else:
            lines += _gradients(rec)
    return "\n".join(lines) + "\n"


def _gradients(rec: Record, tripped_only: bool = False) -> list[str]:
    head = f"**{markdown_code(rec.get('model'))}** · {rec.get('command')} · N={rec.get('n')}"
    if rec.get("objective"):
        head += f" · objective: {markdown(rec['objective'])}"
    head += f" · {_verdict(rec)}"
    check = rec.kind == Kind.CHECK
    header = ["tensor", "shape"]
    values = rec.value_label
    header += ["rel error"] if check else ["L2", markdown(f"max {values}"), "non-finite"]
    header.append("status")
    rows = []
    for t in rec.get("tensors") or []:
        if tripped_only and not t.get("tripped"):
            continue
        row = [_code(t.get("name")), _shape(t.get("shape") or [])]
        if check:
            row.append(fmt(t.get("rel_error"), 3))
        else:
            row += [fmt(t.get("l2")), fmt(t.get("max_abs")), fmt(t.get("nonfinite"))]
        row.append(_status(t))
        rows.append(row)
    return [head, "", *_table(header, rows, set(range(2, len(header) - 1)))]


def _diff(rec: Record) -> list[str]:
    a, b = markdown_code(rec.get("a")), markdown_code(rec.get("b"))
    head = f"**diff** {a} vs {b} (reference: B) · {_verdict(rec)}"
    per_sample = rec.get("per_sample")
    header = ["tensor", "shape", "cosine", "rel diff", "max abs diff", "sign agree"]
    if per_sample:
        header += ["rank ρ mean (min)", f"top {fmt(rec.get('top_percent'))}% overlap"]
    header.append("status")
    rows = []
    for t in rec.get("tensors") or []:
        row = [_code(t.get("name")), _shape(t.get("shape") or [])]
        row += [
            fmt(figure(t, "cosine"), 6),
            fmt(figure(t, "rel_diff"), 3),
            fmt(figure(t, "max_abs_diff"), 3),
            fmt(t.get("sign_agreement"), 4),
        ]
        if per_sample:
            if "rank_corr" in t:
                row += [
                    f"{fmt(figure(t, 'rank_corr'), 3)} ({fmt(figure(t, 'rank_corr_min'), 3)})",
                    fmt(t.get("top_overlap"), 3),
                ]
            else:
                row += ["-", "-"]
        row.append(_status(t))
        rows.append(row)
    lines = [head, "", *_table(header, rows, set(range(2, len(header) - 1)))]
    for w in rec.get("warnings") or []:
        lines.append(f"> warning: {markdown(w)}")
    return lines


def _curvature(records: list[Record]) -> str:
    from gradcli.present.curvature import markdown_lines, markdown_many

    if len(records) > 1:
        return "\n".join(markdown_many(records, _table)) + "\n"
    rec = records[0]
    if rec.get("error"):
        return f"**{markdown_code(rec.get('model'))}**: error: {markdown(rec['error'])}\n"
    return "\n".join(markdown_lines(rec, _table)) + "\n"
