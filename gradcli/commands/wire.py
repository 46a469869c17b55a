"""The worker protocol's job line: a job as one line of JSON and back (no pickle)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gradcli.commands import spec


def job_to_wire(job: Any, *, skip: set[int] | list[int] = (), debug: bool = False) -> bytes:
    """One line: the job's fields (the command among them), the models already done, and
    whether the worker runs with --debug."""
    data = dataclasses.asdict(job)
    data["skip"] = sorted(set(data.get("skip") or []) | set(skip))
    data["debug"] = debug
    return json.dumps(data).encode("utf-8") + b"\n"


def job_from_wire(line: bytes | str) -> tuple[Any, bool]:
    """The job of a job line, and its debug flag."""
    data = json.loads(line)
    debug = bool(data.pop("debug", False))
    command = data.pop("command")
    if data.get("shard") is not None:
        data["shard"] = tuple(data["shard"])
    return spec(command).job(**data), debug
