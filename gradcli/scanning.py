"""Untrusted model files checked before any loader reads them: graph ops, HDF5 storage, sizes.

Everything here reads a file as data (protobuf, HDF5 metadata, JSON) and raises `ModelError`
(exit 3) when the file asks for more than computing tensors. `--unsafe` skips all of it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ModelError

# ---------------------------------------------------------------- the refused ops: ONE list
#
# family -> (what its ops do, the ops). An op of a family refused anywhere in a SavedModel
# (every meta graph, its graph, every library function, whatever calls them) fails the scan.
# The README section "Untrusted files: the threat model" says why each family is here.

REFUSED_OP_FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    "file I/O": (
        "reads, writes or lists files",
        frozenset(
            {
                "ReadFile",
                "WriteFile",
                "MatchingFiles",
                "FileSystemSetConfiguration",
                "LoadAndRemapMatrix",  # reads a checkpoint file
                "GenerateVocabRemapping",  # reads vocabulary files
                "RecordInput",  # reads record files matching a pattern
            }
        ),
    ),
    "memory-mapped file": (
        "maps a file named in an attribute into memory",
        frozenset({"ImmutableConst"}),
    ),
    "file reader": (
        "reads records from files",
        frozenset(
            {
                "WholeFileReader",
                "WholeFileReaderV2",
                "TextLineReader",
                "TextLineReaderV2",
                "FixedLengthRecordReader",
                "FixedLengthRecordReaderV2",
                "TFRecordReader",
                "TFRecordReaderV2",
                "LMDBReader",
                "IdentityReader",
                "IdentityReaderV2",
                "ReaderRead",
                "ReaderReadV2",
                "ReaderReadUpTo",
                "ReaderReadUpToV2",
                "ReaderRestoreState",
                "ReaderRestoreStateV2",
            }
        ),
    ),
    "dataset reader": (
        "reads or writes files (or a network service) through tf.data",
        frozenset(
            {
                "TFRecordDataset",
                "TFRecordDatasetV2",
                "TextLineDataset",
                "FixedLengthRecordDataset",
                "FixedLengthRecordDatasetV2",
                "CSVDataset",
                "CSVDatasetV2",
                "ExperimentalCSVDataset",
                "LMDBDataset",
                "ExperimentalLMDBDataset",
                "SqlDataset",
                "ExperimentalSqlDataset",
                "MatchingFilesDataset",
                "ExperimentalMatchingFilesDataset",
                "CacheDataset",  # a non-empty filename caches to disk
                "CacheDatasetV2",
                "SnapshotDataset",
                "SnapshotDatasetV2",
                "SnapshotDatasetReader",
                "SnapshotNestedDatasetReader",
                "SnapshotChunkDataset",
                "ListSnapshotChunksDataset",
                "SaveDataset",
                "SaveDatasetV2",
                "LoadDataset",
                "DistributedSave",
                "DatasetToTFRecord",
                "ExperimentalDatasetToTFRecord",
                "DataServiceDataset",
                "DataServiceDatasetV2",
                "DataServiceDatasetV3",
                "DataServiceDatasetV4",
            }
        ),
    ),
    "file-backed table": (
        "fills a lookup table from a file",
        frozenset({"InitializeTableFromTextFile", "InitializeTableFromTextFileV2"}),
    ),
    "Python call": (
        "calls back into Python (tf.py_function, tf.numpy_function)",
        frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc", "PyCall"}),
    ),
    "RPC and remote execution": (
        "talks to other processes or machines",
        frozenset(
            {
                "Rpc",
                "TryRpc",
                "RpcClient",
                "RpcCall",
                "RpcCheckStatus",
                "RpcServer",
                "RpcServerStart",
                "RpcServerRegister",
                "RemoteCall",
                "Send",
                "Recv",
                "_Send",
                "_Recv",
                "_HostSend",
                "_HostRecv",
                "CollectiveReduce",
                "CollectiveReduceV2",
                "CollectiveReduceV3",
                "CollectiveGather",
                "CollectiveGatherV2",
                "CollectiveBcastSend",
                "CollectiveBcastSendV2",
                "CollectiveBcastRecv",
                "CollectiveBcastRecvV2",
                "CollectiveAllToAllV2",
                "CollectiveAllToAllV3",
                "CollectivePermute",
                "CollectiveReduceScatterV2",
                "CollectiveInitializeCommunicator",
                "CollectiveAssignGroupV2",
                "NcclAllReduce",
                "NcclBroadcast",
                "NcclReduce",
            }
        ),
    ),
    "summary or debug writer": (
        "writes event files, summaries or debug dumps",
        frozenset(
            {
                "SummaryWriter",
                "CreateSummaryFileWriter",
                "CreateSummaryDbWriter",
                "WriteSummary",
                "WriteScalarSummary",
                "WriteHistogramSummary",
                "WriteImageSummary",
                "WriteAudioSummary",
                "WriteGraphSummary",
                "WriteRawProtoSummary",
                "ImportEvent",
                "FlushSummaryWriter",
                "CloseSummaryWriter",
                "StatsAggregatorSetSummaryWriter",
                "DebugIdentity",
                "DebugIdentityV2",
                "DebugIdentityV3",
                "DebugNanCount",
                "DebugNumericSummary",
                "DebugNumericSummaryV2",
                "Copy",  # debug_ops_spec can send tensors to a debug server
                "CopyHost",
            }
        ),
    ),
    "checkpoint save/restore": (
        "reads or writes checkpoint files (allowed only in TensorFlow's own variable "
        "save/restore functions)",
        frozenset(
            {
                "Save",
                "SaveV2",
                "SaveSlices",
                "Restore",
                "RestoreV2",
                "RestoreSlice",
                "MergeV2Checkpoints",
            }
        ),
    ),
}

# ops refused only for some attribute values: op -> (family, attribute, test, what it does)
_ATTR_RULES: dict[str, tuple[str, str, Any, str]] = {
    "PrintV2": (
        "print to file",
        "output_stream",
        lambda v: v.startswith("file://"),
        "prints to a file",
    ),
    "DecodeProtoV2": (
        "file I/O",
        "descriptor_source",
        lambda v: v != "local://" and not v.startswith("bytes://"),
        "reads a protobuf descriptor file",
    ),
    "EncodeProto": (
        "file I/O",
        "descriptor_source",
        lambda v: v != "local://" and not v.startswith("bytes://"),
        "reads a protobuf descriptor file",
    ),
}

_SAVE_RESTORE = "checkpoint save/restore"
_FAMILY_OF = {op: family for family, (_, ops) in REFUSED_OP_FAMILIES.items() for op in ops}


def refused_family(op: str) -> str | None:
    """The refused family of an op type, or None."""
    return _FAMILY_OF.get(op)


# ---------------------------------------------------------------- SavedModel graphs


def scan_savedmodel(path: Path) -> None:
    """Refuse a SavedModel whose graphs hold an op that does more than compute tensors."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001 - a corrupt protobuf is a load error
        raise ModelError(
            f"{path}: cannot load the SavedModel: unreadable saved_model.pb ({_first_line(exc)})"
        ) from None
    for meta in saved.meta_graphs:
        _scan_meta_graph(path, meta, op_def_registry)
        _check_variable_sizes(path, meta)


