"""`gradcli info MODEL`: what the model is."""

from __future__ import annotations

from dataclasses import dataclass

from gradcli.commands.fields import JobBase
from gradcli.commands.spec import CommandSpec
from gradcli.present.records import Kind


@dataclass(kw_only=True)
class InfoJob(JobBase):
    """info takes only what loading a model takes."""


INFO = CommandSpec(
    name="info",
    help="What the model is: format, inputs, outputs, compiled loss, layers (for --layer).",
    options=InfoJob,
    layout=("model", "output_format", "as_json", "unsafe", "imports", "shard", "debug"),
    impl="gradcli.jobs.info:describe",
    record_kind=Kind.MODEL,
    api_name="info",
    computes=False,
)
