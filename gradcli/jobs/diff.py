"""`gradcli diff`: compare two result .npz files key by key (NumPy only, no TensorFlow).

Figures per key, with B as the reference ("before", e.g. last release's results) and A the
new result:
- cosine = <a, b> / (|a| |b|) over all elements (1 when both are all zero, 0 when one is);
- rel_diff = |a - b| / |b| (L2 norms; 0 when both are zero, null when only b is);
- max_abs_diff = max |a - b|;
- sign_agreement = fraction of elements with sign(a) == sign(b), where 0 is its own sign
  (a zero agrees only with a zero);
- for attribution maps (wrt-input / wrt-layer results, or without provenance: every key has
  the same number N of rows and 2+ axes), per sample i over its features: Spearman's rank
  correlation of |a_i| and |b_i| (ties get their average rank; 1 when both are constant, 0
  when one is) and the overlap of the top `top_percent`% features by |g| (|top_a & top_b| / k).
  The JSON gives the mean and the minimum over samples; the table the mean.

Arrays are read in chunks of rows from memory maps (stored members) or streams (compressed
ones), so files larger than memory compare in bounded memory. The figures are computed
without overflow (diffstats.py); a NaN or infinite figure trips its gate, and is null in
JSON with `nonfinite_figures` naming it. Provenance read back is untrusted (provenance.py).
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradcli._version import __version__
from gradcli.commands import COMMANDS, DIFF
from gradcli.errors import ExitCode, InputError
from gradcli.io.arrays import ArraySource, read_arrays
from gradcli.io.npzfile import NPZ_KEY, SCHEMA, from_npz
from gradcli.present.diff_figures import Figures, json_figures

# statuses of a diff row; the first three are gates, the others say why there is no figure
LOW_COSINE = "low-cosine"
HIGH_DIFF = "high-rel-diff"
LOW_RANK = "low-rank-corr"
ONLY_A = "only-in-a"
ONLY_B = "only-in-b"
SHAPE = "shape-mismatch"
_CHUNK_BYTES = 1 << 26  # rows read at a time: about 64 MiB per array


@dataclass
class DiffGates:
    min_cosine: float | None = None
    max_rel_diff: float | None = None
    min_rank_corr: float | None = None

    def limits(self) -> dict[str, float]:
        """The gates given, by the status they trip (the JUnit messages quote them)."""
        values = {
            LOW_COSINE: self.min_cosine,
            HIGH_DIFF: self.max_rel_diff,
            LOW_RANK: self.min_rank_corr,
        }
        return {k: v for k, v in values.items() if v is not None}

    @property
    def any(self) -> bool:
        return any(g is not None for g in (self.min_cosine, self.max_rel_diff, self.min_rank_corr))


# ------------------------------------------------------------------ files


@dataclass
class Result:
    """One side of a comparison: its arrays (opened, not read) and its provenance."""

    label: str
    path: str
    arrays: dict[str, ArraySource]
    provenance: dict | None


def open_result(path: str | Path, label: str) -> Result:
    """Open a result .npz: every array (never unpickled) and its provenance, if any."""
    from gradcli.io.paths import check_regular

    check_regular(str(path), f"{label} {path}")
    if Path(path).suffix.lower() != ".npz":
        raise InputError(f"{label} {path}: expected an .npz written by gradcli -o")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{label} {path}: not a readable .npz file ({exc})") from None
    keys = [k for k in keys if k != NPZ_KEY]
    arrays = read_arrays(path, keys, label) if keys else {}
    return Result(label, str(path), arrays, from_npz(path, label))


def _command(prov: dict | None) -> str | None:
    return prov.get("command") if prov else None


def compare_provenance(a: dict | None, b: dict | None) -> tuple[list[str], list[str]]:
    """(warnings, notes) on how A and B were computed; raises InputError where a comparison
    means nothing (different commands: their tensors are different quantities)."""
    warnings: list[str] = []
    notes: list[str] = []
    for side, prov in (("A", a), ("B", b)):
        if prov is None:
            notes.append(
                f"{side} has no provenance (an older gradcli or another writer): "
                f"how it was computed is not compared"
            )
        elif not _known(prov):
            notes.append(
                f"{side}: unknown provenance schema {prov.get('schema')!r}: how it was "
                f"computed is not compared"
            )
    if not (_known(a) and _known(b)):
        return warnings, notes
    if _command(a) != _command(b):
        raise InputError(
            f"A is a {_command(a)} result, B a {_command(b)} result: "
            f"different quantities, nothing to compare"
        )
    if "ignore" in (_compared(a), _compared(b)):  # how a check was run is not compared
        return warnings, notes
    if a.get("parameters") != b.get("parameters"):
        if _compared(a) == "note":
            notes.append(f"layers: A {a['parameters']}, B {b['parameters']}")
        else:
            warnings.append(f"parameters differ: A {a['parameters']}, B {b['parameters']}")
    oa, ob = dict(a.get("objective") or {}), dict(b.get("objective") or {})
    da, db = oa.pop("described", None), ob.pop("described", None)
    if oa != ob:
        warnings.append(f"objective differs: A {_short(oa)}, B {_short(ob)}")
    elif da != db:  # same options; the models name their outputs (or losses) differently
        notes.append(f"objective: A {da}, B {db}")
    for what, key in (
        ("method", "method"),
        ("training flag", "training"),
    ):
        if a.get(key) != b.get(key):
            warnings.append(f"{what} differs: A {_short(a.get(key))}, B {_short(b.get(key))}")
    for what in ("input", "target"):
        ha = (a.get(what) or {}).get("sha256")
        hb = (b.get(what) or {}).get("sha256")
        if ha != hb:
            warnings.append(
                f"{what} differs: A {_digest(ha)} ({(a.get(what) or {}).get('path')}), "
                f"B {_digest(hb)} ({(b.get(what) or {}).get('path')})"
            )
    if a.get("versions") != b.get("versions"):
        changed = [
            f"{k} {b['versions'].get(k)} -> {a['versions'].get(k)}"
            for k in sorted(set(a.get("versions") or {}) | set(b.get("versions") or {}))
            if (a.get("versions") or {}).get(k) != (b.get("versions") or {}).get(k)
        ]
        notes.append("versions differ (B -> A): " + ", ".join(changed))
    return warnings, notes


def _compared(prov: dict) -> str:
    """What differing parameters of a command's results are (commands.CommandSpec)."""
    found = COMMANDS.get(str(prov.get("command")))
    return found.compared_in_diff if found is not None else "warning"


