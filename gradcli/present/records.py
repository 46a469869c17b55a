"""The records that travel from the worker to the report: one per model, one row per tensor.

On the wire they are JSON objects (the `--json` output, keys and values as documented);
`from_json` gives typed objects whose common fields are attributes, and `to_json` gives the
same object back (same keys, same order). Keys particular to one command stay in `extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from gradcli.present.gates import Status


def _split(cls: type, data: dict) -> tuple[dict, dict, tuple[str, ...]]:
    names = {f.name for f in fields(cls)} - {"extra", "keys"}
    common = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return common, extra, tuple(data)


def _join(obj: Any) -> dict:
    values = {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in ("extra", "keys")}
    out = {}
    for key in obj.keys:
        out[key] = values[key] if key in values else obj.extra[key]
    return out


@dataclass
class TensorRow:
    """One tensor's figures (a gradient check row keeps its own figures in `extra`)."""

    name: str = ""
    shape: list = field(default_factory=list)
    status: str = Status.OK.value
    tripped: bool = False
    l2: float | None = None
    mean_abs: float | None = None
    max_abs: float | None = None
    zero_fraction: float | None = None
    nonfinite: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict) -> TensorRow:
        common, extra, keys = _split(cls, data)
        return cls(**common, extra=extra, keys=keys)

    def to_json(self) -> dict:
        return _join(self)


@dataclass
class Record:
    """One model's result (or its error)."""

    command: str = ""
    model: str = ""
    version: str = ""
    format: str = ""
    loader: str = ""
    n: int | None = None
    objective: str | None = None
    method: str | None = None
    error: str | None = None
    exit_code: int = 0
    gates: list[str] = field(default_factory=list)
    tensors: list[TensorRow] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict) -> Record:
        common, extra, keys = _split(cls, data)
        common["tensors"] = [TensorRow.from_json(t) for t in common.get("tensors") or []]
        return cls(**common, extra=extra, keys=keys)

    def to_json(self) -> dict:
        out = _join(self)
        if "tensors" in out:
            out["tensors"] = [t.to_json() for t in self.tensors]
        return out
