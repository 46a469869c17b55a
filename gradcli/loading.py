"""Load saved models (.keras, .h5, SavedModel, directories of them) into one uniform handle."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import scanning
from .backend import keras, tf, tf_keras
from .errors import InputError, ModelError, UsageError
from .paths import H5_SUFFIXES, KERAS_SUFFIXES, check_not_remote, is_savedmodel


@dataclass
class TensorInfo:
    """A model input or output: name, shape without the batch axis, dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass
class LayerInfo:
    """One row of `gradcli info`'s layer list."""

    index: int | None  # position in the top-level model.layers; None inside nested models
    path: str  # name, or outer/inner for layers of nested models
    class_name: str
    output_shape: str
    params: int
    layer: Any = field(repr=False, default=None)
    depth: int = 0


@dataclass
class LossSpec:
    """The per-sample loss of one output, and its weight."""

    fn: Any  # a Keras loss object or function taking (y_true, y_pred)
    description: str
    weight: float = 1.0


class ModelHandle:
    """What every command needs from a model, whatever its format."""

    path: Path
    format: str  # keras | h5 | savedmodel
    loader: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    losses: dict[str, LossSpec] | None  # per output name; None when unknown
    loss_note: str | None = None
    endpoint: str | None = None

    def call(self, inputs: list, training: bool = False) -> list:
        raise NotImplementedError

    @property
    def layers(self) -> list[LayerInfo]:
        return []

    def named_variables(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def find_layer(self, spec: str) -> LayerInfo:
        raise ModelError(
            f"{self.path}: a {self.loader} SavedModel has no layers, so wrt-layer cannot "
            f"work on it; use wrt-input or wrt-weights"
        )

    def compiled_loss_text(self) -> str:
        if self.losses is None:
            return "unknown"
        parts = []
        for name, spec in self.losses.items():
            weight = "" if spec.weight == 1.0 else f" x {spec.weight:g}"
            parts.append(
                f"{spec.description}{weight}"
                if len(self.losses) == 1
                else f"{name}: {spec.description}{weight}"
            )
        return ", ".join(parts)


# ---------------------------------------------------------------- Keras models


class KerasHandle(ModelHandle):
    """A Keras 3 (or tf.keras 2) model object with its layers."""

    def __init__(
        self,
        model: Any,
        path: Path,
        fmt: str,
        loader: str,
        losses: dict[str, LossSpec] | None,
        loss_note: str | None = None,
    ) -> None:
        self.model = model
        self.path = path
        self.format = fmt
        self.loader = loader
        self.losses = losses
        self.loss_note = loss_note
        self._layers: list[LayerInfo] | None = None
        self.inputs = [
            TensorInfo(_tensor_name(t, f"input_{i}"), _feature_shape(t), _dtype_name(t.dtype))
            for i, t in enumerate(_flat(model.inputs))
        ]
        names = _output_names(model)
        self.outputs = [
            TensorInfo(names[i], _feature_shape(t), _dtype_name(t.dtype))
            for i, t in enumerate(_flat(model.outputs))
        ]
        structure = getattr(model, "_inputs_struct", None)
        self._dict_inputs = isinstance(structure, dict)

    def call(self, inputs: list, training: bool = False) -> list:
        if self._dict_inputs:
            arg = {info.name: x for info, x in zip(self.inputs, inputs, strict=True)}
        elif len(inputs) == 1:
            arg = inputs[0]
        else:
            arg = list(inputs)
        out = self.model(arg, training=training)
        if isinstance(out, dict):
            return [out[o.name] for o in self.outputs]
        if isinstance(out, list | tuple):
            return list(out)
        return [out]

    def named_variables(self) -> list[tuple[str, Any]]:
        return [(_variable_path(v), v) for v in self.model.trainable_variables]

    @property
    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = list(_walk_layers(self.model, prefix="", top=True, depth=0))
        return self._layers

    def find_layer(self, spec: str) -> LayerInfo:
        rows = self.layers
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            top = [r for r in rows if r.index is not None]
            if not 0 <= index < len(top):
                raise InputError(
                    f"layer index {index} is out of range: {self.path.name} has "
                    f"{len(top)} top-level layers (0..{len(top) - 1}); see `gradcli info`"
                )
            return top[index]
        for row in rows:
            if row.path == text:
                return row
        # a bare name of a nested layer is accepted when it is unique
        matches = [r for r in rows if r.path.rsplit("/", 1)[-1] == text]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError(
                f"layer name {text!r} is ambiguous in {self.path.name}: "
                + ", ".join(r.path for r in matches)
            )
        close = difflib.get_close_matches(text, [r.path for r in rows], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `gradcli info`"
        raise InputError(f"no layer {text!r} in {self.path.name}{hint}")


def _walk_layers(model: Any, prefix: str, top: bool, depth: int):
    for i, layer in enumerate(model.layers):
        path = f"{prefix}{layer.name}"
        yield LayerInfo(
            index=i if top else None,
            path=path,
            class_name=type(layer).__name__,
            output_shape=_layer_output_shape(layer),
            params=_count_params(layer),
            layer=layer,
            depth=depth,
        )
        if (
            hasattr(layer, "layers")
            and isinstance(getattr(layer, "layers", None), list)
            and _is_model(layer)
        ):
            yield from _walk_layers(layer, prefix=f"{path}/", top=False, depth=depth + 1)


def _is_model(layer: Any) -> bool:
    if isinstance(layer, keras.Model):
        return True
    if "tf_keras" not in sys.modules:  # no tf.keras 2 model was loaded: nothing to check
        return False
    return isinstance(layer, tf_keras().Model)


def _layer_output_shape(layer: Any) -> str:
    try:
        out = layer.output
    except Exception:  # noqa: BLE001 - an unbuilt layer has no output; show "?"
        return "?"
    shapes = [tuple(t.shape) for t in _flat(out)]
    text = [_shape_text(s) for s in shapes]
    return text[0] if len(text) == 1 else "[" + ", ".join(text) + "]"


def _count_params(layer: Any) -> int:
    try:
        return int(layer.count_params())
    except Exception:  # noqa: BLE001 - unbuilt layers cannot count their weights
        return 0


def _shape_text(shape: tuple) -> str:
    return (
        "("
        + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape))
        + ")"
    )


