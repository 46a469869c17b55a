"""Which Embedding an input's token ids feed: why an input has no gradient, named for the user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcli.errors import GradientError, param
from gradcli.load.backend import keras, tf
from gradcli.load.handles import ModelHandle


def input_dtype(info_dtype: str) -> np.dtype:
    """The NumPy dtype of a declared input dtype (float32 where NumPy has no name for it)."""
    try:
        return np.dtype(info_dtype)
    except TypeError:
        return np.dtype("float32")


# ops that carry ids from a model input to a lookup: re-typed, re-shaped, sliced, clipped,
# or wrapped (Keras 3's `take` maps negative ids with where(ids < 0, ids + n, ids))
_PASS_THROUGH = frozenset(
    {
        "Add",
        "AddV2",
        "Sub",
        "Select",
        "SelectV2",
        "Maximum",
        "Minimum",
        "ClipByValue",
        "FloorMod",
        "Identity",
        "IdentityN",
        "Cast",
        "Reshape",
        "ExpandDims",
        "Squeeze",
        "StridedSlice",
        "Slice",
        "Transpose",
        "StopGradient",
        "Floor",
        "Round",
        "Rint",
    }
)
_GATHERS = frozenset({"GatherV2", "Gather", "ResourceGather", "GatherNd", "ResourceGatherNd"})
_READS = frozenset({"Identity", "IdentityN", "ReadVariableOp", "Cast"})


@dataclass
class TokenUse:
    """How a model consumes one input as integer ids."""

    tables: list[str]  # layers (or, without layers, variables) whose table the ids index
    lookup: bool  # the ids index a table (a gather), found in the graph
    cast: str | None  # the op that casts a float input to integers, if any


def token_uses(handle: ModelHandle) -> dict[int, TokenUse]:
    """Inputs the model reads as integer ids, found in its graph, not only by declared dtype.

    Traces the forward pass once and follows each input through casts and reshapes: an
    input that reaches the indices of a gather (an embedding lookup) or a cast to integers
    has no gradient. Best effort: a model that cannot be traced here gives {}.
    """
    specs = [
        tf.TensorSpec((None, *info.shape), tf.as_dtype(input_dtype(info.dtype)))
        for info in handle.inputs
    ]
    graph = None
    for autograph in (False, True):
        try:
            fn = tf.function(
                lambda xs: handle.call(list(xs), training=False),
                input_signature=[specs],
                autograph=autograph,
            )
            graph = fn.get_concrete_function().graph
            break
        except Exception:  # noqa: BLE001, S112 - retried with AutoGraph, else no answer
            continue
    if graph is None:
        return {}
    owners = _table_owners(handle)
    captured = {internal.name: owners.get(id(external)) for external, internal in graph.captures}
    found = {}
    for k, placeholder in enumerate(graph.inputs[: len(specs)]):
        use = _follow_ids(placeholder, captured)
        if use is not None:
            found[k] = use
    return found


def _table_owners(handle: ModelHandle) -> dict[int, str]:
    """id of each variable's resource handle -> the innermost layer path owning it."""
    owners: dict[int, str] = {}

    def key(v: Any) -> int | None:
        inner = v.value if isinstance(v, keras.Variable) else v
        resource = getattr(inner, "handle", None)
        return None if resource is None else id(resource)

    for name, v in handle.named_variables():
        if (k := key(v)) is not None:
            owners[k] = name
    for row in handle.layers:  # outer models first: inner layers overwrite them
        for v in getattr(row.layer, "weights", []):
            if (k := key(v)) is not None:
                owners[k] = row.path
    return owners


def _follow_ids(start: Any, captured: dict[str, str | None]) -> TokenUse | None:
    tables: list[str] = []
    lookup = False
    cast = None
    stack, seen = [start], {start.name}
    while stack:
        t = stack.pop()
        for op in t.consumers():
            if op.type in _GATHERS:
                if len(op.inputs) > 1 and op.inputs[1].name == t.name:
                    lookup = True
                    owner = _table_owner(op.inputs[0], captured)
                    if owner and owner not in tables:
                        tables.append(owner)
                continue
            if op.type not in _PASS_THROUGH:
                continue
            out_dtype = op.outputs[0].dtype if op.outputs else None
            if op.type == "Cast" and t.dtype.is_floating and out_dtype.is_integer:
                cast = cast or op.name
            for out in op.outputs:
                if out.name not in seen:
                    seen.add(out.name)
                    stack.append(out)
    return TokenUse(tables, lookup, cast) if lookup or cast else None


def _table_owner(t: Any, captured: dict[str, str | None]) -> str | None:
    for _ in range(8):
        if t.op.type == "Placeholder":
            return captured.get(t.name)
        if t.op.type not in _READS or not t.op.inputs:
            return None
        t = t.op.inputs[0]
    return None


