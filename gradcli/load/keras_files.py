"""Loader steps for Keras files (.keras archives, legacy .h5), fallbacks included."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from gradcli.errors import ModelError, first_line, param
from gradcli.io.modelfiles import Loader, ModelFormat, model_format
from gradcli.load.backend import keras, tf_keras
from gradcli.load.handles import KerasHandle, ModelHandle, _flat, _shape_text, output_names
from gradcli.load.losses import compiled_losses, training_config_losses
from gradcli.load.strategy import Attempt, StepFailed

# ---------------------------------------------------------------- the steps, in order


def load_keras3(a: Attempt) -> ModelHandle:
    """Step "keras": Keras 3 with the compile config (the compiled loss comes with it)."""
    model = _keras3(a, compile=True)
    ensure_called(model, a.path)
    if (handle := legacy_input_misread(a, model)) is not None:
        return handle
    return KerasHandle(
        model, a.path, a.format, Loader.KERAS, compiled_losses(model, output_names(model), keras)
    )


def load_keras3_without_compile(a: Attempt) -> ModelHandle:
    """Step "keras (compile config skipped)": a compile config Keras 3 cannot read (an old
    optimizer, a custom loss) must not stop gradients; an .h5 file's loss may still come
    from its training_config."""
    model = _keras3(a, compile=False)
    if (handle := legacy_input_misread(a, model)) is not None:
        return handle
    names = output_names(model)
    losses = training_config_losses(a.path, names) if a.format is ModelFormat.H5 else None
    if losses is not None:
        note = "compile config did not load; loss taken from the file's training_config"
    else:
        note = f"compile config did not load ({first_line(a.failures[0])})"
    return KerasHandle(model, a.path, a.format, Loader.KERAS_NO_COMPILE, losses, note)


def load_h5_with_tf_keras(a: Attempt) -> ModelHandle:
    """Step "tf_keras": an .h5 file Keras 3 refuses (tf.keras 2 wrote it), read by tf_keras
    in safe mode without its compile config; the loss comes from its training_config."""
    tfk = tf_keras()
    try:
        with tf_keras_safe_mode(not a.unsafe):
            model = tfk.models.load_model(a.path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure: the strategy reports Keras 3's
        raise StepFailed(exc) from exc
    losses = training_config_losses(a.path, output_names(model))
    return KerasHandle(
        model,
        a.path,
        ModelFormat.H5,
        Loader.TF_KERAS,
        losses,
        None if losses else "the file records no loss",
    )


def legacy_input_misread(a: Attempt, model: Any) -> ModelHandle | None:
    """After a Keras 3 load of an .h5 file: Keras 3 reads some legacy Sequential files (a
    first Reshape layer carrying `batch_input_shape`) with a spurious extra input axis.
    Such a file is loaded with tf_keras (safe mode), which reads the declared input shape
    as written; None when Keras 3 read it right."""
    if a.format is not ModelFormat.H5:
        return None
    misread = _keras3_misread_input(a.path, model)
    if misread is None:
        return None
    try:
        handle = load_h5_with_tf_keras(a)
    except StepFailed:
        raise ModelError(f"{a.path}: cannot load the model: {misread}") from None
    handle.loader = Loader.TF_KERAS_MISREAD
    return handle


# ---------------------------------------------------------------- checks and helpers


def check_file_magic(path: Path) -> None:
    """A .keras file is a readable zip archive holding a config.json, and an .h5 file an HDF5
    file (checked even --unsafe), told in gradcli's words before Keras reads the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from None
    fmt = model_format(path)
    if fmt is ModelFormat.KERAS:
        if not head.startswith(b"PK"):
            raise ModelError(f"{path}: not a .keras archive (expected a zip file)")
        _check_keras_zip(path)
    if fmt is ModelFormat.H5 and head != b"\x89HDF\r\n\x1a\n":
        raise ModelError(f"{path}: not an HDF5 file")


