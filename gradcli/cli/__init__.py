"""The command line (Typer and Rich; no NumPy, no TensorFlow): app.py builds the commands from
their specs, launch.py is the `gradcli` program's entry. `main` is imported on first use, so
importing this package costs nothing."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Run `gradcli` with `argv` (default: the process's own arguments)."""
    from gradcli.cli.app import main as app_main

    app_main(argv)
