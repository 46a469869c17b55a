"""Model paths without TensorFlow: remote refusal, SavedModel detection, directory scans."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError, ModelError

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
MODEL_SUFFIXES = KERAS_SUFFIXES + H5_SUFFIXES
REMOTE_PREFIXES = ("hf://", "gs://", "s3://", "http://", "https://", "ftp://")


def check_not_remote(path: str) -> None:
    text = str(path)
    if text.lower().startswith(REMOTE_PREFIXES) or "://" in text:
        raise InputError(f"{text}: remote paths are not supported; download the file first")


def is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def check_model_path(path: str) -> None:
    """Fail fast (before TensorFlow loads) on a MODEL that cannot be a model."""
    check_not_remote(path)
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{path}: no such file or directory")
    if p.is_file() and p.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelError(
            f"{path}: unknown model format {p.suffix or '(no suffix)'!r}; "
            f"expected .keras, .h5, .hdf5 or a SavedModel directory"
        )


def find_models(directory: Path) -> list[Path]:
    """Every model below a directory (not descending into SavedModels), sorted by path."""
    found: list[Path] = []

    def visit(d: Path) -> None:
        for child in sorted(d.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if is_savedmodel(child):
                    found.append(child)
                else:
                    visit(child)
            elif child.suffix.lower() in MODEL_SUFFIXES:
                found.append(child)

    visit(directory)
    return sorted(found)
