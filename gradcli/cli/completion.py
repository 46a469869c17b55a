"""Tab completion of `--layer` names from the model file on the command line, without
TensorFlow: a .keras archive's config.json (zipfile) or a legacy .h5's `model_config`
attribute (h5py), read as untrusted data with bounded reads; nothing is loaded or run.

The names are those `gradcli info` lists: top-level layers, and the layers of nested
models as `outer/inner` paths (a Sequential's implicit input layer is not one of them).
Anything unreadable completes nothing: a shell's tab key never shows an error.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import zipfile
from pathlib import Path
from typing import Any

# a config.json larger than this is not read for completion (real ones are kilobytes to a
# few megabytes; the loader has its own, larger limit)
CONFIG_LIMIT = 16 << 20
MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})


def complete_layer(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    """Typer's autocompletion for --layer: (name or path, class) pairs starting with
    `incomplete`, from the MODEL argument parsed so far."""
    try:
        model = ctx.params.get("model") or _model_from_typed_words(ctx)
        if not model:
            return []
        layers = layer_names(Path(model))
    except Exception:  # a hostile or odd file: complete nothing, never print a traceback
        return []
    return [(path, cls) for path, cls in layers if path.startswith(incomplete)]


def _model_from_typed_words(ctx: Any) -> str | None:
    """MODEL from the words typed so far. Click parses them without the value being
    completed, so `... --layer` ends in an option lacking its value, and the parser stops
    there before it reaches MODEL: parse them again without that last option."""
    if "COMP_WORDS" in os.environ:  # bash: the words, and which one is being completed
        words = shlex.split(os.environ["COMP_WORDS"])[: int(os.environ.get("COMP_CWORD", "0"))]
    else:  # zsh, fish: the line so far; a last word not ended by a space is the incomplete one
        line = os.environ.get("_TYPER_COMPLETE_ARGS", "")
        words = shlex.split(line)
        if words and not line.endswith(" "):
            words = words[:-1]
    if ctx.info_name not in words:
        return None
    args = words[words.index(ctx.info_name) + 1 :]
    while args and args[-1].startswith("-"):
        args.pop()
    return ctx.command.make_context(ctx.info_name, args, resilient_parsing=True).params.get("model")


def layer_names(path: Path) -> list[tuple[str, str]]:
    """(path, class) of every layer `gradcli info` lists for a .keras or .h5 file."""
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the shell; dirs: no config
        return []
    suffix = path.suffix.lower()
    if suffix == ".keras":
        config = _keras_config(path)
    elif suffix in (".h5", ".hdf5"):
        from gradcli.io.modelfiles import h5_json_attr  # h5py (and NumPy) only for an .h5 model

        # attributes are stored uncompressed: the read is bounded by the file's own size
        config = h5_json_attr(path, "model_config")
    else:
        return []
    return list(_walk(config, "")) if isinstance(config, dict) else []


def _keras_config(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("config.json")
        if info.file_size > CONFIG_LIMIT:
            return None
        with zf.open(info) as member:  # reads at most the declared size
            return json.loads(member.read(CONFIG_LIMIT + 1))


def _walk(model: dict, prefix: str):
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return
    sequential = model.get("class_name") == "Sequential"
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        cls = str(layer.get("class_name", ""))
        inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = inner.get("name", layer.get("name"))
        if not isinstance(name, str) or (sequential and cls == "InputLayer"):
            continue
        yield f"{prefix}{name}", cls
        if cls in MODEL_CLASSES:
            yield from _walk(layer, f"{prefix}{name}/")
