"""`gradcli merge`: the shards of one `influence --shard K/N` run, combined into the whole
run's result (NumPy only: runs in the CLI's own process). The merge only selects
(engine.tracin.merge), so the arrays equal an unsharded run's bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradcli.engine.tracin import merge
from gradcli.errors import UsageError
from gradcli.io.collisions import check_distinct
from gradcli.io.hashes import sha256_file
from gradcli.io.outputs import Outputs
from gradcli.io.paths import check_output, output_file, remove_stale_temps
from gradcli.jobs.influence_results import (
    merged_head,
    merged_provenance,
    read_shard,
    record_of,
    write_npz,
)


def run(job: Any, collect: dict | None = None) -> dict:
    """The merged record (and -o written); `collect` gets the arrays (the Python API)."""
    if not job.shards:
        raise UsageError("give the -o files of the shards to merge")
    out = None
    if job.out is not None:
        out = output_file(job.out, ".npz")
        check_output(out, "--out")
        remove_stale_temps(out)
        check_distinct([("--out", out)], [("SHARD", Path(p)) for p in job.shards])
    loaded = [read_shard(path) for path in job.shards]
    results = [result for result, _ in loaded]
    merged = merge(results, n_train=results[0].run["n_train"])
    sources = [
        (str(path), sha256_file(path), list(result.shard) if result.shard else None)
        for path, result in zip(job.shards, results, strict=True)
    ]
    prov = merged_provenance(loaded[0][1], sources)
    arrays = merged.arrays()
    if collect is not None:
        collect.update(arrays)
    listed = bool((prov.get("parameters") or {}).get("self_influence"))
    with Outputs() as outputs:
        written = write_npz(str(out), arrays, prov, outputs) if out is not None else None
        record = record_of(merged, prov, head=merged_head(prov), listed=listed, out=written)
        outputs.commit()
    return record
