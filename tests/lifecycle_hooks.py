"""Test-only code loaded into gradcli's worker with `--import` (never part of gradcli itself).

It holds a run at a chosen moment so a test can send signals there deterministically:
GRADCLI_TEST_HOOK=midbatch stops after the first batch (the .npz temp file half written),
GRADCLI_TEST_HOOK=commit stops right before the run's output files are committed. On
arriving there it creates the file GRADCLI_TEST_MARK, then sleeps GRADCLI_TEST_SLEEP seconds
(default 60) and carries on.
"""

import os
import time
from pathlib import Path

from gradcli.io import outputs as writers
from gradcli.jobs import context

HOOK = os.environ.get("GRADCLI_TEST_HOOK", "")
MARK = os.environ.get("GRADCLI_TEST_MARK", "")
SLEEP = float(os.environ.get("GRADCLI_TEST_SLEEP", "60"))


def _arrive() -> None:
    Path(MARK).write_text(str(os.getpid()))
    time.sleep(SLEEP)


if HOOK == "midbatch":
    _progress = context.Context.progress
    _held = []

    def progress(self, done: int) -> None:
        _progress(self, done)
        if not _held:
            _held.append(done)
            _arrive()

    context.Context.progress = progress

if HOOK == "commit":
    _commit = writers.Outputs.commit

    def commit(self) -> None:
        if self.staged:
            _arrive()
        _commit(self)

    writers.Outputs.commit = commit
