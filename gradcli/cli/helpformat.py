"""How the CLI's help and option errors read: each command's summary a whole sentence,
arguments as plain metavars (`MODEL`, not `{MODEL}` or `MODEL <str>`), and option errors
without pydantic's words (light: Typer only)."""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperArgument, TyperCommand


def summary(doc: str) -> str:
    """A command's line in `gradcli --help`: its help's first sentence, whole (Click would cut
    it at 45 characters, mid-sentence)."""
    first = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    end = first.find(". ")
    return first if end < 0 else first[: end + 1]


class _PlainArgument(TyperArgument):
    """An argument shown by its metavar alone: `MODEL`, not `{MODEL}` nor `MODEL <str>`."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class PlainCommand(TyperCommand):
    """A command whose arguments show as plain metavars in its usage line and help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = _PlainArgument


# Typer validates values with pydantic, whose words are a Python library's; these are ours
_PYDANTIC_WORDS = {
    "Value error, ": "",
    "Input should be a valid integer, unable to parse string as an integer": "expected an integer",
    "Input should be a valid number, unable to parse string as a number": "expected a number",
    "Input should be a valid integer": "expected an integer",
    "Input should be a valid number": "expected a number",
}


def option_message(text: str) -> str:
    """An option error in gradcli's words (no pydantic `Value error, ` prefix)."""
    for words, ours in _PYDANTIC_WORDS.items():
        text = text.replace(words, ours)
    return text
