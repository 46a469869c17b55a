"""The records that travel from the worker to the renderers: one per model (or comparison),
one row per tensor (light: stdlib only).

On the wire they are JSON objects (the `--json` output, keys and values as documented);
`from_json` gives typed objects whose common fields are attributes, and `to_json` gives the
same object back (same keys, same order). Keys particular to one command stay in `extra`;
`get(key)` reads either. How a record is shown is its `kind`, and what its values are called
its `value_label`: both given by the caller (from the command and methods tables), never
serialized.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from gradcli.present.gates import Status

# the keys of a record whose text is gradcli's own message (parameters marked with
# errors.param, named as flags or as Python names by whoever shows them)
MESSAGE_KEYS = ("error", "warnings", "notes", "loss_note")


class Kind(StrEnum):
    """How renderers show a record (a command's spec names its kind)."""

    MODEL = "model"  # what a model is (info)
    GRADIENTS = "gradients"  # a row per tensor of gradients or attributions
    WEIGHTS = "weights"  # a row per trainable variable, with |g|/|θ| and the flow
    CHECK = "finite-differences"  # autodiff against finite differences
    DIFF = "comparison"  # two results compared key by key
    INFLUENCE = "data-attribution"  # training samples ranked by their influence (TracIn)
    CURVATURE = "curvature"  # Hessian eigenvalues, traces, density (hessian)


_HIDDEN = ("extra", "keys", "kind", "value_label")


def _split(cls: type, data: dict) -> tuple[dict, dict, tuple[str, ...]]:
    names = {f.name for f in fields(cls)} - set(_HIDDEN)
    common = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return common, extra, tuple(data)


def _join(obj: Any) -> dict:
    values = {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in _HIDDEN}
    out = {}
    for key in obj.keys:
        out[key] = values[key] if key in values else obj.extra[key]
    return out


_ABSENT = object()


class _Get:
    """Reading a record like its JSON object: `rec.get("loss")`, `rec["gates"]`."""

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.keys and key not in self.extra:
            return getattr(self, key)
        return self.extra.get(key, default)

    def __contains__(self, key: str) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value


@dataclass
class TensorRow(_Get):
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
class Record(_Get):
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
    kind: str = Kind.GRADIENTS
    value_label: str = "|g|"  # what the tables call its values: |g|, |attr|, CAM

    @classmethod
    def from_json(cls, data: dict, kind: str = Kind.GRADIENTS, value_label: str = "|g|") -> Record:
        common, extra, keys = _split(cls, data)
        common["tensors"] = [TensorRow.from_json(t) for t in common.get("tensors") or []]
        return cls(**common, extra=extra, keys=keys, kind=kind, value_label=value_label)

    def to_json(self) -> dict:
        out = _join(self)
        if "tensors" in out:
            out["tensors"] = [t.to_json() for t in self.tensors]
        return out
