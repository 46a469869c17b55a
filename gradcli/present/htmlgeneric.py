"""The HTML body of a record whose kind the report has no page of its own for (a command added
after it): its scalar figures as facts, its tensors as a sortable table of every column they
carry, and each other list of rows it holds (at its top or in a dict) as a table of its own;
lists and dicts within a row are shown in their cell as text. Nothing is left out for not
being known; nothing from a file is shown unescaped.
"""

from __future__ import annotations

from gradcli.present.htmlkit import (
    Table,
    cell,
    code,
    esc,
    facts,
    num_cell,
    number,
    row_class,
    shape_text,
    status_cell,
)
from gradcli.present.records import Record

# shown by the page's header or elsewhere on it, not again among the facts
_HEADER = {
    "version", "command", "model", "format", "loader", "error", "exit_code", "gates",
    "tensors", "provenance", "limits", "warnings", "notes", "out", "png",
}  # fmt: skip
_ROW_KEYS = {"name", "shape", "status", "tripped"}
LIST_ITEMS = 20  # a list of plain values shows this many, then how many more
TABLE_ROWS = 200  # rows of a list of rows shown (the JSON has them all)


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rows(value: object) -> bool:
    """A list of rows: a non-empty list of dicts (shown as a table of its own)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _text(value: object, depth: int = 0) -> str:
    """A value as HTML: numbers in the table's format, lists shortened, a dict (or a list of
    them, in a table's cell) as its `key value` pairs."""
    if isinstance(value, dict):
        if depth > 2:
            return "…"
        return ", ".join(f"{esc(k)} {_text(v, depth + 1)}" for k, v in value.items())
    if isinstance(value, list):
        joiner = "; " if _rows(value) else ", "
        shown = joiner.join(_text(v, depth + 1) for v in value[:LIST_ITEMS])
        more = len(value) - LIST_ITEMS
        tail = f"{joiner}\u2026 {more} more" if more > 0 else ""
        return shown + tail if _rows(value) else f"[{shown}{tail}]"
    return number(value)


def _contents(rec: Record) -> tuple[list[tuple[str, str]], list[tuple[str, list]]]:
    """Every scalar (or list of scalars) of the record as a fact, nested dicts by dotted key;
    every list of rows (top-level or in a dict) as a titled list for a table."""
    pairs: list[tuple[str, str]] = []
    tables: list[tuple[str, list]] = []

    def visit(key: str, value: object, depth: int) -> None:
        if _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value)):
            pairs.append((esc(key), _text(value)))
        elif _rows(value):
            tables.append((key, value))
        elif isinstance(value, dict) and depth < 3:
            for k, v in value.items():
                visit(f"{key}.{k}", v, depth + 1)
        elif value is not None:  # deeper, or a list of mixed values: shown as it is
            pairs.append((esc(key), _text(value)))

    for key in rec.keys:
        if key not in _HEADER:
            visit(key, rec.get(key), 0)
    return pairs, tables


def _columns(rows: list) -> list[str]:
    """The keys with a value in any row, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in _items(row):
            if key not in _ROW_KEYS and value is not None:
                seen.setdefault(key, None)
    return list(seen)


def _items(row: object) -> list[tuple[str, object]]:
    if isinstance(row, dict):
        return list(row.items())
    to_json = getattr(row, "to_json", None)
    return list(to_json().items()) if to_json else []


def _rows_table(rows: list) -> str:
    """A sortable table of rows (dicts or tensor rows): name and shape first when they have
    them, then every other column (lists and dicts in a cell as text), then their status."""
    dicts = [dict(_items(r)) for r in rows[:TABLE_ROWS]]
    columns = _columns(dicts)
    named = any("name" in d for d in dicts)
    shaped = any("shape" in d for d in dicts)
    status = any("status" in d for d in dicts)
    numeric = {c: all(_numeric(d[c]) for d in dicts if d.get(c) is not None) for c in columns}
    head = [("#", True)] + ([("name", False)] if named else []) + ([("shape", False)] * shaped)
    head += [(esc(c), numeric[c]) for c in columns] + ([("status", False)] if status else [])
    table = Table(head)
    for i, d in enumerate(dicts):
        cells = [num_cell(i)]
        if named:
            cells.append(cell(d.get("name", ""), mono=True))
        if shaped:
            cells.append(cell(shape_text(d.get("shape", ""))))
        for c in columns:
            value = d.get(c)
            if numeric[c]:
                cells.append(num_cell(value))
            else:
                cells.append("<td></td>" if value is None else f"<td>{_text(value)}</td>")
        if status:
            cells.append(status_cell(d.get("status"), bool(d.get("tripped"))))
        table.row(cells, row_class(d))
    more = len(rows) - TABLE_ROWS
    note = f'<p class="note">{more} more row(s) in the JSON output</p>' if more > 0 else ""
    return table.html() + note


def generic(rec: Record) -> str:
    """The body of a record of a kind the report does not know."""
    pairs, tables = _contents(rec)
    parts = [facts(pairs)]
    if rec.tensors:
        parts.append(_rows_table(rec.tensors))
    parts += [f"<h4>{code(key)}</h4>" + _rows_table(rows) for key, rows in tables]
    parts += [f'<p class="warning">warning: {esc(w)}</p>' for w in rec.get("warnings") or []]
    parts += [f'<p class="note">note: {esc(n)}</p>' for n in rec.get("notes") or []]
    return "".join(parts)
