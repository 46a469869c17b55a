"""`--import`: user modules or .py files that register custom layers and losses before loading."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import InputError, first_line, param


def import_custom_code(specs: list[str]) -> None:
    """Import modules or .py files that register custom layers/losses (--import)."""
    for spec in specs:
        if spec.endswith(".py"):
            file = Path(spec)
            if not file.is_file():
                raise InputError(f"{param('imports')} {spec}: no such file")
            name = f"gradcli_user_{file.stem}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001 - user code: report, do not crash
                raise InputError(f"{param('imports')} {spec}: {first_line(exc)}") from exc
        else:
            try:
                importlib.import_module(spec)
            except ImportError as exc:
                raise InputError(f"{param('imports')} {spec}: {first_line(exc)}") from exc