def _check_keras_zip(path: Path) -> None:
    """The zip's directory reads (a truncated file has none) and names a config.json."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelError(
            f"{path}: a damaged .keras archive, truncated or corrupt ({first_line(exc)})"
        ) from None
    if "config.json" not in names:
        raise ModelError(
            f"{path}: not a Keras model archive: it has no config.json (it holds "
            f"{', '.join(sorted(names)[:5]) or 'nothing'})"
        )


def explain_failure(path: Path, exc: BaseException) -> str | None:
    """Why Keras could not load a file, in gradcli's words where it is understood: a member
    of the archive that does not read back, or classes of a package not imported."""
    text = str(exc)
    if "Bad CRC-32" in text or "Error -3 while decompressing" in text:
        return f"a damaged .keras archive, corrupt ({first_line(exc)})"
    packages = _missing_packages(path)
    if not packages:
        return None
    package, example = next(iter(packages.items()))
    if package == "Custom":  # Keras's package for classes registered without one
        return (
            f"cannot load the model: its config names the custom class {example}; rerun with "
            f"{param('imports', 'FILE.py')}, the code that registers it"
        )
    return (
        f"cannot load the model: its config names classes of the package {package!r} (e.g. "
        f"{example}), which is not imported; rerun with {param('imports', package)} (the "
        "package installed, or a .py file that registers those classes)"
    )


def _missing_packages(path: Path) -> dict[str, str]:
    """Packages whose registered classes a model's config names (`registered_name` "pkg>Cls",
    or the class's module) and which are not imported: package -> one class it names."""
    import sys

    from gradcli.io.modelfiles import h5_model_config

    try:
        if model_format(path) is ModelFormat.KERAS:
            with zipfile.ZipFile(path) as zf:
                config = json.loads(zf.read("config.json"))
        else:
            config = h5_model_config(path)
    except Exception:  # noqa: BLE001 - no config to read: nothing to say
        return {}
    found: dict[str, str] = {}
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        if not isinstance(item, dict):
            continue
        stack.extend(item.values())
        registered = item.get("registered_name")
        if not isinstance(registered, str) and ">" in str(item.get("class_name", "")):
            registered = item["class_name"]  # legacy .h5 configs: "pkg>Class" as the class
        module = item.get("module")
        package = None
        if isinstance(registered, str) and ">" in registered:
            package = registered.split(">", 1)[0]
        elif isinstance(module, str) and module.split(".")[0] not in _KERAS_MODULES:
            package = module.split(".")[0]
        if package and package not in sys.modules and package not in found:
            found[package] = str(registered or item.get("class_name") or module)
    return found


# modules of Keras and its serialization that a config may name without any --import
_KERAS_MODULES = frozenset({"keras", "keras_core", "builtins", "tf_keras", "tensorflow", "numpy"})


def _keras3(a: Attempt, compile: bool) -> Any:
    """keras.saving.load_model in safe mode unless --unsafe; a safe-mode refusal ends the
    load (a ModelError), any other failure is the step's."""
    try:
        return keras.saving.load_model(a.path, safe_mode=not a.unsafe, compile=compile)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds
        if _is_unsafe_refusal(exc):
            raise ModelError(unsafe_message(a.path)) from exc
        raise StepFailed(exc) from exc


def unsafe_message(path: Path) -> str:
    return (
        f"{path}: the model contains code that safe mode does not load "
        f"(e.g. a Lambda layer); rerun with {param('unsafe')} if you trust this file"
    )


def ensure_called(model: Any, path: Path) -> None:
    try:
        model.inputs  # noqa: B018 - a subclassed model that was never built has none
        model.outputs  # noqa: B018
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"{path}: the model has no defined inputs/outputs ({first_line(exc)})"
        ) from exc
    if not model.inputs or not model.outputs:
        raise ModelError(
            f"{path}: the model has no defined inputs/outputs "
            f"(a subclassed model saved before it was built?)"
        )


def _is_unsafe_refusal(exc: Exception) -> bool:
    text = str(exc)
    return "safe_mode" in text or "unsafe" in text.lower() and "lambda" in text.lower()


def tf_keras_safe_mode(safe: bool) -> Any:
    """Safe mode for tf-keras deserialization (Lambda layers), where tf-keras supports it."""
    from gradcli.load import backend

    return backend.tf_keras_safe_mode(safe)


def _h5_declared_input(path: Path) -> tuple[int | None, ...] | None:
    """The batch input shape a legacy Sequential `.h5` declares on its first layer."""
    from gradcli.io.modelfiles import h5_model_config

    config = h5_model_config(path)
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
