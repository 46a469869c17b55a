"""Provenance: what produced a result (versions, file hashes, command, objective, method,
device), one schema-versioned dict carried by every JSON record and every .npz gradcli writes.

Hashes are sha256 over the bytes of the file, read in chunks (never loaded whole). A directory
(a SavedModel) hashes as `sha256sum` over its files would: the sha256 of the text made of one
line `<sha256 of file>  <relative path>` per regular file, sorted by path (byte order), i.e.
`cd DIR && find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum`.
Files are hashed in a background thread while the model computes (`Hashes.start`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = "gradcli-provenance/1"
NPZ_KEY = "__gradcli__"  # the .npz entry holding the provenance JSON (a 0-d unicode array)
_CHUNK = 1 << 22

# the Job fields that are parameters of each command's computation (besides the objective)
_COMMAND_PARAMS = {
    "wrt-layer": ("layers", "activations"),
    "wrt-weights": ("per_sample", "per_sample_arrays", "top"),
    "jacobian": ("max_elements",),
    "check": ("wrt", "directions", "eps", "rtol", "seed"),
}


def sha256_file(path: str | os.PathLike, stop: threading.Event | None = None) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks (stdin `-`: the bytes it held)."""
    h = hashlib.sha256()
    where = "/proc/self/fd/0" if str(path) == "-" else path
    with open(where, "rb") as f:  # a new open: its own offset, stdin's is left alone
        while chunk := f.read(_CHUNK):
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing stopped")
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(directory: str | os.PathLike, stop: threading.Event | None = None) -> str:
    """The sha256 of a directory: over `<file sha256>  <relative path>` lines sorted by path
    (what `sha256sum` over the sorted files, piped to `sha256sum`, prints)."""
    root = Path(directory)
    files = []
    for base, dirs, names in os.walk(root):  # symlinked directories are not followed
        dirs.sort()
        for name in names:
            p = Path(base, name)
            if p.is_file():
                files.append(p.relative_to(root).as_posix())
    lines = [
        f"{sha256_file(root / rel, stop)}  {rel}\n"
        for rel in sorted(files, key=lambda s: s.encode())
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_path(path: str | os.PathLike, stop: threading.Event | None = None) -> str:
    return sha256_tree(path, stop) if Path(path).is_dir() else sha256_file(path, stop)


_cache: dict[tuple, str] = {}  # (path, size, mtime) -> hash: a directory run's input once


def _key(path: str) -> tuple | None:
    if path == "-":
        return None  # stdin: hashed each time (a test process reads many)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


class Hashes:
    """The sha256 of a run's files, computed in a daemon thread while the gradients are."""

    def __init__(self, paths: dict[str, str | None]) -> None:
        self.paths = {k: v for k, v in paths.items() if v is not None}
        self.values: dict[str, str | None] = {}
        self.errors: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    @classmethod
    def start(cls, paths: dict[str, str | None]) -> Hashes:
        hashes = cls(paths)
        hashes.thread = threading.Thread(target=hashes._run, name="provenance", daemon=True)
        hashes.thread.start()
        return hashes

    def _run(self) -> None:
        for label, path in self.paths.items():
            key = _key(str(path))
            if key is not None and key in _cache:
                self.values[label] = _cache[key]
                continue
            try:
                digest = sha256_path(path, self.stop)
            except InterruptedError:
                return
            except OSError as exc:
                self.errors[label] = exc.strerror or str(exc)
                self.values[label] = None
                continue
            self.values[label] = digest
            if key is not None:
                _cache[key] = digest

    def result(self) -> dict[str, str | None]:
        """Every hash (waiting for the thread if it is still reading)."""
        if self.thread is None:
            self._run()
        else:
            self.thread.join()
        return {k: self.values.get(k) for k in self.paths}

    def cancel(self) -> None:
        self.stop.set()


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

        from . import __version__
        from .backend import keras, tf

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
    from .methods import METHODS

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
    from .methods import METHODS

    method = METHODS.get(name)
    return tuple(method.options) if method is not None else ()


def to_npz_entry(prov: dict[str, Any]):
    """The provenance as the .npz entry: a 0-d unicode array (loads with allow_pickle=False)."""
    import numpy as np

    return np.array(json.dumps(prov, sort_keys=True, default=str))


def from_npz(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance stored in an .npz gradcli wrote (None: there is none, or unreadable)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            if NPZ_KEY + ".npy" not in zf.namelist():
                return None
            with zf.open(NPZ_KEY + ".npy") as f:
                value = np.lib.format.read_array(f, allow_pickle=False)
        data = json.loads(str(value[()]))
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return None
    return data if isinstance(data, dict) else None
