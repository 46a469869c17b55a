"""Read .npy/.npz inputs, targets and baselines: never unpickled, memory-mapped, read in batches."""

from __future__ import annotations

import math
import mmap
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.errors import InputError
from gradcli.io.npzfile import NPZ_KEY
from gradcli.io.zipmember import MAX_EXPANSION, data_offset, machine_memory

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


def check_dtype(array: np.ndarray, label: str) -> None:
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
            shape, _, dtype = _read_header(f, label)
            offset = f.tell()
    except (ValueError, EOFError) as exc:
        raise InputError(f"{label}: cannot read the array header: {_describe(exc)}") from None
    if dtype.hasobject:
        raise InputError(
            f"{label}: holds pickled Python objects; gradcli never unpickles "
            f"(save a numeric array instead)"
        )
    _check_declared(label, shape, dtype, path.stat().st_size - offset)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{label}: cannot read the array: {_describe(exc)}") from None
    except (OSError, EOFError) as exc:
        raise InputError(
            f"{label}: cannot read the array (truncated or corrupt): {_describe(exc)}"
        ) from None
    return array


def _check_declared(where: str, shape: tuple[int, ...], dtype: np.dtype, available: int) -> int:
    """The bytes an array header declares, refused (exit 3) when the file holds fewer. Python
    integers: a declared (2**32, 2**32) would wrap to 0 in NumPy's int64 and pass."""
    declared = math.prod(shape) * dtype.itemsize
    if declared > available:
        raise InputError(
            f"{where} declares shape {tuple(shape)} {dtype} ({declared:,} bytes), more "
            f"than the file holds ({max(available, 0):,}): truncated or corrupt"
        )
    return declared


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


def _npz_member(path: Path, zf: zipfile.ZipFile, key: str, label: str) -> Any:
    """A stored (uncompressed) member is memory-mapped in place; a compressed one streamed."""
    info = zf.getinfo(key + ".npy")
    if info.compress_type == zipfile.ZIP_STORED:
        data_start = data_offset(path, info)
        if data_start is None:
            raise InputError(f"{label}: corrupt zip entry {key!r}")
        with open(path, "rb") as f:
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
        declared = _check_declared(
            f"{label}: entry {key!r}", shape, dtype, path.stat().st_size - offset
        )
        if declared == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(
            path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
        )
    return DeflatedMember(path, info, key, label)


_SMALL = 1 << 20  # members below this declared size are never refused for their ratio


class DeflatedMember:
    """A compressed .npz member read as a stream, rows in order, never whole.

    Its shape and dtype come from the .npy header alone, so they are checked against the
    model before anything is inflated; sizes the member cannot hold are refused.
    """

    def __init__(self, path: Path, info: zipfile.ZipInfo, key: str, label: str) -> None:
        self.path = path
        self.info = info
        self.key = key
        self.label = label
        self._zf: zipfile.ZipFile | None = None
        self._stream = None
        self._row = 0
        stream = self._open()
        try:
            if stream.read(6) != _NPY_MAGIC:
                raise InputError(f"{label}: entry {key!r} is not a .npy array")
            stream.seek(0)
            try:
                shape, fortran, dtype = _read_header(stream, f"{label} entry {key!r}")
            except (ValueError, EOFError) as exc:
                raise InputError(f"{label}: cannot read entry {key!r}: {_describe(exc)}") from None
            self._data_start = stream.tell()
        finally:
            self._close()
        if dtype.hasobject:
            raise InputError(
                f"{label}: entry {key!r} holds pickled Python objects; gradcli never unpickles"
            )
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.ndim = len(self.shape)
        self.fortran = fortran
        declared = math.prod(self.shape) * dtype.itemsize
        self.nbytes = declared
        shape_text = f"shape {self.shape} {dtype}"
        if declared > _SMALL and declared > MAX_EXPANSION * max(info.compress_size, 1):
            raise InputError(
                f"{label}: entry {key!r} declares {shape_text} ({declared:,} bytes) but "
                f"compresses to {info.compress_size:,} bytes; that shape cannot be real"
            )
        _check_declared(f"{label}: entry {key!r}", shape, dtype, info.file_size - self._data_start)
        if fortran and self.ndim > 1 and declared > machine_memory() // 4:
            raise InputError(
                f"{label}: entry {key!r} is a compressed Fortran-order array of {shape_text} "
                f"({declared:,} bytes), too large to read whole; save it in C order"
            )

    def _open(self):
        if self._zf is None:
            self._zf = zipfile.ZipFile(self.path)
        self._stream = self._zf.open(self.info)
        self._row = 0
        return self._stream

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._zf is not None:
            self._zf.close()
            self._zf = None

    def __len__(self) -> int:
        return self.shape[0]

    def _row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = self._stream.read(min(n, 1 << 24))
            if not chunk:
                raise InputError(f"{self.label}: entry {self.key!r} is truncated")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _whole(self) -> np.ndarray:
        self._open()
        try:
            self._stream.seek(self._data_start)
            data = self._read_exact(self.nbytes)
        finally:
            self._close()
        return np.frombuffer(data, dtype=self.dtype).reshape(
            self.shape, order="F" if self.fortran else "C"
        )

    def __getitem__(self, index: Any) -> np.ndarray:
        if self.ndim == 0 or self.fortran:
            return self._whole()[index]
        if not isinstance(index, slice) or index.step not in (None, 1):
            return self._whole()[index]
        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        if self._stream is None or start < self._row:
            self._open()
            self._stream.seek(self._data_start)
        row_bytes = self._row_bytes()
        if start > self._row:  # skip forward, inflating but keeping nothing
            skip = (start - self._row) * row_bytes
            while skip > 0:
                skip -= len(self._read_exact(min(skip, 1 << 24)))
            self._row = start
        data = self._read_exact((stop - start) * row_bytes)
        self._row = stop
        if self._row >= self.shape[0]:
            self._close()
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._whole()
        return whole if dtype is None else whole.astype(dtype)


def _source(path: str | Path, what: str) -> tuple[Path, str, str]:
    """The file to read, its label for messages, and its kind (.npy/.npz)."""
    from gradcli.io.paths import check_regular, stdin_kind

    if str(path) != "-":
        label = f"{what} {path}"
        check_regular(path, label)
        return Path(path), label, Path(path).suffix.lower()
    label = f"{what} - (stdin)"
    suffix = stdin_kind(label)
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
        check_dtype(array, label)
        return {names[0]: ArraySource(array, label)}
    if suffix != ".npz":
        raise InputError(f"{label}: expected a .npy or .npz file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{label}: not a readable .npz file ({_describe(exc)})") from None
    with zf:
        # a result gradcli wrote carries its provenance entry: not an array to read
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy") and n[:-4] != NPZ_KEY]
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
            check_dtype(array, member_label)
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
