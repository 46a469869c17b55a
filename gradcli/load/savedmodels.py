"""SavedModels without layers: served through their function, or only described from protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradcli.errors import ModelError, param
from gradcli.io.modelfiles import Loader, ModelFormat
from gradcli.load.backend import tf
from gradcli.load.handles import LayerInfo, ModelHandle, TensorInfo, _variable_path

EXPORT_LOSS_NOTE = f"a SavedModel export keeps no loss: give {param('loss')} with {param('target')}"


class LayerlessHandle(ModelHandle):
    """A SavedModel that gradcli reaches only through a serving function: no layers to
    list or watch, and inference mode only."""

    has_layers = False
    supports_training = False

    @property
    def layers(self) -> list[LayerInfo]:
        return []

    def find_layer(self, spec: str) -> LayerInfo:
        raise ModelError(
            f"{self.path}: a {self.loader} SavedModel has no layers, so wrt-layer cannot "
            f"work on it; use wrt-input or wrt-weights"
        )


class ServingHandle(LayerlessHandle):
    """A SavedModel used through its serving function (model.export or plain TensorFlow)."""

    def __init__(self, loaded: Any, path: Path) -> None:
        self.loaded = loaded
        self.path = path
        self.format = ModelFormat.SAVEDMODEL
        self.loader = Loader.TF_SAVED_MODEL
        self.losses = None
        self.loss_note = EXPORT_LOSS_NOTE
        serve = getattr(loaded, "serve", None)
        if (
            serve is not None
            and hasattr(serve, "get_concrete_function")
            and getattr(serve, "concrete_functions", None)
        ):
            self.endpoint = "serve"
            concrete = serve.concrete_functions[0]
            self._fn = serve
            self._by_name = False
        elif "serving_default" in getattr(loaded, "signatures", {}):
            self.endpoint = "serving_default"
            concrete = loaded.signatures["serving_default"]
            self._fn = concrete
            self._by_name = True
        else:
            raise ModelError(
                f"{path}: SavedModel has neither a `serve` nor a `serving_default` function to call"
            )
        args, kwargs = concrete.structured_input_signature
        specs = list(kwargs.values()) if self._by_name else tf.nest.flatten(args)
        self._input_keys = list(kwargs.keys()) if self._by_name else None
        self.inputs = [
            TensorInfo(
                self._input_keys[i] if self._by_name else (s.name or f"input_{i}"),
                tuple(s.shape[1:]),
                s.dtype.name,
            )
            for i, s in enumerate(specs)
        ]
        outputs = concrete.structured_outputs
        if isinstance(outputs, dict):
            self._output_keys = list(outputs.keys())
            out_specs = list(outputs.values())
        else:
            self._output_keys = None
            out_specs = tf.nest.flatten(outputs)
        self.outputs = [
            TensorInfo(
                self._output_keys[i] if self._output_keys else f"output_{i}",
                tuple(s.shape[1:]),
                s.dtype.name,
            )
            for i, s in enumerate(out_specs)
        ]

    def call(self, inputs: list, training: bool = False) -> list:
        if self._by_name:
            out = self._fn(**dict(zip(self._input_keys, inputs, strict=True)))
        else:
            out = self._fn(*inputs)
        if isinstance(out, dict):
            return [out[k] for k in self._output_keys]
        return tf.nest.flatten(out)

    def named_variables(self) -> list[tuple[str, Any]]:
        if hasattr(self.loaded, "trainable_variables"):  # Keras exports track them
            return [(_variable_path(v), v) for v in self.loaded.trainable_variables]
        return module_variables(self.loaded)


def module_variables(root: Any) -> list[tuple[str, Any]]:
    """Trainable variables of a restored tf.Module, named by their path in the object graph.

    A plain `tf.Module` SavedModel comes back as a `_UserObject` without
    `trainable_variables`; its variables are reached through the tracked children.
    """
    found: list[tuple[str, Any]] = []
    seen = {id(root)}
    todo: list[tuple[str, Any]] = [("", root)]
    while todo:
        prefix, obj = todo.pop(0)
        try:
            children = tf.train.TrackableView(obj).children(obj)
        except Exception:  # noqa: BLE001 - an object that tracks nothing has no variables
            continue
        for name, child in sorted(children.items()):
            if id(child) in seen or name in ("signatures",):
                continue
            seen.add(id(child))
            path = f"{prefix}{name}"
            if isinstance(child, tf.Variable):
                if child.trainable:
                    found.append((path, child))
            else:
                todo.append((f"{path}/", child))
    return found


class SavedModelSummary(LayerlessHandle):
    """What `info` shows of a SavedModel, read from its protobuf: nothing of it runs."""

    def __init__(self, path: Path, described: dict) -> None:
        self.path = path
        self.format = ModelFormat.SAVEDMODEL
        self.loader = Loader.TF_SAVED_MODEL
        self.losses = None
        self.loss_note = EXPORT_LOSS_NOTE
        self.endpoint = described["endpoint"]
        self.inputs = [TensorInfo(*t) for t in described["inputs"]]
        self.outputs = [TensorInfo(*t) for t in described["outputs"]]
        self._variables = described["variables"]

    def call(self, inputs: list, training: bool = False) -> list:  # pragma: no cover
        raise ModelError(f"{self.path}: only described, not loaded")

    def named_variables(self) -> list[tuple[str, Any]]:
        return list(self._variables)


def describe_savedmodel(path: Path) -> dict:
    """Endpoint, inputs, outputs and trainable variables of a SavedModel, from its protobuf.

    Mirrors ServingHandle: the `serve` function's first concrete function, else the
    `serving_default` signature.
    """
    from gradcli.load import backend

    nested_structure_coder = backend.nested_structure_coder()
    saved = backend.saved_model_pb2().SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    meta = saved.meta_graphs[0]
    graph = meta.object_graph_def
    if not graph.nodes:  # a TF1 SavedModel: no object graph, only signatures
        children: dict = {}
        described: dict = {"variables": _tf1_variables(meta)}
    else:
        children = {c.local_name: c.node_id for c in graph.nodes[0].children}
        described = {"variables": _proto_variables(graph)}
    serve = graph.nodes[children["serve"]] if "serve" in children else None
    if (
        serve is not None
        and serve.WhichOneof("kind") == "function"
        and serve.function.concrete_functions
    ):
        concrete = graph.concrete_functions[serve.function.concrete_functions[0]]
        args, _ = nested_structure_coder.decode_proto(concrete.canonicalized_input_signature)
        specs = tf.nest.flatten(args)
        described["endpoint"] = "serve"
        described["inputs"] = [
            (s.name or f"input_{i}", tuple(s.shape[1:]), s.dtype.name) for i, s in enumerate(specs)
        ]
        outputs = nested_structure_coder.decode_proto(concrete.output_signature)
        if isinstance(outputs, dict):
            items = list(outputs.items())
        else:
            items = [(f"output_{i}", s) for i, s in enumerate(tf.nest.flatten(outputs))]
        described["outputs"] = [(k, tuple(s.shape[1:]), s.dtype.name) for k, s in items]
        return described
    if "serving_default" in meta.signature_def:
        sig = meta.signature_def["serving_default"]

        def rows(tensors) -> list:
            return [
                (
                    key,
                    tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim[1:]),
                    tf.dtypes.as_dtype(info.dtype).name,
                )
                for key, info in tensors.items()
            ]

        described["endpoint"] = "serving_default"
        described["inputs"] = rows(sig.inputs)
        described["outputs"] = rows(sig.outputs)
        return described
    raise ModelError(
        f"{path}: SavedModel has neither a `serve` nor a `serving_default` function to call"
    )


def _proto_variables(graph: Any) -> list[tuple[str, Any]]:
    """Trainable variables of an object graph as (path, an object with .shape)."""
    found: list[tuple[str, Any]] = []
    listed = {c.local_name: c.node_id for c in graph.nodes[0].children}
    if "trainable_variables" in listed:  # a Keras export lists them, as ServingHandle uses
        for child in graph.nodes[listed["trainable_variables"]].children:
            node = graph.nodes[child.node_id]
            if node.WhichOneof("kind") == "variable":
                shape = tuple(max(d.size, 0) for d in node.variable.shape.dim)
                found.append((node.variable.name or child.local_name, _Shaped(shape)))
        return found
    seen = {0}
    todo = [("", 0)]
    while todo:
        prefix, node_id = todo.pop(0)
        for child in graph.nodes[node_id].children:
            if child.node_id in seen or child.local_name == "signatures":
                continue
            seen.add(child.node_id)
            node = graph.nodes[child.node_id]
            path = f"{prefix}{child.local_name}"
            if node.WhichOneof("kind") == "variable":
                if node.variable.trainable:
                    shape = tuple(max(d.size, 0) for d in node.variable.shape.dim)
                    found.append((path, _Shaped(shape)))
            else:
                todo.append((f"{path}/", child.node_id))
    return found


def _tf1_variables(meta: Any) -> list[tuple[str, Any]]:
    """Trainable variables of a TF1 graph: its collection, shapes from the variable nodes."""
    from gradcli.load.backend import variable_pb2 as variables_proto

    variable_pb2 = variables_proto()

    nodes = {n.name: n for n in meta.graph_def.node}
    found: list[tuple[str, Any]] = []
    collection = meta.collection_def.get("trainable_variables")
    for raw in collection.bytes_list.value if collection is not None else []:
        var = variable_pb2.VariableDef()
        var.ParseFromString(raw)
        name = var.variable_name.split(":")[0]
        node = nodes.get(name)
        if node is None or "shape" not in node.attr:
            continue
        shape = tuple(max(d.size, 0) for d in node.attr["shape"].shape.dim)
        found.append((name, _Shaped(shape)))
    return found


@dataclass
class _Shaped:
    shape: tuple[int, ...]
