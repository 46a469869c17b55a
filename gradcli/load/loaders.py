"""The ordered table of loader strategies, and `load_model`, which picks one per path.

A strategy claims paths of one format (io/modelfiles.py decides the format), checks them as data
in safe mode (scanning.py), and loads them by its steps in order, every step under the same
weight bound. Adding a model format: its suffix in io/modelfiles.py, its strategy here.
"""

from __future__ import annotations

from pathlib import Path

from gradcli.errors import ModelError, first_line, param
from gradcli.io.modelfiles import (
    Loader,
    ModelFormat,
    h5_model_config,
    model_format,
    not_a_savedmodel,
    unknown_format,
)
from gradcli.io.paths import check_not_remote
from gradcli.load import scanning
from gradcli.load.backend import tf, tf_keras
from gradcli.load.filechecks import (
    check_hdf5,
    check_keras_archive,
    check_layer_configs,
    keras_metadata_configs,
)
from gradcli.load.handles import KerasHandle, ModelHandle, output_names
from gradcli.load.keras_files import (
    check_file_magic,
    explain_failure,
    load_h5_with_tf_keras,
    load_keras3,
    load_keras3_without_compile,
    tf_keras_safe_mode,
)
from gradcli.load.losses import compiled_losses
from gradcli.load.savedmodels import SavedModelSummary, ServingHandle, describe_savedmodel
from gradcli.load.strategy import Attempt, Step, StepFailed, Strategy
from gradcli.load.weightbound import bounded_weights

# ---------------------------------------------------------------- safe-mode scans


def scan_keras_archive(path: Path) -> int:
    """A .keras archive: its config (no code, no file paths) and its HDF5 weights; the
    loaders may create no more weights than the archive holds."""
    return check_keras_archive(path)


def scan_hdf5(path: Path) -> int:
    """An .h5 file: its HDF5 storage and its model config; weights bounded by its size,
    for tf_keras (the fallback) as for Keras 3."""
    check_hdf5(path, str(path))
    config = h5_model_config(path)
    if config is not None:
        check_layer_configs(config, str(path))
    tf_keras()  # the fallback loader: its weights are bounded too
    return path.stat().st_size


def scan_savedmodel(path: Path) -> None:
    """Every graph of a SavedModel, and a tf.keras 2 one's layer configs."""
    scanning.scan_savedmodel(path)
    for config in keras_metadata_configs(path):
        check_layer_configs(config, str(path))


def scan_keras2_savedmodel(path: Path) -> None:
    """A tf.keras 2 SavedModel: the SavedModel scan, then its Lambda layers, whose bytecode
    tf-keras revives without asking for safe mode, are refused here."""
    scan_savedmodel(path)
    if code := _keras2_code_layers(path):
        raise ModelError(
            f"{path}: Lambda layer(s) {', '.join(code)} hold Python code that safe mode does "
            f"not load; rerun with {param('unsafe')} if you trust this file"
        )


# ---------------------------------------------------------------- SavedModel steps


def load_tf_keras_savedmodel(a: Attempt) -> ModelHandle:
    """Step "tf_keras": a tf.keras 2 SavedModel with its compile config (and loss)."""
    tfk = tf_keras()
    try:
        with tf_keras_safe_mode(not a.unsafe):
            model = tfk.models.load_model(str(a.path))
        losses = compiled_losses(model, output_names(model), tfk)
    except Exception as exc:  # noqa: BLE001 - retried without the compile config
        raise StepFailed(exc) from exc
    return KerasHandle(model, a.path, ModelFormat.SAVEDMODEL, Loader.TF_KERAS, losses, None)


