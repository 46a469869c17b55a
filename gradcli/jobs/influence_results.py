"""An influence run's result as the user gets it: its record (the top samples, per test sample
its proponents and opponents), its .npz (every array, and the provenance a merge checks), its
pictures; and a saved shard read back (`gradcli merge`). NumPy only at import: the merge runs
in the CLI's own process."""

from __future__ import annotations

import copy
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradcli._version import __version__
from gradcli.commands import INFLUENCE
from gradcli.engine.projection import error_bound
from gradcli.engine.projection import record as projection_record
from gradcli.engine.tracin import ShardResult, top_rows
from gradcli.errors import InputError
from gradcli.io.npzfile import NpzStreamWriter, from_npz
from gradcli.io.outputs import Outputs

KEY = "tracin"  # the provenance's block that a merge reads: {"run", "shard", "top"}
METHOD = "tracin"
DELTA = 0.05  # the projection's error bound holds with probability 1 - DELTA


@dataclass
class Finished:
    """What a run knew once its numbers were in (everything its outputs record)."""

    job: Any
    handle: Any
    objective: Any
    checkpoints: list[tuple[Path, float, int | None]]  # path, learning rate, saved iterations
    lr_source: str  # "saved" (read from each file) or "given" (--lr)
    variables: list[str]
    parameters: int  # numbers in one per-sample gradient over `variables`
    projection: Any  # engine.persample.Projection or None
    batch_size: int
    n_train: int
    n_test: int
    hashes: dict[str, str | None]
    collect: dict[str, np.ndarray] | None = field(default=None)  # the Python API's arrays


def run_of(done: Finished) -> dict:
    """What every shard of one run shares, by content (a merge compares it key by key)."""
    h, job = done.hashes, done.job
    p = done.projection
    return {
        "checkpoints": [h.get(f"checkpoint {path}") for path, _, _ in done.checkpoints],
        "lr": [lr for _, lr, _ in done.checkpoints],
        "input": h.get("input"),
        "target": h.get("target"),
        "test": h.get("test"),
        "test_target": h.get("test target"),
        "objective": done.objective.describe(),
        "variables": done.variables,
        "parameters": done.parameters,
        "projection": projection_record(p.seed, p.dim, p.blocks) if p else None,
        "n_train": done.n_train,
        "n_test": done.n_test,
        "batch_size": done.batch_size,
        "matrix": bool(job.matrix),
    }


def provenance_of(done: Finished) -> dict:
    """The run's provenance: the common fields, every checkpoint with its hash and rate, the
    test files, and the block a merge checks."""
    from gradcli.jobs.provenance import build

    job, h = done.job, done.hashes
    objective = {
        "described": done.objective.describe(),
        "output": job.output,
        "class": None,
        "loss": job.loss,
        "from_logits": bool(job.from_logits),
        "logits": False,
    }
    hashes = {"model": None, "input": h.get("input"), "target": h.get("target")}
    prov = build(
        job,
        model=job.model,
        model_format=done.handle.format,
        hashes=hashes,
        objective=objective,
        batch_size=done.batch_size,
    )
    prov["checkpoints"] = [
        {"path": str(path), "sha256": h.get(f"checkpoint {path}"), "lr": lr, "iterations": it}
        for path, lr, it in done.checkpoints
    ]
    prov["lr_source"] = done.lr_source
    for key, label in (("test", "test"), ("test_target", "test target")):
        value = getattr(job, key)
        prov[key] = None if value is None else {"path": str(value), "sha256": h.get(label)}
    prov[KEY] = {"run": run_of(done), "shard": list(job.shard) if job.shard else None}
    prov[KEY]["top"] = job.top
    return prov


def finish(done: Finished, result: ShardResult, outputs: Outputs, *, train: Any, test: Any) -> dict:
    """Stage the run's outputs (npz, pictures, report files) in `outputs`; its record."""
    job = done.job
    prov = provenance_of(done)
    arrays = result.arrays()
    if done.collect is not None:
        done.collect.update(arrays)
    written = write_npz(job.out, arrays, prov, outputs) if job.out else None
    pictures = None
    if job.png is not None:
        from gradcli.jobs.influence_pictures import draw

        pictures = draw(job, result, train, test, outputs)
    record = record_of(
        result,
        prov,
        head=_head(job.model, done.handle.format, done.handle.loader),
        listed=job.self_influence,
        out=written,
        png=pictures,
    )
    if job.reports:
        from gradcli.jobs.runner import report_stager

        report_stager(job.reports)(record, outputs)
    return record


def _head(model: str, fmt: str, loader: str) -> dict:
    return {
        "version": __version__,
        "command": INFLUENCE.name,
        "model": str(model),
        "format": fmt,
        "loader": loader,
    }


def write_npz(out: str, arrays: dict[str, np.ndarray], prov: dict, outputs: Outputs) -> str:
    specs = {k: (v.shape, v.dtype.str) for k, v in arrays.items()}
    sink = NpzStreamWriter(out, specs, outputs=outputs, provenance=lambda: prov)
    try:
        for key, value in arrays.items():
            sink.write(key, value)
    except BaseException:
        sink.abort()
        raise
    return str(sink.commit())


