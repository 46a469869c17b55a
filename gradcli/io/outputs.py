"""Output files: a run's outputs staged and committed together; streaming .npz writing.

Every output of a run (the .npz, PNG heatmaps, the flow chart, report files) is first
written to temp files beside its destination and registered with one `Outputs` transaction;
`Outputs.commit` renames them all into place at the end, and `abort` removes them, so a
failed or killed run changes nothing at the paths the user gave.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from gradcli.errors import InputError
from gradcli.io.paths import staging_dir, temp_prefix

# The worker replaces this with a check that its parent is still alive (see worker.py):
# a commit must never happen for a gradcli that is gone.
_commit_guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def set_commit_guard(guard: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Install the context manager every commit runs under (it may raise to refuse)."""
    global _commit_guard
    _commit_guard = guard


def default_mode(directory: bool = False) -> int:
    """The mode a plain open() or mkdir() would give (temp files are created 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


class Outputs:
    """The output files of one run, staged beside their destinations, committed together.

    `stage_file(dest)` gives a temp path to write dest's content to; `stage_dir(dest)` a
    temp directory whose files land in directory dest. `commit` renames everything into
    place (undoing the renames already done if one fails); `abort` removes the temps.
    `on_temp` is told of every temp path (the supervisor removes them if the worker dies).
    """

    def __init__(self, on_temp: Callable[[str], None] | None = None) -> None:
        self.on_temp = on_temp
        self.temps: list[Path] = []
        self.staged: list[tuple[Path, Path]] = []
        self.done = False

    def track(self, temp: Path) -> Path:
        self.temps.append(temp)
        if self.on_temp:
            self.on_temp(str(temp))
        return temp

    def temp_file(self, dest: Path, suffix: str = ".tmp") -> Path:
        """A new empty temp file beside `dest` (removed by abort; staged by the caller)."""
        try:
            fd, tmp = tempfile.mkstemp(
                dir=staging_dir(dest), prefix=temp_prefix(dest), suffix=suffix
            )
        except OSError as exc:
            raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
        os.close(fd)
        return self.track(Path(tmp))

    def stage(self, temp: Path, dest: Path) -> None:
        """Rename finished `temp` to `dest` at commit."""
        if temp not in self.temps:
            self.track(temp)
        self.staged.append((temp, dest))

    def stage_file(self, dest: Path) -> Path:
        temp = self.temp_file(dest)
        self.staged.append((temp, dest))
        return temp

    def stage_dir(self, dest: Path) -> Path:
        where = dest if dest.is_dir() else staging_dir(dest)
        try:
            temp = Path(tempfile.mkdtemp(dir=where, prefix=temp_prefix(dest), suffix=".tmp"))
        except OSError as exc:
            raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
        self.track(temp)
        self.staged.append((temp, dest))
        return temp

    def locate(self, dest: str | os.PathLike) -> Path:
        """Where the content of output `dest` is now: its temp file (or its file in a staged
        directory) until the commit, then `dest` itself."""
        want = Path(dest)
        if not self.done:
            for temp, staged in self.staged:
                if staged == want:
                    return temp
                if temp.is_dir() and want.parent == staged:
                    return temp / want.name
        return want

    def commit(self) -> None:
        """Rename every staged output into place: all of them, or (on an error) none."""
        if self.done:
            return
        undo: list[Callable[[], None]] = []
        backups: list[Path] = []
        with _commit_guard():
            try:
                for temp, dest in self.staged:
                    if temp.is_dir() and dest.is_dir():
                        for child in sorted(temp.iterdir()):
                            _install_file(child, dest / child.name, undo, backups)
                    elif temp.is_dir():
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.chmod(temp, default_mode(directory=True))
                        os.rename(temp, dest)
                        undo.append(lambda dest=dest: shutil.rmtree(dest))
                    else:
                        _install_file(temp, dest, undo, backups)
            except BaseException as exc:
                for step in reversed(undo):
                    with contextlib.suppress(OSError):
                        step()
                self.abort()
                if isinstance(exc, OSError):
                    raise InputError(f"cannot write the output: {exc}") from None
                raise
            self.done = True
        for leftover in [*backups, *self.temps]:  # old contents, emptied staging directories
            with contextlib.suppress(OSError):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink(missing_ok=True)

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        for temp in self.temps:
            with contextlib.suppress(OSError):
                if temp.is_dir() and not temp.is_symlink():
                    shutil.rmtree(temp)
                else:
                    temp.unlink(missing_ok=True)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        return False


def _install_file(
    temp: Path, dest: Path, undo: list[Callable[[], None]], backups: list[Path]
) -> None:
    """Rename temp over dest, remembering how to put dest's old content back."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if dest.exists():
        backup = temp.with_name(temp.name.removesuffix(".tmp") + "-old.tmp")
        try:
            os.link(dest, backup)
            backups.append(backup)
        except OSError:  # a file system without hard links: this one cannot be undone
            backup = None
    os.replace(temp, dest)
    if backup is not None:
        undo.append(lambda: os.replace(backup, dest))
    else:
        undo.append(lambda: dest.unlink())
