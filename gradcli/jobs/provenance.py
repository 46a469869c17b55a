"""Provenance: what produced a result (versions, file hashes, command, objective, method,
device), one schema-versioned dict carried by every JSON record and every .npz gradcli writes.

Built in the worker (it records TensorFlow's versions); the files' sha256 are io.hashes',
the .npz entry's writing and untrusted reading io.npzfile's.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

from gradcli.commands import spec as spec_of
from gradcli.io.npzfile import SCHEMA


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
    spec = spec_of(job.command)
    env = environment()
    prov: dict[str, Any] = {
        "schema": SCHEMA,
        "written": written_at(),
        "versions": env["versions"],
        "command": job.command,
        "model": {"path": str(model), "format": model_format, "sha256": hashes.get("model")},
    }
    if not spec.computes:
        prov.update(device=env["device"], onednn=env["onednn"])
        return prov
    prov["input"] = _file(job.input, hashes.get("input"))
    prov["target"] = _file(job.target, hashes.get("target"))
    prov["objective"] = objective
    method: dict[str, Any] | None = None
    if spec.uses_methods:
        method = method_params(job)
        if "baseline" in _method_options(job.method):
            method["baseline"] = _file(job.baseline, hashes.get("baseline")) or "zeros"
    params = {name: getattr(job, name) for name in spec.provenance_params}
    for name, default in spec.provenance_defaults.items():
        if params.get(name) is None:
            params[name] = default
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