def _known(prov: dict | None) -> bool:
    """Provenance this gradcli can read (its schema's major version)."""
    return prov is not None and str(prov.get("schema")).split("/")[0] == SCHEMA.split("/")[0]


def _short(value: Any) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, False))
        return text or "(defaults)"
    return str(value)


def _digest(h: str | None) -> str:
    return "none" if h is None else h[:12]


def pair_keys(a: Result, b: Result) -> tuple[list[tuple[str | None, str | None]], list[str]]:
    """Which key of A goes with which of B: by name; when no name matches but both hold
    the same number of arrays of the same shapes in order (variables of a Keras model and
    of its `model.export`, named differently), by position. And the notes saying so."""
    ka, kb = list(a.arrays), list(b.arrays)
    if not set(ka) & set(kb) and ka and len(ka) == len(kb):
        if all(a.arrays[x].shape == b.arrays[y].shape for x, y in zip(ka, kb, strict=True)):
            return list(zip(ka, kb, strict=True)), [
                "no key names match; keys paired by position (same shapes in order)"
            ]
    pairs: list[tuple[str | None, str | None]] = [(k, k if k in b.arrays else None) for k in ka]
    pairs += [(None, k) for k in kb if k not in a.arrays]
    return pairs, []


def is_attribution(a: Result, b: Result) -> bool:
    """Whether the keys are per-sample maps (N rows of features), compared sample by sample."""
    for prov in (a.provenance, b.provenance):
        if prov is not None and prov.get("command"):
            found = COMMANDS.get(str(prov["command"]))
            return found is not None and found.attribution
    shapes = [s.shape for s in (*a.arrays.values(), *b.arrays.values())]
    return bool(shapes) and all(len(s) >= 2 for s in shapes) and len({s[0] for s in shapes}) == 1


