"""Paths without TensorFlow: models (remote refusal, SavedModel detection, directory scans),
inputs (never a FIFO or device), and outputs (checked writable up front; temp-file names).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from gradcli.errors import InputError, ModelError
from gradcli.io.modelfiles import SUFFIXES, ModelFormat, model_format, unknown_format

REMOTE_PREFIXES = ("hf://", "gs://", "s3://", "http://", "https://", "ftp://")


def check_not_remote(path: str) -> None:
    text = str(path)
    if text.lower().startswith(REMOTE_PREFIXES) or "://" in text:
        raise InputError(f"{text}: remote paths are not supported; download the file first")


def _kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is; None for regular files and directories."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


STDIN_HINT = " (to pipe arrays in, give - and use stdin)"


def check_regular(
    path: str | Path,
    label: str,
    *,
    allow_dir: bool = False,
    hint: str = STDIN_HINT,
    error: type[InputError] = InputError,
) -> os.stat_result:
    """stat() a path that will be read, without opening it: a FIFO would block forever and a
    device never ends, so anything but a regular file (or a directory, if allowed) is refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except OSError as exc:
        raise error(f"{label}: cannot read: {exc.strerror}") from None
    kind = _kind(st.st_mode)
    if kind is not None:
        raise error(f"{label}: is {kind}, not a regular file; gradcli never opens those{hint}")
    if stat.S_ISDIR(st.st_mode) and not allow_dir:
        raise InputError(f"{label}: is a directory; expected a .npy or .npz file")
    return st


def check_model_path(path: str) -> None:
    """Fail fast (before TensorFlow loads) on a MODEL that cannot be a model."""
    check_not_remote(path)
    p = Path(path)
    if not p.exists():
        if os.path.islink(p):
            raise ModelError(f"{path}: a dangling symbolic link (to {os.readlink(p)})")
        raise ModelError(f"{path}: no such file or directory")
    try:
        check_regular(p, str(path), allow_dir=True)
    except InputError as exc:
        raise ModelError(
            str(exc).replace(" (to pipe arrays in, give - and use stdin)", "")
        ) from None
    if p.is_dir():
        try:
            os.listdir(p)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read the directory: {exc.strerror}") from None
    elif model_format(p) is None:
        raise ModelError(unknown_format(path))


@dataclass
class Walk:
    """What a directory of models holds."""

    models: list[Path]  # sorted; each file once; entries that cannot be read included
    skipped: list[Path]  # regular files that are not models (by their suffix)


def walk_models(directory: Path) -> Walk:
    """Every model below a directory (not descending into SavedModels), sorted by path.

    Symlinked directories are followed, but each real directory is visited once (by device
    and inode), so a symlink loop neither explodes the walk nor repeats a model; a model file
    reached under two names (a hard link, a symlink to a file) is listed once, under the
    first name in path order. An entry that looks like a model but cannot be read (a symlink
    to nothing, a directory that cannot be listed, an I/O error) is listed too: the run then
    gives it a row with the error. A FIFO or device with a model suffix is listed (and then
    refused by check_model_path, never opened). Hidden entries (a leading dot) are ignored.
    """
    found: list[tuple[Path, tuple[int, int] | None]] = []
    skipped: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def visit(d: Path) -> None:
        try:
            st = os.stat(d)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            children = sorted(d.iterdir())
        except OSError:
            if d != directory:
                found.append((d, None))  # a row saying it cannot be read
            return
        for child in children:
            if child.name.startswith("."):
                continue
            try:
                cst = os.stat(child)
            except OSError:  # a dangling symlink, one that loops on itself, EIO, EACCES
                if SUFFIXES.get(child.suffix.lower()) is not None:
                    found.append((child, None))
                elif not os.path.islink(child):
                    skipped.append(child)
                continue
            if stat.S_ISDIR(cst.st_mode):
                if model_format(child) is ModelFormat.SAVEDMODEL:
                    found.append((child, (cst.st_dev, cst.st_ino)))
                else:
                    visit(child)
            elif model_format(child) is not None:
                found.append((child, (cst.st_dev, cst.st_ino)))
            elif stat.S_ISREG(cst.st_mode):
                skipped.append(child)

    visit(directory)
    models: list[Path] = []
    files: set[tuple[int, int]] = set()
    for path, key in sorted(found):
        if key is not None:
            if key in files:
                continue
            files.add(key)
        models.append(path)
    return Walk(models, sorted(skipped))


def find_models(directory: Path) -> list[Path]:
    """The models below a directory (see walk_models)."""
    return walk_models(directory).models


def model_output(base: str | Path, root: Path, model: Path, suffix: str) -> Path:
    """With a directory MODEL, -o/--png name a directory holding one output per model: the
    model's path below MODEL, its suffix replaced by `suffix` (a SavedModel directory's name
    gets `suffix` appended)."""
    rel = model.relative_to(root)
    if model.is_dir():
        return Path(base) / rel.with_name(rel.name + suffix)
    return Path(base) / rel.with_suffix(suffix)


# ------------------------------------------------------------------ outputs
#
# Every file gradcli writes is first written to a temp file next to its destination (same
# directory, so the final rename is atomic) named `.<name>.<pid>@<host>.<random>.tmp` (or
# `.part` for spooled pieces). The pid and a short hash of the host name make stale ones
# recognisable: a temp file whose process is gone on this host, older than the current run,
# is a leftover of a killed run and is removed (see remove_stale_temps).

