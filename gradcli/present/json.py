"""`--format json` (and `--json`): one JSON object per record, one per line, as each arrives."""

from __future__ import annotations

import json


def line(record: dict) -> str:
    """One line of JSON (NaN/Inf are already null in records)."""
    return json.dumps(record, allow_nan=False, default=str)
