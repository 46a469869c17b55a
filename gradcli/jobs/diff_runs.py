"""`--against MODEL_B`: one job run on MODEL (A) and on MODEL_B (B), then their diff.

Both results are written to .npz files in one staging directory and compared with
`gradcli diff`'s code (diffing.py: streamed, bounded memory). With `-o PATH`, A's result lands
at PATH and B's at `<PATH stem>.against.npz`, together, when everything succeeded; without
it the staging directory is removed. The record is the diff's (A the new model, B the
reference), with each run's gates and output.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gradcli.errors import ExitCode
from gradcli.io.outputs import Outputs
from gradcli.io.paths import against_file, output_file, staging_dir, temp_prefix
from gradcli.jobs.diff import DiffGates, diff_results, open_result


def run_against(job: Any, path: Path, out: Path | None, emit, index: int, report=None) -> dict:
    """Run `job` on model `path` and on `job.against`; the diff record. `report(record,
    outputs)` stages report files (--junit) with the two results."""
    from gradcli.jobs.runner import run_one

    with Outputs(lambda p: emit("temp", path=p)) as outputs:
        where = staging_dir(output_file(out, ".npz")) if out is not None else None
        prefix = temp_prefix(output_file(out, ".npz")) if out is not None else "gradcli-"
        work = Path(tempfile.mkdtemp(dir=where, prefix=prefix, suffix=".tmp"))
        outputs.track(work)
        try:
            a_out, b_out = work / "a.npz", work / "b.npz"
            record_a = run_one(job, path, a_out, None, emit, index)
            # the same job (a drawn seed included) on B
            job_b = dataclasses.replace(job, model=str(job.against))
            record_b = run_one(job_b, Path(job.against), b_out, None, emit, index)
            gates = DiffGates(job.min_cosine, job.max_rel_diff, job.min_rank_corr)
            record = diff_results(
                open_result(a_out, "A"), open_result(b_out, "B"), gates, job.top_percent
            )
            record.update(model=str(path), a=str(path), b=str(job.against), against=job.against)
            runs = []
            for rec, dest in (
                (record_a, output_file(out, ".npz") if out else None),
                (record_b, against_file(out) if out else None),
            ):
                runs.append(
                    {
                        "model": rec["model"],
                        "command": rec["command"],
                        "n": rec.get("n"),
                        "objective": rec.get("objective"),
                        "gates": rec["gates"],
                        "exit_code": rec["exit_code"],
                        "out": str(dest) if dest else None,
                    }
                )
            record["runs"] = runs
            record["gates"] = sorted(set(record["gates"]).union(*(r["gates"] for r in runs)))
            if record["gates"]:
                record["exit_code"] = max(int(ExitCode.GATE), record["exit_code"])
            if out is not None:
                outputs.stage(a_out, output_file(out, ".npz"))
                outputs.stage(b_out, against_file(out))
            if report is not None:
                report(record, outputs)
            outputs.commit()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return record