_HOST = hashlib.blake2s(socket.gethostname().encode(), digest_size=3).hexdigest()
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[0-9a-f]{6})\.[^.]+\.(tmp|part)$")


def temp_prefix(dest: Path) -> str:
    """The name prefix of gradcli's temp files for `dest` (mkstemp adds the random part)."""
    return f".{dest.name}.{os.getpid()}@{_HOST}."


def staging_dir(dest: Path) -> Path:
    """Where temp files for `dest` live: beside it, in its nearest existing ancestor."""
    parent = dest.parent if str(dest.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def output_file(path: str | Path, suffix: str) -> Path:
    """The file an output option names: `suffix` is appended only to a new name without one
    (`-o grads` writes grads.npz), never to an existing path (`-o /dev/full` stays itself)."""
    p = Path(path)
    if p.suffix or os.path.lexists(p):
        return p
    return p.with_name(p.name + suffix)


TRAJECTORY_PNG = "trajectory.png"


def trajectory_outputs(png: str) -> tuple[str | None, Path]:
    """A directory run's --png when the command draws a trajectory over the models: a name
    ending in .png (not an existing directory) is that chart alone; otherwise a directory
    holding one chart per model and the trajectory as TRAJECTORY_PNG. Returns (the per-model
    directory or None, the trajectory's file)."""
    if png.lower().endswith(".png") and not os.path.isdir(png):
        return None, Path(png)
    return png, Path(png) / TRAJECTORY_PNG


def against_file(out: str | Path) -> Path:
    """Where -o puts --against's B result: beside A's, `<stem>.against.npz`."""
    a = output_file(out, ".npz")
    return a.with_name(a.stem + ".against.npz")


def check_output(path: str | Path, label: str, *, directory: bool = False) -> None:
    """Fail before any work when an output cannot be written: a device, FIFO or (for a file)
    a directory at the path, an unwritable directory. Missing directories are made when the
    run commits its outputs (every output alike), so writability is probed in the nearest
    existing one, by really creating (and removing) a temp file, as permissions alone do not
    tell (root, read-only mounts, ACLs)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # e.g. a path through a regular file: "Not a directory"
        raise InputError(f"{label} {path}: cannot write there: {exc.strerror}") from None
    if st is not None:
        kind = _kind(st.st_mode)
        if kind is not None:
            raise InputError(
                f"{label} {path}: is {kind}, not a regular file; gradcli writes only "
                f"regular files (and never appends a suffix to an existing path)"
            )
        if stat.S_ISDIR(st.st_mode) and not directory:
            raise InputError(f"{label} {path}: is a directory; expected a file name")
        if stat.S_ISREG(st.st_mode) and directory:
            raise InputError(f"{label} {path}: is a file; expected a directory")
    where = p if (directory and st is not None) else staging_dir(p)
    try:
        wst = os.stat(where)
    except OSError as exc:
        raise InputError(f"{label} {path}: cannot write there: {exc.strerror}") from None
    if not stat.S_ISDIR(wst.st_mode):
        raise InputError(f"{label} {path}: cannot write there: {where} is not a directory")
    probe = where / f"{temp_prefix(p)}probe.tmp"
    try:
        if not os.access(where, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"{label} {path}: cannot write in {where}: {exc.strerror or exc}"
        ) from None


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat_line[stat_line.rindex(")") + 2 :][:1] != "Z"


def remove_stale_temps(dest: str | Path, started: float | None = None) -> list[Path]:
    """Remove leftovers of killed runs next to `dest`: gradcli temp files (or staging
    directories) for this name whose process is gone on this host and that are older than
    `started` (default: now). Others' live temp files and anything else are left alone."""
    p = Path(dest)
    started = time.time() if started is None else started
    removed: list[Path] = []
    places = {staging_dir(p)}
    if p.is_dir():
        places.add(p)
    for where in places:
        try:
            entries = list(os.scandir(where))
        except OSError:
            continue
        for entry in entries:
            m = _TEMP_RE.match(entry.name)
            if not m or m["host"] != _HOST or m["name"] != p.name:
                continue
            if int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime >= started:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    import shutil

                    shutil.rmtree(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    os.unlink(entry.path)
                else:
                    continue
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def stdin_kind(label: str) -> str:
    """`-` as a file: stdin made a regular file (a pipe is copied whole to an unlinked temp
    file, so it can be mapped and, after a crash, read again); its kind by its first bytes."""
    import shutil
    import tempfile

    try:
        st = os.fstat(0)
    except OSError:
        raise InputError(f"{label}: stdin is closed") from None
    if not stat.S_ISREG(st.st_mode):
        spool = tempfile.TemporaryFile()
        with os.fdopen(os.dup(0), "rb") as src:
            shutil.copyfileobj(src, spool, 1 << 22)
        spool.flush()
        os.dup2(spool.fileno(), 0)
        spool.close()
    head = os.pread(0, 6, 0)
    if head == b"\x93NUMPY":
        return ".npy"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return ".npz"
    raise InputError(f"{label}: neither a .npy nor an .npz stream (by its first bytes)")
