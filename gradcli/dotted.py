"""Dotted paths: the tables (commands/, methods/) name implementations as "module:attribute",
imported when first used, so that reading a table imports no implementation."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(path: str) -> Any:
    """`"package.module:attribute"` -> the attribute (imported now, not before)."""
    module, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        found = getattr(found, part)
    return found