def _check_variable_sizes(path: Path, meta: Any) -> None:
    """Refuse variables declaring more bytes than the SavedModel's checkpoint holds."""
    from tensorflow.python.framework import dtypes

    declared = 0
    for node in meta.object_graph_def.nodes:
        if node.WhichOneof("kind") != "variable":
            continue
        dims = [d.size for d in node.variable.shape.dim]
        if node.variable.shape.unknown_rank or any(d < 0 for d in dims):
            continue
        try:
            itemsize = max(1, dtypes.as_dtype(node.variable.dtype).size)
        except (TypeError, ValueError):
            itemsize = 1
        declared += math.prod(dims) * itemsize
    variables = path / "variables"
    stored = sum(f.stat().st_size for f in variables.glob("*") if f.is_file())
    if declared > stored + _PARAM_SLACK:
        raise ModelError(
            f"{path}: refused: its variables declare {size_text(declared)} but its checkpoint "
            f"holds {size_text(stored)}; sizes this large cannot be real"
        )


def _scan_meta_graph(path: Path, meta: Any, registry: Any) -> None:
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    graph_nodes = list(meta.graph_def.node)
    save_ok_nodes = _saver_only_nodes(meta, graph_nodes)

    def callees(nodes) -> Iterator[str]:
        for node in nodes:
            if node.op in library:
                yield node.op
            for attr in node.attr.values():
                if attr.HasField("func") and attr.func.name:
                    yield attr.func.name
                for fn in attr.list.func:
                    yield fn.name

    def reachable(start: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            name = todo.pop()
            if name in seen or name not in library:
                continue
            seen.add(name)
            todo.extend(callees(library[name].node_def))
        return seen

    from_saver = reachable(list(callees(n for n in graph_nodes if n.name in save_ok_nodes)))
    others = [n for n in graph_nodes if n.name not in save_ok_nodes]
    # every library function is loaded (and may be called by the object graph); only those
    # reached solely from the saver's save/restore nodes may hold checkpoint ops
    from_elsewhere = reachable(
        list(callees(others)) + [name for name in library if name not in from_saver]
    )
    save_ok = from_saver - from_elsewhere
    for node in graph_nodes:
        _check_node(path, node, "the graph", node.name in save_ok_nodes, library, registry)
    for name, function in library.items():
        for node in function.node_def:
            _check_node(path, node, f"function {name}", name in save_ok, library, registry)


def _saver_only_nodes(meta: Any, graph_nodes: list) -> set[str]:
    """Graph nodes that only TensorFlow's own variable save/restore runs.

    The nodes the `saver_def` names and their inputs (a TF1 graph's save/SaveV2 and
    save/RestoreV2 live there), minus every node that a signature, an init op or a
    collection (what a loader or a serving call runs) depends on.
    """
    by_name = {n.name: n for n in graph_nodes}

    def closure(names) -> set[str]:
        seen: set[str] = set()
        todo = [_node_name(n) for n in names if n]
        while todo:
            name = todo.pop()
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            todo.extend(_node_name(i) for i in by_name[name].input)
        return seen

    saver = meta.saver_def
    roots: list[str] = []
    for signature in meta.signature_def.values():
        for info in list(signature.inputs.values()) + list(signature.outputs.values()):
            roots.append(info.name)
    for collection in meta.collection_def.values():
        roots.extend(collection.node_list.value)
    return closure([saver.save_tensor_name, saver.restore_op_name]) - closure(roots)


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _check_node(
    path: Path, node: Any, where: str, save_ok: bool, library: dict, registry: Any
) -> None:
    op = node.op
    family = _FAMILY_OF.get(op)
    if family is not None and not (save_ok and family == _SAVE_RESTORE):
        reason = REFUSED_OP_FAMILIES[family][0]
        raise ModelError(_op_message(path, op, family, reason, node.name, where))
    rule = _ATTR_RULES.get(op)
    if rule is not None:
        family, attr, test, reason = rule
        value = node.attr[attr].s.decode("utf-8", "replace") if attr in node.attr else ""
        if value and test(value):
            raise ModelError(_op_message(path, op, family, reason, node.name, where))
    if op in library:
        return
    if registry.get(op) is None:
        raise ModelError(
            f"{path}: refused: op {op!r} (node {node.name!r} in {where}) is not a TensorFlow "
            f"op; a custom op library could do anything, so gradcli does not load it; rerun "
            f"with --unsafe (and --import the library) if you trust this file"
        )


def _op_message(path: Path, op: str, family: str, reason: str, node: str, where: str) -> str:
    return (
        f"{path}: refused: op {op!r} ({family}: {reason}) in {where} (node {node!r}); "
        f"gradcli does not run models that touch the outside world; rerun with --unsafe "
        f"if you trust this file"
    )


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
                f"load; rerun with --unsafe if you trust this file"
            )
        if cls is None:
            continue
        for key in _PATH_KEYS:
            value = inner.get(key)
            if isinstance(value, str) and value:
                raise ModelError(
                    f"{label}: layer {name!r} ({cls}) names a file in its config "
                    f"({key}={value!r}); gradcli does not let a model file open other files; "
                    f"rerun with --unsafe if you trust this file"
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


def h5_model_config(path: Path) -> Any:
    """The `model_config` JSON of a legacy .h5 (None when absent or unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        return None
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except ValueError:
        return None


def keras_metadata_configs(path: Path) -> list[Any]:
    """The layer configs a tf.keras 2 SavedModel's keras_metadata.pb holds."""
    meta_file = path / "keras_metadata.pb"
    if not meta_file.is_file():
        return []
    from .backend import tf_keras

    tf_keras()  # registers the protobuf module below
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata()
    try:
        meta.ParseFromString(meta_file.read_bytes())
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a load error
        raise ModelError(f"{path}: unreadable keras_metadata.pb ({_first_line(exc)})") from None
    out = []
    for node in meta.nodes:
        try:
            out.append(json.loads(node.metadata))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------- HDF5

# DEFLATE cannot expand more than about 1032:1; a dataset declaring more than this times
# what it stores holds unallocated (fill-value) space: a shape bomb, not weights.
_MAX_EXPANSION = 1100
_SIZE_FLOOR = 64 << 20  # declared sizes below this are never refused for their ratio


def machine_memory() -> int:
    """Physical memory of this machine in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 34


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
            f"{label}: cannot load the model: not a readable HDF5 file ({_first_line(exc)})"
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
    if declared > limit or (declared > _SIZE_FLOOR and declared > _MAX_EXPANSION * stored):
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
            if info.file_size > _SIZE_FLOOR and info.file_size > _MAX_EXPANSION * max(
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
                with zf.open(name) as member:
                    check_hdf5(member, f"{path}[{name}]")
                budget += zf.getinfo(name).file_size
            elif name.endswith(".npz") or name.endswith(".npy"):
                budget += zf.getinfo(name).file_size
    return budget


# ---------------------------------------------------------------- declared parameter counts

# a model's weights all come from its file; what the file cannot hold was never saved
_PARAM_SLACK = 64 << 20


class _WeightBudget:
    def __init__(self, file_bytes: int, label: str, slack: int) -> None:
        self.limit = file_bytes + slack
        self.file_bytes = file_bytes
        self.label = label
        self.used = 0
        self.refusal: ModelError | None = None

    def take(self, shape: Any, dtype: Any) -> None:
        if self.refusal is not None:
            raise self.refusal
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            return  # unknown dims: the variable cannot be allocated either
        count = math.prod(dims) if dims else 1
        itemsize = _itemsize(dtype)
        self.used += count * itemsize
        if self.used > self.limit:
            self.refusal = ModelError(
                f"{self.label}: refused: the model declares a weight of shape {tuple(dims)} "
                f"({count:,} parameters); its weights would need {size_text(self.used)} or "
                f"more, but the file holds {size_text(self.file_bytes)}"
            )
            raise self.refusal


def _itemsize(dtype: Any) -> int:
    import numpy as np

    name = getattr(dtype, "name", None) or (dtype if isinstance(dtype, str) else None)
    try:
        return max(1, np.dtype(name or "float32").itemsize)
    except TypeError:
        return 1


@contextlib.contextmanager
def bounded_weights(
    file_bytes: int, label: str, with_tf_keras: bool = False, slack: int = _PARAM_SLACK
):
    """Refuse, before allocating it, any weight beyond what the model file holds.

    Wraps `Layer.add_weight` of Keras 3 (and of tf_keras, which it then imports) for the
    duration of a load; a refusal is raised again after the loader, whatever the loader
    made of it.
    """
    budget = _WeightBudget(file_bytes, label, slack)
    patches = []
    from keras.src.layers import layer as k3layer

    # layer weights only: an optimizer's slots are built from them (bounded with them) and
    # a compiled model that was never trained saved none
    original_k3 = k3layer.Layer.add_weight
    k3sig = inspect.signature(original_k3)

    def k3_add_weight(self, *args, **kwargs):
        bound = k3sig.bind_partial(self, *args, **kwargs).arguments
        if bound.get("shape") is not None:
            dtype = bound.get("dtype") or getattr(self, "variable_dtype", None)
            budget.take(bound["shape"], dtype)
        return original_k3(self, *args, **kwargs)

    patches.append((k3layer.Layer, "add_weight", original_k3, k3_add_weight))
    try:
        if with_tf_keras:
            from tf_keras.src.engine import base_layer as tfk_layer

            original_tfk = tfk_layer.Layer.add_weight
            tfksig = inspect.signature(original_tfk)

            def tfk_add_weight(self, *args, **kwargs):
                bound = tfksig.bind_partial(self, *args, **kwargs).arguments
                if bound.get("shape") is not None:
                    budget.take(bound["shape"], bound.get("dtype") or getattr(self, "dtype", None))
                return original_tfk(self, *args, **kwargs)

            patches.append((tfk_layer.Layer, "add_weight", original_tfk, tfk_add_weight))
    except ImportError:  # pragma: no cover - tf_keras missing
        pass
    for owner, attr, _, new in patches:
        setattr(owner, attr, new)
    try:
        yield budget
    except Exception:
        if budget.refusal is not None:
            raise budget.refusal from None
        raise
    finally:
        for owner, attr, original, _ in patches:
            setattr(owner, attr, original)
    if budget.refusal is not None:
        raise budget.refusal


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
