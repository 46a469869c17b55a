"""Reading zip archives (.npz, .keras) gradcli does not trust: a member's data found from its
local header (so that a stored member is read in place), and what a compressed member can
really hold."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

# DEFLATE cannot expand data more than about 1032:1: a member (or an HDF5 dataset) declaring
# more than this times what it stores lies about its size (a bomb), whatever it really holds
MAX_EXPANSION = 1100


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 34


def data_offset(path: Path, info: zipfile.ZipInfo) -> int | None:
    """Where member `info`'s data starts in the file (None: its local header is corrupt)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        return None
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


class StoredMember(io.RawIOBase):
    """An uncompressed zip member read in place: h5py seeks all over a file, and zipfile's
    own member objects (Python 3.11) re-read from the start on every backward seek (4 s for
    the 100 MB weights of a ResNet50 .keras, against milliseconds here)."""

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(0, self._size - self._pos))
        data = os.pread(self._fd, want, self._start + self._pos) if want else b""
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_member(path: Path, zf: zipfile.ZipFile, name: str) -> Any:
    """A seekable reader of archive member `name` (in place when it is stored uncompressed)."""
    info = zf.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        start = data_offset(path, info)
        if start is not None:
            return io.BufferedReader(StoredMember(path, start, info.file_size), 1 << 16)
    return zf.open(name)
