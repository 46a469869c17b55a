"""Option values as the CLI reads them, before any job runs: --class, --fail-on, --shard,
--import (light: no NumPy). A bad value is a UsageError (exit 2)."""

from __future__ import annotations

from gradcli.errors import UsageError
from gradcli.present.gates import FAIL_ON_CHOICES


def listed(value: list[str] | None) -> list[str]:
    return value or []


def fail_on_values(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in FAIL_ON_CHOICES:
                raise UsageError(
                    f"--fail-on {item!r}: expected one of {', '.join(FAIL_ON_CHOICES)}"
                )
            out.append(item)
    return sorted(set(out))


def class_value(value: str | None) -> int | str | None:
    """--class K (an integer), pred, or a .npy file of one class per sample."""
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text == "pred" or text.lower().endswith(".npy"):
        return text
    raise UsageError(
        f"--class {value!r}: expected a class index K, pred (each sample's predicted class) or "
        "a .npy file of one class per sample"
    )


def shard_value(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(p) for p in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {value}: need 0 <= K < N")
    return k, n
