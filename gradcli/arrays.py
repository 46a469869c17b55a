"""Read .npy/.npz inputs, targets and baselines: never unpickled, memory-mapped, read in batches."""

from __future__ import annotations

import mmap
import os
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError

_NPY_MAGIC = b"\x93NUMPY"


class ArraySource:
    """One array of N samples, read batch by batch; mapped pages are released after use."""

    def __init__(self, array: np.ndarray, label: str) -> None:
        self.array = array
        self.label = label

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, start: int, stop: int, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Rows [start, stop) as a fresh in-memory array (cast to `dtype` if given)."""
        out = np.array(self.array[start:stop], dtype=dtype or self.array.dtype, copy=True)
        self.release()
        return out

    def release(self) -> None:
        """Drop mapped pages already read so a large input does not pile up in RSS."""
        mm = getattr(self.array, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # pragma: no cover - advisory only
                pass


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _check_dtype(array: np.ndarray, label: str) -> None:
    kind = array.dtype.kind
    if array.dtype.hasobject or kind == "O":
        raise InputError(
            f"{label}: holds Python objects; gradcli reads only numeric arrays and never unpickles"
        )
    if kind in "USa":
        raise InputError(f"{label}: holds strings ({array.dtype}); expected numbers")
    if kind == "V":
        raise InputError(f"{label}: holds structured records ({array.dtype}); expected numbers")
    if kind == "c":
        raise InputError(f"{label}: holds complex numbers; expected real numbers")
    if kind not in "fiub":
        raise InputError(f"{label}: unsupported dtype {array.dtype}; expected numbers")


def _load_npy(path: Path, label: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise InputError(f"{label}: cannot read: {exc.strerror}") from None
    if magic != _NPY_MAGIC:
        raise InputError(f"{label}: not a .npy file")
    try:
        with open(path, "rb") as f:
            _, _, dtype = _read_header(f, label)
    except (ValueError, EOFError) as exc:
        raise InputError(f"{label}: cannot read the array header: {_describe(exc)}") from None
    if dtype.hasobject:
        raise InputError(
            f"{label}: holds pickled Python objects; gradcli never unpickles "
            f"(save a numeric array instead)"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{label}: cannot read the array: {_describe(exc)}") from None
    except (OSError, EOFError) as exc:
        raise InputError(
            f"{label}: cannot read the array (truncated or corrupt): {_describe(exc)}"
        ) from None
    return array


def _read_header(f, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header (never unpickles)."""
    version = np.lib.format.read_magic(f)
    read = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read is None:
        raise InputError(f"{label}: .npy format version {version} is not supported")
    return read(f)


