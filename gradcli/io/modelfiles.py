"""The one place that decides a model path's format and names the loaders (no TensorFlow)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any


class ModelFormat(StrEnum):
    """A model's on-disk format, as `info` and JSON show it (`"format"`)."""

    KERAS = "keras"  # a .keras zip archive (Keras 3)
    H5 = "h5"  # a legacy HDF5 file (.h5/.hdf5)
    SAVEDMODEL = "savedmodel"  # a SavedModel directory (saved_model.pb)


class Loader(StrEnum):
    """The loader that read a model, as `info` and JSON show it (`"loader"`)."""

    KERAS = "keras"
    KERAS_NO_COMPILE = "keras (compile config skipped)"
    TF_KERAS = "tf_keras"
    TF_KERAS_MISREAD = "tf_keras (Keras 3 misreads this file's input shape)"
    TF_SAVED_MODEL = "tf.saved_model"


# file suffix (lower case) -> format; a SavedModel is a directory, recognised by its content
SUFFIXES: dict[str, ModelFormat] = {
    ".keras": ModelFormat.KERAS,
    ".h5": ModelFormat.H5,
    ".hdf5": ModelFormat.H5,
}
SAVEDMODEL_FILE = "saved_model.pb"
EXPECTED = ".keras, .h5, .hdf5 or a SavedModel directory"


def is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (path / SAVEDMODEL_FILE).is_file()


def model_format(path: Path) -> ModelFormat | None:
    """The format of an existing model path, or None when it is none of gradcli's formats.

    A directory is a SavedModel when it holds saved_model.pb (whatever its name); a file is
    known by its suffix. Contents are checked later, by the loader that claims the format.
    """
    if path.is_dir():
        return ModelFormat.SAVEDMODEL if is_savedmodel(path) else None
    return SUFFIXES.get(path.suffix.lower())


def unknown_format(path: str | Path, suffix: str | None = None) -> str:
    """The message for a file whose suffix is no model format's."""
    suffix = Path(path).suffix if suffix is None else suffix
    return f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected {EXPECTED}"


def not_a_savedmodel(path: str | Path) -> str:
    return f"{path}: a directory without {SAVEDMODEL_FILE} is not a SavedModel"


def h5_json_attr(path: Path, name: str) -> Any:
    """A JSON attribute of a legacy .h5 (`model_config`, `training_config`); None when absent
    or unreadable."""
    import json

    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(name)
    except OSError:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def h5_model_config(path: Path) -> Any:
    """The `model_config` JSON of a legacy .h5 (None when absent or unreadable)."""
    return h5_json_attr(path, "model_config")