def _flat(x: Any) -> list:
    if isinstance(x, dict):
        return list(x.values())
    if isinstance(x, list | tuple):
        out = []
        for item in x:
            out.extend(_flat(item))
        return out
    return [x]


def _feature_shape(t: Any) -> tuple[int | None, ...]:
    shape = tuple(t.shape)
    return tuple(None if d is None else int(d) for d in shape[1:])


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)


def _tensor_name(t: Any, default: str) -> str:
    name = getattr(t, "name", None) or default
    return name.split(":")[0]


def _output_names(model: Any) -> list[str]:
    outs = _flat(model.outputs)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outs):
        names = [_producer_name(t) or _tensor_name(t, f"output_{i}") for i, t in enumerate(outs)]
    return names


def _producer_name(t: Any) -> str | None:
    history = getattr(t, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    return getattr(layer, "name", None)


def _variable_path(v: Any) -> str:
    path = getattr(v, "path", None)
    if path:
        return path
    return v.name.split(":")[0]


# ---------------------------------------------------------------- compiled losses


def _loss_description(fn: Any) -> str:
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__
    inner = getattr(fn, "fn", None)
    if inner is not None and getattr(inner, "__name__", None):
        name = inner.__name__
    kwargs = getattr(fn, "_fn_kwargs", None) or {}
    if kwargs.get("from_logits"):
        name += " (from logits)"
    return name


def resolve_loss(identifier: Any, from_logits: bool = False, api: Any = None) -> Any:
    """A per-sample loss callable from a Keras identifier ('mse', a config dict, an object)."""
    api = api or keras
    if isinstance(identifier, dict) and isinstance(identifier.get("config"), dict):
        # tf.keras 2 configs carry reduction="auto" and the function itself: Keras 3 rejects both
        identifier = {
            **identifier,
            "config": {
                k: v for k, v in identifier["config"].items() if k not in ("reduction", "fn")
            },
        }
    try:
        fn = api.losses.get(identifier)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError/TypeError variously
        raise UsageError(f"unknown loss {identifier!r}: {_first_line(exc)}") from None
    if fn is None:
        raise UsageError(f"unknown loss {identifier!r}")
    if from_logits:
        fn = _with_from_logits(fn, identifier)
    return fn


def _with_from_logits(fn: Any, identifier: Any) -> Any:
    import inspect

    if hasattr(fn, "get_config") and "from_logits" in (fn.get_config() or {}):
        config = {**fn.get_config(), "from_logits": True}
        return type(fn).from_config(config)
    target = getattr(fn, "fn", fn)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    if "from_logits" not in params:
        raise UsageError(f"--from-logits does not apply to the loss {identifier!r}")

    def with_logits(y_true, y_pred):
        return target(y_true, y_pred, from_logits=True)

    with_logits.__name__ = f"{getattr(target, '__name__', 'loss')} (from logits)"
    return with_logits


def _compiled_losses(model: Any, output_names: list[str], api: Any) -> dict[str, LossSpec] | None:
    loss = getattr(model, "loss", None)
    compile_config = getattr(model, "_compile_config", None)
    weights = None
    if compile_config is not None and hasattr(compile_config, "config"):
        weights = compile_config.config.get("loss_weights")
    if weights is None:
        weights = getattr(getattr(model, "compiled_loss", None), "_loss_weights", None)
    if loss is None:
        return None
    return _loss_table(loss, weights, output_names, api)


def _loss_table(
    loss: Any, weights: Any, output_names: list[str], api: Any
) -> dict[str, LossSpec] | None:
    if isinstance(loss, dict):
        per_output = {name: loss.get(name) for name in output_names}
    elif isinstance(loss, list | tuple):
        if len(loss) != len(output_names):
            return None
        per_output = dict(zip(output_names, loss, strict=True))
    else:
        per_output = {name: loss for name in output_names}
    if isinstance(weights, dict):
        w = {name: float(weights.get(name, 1.0)) for name in output_names}
    elif isinstance(weights, list | tuple) and len(weights) == len(output_names):
        # tf.keras 2 keeps [None] when compile() was given no loss_weights
        w = {
            name: 1.0 if x is None else float(x)
            for name, x in zip(output_names, weights, strict=True)
        }
    else:
        w = dict.fromkeys(output_names, 1.0)
    table = {}
    for name, ident in per_output.items():
        if ident is None:
            continue
        fn = (
            ident
            if callable(ident) and not isinstance(ident, str)
            else resolve_loss(ident, api=api)
        )
        table[name] = LossSpec(fn=fn, description=_loss_description(ident), weight=w[name])
    return table or None


def _h5_training_config(path: Path) -> dict | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("training_config")
    except OSError:
        return None
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _losses_from_training_config(path: Path, output_names: list[str]) -> dict | None:
    config = _h5_training_config(path)
    if not config or config.get("loss") is None:
        return None
    try:
        return _loss_table(config["loss"], config.get("loss_weights"), output_names, keras)
    except Exception:  # noqa: BLE001 - an unreadable old loss leaves the loss unknown
        return None


# ---------------------------------------------------------------- SavedModels without layers


class ServingHandle(ModelHandle):
    """A SavedModel used through its serving function (model.export or plain TensorFlow)."""

    def __init__(self, loaded: Any, path: Path) -> None:
        self.loaded = loaded
        self.path = path
        self.format = "savedmodel"
        self.loader = "tf.saved_model"
        self.losses = None
        self.loss_note = "a SavedModel export keeps no loss: give --loss with --target"
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


class SavedModelSummary(ModelHandle):
    """What `info` shows of a SavedModel, read from its protobuf: nothing of it runs."""

    def __init__(self, path: Path, described: dict) -> None:
        self.path = path
        self.format = "savedmodel"
        self.loader = "tf.saved_model"
        self.losses = None
        self.loss_note = "a SavedModel export keeps no loss: give --loss with --target"
        self.endpoint = described["endpoint"]
        self.inputs = [TensorInfo(*t) for t in described["inputs"]]
        self.outputs = [TensorInfo(*t) for t in described["outputs"]]
        self._variables = described["variables"]

    def call(self, inputs: list, training: bool = False) -> list:  # pragma: no cover
        raise ModelError(f"{self.path}: only described, not loaded")

    def named_variables(self) -> list[tuple[str, Any]]:
        return list(self._variables)


# ---------------------------------------------------------------- finding and loading


def import_custom_code(specs: list[str]) -> None:
    """Import modules or .py files that register custom layers/losses (--import)."""
    for spec in specs:
        if spec.endswith(".py"):
            file = Path(spec)
            if not file.is_file():
                raise InputError(f"--import {spec}: no such file")
            name = f"gradcli_user_{file.stem}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001 - user code: report, do not crash
                raise InputError(f"--import {spec}: {_first_line(exc)}") from exc
        else:
            try:
                importlib.import_module(spec)
            except ImportError as exc:
                raise InputError(f"--import {spec}: {_first_line(exc)}") from exc


def load_model(path: str | Path, unsafe: bool = False, describe_only: bool = False) -> ModelHandle:
    """Load a .keras, .h5/.hdf5 or SavedModel; safe mode unless `unsafe`.

    Unless `unsafe`, the file is checked first (see scanning.py). `describe_only` (for
    `info`) reads what a plain SavedModel is from its protobuf without loading it.
    """
    check_not_remote(str(path))
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory")
    if path.is_dir():
        if not is_savedmodel(path):
            raise ModelError(f"{path}: a directory without saved_model.pb is not a SavedModel")
        if not unsafe:
            _check_savedmodel(path)
        if describe_only and not _is_keras2_savedmodel(path):
            try:
                described = describe_savedmodel(path)
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed protobuf is a load error
                raise ModelError(
                    f"{path}: cannot load the SavedModel: {_first_line(exc)}"
                ) from None
            return SavedModelSummary(path, described)
        return _load_savedmodel(path, unsafe)
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return _load_checked_file(path, "keras", unsafe)
    if suffix in H5_SUFFIXES:
        return _load_checked_file(path, "h5", unsafe)
    raise ModelError(
        f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected .keras, .h5, "
        f".hdf5 or a SavedModel directory"
    )


def _load_checked_file(path: Path, fmt: str, unsafe: bool) -> ModelHandle:
    """Check a .keras/.h5 file as data, then load it (every loader, fallbacks included)
    with no weight allowed beyond what the file holds."""
    if unsafe:
        return _load_keras_file(path, fmt, unsafe)
    _check_file_magic(path, fmt)
    if fmt == "keras":
        budget = scanning.check_keras_archive(path)
    else:
        scanning.check_hdf5(path, str(path))
        config = scanning.h5_model_config(path)
        if config is not None:
            scanning.check_layer_configs(config, str(path))
        budget = path.stat().st_size
        tf_keras()  # the fallback loader: its weights are bounded too
    with scanning.bounded_weights(budget, str(path), with_tf_keras=fmt == "h5"):
        return _load_keras_file(path, fmt, unsafe)


def _check_savedmodel(path: Path) -> None:
    """Scan every graph of a SavedModel, and a tf.keras 2 one's layer configs."""
    scanning.scan_savedmodel(path)
    for config in scanning.keras_metadata_configs(path):
        scanning.check_layer_configs(config, str(path))


def _is_keras2_savedmodel(path: Path) -> bool:
    return (path / "keras_metadata.pb").is_file() or _looks_like_keras2(path)


def describe_savedmodel(path: Path) -> dict:
    """Endpoint, inputs, outputs and trainable variables of a SavedModel, from its protobuf.

    Mirrors ServingHandle: the `serve` function's first concrete function, else the
    `serving_default` signature.
    """
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model import nested_structure_coder

    saved = saved_model_pb2.SavedModel()
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
    from tensorflow.core.framework import variable_pb2

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


def _load_keras_file(path: Path, fmt: str, unsafe: bool) -> ModelHandle:
    _check_file_magic(path, fmt)
    try:
        model = keras.saving.load_model(path, safe_mode=not unsafe)
    except Exception as first:  # noqa: BLE001 - retried without the compile config
        if _is_unsafe_refusal(first):
            raise ModelError(_unsafe_message(path, first)) from first
        try:
            model = keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
        except Exception as exc:  # noqa: BLE001
            if _is_unsafe_refusal(exc):
                raise ModelError(_unsafe_message(path, exc)) from exc
            if fmt == "h5":
                return _load_h5_with_tf_keras(path, exc, unsafe)
            raise ModelError(f"{path}: cannot load the model: {_first_line(exc)}") from exc
        if fmt == "h5" and (misread := _keras3_misread_input(path, model)):
            return _load_declared_input_shape(path, misread, unsafe)
        names = _output_names(model)
        losses = _losses_from_training_config(path, names) if fmt == "h5" else None
        loader = "keras (compile config skipped)"
        if losses is not None:
            note = "compile config did not load; loss taken from the file's training_config"
        else:
            note = f"compile config did not load ({_first_line(first)})"
        return KerasHandle(model, path, fmt, loader, losses, note)
    _ensure_called(model, path)
    if fmt == "h5" and (misread := _keras3_misread_input(path, model)):
        return _load_declared_input_shape(path, misread, unsafe)
    losses = _compiled_losses(model, _output_names(model), keras)
    return KerasHandle(model, path, fmt, "keras", losses)


def _h5_declared_input(path: Path) -> tuple[int | None, ...] | None:
    """The batch input shape a legacy Sequential `.h5` declares on its first layer."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        config = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(config, dict) or config.get("class_name") != "Sequential":
        return None
    layers = (config.get("config") or {}).get("layers")
    if isinstance(config.get("config"), list):  # Keras 2.0/2.1 wrote the layer list itself
        layers = config["config"]
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
        return None
    first = layers[0].get("config") or {}
    shape = first.get("batch_input_shape") or first.get("batch_shape")
    if not isinstance(shape, list) or not all(d is None or isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _keras3_misread_input(path: Path, model: Any) -> str | None:
    """Keras 3 reads some legacy Sequential `.h5` files (a first Reshape layer carrying
    `batch_input_shape`) with a spurious extra input axis. The mismatch, described, or None."""
    declared = _h5_declared_input(path)
    inputs = _flat(getattr(model, "inputs", None) or [])
    if declared is None or len(inputs) != 1:
        return None
    loaded = tuple(inputs[0].shape)
    if len(loaded) == len(declared) and all(
        a is None or b is None or a == b for a, b in zip(declared, loaded, strict=True)
    ):
        return None
    return (
        f"Keras 3 reads its input as {_shape_text(loaded)}, but the file declares "
        f"{_shape_text(declared)}"
    )


def _load_declared_input_shape(path: Path, misread: str, unsafe: bool) -> ModelHandle:
    """Load with tf_keras (safe mode), which reads the declared input shape as written."""
    handle = _load_h5_with_tf_keras(path, ModelError(misread), unsafe)
    handle.loader = "tf_keras (Keras 3 misreads this file's input shape)"
    return handle


def _load_h5_with_tf_keras(path: Path, keras_error: Exception, unsafe: bool) -> ModelHandle:
    tfk = tf_keras()
    try:
        with _tf_keras_safe_mode(not unsafe):
            model = tfk.models.load_model(path, compile=False)
    except Exception:  # noqa: BLE001 - report the Keras 3 error, the more telling one
        raise ModelError(f"{path}: cannot load the model: {_first_line(keras_error)}") from None
    names = _output_names(model)
    losses = _losses_from_training_config(path, names)
    return KerasHandle(
        model, path, "h5", "tf_keras", losses, None if losses else "the file records no loss"
    )


def _keras2_code_layers(path: Path) -> list[str]:
    """Lambda layers whose Python bytecode a tf.keras 2 SavedModel would revive and run."""
    meta_file = path / "keras_metadata.pb"
    if not meta_file.is_file():
        return []
    tf_keras()  # registers the protobuf module below
    from tf_keras.protobuf import saved_metadata_pb2

    meta = saved_metadata_pb2.SavedMetadata()
    try:
        meta.ParseFromString(meta_file.read_bytes())
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a load error
        raise ModelError(f"{path}: unreadable keras_metadata.pb ({_first_line(exc)})") from None
    found = []
    for node in meta.nodes:
        try:
            layer = json.loads(node.metadata)
        except ValueError:
            continue
        config = layer.get("config") or {}
        if layer.get("class_name") == "Lambda" and config.get("function_type") == "lambda":
            found.append(config.get("name") or layer.get("name") or "?")
    return found


def _load_savedmodel(path: Path, unsafe: bool) -> ModelHandle:
    if not unsafe and (code := _keras2_code_layers(path)):
        # tf-keras revives these without asking for safe mode: refuse them here
        raise ModelError(
            f"{path}: Lambda layer(s) {', '.join(code)} hold Python code that safe mode does "
            f"not load; rerun with --unsafe if you trust this file"
        )
    if (path / "keras_metadata.pb").is_file() or _looks_like_keras2(path):
        tfk = tf_keras()
        try:
            with _tf_keras_safe_mode(not unsafe):
                model = tfk.models.load_model(str(path))
            names = _output_names(model)
            losses = _compiled_losses(model, names, tfk)
            note = None
        except Exception:  # noqa: BLE001 - retried without the compile config
            try:
                with _tf_keras_safe_mode(not unsafe):
                    model = tfk.models.load_model(str(path), compile=False)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(
                    f"{path}: cannot load the tf.keras SavedModel: {_first_line(exc)}"
                ) from exc
            losses = None
            note = "compile config did not load"
        return KerasHandle(model, path, "savedmodel", "tf_keras", losses, note)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot load the SavedModel: {_first_line(exc)}") from exc
    return ServingHandle(loaded, path)


def _looks_like_keras2(path: Path) -> bool:
    try:
        data = (path / "saved_model.pb").read_bytes()
    except OSError:
        return False
    return b"_tf_keras_" in data or b"keras_api" in data


def _tf_keras_safe_mode(safe: bool) -> Any:
    """Safe mode for tf-keras deserialization (Lambda layers), where tf-keras supports it."""
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - older tf-keras
        return contextlib.nullcontext()
    return SafeModeScope(safe)


def _check_file_magic(path: Path, fmt: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from None
    if fmt == "keras" and not head.startswith(b"PK"):
        raise ModelError(f"{path}: not a .keras archive (expected a zip file)")
    if fmt == "h5" and head != b"\x89HDF\r\n\x1a\n":
        raise ModelError(f"{path}: not an HDF5 file")


def _ensure_called(model: Any, path: Path) -> None:
    try:
        model.inputs  # noqa: B018 - a subclassed model that was never built has none
        model.outputs  # noqa: B018
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"{path}: the model has no defined inputs/outputs ({_first_line(exc)})"
        ) from exc
    if not model.inputs or not model.outputs:
        raise ModelError(
            f"{path}: the model has no defined inputs/outputs "
            f"(a subclassed model saved before it was built?)"
        )


def _is_unsafe_refusal(exc: Exception) -> bool:
    text = str(exc)
    return "safe_mode" in text or "unsafe" in text.lower() and "lambda" in text.lower()


def _unsafe_message(path: Path, exc: Exception) -> str:
    return (
        f"{path}: the model contains code that safe mode does not load "
        f"(e.g. a Lambda layer); rerun with --unsafe if you trust this file"
    )


def _first_line(exc: BaseException) -> str:
    from .errors import first_line

    return first_line(exc)
