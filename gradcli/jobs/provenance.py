"""Provenance: what produced a result (versions, file hashes, command, objective, method,
device), one schema-versioned dict carried by every JSON record and every .npz gradcli writes.

The files' sha256 are hashing.py's. Reading a result's provenance back (`from_npz`, for
`gradcli diff`) treats it as untrusted: bounded in size and nesting before it is parsed,
every field it reads checked for its type; a malformed entry is exit 3.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from typing import Any

SCHEMA = "gradcli-provenance/1"
NPZ_KEY = "__gradcli__"  # the .npz entry holding the provenance JSON (a 0-d unicode array)

# the Job fields that are parameters of each command's computation (besides the objective)
_COMMAND_PARAMS = {
    "wrt-layer": ("layers", "activations"),
    "wrt-weights": ("per_sample", "per_sample_arrays", "top"),
    "jacobian": ("max_elements",),
    "check": ("wrt", "directions", "eps", "rtol", "seed"),
}


def written_at() -> str:
    """UTC ISO 8601; `SOURCE_DATE_EPOCH` (the reproducible-builds convention) pins it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = time.gmtime(int(epoch)) if epoch and epoch.isdigit() else time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


_environment: dict[str, Any] | None = None


def environment() -> dict[str, Any]:
    """Versions, devices and the oneDNN state of this (worker) process; computed once."""
    global _environment
    if _environment is None:
        import numpy as np

        from gradcli._version import __version__
        from gradcli.load.backend import keras, tf

        devices = tf.config.list_physical_devices()
        setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        _environment = {
            "versions": {
                "gradcli": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "device": {
                "platform": f"{platform.system()} {platform.machine()}",
                "cpu": [d.name for d in devices if d.device_type == "CPU"],
                "gpu": [d.name for d in devices if d.device_type == "GPU"],
            },
            "onednn": {
                "TF_ENABLE_ONEDNN_OPTS": setting,
                # TensorFlow's default on x86 Linux is on; "0"/"false" turn it off
                "enabled": (setting or "1").strip().lower() not in ("0", "false", "off"),
            },
        }
    return _environment


def _file(path: str | None, digest: str | None) -> dict | None:
    if path is None:
        return None
    return {"path": str(path), "sha256": digest}


def method_params(job: Any) -> dict[str, Any]:
    """The method and the Job fields it reads (a SmoothGrad seed: the one actually used)."""
    from gradcli.methods import METHODS

    method = METHODS.get(job.method)
    params: dict[str, Any] = {"name": job.method}
    for option in method.options if method is not None else ():
        if option != "baseline":
            params[option] = getattr(job, option, None)
    return params


def build(
    job: Any,
    *,
    model: str,
    model_format: str | None,
    hashes: dict[str, str | None],
    objective: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The provenance dict (schema SCHEMA; fields documented in README "Output files")."""
    env = environment()
    prov: dict[str, Any] = {
        "schema": SCHEMA,
        "written": written_at(),
        "versions": env["versions"],
        "command": job.command,
        "model": {"path": str(model), "format": model_format, "sha256": hashes.get("model")},
    }
    if job.command == "info":
        prov.update(device=env["device"], onednn=env["onednn"])
        return prov
    prov["input"] = _file(job.input, hashes.get("input"))
    prov["target"] = _file(job.target, hashes.get("target"))
    prov["objective"] = objective
    method: dict[str, Any] | None = None
    if job.command == "wrt-input":
        method = method_params(job)
        if "baseline" in _method_options(job.method):
            method["baseline"] = _file(job.baseline, hashes.get("baseline")) or "zeros"
    params = {name: getattr(job, name) for name in _COMMAND_PARAMS.get(job.command, ())}
    if job.command == "check" and params["seed"] is None:
        params["seed"] = 0  # the seed check's directions use when none is given
    prov.update(
        method=method,
        parameters=params,
        training=bool(job.training),
        batch_size=batch_size,
        device=env["device"],
        onednn=env["onednn"],
    )
    return prov


def _method_options(name: str) -> tuple[str, ...]:
    from gradcli.methods import METHODS

    method = METHODS.get(name)
    return tuple(method.options) if method is not None else ()


def to_npz_entry(prov: dict[str, Any]):
    """The provenance as the .npz entry: a 0-d unicode array (loads with allow_pickle=False)."""
    import numpy as np

    return np.array(json.dumps(prov, sort_keys=True, default=str))


MAX_BYTES = 1 << 20  # a provenance entry gradcli writes is a few KiB
MAX_DEPTH = 16  # and nests 3 levels deep
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')

# the fields `gradcli diff` reads, and what each must be when present (None always allowed)
_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "command": (str,),
    "model": (dict,),
    "input": (dict,),
    "target": (dict,),
    "objective": (dict,),
    "method": (dict, str),
    "parameters": (dict,),
    "versions": (dict,),
    "training": (bool,),
}
_FILE_FIELDS = ("path", "sha256")
_JSON_TYPE = {dict: "an object", str: "a string", bool: "true or false", list: "a list"}


class MalformedProvenance(ValueError):
    """What is wrong with a provenance entry (from_npz names the file)."""


def from_npz(path: str | os.PathLike, label: str = "") -> dict[str, Any] | None:
    """The provenance stored in an .npz gradcli wrote; None when it has none. An entry that
    is there but malformed is an InputError (exit 3) naming the file and what is wrong."""
    import zipfile

    from gradcli.errors import InputError

    where = f"{label} {path}".strip()
    try:
        with zipfile.ZipFile(path) as zf:
            if NPZ_KEY + ".npy" not in zf.namelist():
                return None
            info = zf.getinfo(NPZ_KEY + ".npy")
            if info.file_size > MAX_BYTES:
                raise MalformedProvenance(
                    f"it holds {info.file_size:,} bytes; gradcli writes a few KiB"
                )
            with zf.open(info) as f:
                return parse(f.read(MAX_BYTES + 1))
    except MalformedProvenance as exc:
        raise InputError(f"{where}: malformed provenance ({NPZ_KEY}): {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{where}: cannot read its provenance ({NPZ_KEY}): {exc}") from None


def parse(entry: bytes) -> dict[str, Any]:
    """The provenance dict of an `__gradcli__` entry's bytes (an .npy holding a 0-d unicode
    array of JSON); MalformedProvenance says what is wrong. Never unpickles; the JSON's
    nesting is bounded before it is parsed (no recursion limit can be reached)."""
    import io

    import numpy as np

    try:
        value = np.lib.format.read_array(io.BytesIO(entry), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise MalformedProvenance(f"not an .npy array ({_first(exc)})") from None
    if value.shape != () or value.dtype.kind != "U":
        raise MalformedProvenance(
            f"expected a 0-d unicode array, got shape {value.shape} dtype {value.dtype}"
        )
    text = str(value[()])
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise MalformedProvenance(f"its JSON nests {depth} levels deep (at most {MAX_DEPTH})")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MalformedProvenance(f"not valid JSON ({_first(exc)})") from None
    if not isinstance(data, dict):
        raise MalformedProvenance(f"expected a JSON object, got {_kind(data)}")
    for key, types in _FIELDS.items():
        got = data.get(key)
        if got is not None and not isinstance(got, types):
            want = " or ".join(_JSON_TYPE[t] for t in types)
            raise MalformedProvenance(f"field {key!r} is {_kind(got)}; expected {want}")
    for key in ("model", "input", "target"):
        for sub in _FILE_FIELDS:
            got = (data.get(key) or {}).get(sub)
            if got is not None and not isinstance(got, str):
                raise MalformedProvenance(f"field {key}.{sub} is {_kind(got)}; expected a string")
    return data


def _depth(text: str) -> int:
    """How deep the JSON's arrays and objects nest (strings skipped), without parsing it."""
    brackets = re.sub(r"[^\[\]{}]", "", _STRINGS.sub("", text))
    depth = deepest = 0
    for ch in brackets:
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _first(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
