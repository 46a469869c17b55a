"""`--import`: user modules or .py files that register custom layers and losses before loading."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from gradcli.errors import InputError, first_line, param


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
                raise InputError(
                    f"{param('imports')} {spec}: {first_line(exc)}{_not_from_here(spec)}"
                ) from exc


def _not_from_here(spec: str) -> str:
    """A hint when the module is in the working directory, which gradcli never imports from."""
    top = spec.split(".")[0]
    if Path(top + ".py").is_file() and top == spec:
        return (
            " (gradcli imports nothing from the working directory by module name; "
            f"give the file: {param('imports')} ./{top}.py)"
        )
    if Path(top + ".py").is_file() or Path(top, "__init__.py").is_file():
        return (
            " (gradcli imports nothing from the working directory by module name; "
            "put the directory's full path in PYTHONPATH)"
        )
    return ""
