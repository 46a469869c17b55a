"""The sha256 of the files a run reads, and the check that they are what was loaded.

Hashes are sha256 over the bytes of the file, read in chunks (never loaded whole). A directory
(a SavedModel) hashes as `sha256sum` over its files would: the sha256 of the text made of one
line `<sha256 of file>  <relative path>` per regular file, sorted by path (byte order), i.e.
`cd DIR && find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum`.
Files are hashed in a background thread while the model computes (`Hashes.start`). The hash is
taken by opening the path again, so every file is stamped (inode, size, times) before it is
loaded and checked after it is hashed (`stamp`, `check_unchanged`): a file swapped or
rewritten in between is refused rather than recorded with another file's hash.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks (stdin `-`: the bytes it held)."""
    h = hashlib.sha256()
    where = "/proc/self/fd/0" if str(path) == "-" else path
    with open(where, "rb") as f:  # a new open: its own offset, stdin's is left alone
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(directory: str | os.PathLike) -> str:
    """The sha256 of a directory: over `<file sha256>  <relative path>` lines sorted by path
    (what `sha256sum` over the sorted files, piped to `sha256sum`, prints)."""
    root = Path(directory)
    files = []
    for base, dirs, names in os.walk(root):  # symlinked directories are not followed
        dirs.sort()
        for name in names:
            p = Path(base, name)
            if p.is_file():
                files.append(p.relative_to(root).as_posix())
    lines = [
        f"{sha256_file(root / rel)}  {rel}\n" for rel in sorted(files, key=lambda s: s.encode())
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


def stamp(path: str | os.PathLike) -> tuple | None:
    """What tells a file's content changed without reading it: device, inode, size,
    modification and change time (a file swapped in has another inode; one rewritten in
    place a new ctime, which no user can set back). A directory: its files' stamps."""
    if str(path) == "-":
        return None  # stdin: spooled to a file of its own, no one else can change it
    p = Path(path)
    try:
        if not p.is_dir():
            return _stat_key(os.stat(p))
        files = []
        for base, dirs, names in os.walk(p):
            dirs.sort()
            files += [(base, n, _stat_key(os.stat(Path(base, n)))) for n in sorted(names)]
        return tuple(files)
    except OSError:
        return None


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_unchanged(before: dict[str, tuple[str, tuple | None]]) -> None:
    """Refuse (exit 3) a run whose files changed between their loading and the end of their
    hashing: its recorded sha256 might not be of the bytes it used. `before` maps a label
    to (path, its stamp taken before the file was opened)."""
    from gradcli.errors import InputError

    for label, (path, old) in before.items():
        if old is not None and stamp(path) != old:
            raise InputError(
                f"{label} {path}: changed while gradcli was reading it (inode, size or "
                "times differ from when it was opened); its sha256 might not be of the "
                "bytes used, so nothing was written"
            )


_cache: dict[tuple, str] = {}  # _key(path) -> hash: a directory run's input once
_pending: dict[tuple, threading.Event] = {}  # keys prehash() is reading now
_pending_lock = threading.Lock()


def _key(path: str) -> tuple | None:
    """What identifies a file's bytes without reading them: its real path and stamp (a file
    rewritten in place has a new ctime, which no user can set back)."""
    if path == "-":
        return None  # stdin: hashed each time (a test process reads many)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), *_stat_key(st))


def prehash(paths: list[str]) -> None:
    """Hash these regular files now, into the cache Hashes reads. The worker calls it from a
    thread while it imports TensorFlow (one core busy, the other idle): a 100 MB model costs
    about 0.3 s of sha256 that would otherwise compete with the gradients for the CPU. A
    digest is kept only if the file's stamp is the same after reading as before, so a later
    Hashes whose file still has that stamp may use it."""
    for path in paths:
        if not os.path.isfile(path):
            continue  # a directory (SavedModel, a run over many models) is hashed as before
        key = _key(path)
        with _pending_lock:
            if key is None or key in _cache or key in _pending:
                continue
            done = _pending[key] = threading.Event()
        try:
            digest = sha256_file(path)
            if _key(path) == key:
                _cache[key] = digest
        except OSError:
            pass
        finally:
            with _pending_lock:
                del _pending[key]
            done.set()


class Hashes:
    """The sha256 of a run's files, computed in a daemon thread while the gradients are."""

    def __init__(self, paths: dict[str, str | None]) -> None:
        self.paths = {k: v for k, v in paths.items() if v is not None}
        self.values: dict[str, str | None] = {}
        self.thread: threading.Thread | None = None

    @classmethod
    def start(cls, paths: dict[str, str | None]) -> Hashes:
        hashes = cls(paths)
        hashes.thread = threading.Thread(target=hashes._run, name="provenance", daemon=True)
        hashes.thread.start()
        return hashes

    def _run(self) -> None:
        for label, path in self.paths.items():
            key = _key(str(path))
            with _pending_lock:
                reading = _pending.get(key) if key is not None else None
            if reading is not None:  # prehash is reading this file: take its digest
                reading.wait()
            if key is not None and key in _cache:
                self.values[label] = _cache[key]
                continue
            try:
                digest = sha256_path(path)
            except OSError:
                self.values[label] = None
                continue
            self.values[label] = digest
            if key is not None:
                _cache[key] = digest

    def result(self) -> dict[str, str | None]:
        """Every hash (waiting for the thread if it is still reading)."""
        if self.thread is None:
            self._run()
        else:
            self.thread.join()
        return {k: self.values.get(k) for k in self.paths}
