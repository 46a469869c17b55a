"""The checkpoints of one training run, in training order (stdlib): a directory's models
sorted naturally, or a single model file.

Order. Names (paths below the directory) sort naturally: runs of digits compare as numbers,
the rest case-insensitively, so `ckpt-2` < `ckpt-10` and `epoch_9` < `epoch_10`; Keras's
`model.{epoch:02d}-{val_loss:.2f}.keras` names sort by epoch because the first number that
differs decides. Names equal in that order (`ckpt-02`, `ckpt-2`) fall back to plain string
order.
"""

from __future__ import annotations

import re
from pathlib import Path

from gradcli.io.modelfiles import is_savedmodel
from gradcli.io.paths import walk_models

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sort key: digit runs as numbers, text case-insensitively, then the name itself."""
    parts = _DIGITS.split(name)  # text, digits, text, digits, ... : types line up by position
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def order_checkpoints(names: list[str]) -> list[str]:
    """Checkpoint names (or paths relative to their directory) in training order."""
    return sorted(names, key=natural_key)


def checkpoint_paths(path: str | Path) -> list[Path]:
    """The checkpoints CHECKPOINTS names, in training order: every model below a directory
    (as a directory of models is walked everywhere), or the one model it is."""
    root = Path(path)
    if not root.is_dir() or is_savedmodel(root):
        return [root]
    models = walk_models(root).models
    return sorted(models, key=lambda p: natural_key(p.relative_to(root).as_posix()))