def diff_results(
    a: Result, b: Result, gates: DiffGates, top_percent: float = 10.0
) -> dict[str, Any]:
    """The diff record: one row per key (pair), the gates tripped, warnings and notes."""
    warnings, notes = compare_provenance(a.provenance, b.provenance)
    pairs, pair_notes = pair_keys(a, b)
    notes += pair_notes
    per_sample = is_attribution(a, b)
    rows = []
    for ka, kb in pairs:
        rows.append(_row(a, b, ka, kb, per_sample, top_percent, gates))
    tripped = sorted({r["status"] for r in rows if r["tripped"]})
    return {
        "version": __version__,
        "command": DIFF.name,
        "model": f"{a.path} vs {b.path}",
        "a": a.path,
        "b": b.path,
        "reference": "b",
        "per_sample": per_sample,
        "top_percent": top_percent,
        "tensors": rows,
        "gates": tripped,
        "warnings": warnings,
        "notes": notes,
        "exit_code": int(ExitCode.GATE) if tripped else 0,
        "limits": gates.limits(),
        "provenance": {"a": a.provenance, "b": b.provenance},
    }


def _row(
    a: Result,
    b: Result,
    ka: str | None,
    kb: str | None,
    per_sample: bool,
    top_percent: float,
    gates: DiffGates,
) -> dict[str, Any]:
    name = ka if ka == kb or kb is None else (kb if ka is None else f"{ka} ~ {kb}")
    if ka is None or kb is None:
        src = a.arrays[ka] if ka is not None else b.arrays[kb]
        status = ONLY_A if kb is None else ONLY_B
        # a gate cannot pass on a tensor one side lacks
        return {"name": name, "shape": list(src.shape), "status": status, "tripped": gates.any}
    sa, sb = a.arrays[ka], b.arrays[kb]
    if sa.shape != sb.shape:
        return {
            "name": name,
            "shape": list(sa.shape),
            "shape_b": list(sb.shape),
            "status": SHAPE,
            "tripped": gates.any,
        }
    fig = Figures()
    samples = per_sample and len(sa.shape) >= 2
    if not sa.shape:
        fig.update(np.asarray(sa.array), np.asarray(sb.array))
    else:
        row_bytes = max(1, int(np.prod(sa.shape[1:], dtype=np.int64)) * 8)
        step = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(0, sa.shape[0], step):
            stop = min(sa.shape[0], start + step)
            ca, cb = sa.read(start, stop), sb.read(start, stop)
            fig.update(ca, cb)
            if samples:
                fig.per_sample(ca, cb, top_percent)
    row: dict[str, Any] = {"name": name, "shape": list(sa.shape), **fig.row()}
    status = "ok"
    checks = (
        (LOW_RANK, gates.min_rank_corr, row.get("rank_corr_min"), lambda v, g: v < g),
        (HIGH_DIFF, gates.max_rel_diff, row["rel_diff"], lambda v, g: v > g),
        (LOW_COSINE, gates.min_cosine, row["cosine"], lambda v, g: v < g),
    )
    for label, gate, value, fails in checks:
        if gate is None or (label == LOW_RANK and not samples):
            continue
        # no figure (zero reference) fails too; NaN fails (it is never clamped into range)
        if value is None or math.isnan(value) or fails(value, gate):
            status = label
    row["status"] = status
    row["tripped"] = status != "ok"
    return json_figures(row)


def diff_files(
    a: str | Path, b: str | Path, gates: DiffGates, top_percent: float = 10.0
) -> dict[str, Any]:
    """`gradcli diff A B`: the diff record of two result files."""
    return diff_results(open_result(a, "A"), open_result(b, "B"), gates, top_percent)


def run(job: Any) -> dict[str, Any]:
    """`gradcli diff`'s job (commands.diff.DiffJob): the record."""
    gates = DiffGates(job.min_cosine, job.max_rel_diff, job.min_rank_corr)
    return diff_files(job.a, job.b, gates, job.top_percent)
