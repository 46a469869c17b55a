"""`gradcli diff A B`: two result files compared key by key (NumPy only: runs in the CLI's own
process, never in a worker)."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.fields import DiffGateFields
from gradcli.commands.layouts import DIFF_GATES, REPORTS
from gradcli.commands.spec import CommandSpec, opt
from gradcli.present.records import Kind


@dataclass(kw_only=True)
class DiffJob(DiffGateFields):
    command: str
    a: str = opt(metavar="A", help="A result .npz (the new one).", show_default=False)
    b: str = opt(
        metavar="B", help="The result .npz to compare with (the reference).", show_default=False
    )


DIFF = CommandSpec(
    name="diff",
    help="Compare two result .npz files key by key, B the reference.\n\n"
    "Per key: cosine, relative L2 difference, max abs difference, sign agreement; for\n"
    "attribution maps (wrt-input, wrt-layer results), per-sample Spearman rank correlation\n"
    "and top-P% overlap.",
    options=DiffJob,
    layout=("a", "b", *DIFF_GATES, *REPORTS),
    impl="gradcli.jobs.diff:run",
    record_kind=Kind.DIFF,
    api_name="diff",
    in_worker=False,
    files=("a", "b"),
)
