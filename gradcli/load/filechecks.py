"""Untrusted Keras files checked as data before loading: layer configs, HDF5 storage, archives.

Each check raises `ModelError` (exit 3) when the file asks for more than computing tensors
(code, other files, sizes that cannot be real). `--unsafe` skips all of it.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradcli.errors import ModelError, first_line, param
from gradcli.io.zipmember import MAX_EXPANSION, machine_memory, open_member

# ---------------------------------------------------------------- layer configs

# config keys whose string value is a path a layer would open (lookup vocabularies, ...)
_PATH_KEYS = frozenset({"vocabulary", "idf_weights", "stop_words", "filepath", "filename", "path"})


def check_layer_configs(config: Any, label: str, check_code: bool = True) -> None:
    """Refuse layer configs that run code (Lambda) or name files a layer would open."""
    for item in _walk_dicts(config):
        cls = item.get("class_name")
        inner = item.get("config") if isinstance(item.get("config"), dict) else {}
        name = inner.get("name") or item.get("name") or "?"
        if check_code and cls == "Lambda":
            raise ModelError(
                f"{label}: Lambda layer {name!r} holds Python code that safe mode does not "
                f"load; rerun with {param('unsafe')} if you trust this file"
            )
        if cls is None:
            continue
        for key in _PATH_KEYS:
            value = inner.get(key)
            if isinstance(value, str) and value:
                raise ModelError(
                    f"{label}: layer {name!r} ({cls}) names a file in its config "
                    f"({key}={value!r}); gradcli does not let a model file open other files; "
                    f"rerun with {param('unsafe')} if you trust this file"
                )


def _walk_dicts(value: Any) -> Iterator[dict]:
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            yield item
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)


def keras_metadata_configs(path: Path) -> list[Any]:
    """The layer configs a tf.keras 2 SavedModel's keras_metadata.pb holds."""
    meta_file = path / "keras_metadata.pb"
    if not meta_file.is_file():
        return []
    from gradcli.load.backend import saved_metadata_pb2

    meta = saved_metadata_pb2().SavedMetadata()
    try:
        meta.ParseFromString(meta_file.read_bytes())
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a load error
        raise ModelError(f"{path}: unreadable keras_metadata.pb ({first_line(exc)})") from None
    out = []
    for node in meta.nodes:
        try:
            out.append(json.loads(node.metadata))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------- HDF5

# a dataset declaring more than MAX_EXPANSION times what it stores holds unallocated
# (fill-value) space: a shape bomb, not weights
_SIZE_FLOOR = 64 << 20  # declared sizes below this are never refused for their ratio


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_hdf5(source: Any, label: str) -> int:
    """Refuse external storage, external links, virtual datasets into other files and
    declared sizes that cannot be real; return the total declared dataset bytes."""
    import h5py

    try:
        f = h5py.File(source, "r")
    except OSError as exc:
        raise ModelError(
            f"{label}: cannot load the model: not a readable HDF5 file ({first_line(exc)})"
        ) from None
    total = 0
    limit = machine_memory() // 2
    with f:
        seen: set = set()
        todo: list[tuple[Any, str]] = [(f, "")]
        while todo:
            group, prefix = todo.pop()
            for name in group:
                where = f"{prefix}/{name}"
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    raise ModelError(
                        f"{label}: refused: HDF5 external link {where!r} to "
                        f"{link.filename}:{link.path}; a model file may not read other files"
                    )
                if isinstance(link, h5py.SoftLink):
                    continue  # hard links below reach every object once
                obj = group[name]
                if obj.id in seen:  # ObjectIDs of one object compare equal: no link loops
                    continue
                seen.add(obj.id)
                if isinstance(obj, h5py.Group):
                    todo.append((obj, where))
                elif isinstance(obj, h5py.Dataset):
                    total += _check_dataset(obj, where, label, limit)
                    if total > limit:
                        raise ModelError(
                            f"{label}: refused: its datasets declare {size_text(total)} in "
                            f"all, more than this machine can hold ({size_text(limit)} "
                            f"allowed)"
                        )
    return total


def _check_dataset(ds: Any, where: str, label: str, limit: int) -> int:
    plist = ds.id.get_create_plist()
    if plist.get_external_count() > 0:
        target = plist.get_external(0)[0]
        target = target.decode("utf-8", "replace") if isinstance(target, bytes) else target
        raise ModelError(
            f"{label}: refused: HDF5 dataset {where!r} keeps its data in external file "
            f"{target!r}; a model file may not read other files"
        )
    if ds.is_virtual:
        for source in ds.virtual_sources():
            if source.file_name != ".":
                raise ModelError(
                    f"{label}: refused: HDF5 virtual dataset {where!r} reads from file "
                    f"{source.file_name!r}; a model file may not read other files"
                )
    shape = ds.shape or ()
    declared = math.prod(shape) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    if declared > limit or (declared > _SIZE_FLOOR and declared > MAX_EXPANSION * stored):
        raise ModelError(
            f"{label}: refused: HDF5 dataset {where!r} declares shape {tuple(shape)} "
            f"({size_text(declared)}) but stores {size_text(stored)}; a shape this large "
            f"cannot be real"
        )
    return declared


# ---------------------------------------------------------------- .keras archives


def check_keras_archive(path: Path, check_code: bool = True) -> int:
    """Check a .keras zip before Keras reads it; return the weights' byte budget."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return 0  # nothing in it can be read: the loader reports why
    with zf:
        for info in zf.infolist():
            if info.file_size > _SIZE_FLOOR and info.file_size > MAX_EXPANSION * max(
                info.compress_size, 1
            ):
                raise ModelError(
                    f"{path}: refused: archive member {info.filename!r} declares "
                    f"{size_text(info.file_size)} but stores {size_text(info.compress_size)}"
                )
        names = set(zf.namelist())
        if "config.json" in names:
            info = zf.getinfo("config.json")
            if info.file_size > 256 << 20:
                raise ModelError(
                    f"{path}: refused: config.json declares {size_text(info.file_size)}"
                )
            try:
                config = json.loads(zf.read("config.json"))
            except ValueError:
                config = None
            if config is not None:
                check_layer_configs(config, str(path), check_code=check_code)
        budget = 0
        for name in sorted(names):
            if name.endswith(".h5"):
                with open_member(path, zf, name) as member:
                    check_hdf5(member, f"{path}[{name}]")
                budget += zf.getinfo(name).file_size
            elif name.endswith(".npz") or name.endswith(".npy"):
                budget += zf.getinfo(name).file_size
    return budget
