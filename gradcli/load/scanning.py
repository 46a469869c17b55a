"""Untrusted SavedModels checked before any loader reads them: the refused graph ops, sizes.

Everything here reads a file as data (protobuf) and raises `ModelError` (exit 3) when the
file asks for more than computing tensors. `--unsafe` skips all of it. The checks of HDF5
files, .keras archives and layer configs are in filechecks.py, the weight bound in
weightbound.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradcli.errors import ModelError, first_line, param
from gradcli.load.filechecks import size_text
from gradcli.load.weightbound import _PARAM_SLACK

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


# ---------------------------------------------------------------- SavedModel graphs


def scan_savedmodel(path: Path) -> None:
    """Refuse a SavedModel whose graphs hold an op that does more than compute tensors."""
    from gradcli.load import backend

    saved = backend.saved_model_pb2().SavedModel()
    try:
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001 - a corrupt protobuf is a load error
        raise ModelError(
            f"{path}: cannot load the SavedModel: unreadable saved_model.pb ({first_line(exc)})"
        ) from None
    for meta in saved.meta_graphs:
        _scan_meta_graph(path, meta, backend.op_def_registry())
        _check_variable_sizes(path, meta)


def _check_variable_sizes(path: Path, meta: Any) -> None:
    """Refuse variables declaring more bytes than the SavedModel's checkpoint holds."""
    from gradcli.load.backend import tf

    dtypes = tf.dtypes

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
            f"with {param('unsafe')} (and {param('imports')} the library) if you trust this file"
        )


def _op_message(path: Path, op: str, family: str, reason: str, node: str, where: str) -> str:
    return (
        f"{path}: refused: op {op!r} ({family}: {reason}) in {where} (node {node!r}); "
        f"gradcli does not run models that touch the outside world; rerun with {param('unsafe')} "
        f"if you trust this file"
    )
