"""Text from files made safe for each place gradcli shows it: one function per sink.

Whatever a model, array or result file holds (its path, input, output, layer and variable
names, npz keys, provenance fields, loss and class names, and error texts quoting them) is
data. It must never become terminal control sequences, Rich markup, Markdown or HTML, broken
XML or matplotlib mathtext. Every renderer passes such text through the function of its sink:

- `printable`: characters `str.isprintable` rejects (C0 and C1 controls, DEL, bidi and
  zero-width format characters, line and paragraph separators, lone surrogates from file
  names that are not UTF-8) shown as `repr` shows them (`\\x1b`, `\\n`, `\\u202e`). Every
  other sink starts from it; lines on stderr get it as they are.
- `rich_text`: a Rich `Text` (never parsed for markup or emoji codes).
- `markdown`: plain Markdown text, every ASCII punctuation character backslash-escaped (the
  one escape CommonMark guarantees literal), so nothing becomes a heading, a link, an image,
  HTML, emphasis, a table cell, GitHub math or an emoji code.
- `markdown_code`: a code span (nothing inside is interpreted) with a fence longer than any
  run of backticks in the text; in a table, `|` is escaped as GFM tables require.
- `xml`: `printable` leaves nothing XML 1.0 forbids; the XML writer escapes `&`, `<`, `>`, `"`.
- `html`: `printable`, then `& < > " '` escaped: HTML text or a quoted attribute value (the
  `--html` report, its inline SVG).
- `plot`: `printable`, and `$` escaped, so matplotlib draws it as text, never as mathtext.

JSON needs nothing here: `json.dumps` escapes every control character and stays valid.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_BACKTICKS = re.compile(r"`+")


def printable(text: object) -> str:
    """`text` with every non-printable character shown as `repr` shows it."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def rich_text(text: object, style: str = "") -> Text:
    """A Rich Text of `printable(text)`: shown as it is, never read as markup."""
    from rich.text import Text

    return Text(printable(text), style=style)


def markdown(text: object) -> str:
    """Plain Markdown text that renders as `printable(text)`, literally."""
    return _ASCII_PUNCTUATION.sub(r"\\\1", printable(text))


def markdown_code(text: object, *, table: bool = False) -> str:
    """A Markdown code span showing `printable(text)` literally (`table`: inside a GFM table
    cell, where an unescaped `|` would end the cell even inside a code span)."""
    s = printable(text)
    if table:
        s = s.replace("|", "\\|")
    if not s.strip(" "):
        return "` `" if not s else f"`{s}`"  # spaces only are kept as they are
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(s)), default=0) + 1)
    # CommonMark strips one space from each end when both ends have one: pad so it strips ours
    pad = s[0] == "`" or s[-1] == "`" or (s[0] == " " and s[-1] == " ")
    return f"{fence} {s} {fence}" if pad else f"{fence}{s}{fence}"


def xml(text: object) -> str:
    """Text for an XML attribute or element: nothing XML 1.0 forbids is left in it."""
    return printable(text)


def html(text: object) -> str:
    """Text for an HTML page, as element text or a quoted attribute value: `printable(text)`
    with `& < > " '` escaped."""
    return _html.escape(printable(text), quote=True)


def plot(text: object, fit: Callable[[str], str] | None = None) -> str:
    """Text for a matplotlib title or label: drawn as it is, never as mathtext. `fit` (line
    wrapping, shortening) works on the printable text, before `$` is escaped."""
    shown = printable(text)
    return (fit(shown) if fit else shown).replace("$", r"\$")
