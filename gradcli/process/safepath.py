"""Keep the working directory off Python's path: in gradcli's processes nothing is imported
from where gradcli runs (a repository's root, in CI) unless `--import` names it.

Python puts the working directory on sys.path for `python -m` (first entry) and for every
empty or relative PYTHONPATH entry (`PYTHONPATH=$PYTHONPATH:/x` with PYTHONPATH unset gives
`:/x`). The worker starts with `-P` and a PYTHONPATH without those entries (`worker_env`);
gradcli's own process drops them from sys.path before it imports anything else
(`drop_working_directory`). Absolute PYTHONPATH entries are the user's choice and stay.
What Python imports before gradcli's first line runs (the `gradcli` package itself, found in
the working directory through such an entry or `-m`) is beyond reach: hence the README's
advice to run the `gradcli` script and keep PYTHONPATH free of empty entries.
"""

from __future__ import annotations

import os
import sys


def _relative(pythonpath: str | None) -> list[str]:
    """PYTHONPATH entries that name the working directory or a path below it by a relative
    name ("", ".", "lib")."""
    return [p for p in (pythonpath or "").split(os.pathsep) if not os.path.isabs(p)]


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a Python child: PYTHONSAFEPATH set (what `-P` does, for any Python it
    starts in turn), and PYTHONPATH without its relative entries."""
    out = {**env, "PYTHONSAFEPATH": "1"}
    if "PYTHONPATH" in env:
        relative = set(_relative(env["PYTHONPATH"]))
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p not in relative]
        if kept:
            out["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del out["PYTHONPATH"]
    return out


def drop_working_directory() -> None:
    """Remove from this process's sys.path what stands for the working directory: the entry
    `python -m` or `-c` puts first, and the relative PYTHONPATH entries (made absolute)."""
    cwd = os.getcwd()
    bad = {"", *(os.path.abspath(p) for p in _relative(os.environ.get("PYTHONPATH")))}
    if not sys.flags.safe_path and sys.path and sys.path[0] == cwd:
        bad.add(cwd)
    sys.path[:] = [p for p in sys.path if p not in bad]