def _float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _listed(scores: np.ndarray, rows: np.ndarray) -> list[dict]:
    return [{"row": int(r), "score": _float(s)} for s, r in zip(scores, rows, strict=True)]


def record_of(
    result: ShardResult,
    prov: dict,
    *,
    head: dict,
    listed: bool,
    out: str | None = None,
    png: list[str] | None = None,
) -> dict:
    """The JSON record of a run (or a merge) from its result and provenance."""
    block = prov[KEY]
    run = block["run"]
    values = result.self_influence
    finite = values[np.isfinite(values)]
    own: dict[str, Any] = {
        "listed": bool(listed),
        "median": _float(float(np.median(finite))) if finite.size else None,
        "mean": _float(float(finite.mean())) if finite.size else None,
        "max": _float(float(finite.max())) if finite.size else None,
        "nonfinite": int(values.size - finite.size),
    }
    if listed:
        top, rows = top_rows(values, result.rows, result.k)
        where = np.searchsorted(result.rows, rows)
        own["top"] = [
            {**item, "loss": _float(float(result.loss[i]))}
            for item, i in zip(_listed(top, rows), where, strict=True)
        ]
    projection = run.get("projection")
    if projection:
        projection = {
            **projection,
            "delta": DELTA,
            "error_bound": error_bound(projection["dim"], DELTA),
        }
    tests = [
        {
            "index": j,
            "proponents": _listed(result.proponent_scores[j], result.proponent_rows[j]),
            "opponents": _listed(result.opponent_scores[j], result.opponent_rows[j]),
        }
        for j in range(result.proponent_scores.shape[0])
    ]
    return {
        **head,
        "n": run["n_train"],
        "objective": (prov.get("objective") or {}).get("described"),
        "method": METHOD,
        "checkpoints": [{"path": c["path"], "lr": c["lr"]} for c in prov["checkpoints"]],
        "lr_source": prov.get("lr_source"),
        "variables": run["variables"],
        "parameters": run["parameters"],
        "projection": projection,
        "n_train": run["n_train"],
        "n_test": run["n_test"],
        "rows": int(result.rows.size),
        "shard": block.get("shard"),
        "top": result.k,
        "batch_size": run["batch_size"],
        "self_influence": own,
        "test": tests,
        "out": out,
        "png": png,
        "tensors": [],
        "gates": [],
        "exit_code": 0,
        "provenance": prov,
    }


# ------------------------------------------------------------------ read back (merge)


def read_shard(path: str) -> tuple[ShardResult, dict]:
    """A saved influence result and its provenance; InputError (exit 3) for a file that is
    not one (no provenance, another command's, malformed blocks or arrays)."""
    from gradcli.io.arrays import read_arrays
    from gradcli.io.paths import check_regular

    check_regular(path, f"SHARD {path}")
    if Path(path).suffix.lower() != ".npz":
        raise InputError(f"{path}: not the -o file of a `gradcli {INFLUENCE.name}` run (an .npz)")
    prov = from_npz(path, "SHARD")
    block = prov.get(KEY) if prov else None
    if prov is None or prov.get("command") != INFLUENCE.name or not isinstance(block, dict):
        raise InputError(f"{path}: not the -o file of a `gradcli {INFLUENCE.name}` run")
    run, shard, k = block.get("run"), block.get("shard"), block.get("top")
    if not isinstance(run, dict) or not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"{path}: malformed provenance: its {KEY} block is not a run's")
    if shard is not None and not _is_shard(shard):
        raise InputError(f"{path}: malformed provenance: shard {shard!r} is not [K, N]")
    if not isinstance(run.get("n_train"), int) or not isinstance(prov.get("checkpoints"), list):
        raise InputError(f"{path}: malformed provenance: no train size or checkpoints")
    names = list(ShardResult.ARRAYS)
    with zipfile.ZipFile(path) as zf:
        present = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    sources = read_arrays(path, [n for n in names if n in present], "SHARD")
    arrays = {name: np.asarray(src.array) for name, src in sources.items()}
    result = ShardResult.from_arrays(
        arrays, run, tuple(shard) if shard else None, k, source=str(path)
    )
    return result, prov


def _is_shard(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    )


def merged_provenance(first: dict, sources: list[tuple[str, str | None, list]]) -> dict:
    """The merged result's provenance: the shards' (checked equal where it matters), as a
    whole run's, with the files it was merged from."""
    from gradcli.jobs.provenance import written_at

    prov = copy.deepcopy(first)
    prov[KEY]["shard"] = None
    prov["written"] = written_at()
    prov["merged_from"] = [
        {"path": path, "sha256": digest, "shard": shard} for path, digest, shard in sources
    ]
    return prov


def merged_head(prov: dict) -> dict:
    model = prov.get("model") or {}
    return _head(str(model.get("path")), str(model.get("format")), "merged shards")
