"""The Python API: the CLI's engine on in-memory arrays, returning dicts of NumPy arrays.

    import gradcli
    g = gradcli.wrt_input("model.keras", x, class_index=3)      # {"input_name": (N, ...)}
    w = gradcli.wrt_weights(model, x, target=y)                  # {"dense/kernel": ...}

`model` is a path, a loaded Keras model, or a handle from `gradcli.load_model`; `x` (and
`target`) is an array for a single input (output), or a dict keyed by input (output) name,
or a list in the model's order. Semantics are exactly the CLI's (README.md, `gradcli COMMAND
--help`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .arrays import ArraySource, check_dtype
from .backend import keras
from .commands import COMMANDS
from .context import Context
from .errors import InputError, UsageError
from .handles import output_names
from .job import Job
from .loading import KerasHandle, ModelHandle
from .loading import load_model as _load_model
from .losses import compiled_losses


def load_model(path: str | Path, unsafe: bool = False) -> ModelHandle:
    """Load a .keras, .h5 or SavedModel the way the CLI does."""
    return _load_model(path, unsafe=unsafe)


def _handle(model: Any, unsafe: bool) -> ModelHandle:
    if isinstance(model, ModelHandle):
        return model
    if isinstance(model, keras.Model):
        names = output_names(model)
        return KerasHandle(
            model,
            Path(f"<{model.name}>"),
            "keras",
            "in-memory",
            compiled_losses(model, names, keras),
        )
    return _load_model(model, unsafe=unsafe)


def _sources(data: Any, names: list[str], what: str) -> dict[str, ArraySource]:
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(
                f"{what}: no array for {', '.join(missing)}; expected keys {', '.join(names)}"
            )
        items = {n: data[n] for n in names}
    elif isinstance(data, list | tuple):
        if len(data) != len(names):
            raise InputError(
                f"{what}: expected {len(names)} arrays ({', '.join(names)}), got {len(data)}"
            )
        items = dict(zip(names, data, strict=True))
    else:
        if len(names) != 1:
            raise InputError(
                f"{what}: the model has {len(names)} {what}s ({', '.join(names)});"
                f" pass a dict keyed by name"
            )
        items = {names[0]: data}
    out = {}
    for name, value in items.items():
        array = np.asarray(value)
        label = f"{what} {name!r}"
        check_dtype(array, label)
        out[name] = ArraySource(array, label)
    return out


def run(
    command: str, model: Any, x: Any, target: Any = None, *, unsafe: bool = False, **options: Any
) -> tuple[dict[str, np.ndarray], dict]:
    """Run a gradient command in memory: (arrays, the record the CLI would print as JSON)."""
    handle = _handle(model, unsafe)
    job = Job(command, str(handle.path), unsafe=unsafe, **options)
    arrays = _sources(x, [i.name for i in handle.inputs], "input")
    targets = None
    if target is not None:
        names = [o.name for o in handle.outputs]
        if not isinstance(target, dict | list | tuple) and len(names) > 1:
            chosen = options.get("output")
            names = [chosen] if chosen in names else names
        targets = (
            _sources(target, names, "target")
            if isinstance(target, dict | list | tuple) or len(names) == 1
            else None
        )
        if targets is None:
            raise InputError("target: pass a dict keyed by output name for a multi-output model")
    collected: dict[str, np.ndarray] = {}
    ctx = Context(
        job,
        handle,
        lambda *a, **k: None,
        0,
        collect=collected,
        arrays=arrays,
        target_arrays=targets,
    )
    run_command = COMMANDS[command].run
    if run_command is None:
        raise UsageError(f"{command} computes no arrays")
    record = run_command(ctx, None, None)
    return collected, record


def wrt_input(model: Any, x: Any, target: Any = None, **options: Any) -> dict[str, np.ndarray]:
    """d o_i / d x_i per input (options: loss, from_logits, class_index, output, method,
    samples, noise, seed, steps, batch_size, training)."""
    return run("wrt-input", model, x, target, **options)[0]


def wrt_layer(
    model: Any, x: Any, layers: list[str] | str, target: Any = None, **options: Any
) -> dict[str, np.ndarray]:
    """d o_i / d a_i for each layer (name, nested path or index)."""
    layers = [layers] if isinstance(layers, str | int) else list(layers)
    return run("wrt-layer", model, x, target, layers=[str(x) for x in layers], **options)[0]


def wrt_weights(model: Any, x: Any, target: Any = None, **options: Any) -> dict[str, np.ndarray]:
    """d (mean_i o_i) / d theta per trainable variable path (disconnected ones are absent)."""
    return run("wrt-weights", model, x, target, **options)[0]


def jacobian(model: Any, x: Any, **options: Any) -> dict[str, np.ndarray]:
    """J[i] = d f(x_i) / d x_i for the selected output, per input."""
    return run("jacobian", model, x, **options)[0]
