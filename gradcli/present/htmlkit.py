"""The parts every HTML report shares: escaping, table cells, the style sheet, the one inline
script (sortable tables) and the Content-Security-Policy that admits exactly these two.

The page loads nothing: no network, no other script, style or font. Its policy forbids
everything (`default-src 'none'`) but images from data: URIs, the style element and the
script whose SHA-256 hashes it names. Nothing in the page uses a `style` attribute or an
event-handler attribute, which the policy would refuse.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections.abc import Callable

from gradcli.present.escape import html
from gradcli.present.table import fmt

STYLE = """
:root { color-scheme: light; --ok: #1a7f37; --bad: #c62828; --warn: #9a6700; --dim: #57606a; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  max-width: 1100px; padding: 1em 1.5em 3em; color: #1f2328; background: #fff; }
h1 { font-size: 1.45em; margin: 0.2em 0; } h2 { font-size: 1.2em; margin-top: 2em;
  border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; } h3 { font-size: 1.05em; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.92em; overflow-wrap: anywhere; }
.verdict { display: inline-block; font-weight: 600; padding: 0.15em 0.6em; border-radius: 4px;
  color: #fff; background: var(--ok); } .verdict.tripped { background: var(--bad); }
.verdict.error { background: #6e7781; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1em;
  margin: 0.6em 0; }
dl.facts dt { color: var(--dim); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #eaeef2; text-align: left;
  vertical-align: top; } td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
td.mono { min-width: 10em; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
th button { font: inherit; color: inherit; background: none; border: 0; padding: 0;
  cursor: pointer; } th button::after { content: " \\2195"; color: #8c959f; }
th[aria-sort=ascending] button::after { content: " \\2191"; color: inherit; }
th[aria-sort=descending] button::after { content: " \\2193"; color: inherit; }
tr.tripped td { background: #ffebe9; } tr.tripped td.status { color: var(--bad); font-weight: 600; }
tr.error td { background: #f6f8fa; } .errtext { color: var(--bad); }
td.status.ok { color: var(--ok); } td.status.warn { color: var(--warn); }
td.status.bad { color: var(--bad); }
.note { color: var(--dim); margin: 0.3em 0; } .warning { color: var(--warn); margin: 0.3em 0; }
figure { margin: 1em 0; } figcaption { color: var(--dim); font-size: 0.92em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
svg { max-width: 100%; height: auto; } svg text { font: 11px system-ui, sans-serif; fill: #1f2328; }
svg .axis { stroke: #8c959f; } svg .grid { stroke: #eaeef2; }
svg .series:hover { stroke-width: 3.5; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: var(--dim); }
nav.toc a { margin-right: 1em; }
"""

SCRIPT = """
"use strict";
(function () {
  function key(row, col, numeric) {
    var cell = row.cells[col];
    if (!cell) { return null; }
    if (!numeric) { return cell.textContent; }
    var v = cell.getAttribute("data-v");
    if (v === null || v === "") { return null; }
    v = Number(v);
    return isNaN(v) ? null : v;
  }
  function sortRows(table, col, numeric, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col, numeric), y = key(b, col, numeric);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var c = numeric ? (x < y ? -1 : x > y ? 1 : 0)
                      : x.localeCompare(y, undefined, {numeric: true});
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        sortRows(table, col, th.classList.contains("num"), descending);
      });
    });
  });
})();
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src '{_sha256(STYLE)}'; script-src '{_sha256(SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'"
)


# where a picture a record names is now (its staged file, before the run's outputs commit)
Locate = Callable[[str], str | os.PathLike[str]]
esc = html  # text from a file (or anything) as HTML text or a quoted attribute value


def number(x: object, digits: int = 4) -> str:
    """A figure as HTML: the table's number format (`-` for none); other values escaped."""
    if x is None or (isinstance(x, int | float) and not isinstance(x, bool)):
        return fmt(x, digits)
    return esc(x)


def _sort_value(x: object) -> str:
    """What the script sorts a numeric cell by (empty: no figure, sorted last)."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float):
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return "" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return repr(x)


class Table:
    """An HTML table built row by row; `sortable` tables get header buttons (the script)."""

    def __init__(self, columns: list[tuple[str, bool]], sortable: bool = True) -> None:
        self.columns = columns  # (label, numeric)
        self.sortable = sortable
        self.rows: list[str] = []

    def row(self, cells: list[str], css: str = "") -> None:
        """`cells`: HTML from `cell`/`num_cell`/`status_cell`, one per column."""
        cls = f' class="{css}"' if css else ""
        self.rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")

    def html(self) -> str:
        heads = []
        for label, numeric in self.columns:
            cls = ' class="num"' if numeric else ""
            inner = f'<button type="button">{label}</button>' if self.sortable else label
            heads.append(f'<th scope="col"{cls}>{inner}</th>')
        cls = ' class="sortable"' if self.sortable else ""
        return (
            f'<div class="scroll"><table{cls}><thead><tr>{"".join(heads)}</tr></thead>'
            f"<tbody>{''.join(self.rows)}</tbody></table></div>"
        )


def cell(text: object, mono: bool = False) -> str:
    """A text cell (escaped)."""
    return f'<td class="mono">{esc(text)}</td>' if mono else f"<td>{esc(text)}</td>"


def num_cell(x: object, digits: int = 4, shown: str | None = None) -> str:
    """A numeric cell sorted by its value (`shown`: other text to show, already HTML)."""
    text = number(x, digits) if shown is None else shown
    return f'<td class="num" data-v="{_sort_value(x)}">{text}</td>'


_GOOD = {"ok"}
_WARN = {"zero", "vanishing", "too-small", "unresolved"}


def status_cell(status: object, tripped: bool) -> str:
    s = str(status or "")
    tone = "ok" if s in _GOOD else "warn" if s in _WARN else "bad"
    mark = "\u2717 " if tripped else ""
    return f'<td class="status {tone}">{mark}{esc(s)}</td>'


def shape_text(shape: object) -> str:
    if not isinstance(shape, list | tuple):
        return str(shape)
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def facts(pairs: list[tuple[str, str]]) -> str:
    """A definition list; labels are gradcli's words, values already HTML."""
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in pairs if value)
    return f'<dl class="facts">{items}</dl>' if items else ""


def code(text: object) -> str:
    """Text from a file as inline code."""
    return f"<code>{esc(text)}</code>"


def row_class(row: object) -> str:
    """A table row's class: `tripped` for a row whose status tripped a gate."""
    return "tripped" if row.get("tripped") else ""  # type: ignore[attr-defined]