def _npz_member(path: Path, zf: zipfile.ZipFile, key: str, label: str) -> np.ndarray:
    """A stored (uncompressed) member is memory-mapped in place; a compressed one is read."""
    info = zf.getinfo(key + ".npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise InputError(f"{label}: corrupt zip entry {key!r}")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            data_start = info.header_offset + 30 + name_len + extra_len
            f.seek(data_start)
            if f.read(6) != _NPY_MAGIC:
                raise InputError(f"{label}: entry {key!r} is not a .npy array")
            f.seek(data_start)
            try:
                shape, fortran, dtype = _read_header(f, f"{label} entry {key!r}")
            except ValueError as exc:
                raise InputError(f"{label}: cannot read entry {key!r}: {_describe(exc)}") from None
            if dtype.hasobject:
                raise InputError(
                    f"{label}: entry {key!r} holds pickled Python objects; gradcli never unpickles"
                )
            offset = f.tell()
        need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if path.stat().st_size < need:
            raise InputError(f"{label}: entry {key!r} is truncated")
        if int(np.prod(shape, dtype=np.int64)) == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(
            path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
        )
    with zf.open(info) as member:
        try:
            return np.lib.format.read_array(member, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                raise InputError(
                    f"{label}: entry {key!r} holds pickled Python objects; gradcli never unpickles"
                ) from None
            raise InputError(f"{label}: cannot read entry {key!r}: {_describe(exc)}") from None


def _source(path: str | Path, what: str) -> tuple[Path, str, str]:
    """The file to read, its label for messages, and its kind (.npy/.npz)."""
    from .paths import check_regular

    if str(path) != "-":
        label = f"{what} {path}"
        check_regular(path, label)
        return Path(path), label, Path(path).suffix.lower()
    label = f"{what} - (stdin)"
    st = os.fstat(0)
    if not stat.S_ISREG(st.st_mode):  # a pipe: read it whole into an unlinked temp file
        import shutil
        import tempfile

        spool = tempfile.TemporaryFile()
        with os.fdopen(os.dup(0), "rb") as src:
            shutil.copyfileobj(src, spool, 1 << 22)
        spool.flush()
        os.dup2(spool.fileno(), 0)
        spool.close()
    head = os.pread(0, 6, 0)
    if head == _NPY_MAGIC:
        suffix = ".npy"
    elif head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        suffix = ".npz"
    else:
        raise InputError(f"{label}: neither a .npy nor an .npz stream (by its first bytes)")
    # a new open of /proc/self/fd/0 has its own offset: mapped and read like any file
    return Path("/proc/self/fd/0"), label, suffix


def read_arrays(path: str | Path, names: Sequence[str], what: str) -> dict[str, ArraySource]:
    """Open the arrays for `names` (model inputs or outputs) from a .npy or .npz file.

    A .npy serves a single name; an .npz is keyed by name (a lone array serves a single name
    whatever its key). `-` reads stdin whole (a .npy or .npz stream, told by its first bytes).
    A FIFO or device is refused without being opened.
    """
    path, label, suffix = _source(path, what)
    if suffix == ".npy":
        if len(names) != 1:
            raise InputError(
                f"{label}: the model has {len(names)} {what}s "
                f"({', '.join(names)}); give an .npz keyed by those names"
            )
        array = _load_npy(path, label)
        _check_dtype(array, label)
        return {names[0]: ArraySource(array, label)}
    if suffix != ".npz":
        raise InputError(f"{label}: expected a .npy or .npz file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{label}: not a readable .npz file ({_describe(exc)})") from None
    with zf:
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if not keys:
            raise InputError(f"{label}: holds no arrays")
        chosen: dict[str, str] = {}
        if len(names) == 1 and len(keys) == 1:
            chosen[names[0]] = keys[0]
        else:
            missing = [n for n in names if n not in keys]
            if missing:
                raise InputError(
                    f"{label}: no array for {', '.join(map(repr, missing))}; "
                    f"expected keys {', '.join(names)}, found "
                    f"{', '.join(keys)}"
                )
            chosen = {n: n for n in names}
        out = {}
        for name, key in chosen.items():
            member_label = f"{label}[{key}]"
            try:
                array = _npz_member(path, zf, key, member_label)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InputError(
                    f"{member_label}: cannot read (truncated or corrupt): {_describe(exc)}"
                ) from None
            _check_dtype(array, member_label)
            out[name] = ArraySource(array, member_label)
        return out


def check_samples(
    sources: dict[str, ArraySource], expected: dict[str, tuple], what: str, n: int | None = None
) -> int:
    """Validate rank, feature shape and sample count; return N."""
    counts = set()
    for name, src in sources.items():
        shape = src.shape
        if len(shape) == 0:
            raise InputError(f"{src.label}: is a scalar; expected an array with a sample axis")
        feature = expected.get(name)
        if feature is not None:
            want = "(N, " + ", ".join("?" if d is None else str(d) for d in feature) + ")"
            if feature == () or len(feature) == 0:
                want = "(N,)"
            if len(shape) != len(feature) + 1:
                raise InputError(
                    f"{src.label}: expected shape {want} for {what} {name!r}, "
                    f"got {shape} (rank {len(shape)}, expected {len(feature) + 1})"
                )
            for d_want, d_got in zip(feature, shape[1:], strict=True):
                if d_want is not None and d_want != d_got:
                    raise InputError(
                        f"{src.label}: expected shape {want} for {what} {name!r}, got {shape}"
                    )
        counts.add(shape[0])
    if len(counts) > 1:
        raise InputError(
            f"{what}s have different sample counts: "
            + ", ".join(f"{k}: {s.shape[0]}" for k, s in sources.items())
        )
    count = counts.pop()
    if count == 0:
        raise InputError(f"{next(iter(sources.values())).label}: has 0 samples")
    if n is not None and count != n:
        raise InputError(
            f"{next(iter(sources.values())).label}: has {count} samples, but the input has {n}"
        )
    return count