def load_tf_keras_savedmodel_without_compile(a: Attempt) -> ModelHandle:
    """Step "tf_keras without compile": the compile config did not load; no loss known."""
    try:
        with tf_keras_safe_mode(not a.unsafe):
            model = tf_keras().models.load_model(str(a.path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(exc) from exc
    return KerasHandle(
        model, a.path, ModelFormat.SAVEDMODEL, Loader.TF_KERAS, None, "compile config did not load"
    )


def load_serving(a: Attempt) -> ModelHandle:
    """Step "tf.saved_model": model.export, plain TensorFlow or a tf.Module, through its
    serving function."""
    try:
        loaded = tf.saved_model.load(str(a.path))
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(exc) from exc
    return ServingHandle(loaded, a.path)


def describe_serving(path: Path) -> ModelHandle:
    """`info` on a serving SavedModel: read from its protobuf, nothing of it runs."""
    try:
        return SavedModelSummary(path, describe_savedmodel(path))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed protobuf is a load error
        raise ModelError(f"{path}: cannot load the SavedModel: {first_line(exc)}") from None


def is_keras2_savedmodel(path: Path) -> bool:
    """A SavedModel that tf.keras 2 wrote (keras_metadata.pb, or its markers in the graph)."""
    return (path / "keras_metadata.pb").is_file() or _looks_like_keras2(path)


# ---------------------------------------------------------------- the table, in order

STRATEGIES: tuple[Strategy, ...] = (
    Strategy(
        name="keras archive",
        format=ModelFormat.KERAS,
        claims=lambda path: True,
        handle=KerasHandle,
        validate=check_file_magic,
        scan=scan_keras_archive,
        steps=(
            Step(Loader.KERAS, load_keras3),
            Step(Loader.KERAS_NO_COMPILE, load_keras3_without_compile),
        ),
        failure="cannot load the model",
        explain=explain_failure,
    ),
    Strategy(
        name="legacy HDF5",
        format=ModelFormat.H5,
        claims=lambda path: True,
        handle=KerasHandle,
        validate=check_file_magic,
        scan=scan_hdf5,
        bound_tf_keras=True,
        steps=(
            Step(Loader.KERAS, load_keras3),
            Step(Loader.KERAS_NO_COMPILE, load_keras3_without_compile),
            Step(Loader.TF_KERAS, load_h5_with_tf_keras, reports=False),
        ),
        failure="cannot load the model",
        explain=explain_failure,
    ),
    Strategy(
        name="tf.keras 2 SavedModel",
        format=ModelFormat.SAVEDMODEL,
        claims=is_keras2_savedmodel,
        handle=KerasHandle,
        scan=scan_keras2_savedmodel,
        steps=(
            Step("tf_keras", load_tf_keras_savedmodel),
            Step("tf_keras without compile", load_tf_keras_savedmodel_without_compile),
        ),
        failure="cannot load the tf.keras SavedModel",
    ),
    Strategy(
        name="serving SavedModel",
        format=ModelFormat.SAVEDMODEL,
        claims=lambda path: True,  # every other SavedModel
        handle=ServingHandle,
        scan=scan_savedmodel,
        steps=(Step(Loader.TF_SAVED_MODEL, load_serving),),
        failure="cannot load the SavedModel",
        describe=describe_serving,
    ),
)


def strategy_for(path: Path) -> Strategy:
    """The first strategy that claims an existing path (its format decided by formats.py)."""
    fmt = model_format(path)
    if fmt is None:
        if path.is_dir():
            raise ModelError(not_a_savedmodel(path))
        raise ModelError(unknown_format(path, path.suffix.lower()))
    return next(s for s in STRATEGIES if s.format is fmt and s.claims(path))


def load_model(path: str | Path, unsafe: bool = False, describe_only: bool = False) -> ModelHandle:
    """Load a .keras, .h5/.hdf5 or SavedModel; safe mode unless `unsafe`.

    Unless `unsafe`, the path is checked first (see scanning.py) and every step of its
    strategy runs under the weight bound. `describe_only` (for `info`) reads what a plain
    SavedModel is from its protobuf without loading it.
    """
    check_not_remote(str(path))
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory")
    strategy = strategy_for(path)
    strategy.validate(path)
    budget = None if unsafe else strategy.scan(path)
    if describe_only and strategy.describe is not None:
        return strategy.describe(path)
    attempt = Attempt(path, strategy.format, unsafe)
    if budget is None:
        return strategy.run_steps(attempt)
    with bounded_weights(budget, str(path), with_tf_keras=strategy.bound_tf_keras):
        return strategy.run_steps(attempt)


# ---------------------------------------------------------------- tf.keras 2 markers


def _keras2_code_layers(path: Path) -> list[str]:
    """Lambda layers whose Python bytecode a tf.keras 2 SavedModel would revive and run."""
    found = []
    for layer in keras_metadata_configs(path):
        if not isinstance(layer, dict):
            continue
        config = layer.get("config") or {}
        if layer.get("class_name") == "Lambda" and config.get("function_type") == "lambda":
            found.append(config.get("name") or layer.get("name") or "?")
    return found


def _looks_like_keras2(path: Path) -> bool:
    try:
        data = (path / "saved_model.pb").read_bytes()
    except OSError:
        return False
    return b"_tf_keras_" in data or b"keras_api" in data