def token_input_error(
    handle: ModelHandle, index: int, uses: dict[int, TokenUse] | None = None
) -> GradientError | None:
    """The clear error for an input the model reads as token ids; None if it does not."""
    use = (token_uses(handle) if uses is None else uses).get(index)
    if use is None:
        return None
    name = handle.inputs[index].name
    layers = {row.path: row.class_name for row in handle.layers}
    if use.tables:
        described = ", ".join(
            f"{layers[t]} layer {t!r}" if t in layers else f"the table {t!r}" for t in use.tables
        )
        what = f"it feeds {described}"
    elif use.lookup:
        what = "it indexes a lookup table"
    else:
        what = f"the model casts it to integers at {use.cast}"
    if use.tables and use.tables[0] in layers:
        hint = (
            f"use `wrt-layer {param('layers', use.tables[0])}` for the gradient at the embedded "
            f"vectors (wrt-weights gives the table's)"
        )
    elif handle.layers:
        hint = "use wrt-layer on the layer that consumes it"
    else:
        hint = "this SavedModel has no layers; wrt-weights gives the table's gradient"
    return GradientError(
        f"input {name!r} holds token ids ({what}): there is no gradient with respect to "
        f"integer ids; {hint}"
    )


def _consumers(handle: ModelHandle, index: int) -> list[str]:
    """The layers that take model input `index` directly (a functional Keras model's graph)."""
    try:
        tensor = _flat_inputs(handle.model)[index]
    except Exception:  # noqa: BLE001 - no graph to read (a SavedModel export): no names
        return []
    found = []
    for row in handle.layers:
        for node in getattr(row.layer, "_inbound_nodes", []):
            arguments = getattr(node, "arguments", None)
            if any(t is tensor for t in getattr(arguments, "keras_tensors", [])):
                found.append(row.path)
                break
    return found


def _flat_inputs(model: Any) -> list:
    inputs = model.inputs
    return list(inputs.values()) if isinstance(inputs, dict) else list(inputs)


def _integer_input_error(handle: ModelHandle, index: int) -> GradientError:
    info = handle.inputs[index]
    consumers = _consumers(handle, index)
    where = (
        f"`wrt-layer {param('layers', consumers[0])}` gives the gradient at the layer that "
        "consumes it"
        if consumers
        else "use wrt-layer on the layer that consumes it"
    )
    return GradientError(
        f"input {info.name!r} is {input_dtype(info.dtype).name}: there is no gradient with "
        f"respect to integer inputs; {where}"
    )


def integer_inputs_error(handle: ModelHandle, indices: list[int]) -> GradientError:
    """Why inputs `indices` (integer dtypes) have no gradient, one message for all of them:
    the input whose token ids feed an Embedding first, named with that layer (as the README
    promises), the others listed after it."""
    uses = token_uses(handle)
    ordered = sorted(indices, key=lambda k: (not (k in uses and uses[k].tables), k))
    first = token_input_error(handle, ordered[0], uses) or _integer_input_error(handle, ordered[0])
    if len(ordered) == 1:
        return first
    others = ", ".join(repr(handle.inputs[k].name) for k in ordered[1:])
    return GradientError(f"{first}; the integer input(s) {others} have no gradient either")


def _disconnected_input_error(handle: ModelHandle, index: int) -> GradientError:
    name = handle.inputs[index].name
    where = (
        "wrt-weights, or wrt-layer on the layer that consumes it"
        if handle.layers
        else "wrt-weights (a SavedModel function hides which op consumes it)"
    )
    return GradientError(
        f"input {name!r} has no gradient: the objective does not depend on it "
        f"differentiably (token ids cast to integers, or an unused input); use {where}"
    )


def missing_input_gradient(handle: ModelHandle, index: int) -> GradientError:
    """Why input `index` got no gradient: token ids (naming the layer), else disconnected."""
    return token_input_error(handle, index) or _disconnected_input_error(handle, index)


def input_gradient_error(handle: ModelHandle, index: int) -> GradientError | None:
    """Why input `index` has no gradient (integer dtype or token ids), or None if it has."""
    if input_dtype(handle.inputs[index].dtype).kind != "f":
        return integer_inputs_error(handle, [index])
    return token_input_error(handle, index)


def inputs_gradient_error(handle: ModelHandle) -> GradientError | None:
    """Why some model input has no gradient (integer dtypes: all of them in one message,
    the Embedding's first), or None when every input is a float."""
    integers = [k for k, i in enumerate(handle.inputs) if input_dtype(i.dtype).kind != "f"]
    return integer_inputs_error(handle, integers) if integers else None
