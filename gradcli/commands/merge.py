"""`gradcli merge SHARD.npz...`: the -o files of `influence --shard K/N` runs combined into the
unsharded result, exactly (NumPy only: runs in the CLI's own process, never in a worker)."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.layouts import REPORTS
from gradcli.commands.spec import CommandSpec, opt
from gradcli.present.records import Kind


@dataclass(kw_only=True)
class MergeJob:
    command: str
    shards: list[str] = opt(
        metavar="SHARD.npz...",
        help="The -o files of the N runs of one `gradcli influence --shard K/N` job, in any order.",
        show_default=False,
    )
    out: str | None = opt(
        None,
        "--out",
        "-o",
        metavar="PATH",
        help="Write the merged result to this .npz: the same arrays, bit for bit, as one "
        "unsharded run.",
    )


MERGE = CommandSpec(
    name="merge",
    help="Combine the -o files of sharded `gradcli influence` runs into the whole run's result.\n\n"
    "The merge only selects (every shard's rows and its top candidates per test sample),\n"
    "so the result equals an unsharded run's bit for bit. It refuses shards of different\n"
    "runs (checkpoints, learning rates, data, options), a missing or repeated shard, and\n"
    "files that are not influence results.",
    options=MergeJob,
    layout=("shards", "out", *REPORTS),
    impl="gradcli.jobs.merge:run",
    record_kind=Kind.INFLUENCE,
    api_name="merge",
    in_worker=False,
    files=("shards",),
)
