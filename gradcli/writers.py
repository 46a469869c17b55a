"""Atomic, streaming .npz output: arrays written as batches finish, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import InputError


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(int(d) for d in shape),
    }
    np.lib.format.write_array_header_2_0(buf, header) if _needs_v2(
        header
    ) else np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _needs_v2(header: dict) -> bool:
    return len(repr(header)) > 60000


def _file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give (temp files are created 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def check_writable(path: Path, label: str = "--out") -> None:
    """Fail early (before any computation) when the output's directory does not exist."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{label} {path}: directory {parent} does not exist")
    if path.is_dir():
        raise InputError(f"{label} {path}: is a directory; expected a file name ending in .npz")


class NpzStreamWriter:
    """Write named arrays of known shape into an .npz, one batch of rows at a time.

    The first array streams straight into its zip entry; the others are spooled to temporary
    files and appended when `commit` is called (a zip can only fill one entry at a time).
    Nothing appears at `path` until `commit`; `abort` (or an exception) leaves it untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        arrays: dict[str, tuple[tuple[int, ...], str]],
        on_temp: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npz":
            self.path = (
                self.path.with_name(self.path.name + ".npz") if not self.path.suffix else self.path
            )
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self._temps: list[Path] = [self.tmp]
        if on_temp:
            on_temp(str(self.tmp))
        self.arrays = {k: (tuple(shape), np.dtype(dt)) for k, (shape, dt) in arrays.items()}
        self.written = dict.fromkeys(self.arrays, 0)
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        keys = list(self.arrays)
        self._direct_key = keys[0] if keys else None
        self._direct = None
        if self._direct_key is not None:
            shape, dtype = self.arrays[self._direct_key]
            self._direct = self.zip.open(self._direct_key + ".npy", "w", force_zip64=True)
            self._direct.write(_header(shape, dtype))
        self._spool: dict[str, object] = {}
        for key in keys[1:]:
            fd, spool = tempfile.mkstemp(
                dir=directory, prefix=f".{self.path.name}.", suffix=".part"
            )
            self._temps.append(Path(spool))
            if on_temp:
                on_temp(spool)
            self._spool[key] = os.fdopen(fd, "wb")
        self._done = False

    def write(self, key: str, rows: np.ndarray) -> None:
        """Append the next rows of array `key` (rows must arrive in order)."""
        shape, dtype = self.arrays[key]
        rows = np.ascontiguousarray(rows, dtype=dtype)
        if shape == ():  # a scalar (e.g. a scalar weight) is written whole, once
            target = self._direct if key == self._direct_key else self._spool[key]
            target.write(rows.reshape(()).tobytes())
            self.written[key] = 1
            return
        if rows.shape[1:] != shape[1:]:
            raise ValueError(f"rows for {key!r} have shape {rows.shape}, expected (*, {shape[1:]})")
        target = self._direct if key == self._direct_key else self._spool[key]
        target.write(rows.data if rows.size else b"")
        self.written[key] += rows.shape[0]

    def commit(self) -> Path:
        for key, (shape, _) in self.arrays.items():
            if self.written[key] != (shape[0] if shape else 1):
                self.abort()
                raise RuntimeError(
                    f"npz entry {key!r}: {self.written[key]} of {shape[0]} rows written"
                )
        if self._direct is not None:
            self._direct.close()
        for key, handle in self._spool.items():
            handle.close()
            shape, dtype = self.arrays[key]
            spool = self._temps[1 + list(self._spool).index(key)]
            with (
                self.zip.open(key + ".npy", "w", force_zip64=True) as entry,
                open(spool, "rb") as src,
            ):
                entry.write(_header(shape, dtype))
                shutil.copyfileobj(src, entry, 1 << 22)
            spool.unlink()
        self.zip.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(self.tmp, _file_mode(self.path))
        os.replace(self.tmp, self.path)
        self._done = True
        return self.path

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        for handle in [self._direct, *self._spool.values()]:
            try:
                if handle is not None:
                    handle.close()
            except Exception:  # noqa: BLE001 - cleaning up after a failure
                pass
        try:
            self.zip.close()
        except Exception:  # noqa: BLE001
            pass
        for temp in self._temps:
            temp.unlink(missing_ok=True)

    def __enter__(self) -> NpzStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        return False


class MemorySink:
    """The in-memory twin of NpzStreamWriter, for the Python API: rows collected into `store`."""

    def __init__(
        self, store: dict[str, np.ndarray], arrays: dict[str, tuple[tuple[int, ...], str]]
    ) -> None:
        self.store = store
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
        self.arrays = {k: (tuple(shape), np.dtype(dt)) for k, (shape, dt) in arrays.items()}

    def write(self, key: str, rows: np.ndarray) -> None:
        self.parts[key].append(np.array(rows, dtype=self.arrays[key][1], copy=True))

    def commit(self) -> None:
        for key, parts in self.parts.items():
            shape = self.arrays[key][0]
            self.store[key] = (
                np.concatenate(parts).reshape(shape) if shape else parts[0].reshape(())
            )
        return None

    def abort(self) -> None:
        self.parts.clear()
