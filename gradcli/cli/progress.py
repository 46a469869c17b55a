"""The progress bar on stderr, fed by the worker's progress events (one bar per model)."""

from __future__ import annotations

from rich.console import Console


class ProgressBar:
    """A Rich progress bar on stderr, fed by the worker's progress events."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[int, int] = {}

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, event: dict) -> None:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
        index = int(event.get("index", 0))
        if index not in self.tasks:
            # the model's file name (a directory run has one bar per model), never "model 1"
            name = str(event.get("model") or "computing")
            name = name if len(name) <= 40 else name[:18] + "\u2026" + name[-21:]
            self.tasks[index] = self.bar.add_task(escape(name), total=event.get("total"))
        self.bar.update(self.tasks[index], completed=event.get("done", 0))

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False
