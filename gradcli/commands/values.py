"""Option values as the CLI reads them, before any job runs: --class, --fail-on, --shard,
--import, --lr (light: no NumPy). A bad value is a UsageError (exit 2)."""

from __future__ import annotations

import math

from gradcli.commands.shardenv import AUTO, shard_from_env
from gradcli.errors import UsageError, param
from gradcli.present.gates import FAIL_ON_CHOICES

SAVED = "saved"  # --lr saved: each checkpoint's rate from its saved optimizer


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
    """--shard K/N, or auto: K and N from a Kubernetes Indexed Job's or a Slurm job array's
    environment (shardenv.py)."""
    if value is None:
        return None
    if value.strip().lower() == AUTO:
        return shard_from_env()
    try:
        k, n = (int(p) for p in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {value}: need 0 <= K < N")
    return k, n


def lr_value(text: str | None) -> list[float] | None:
    """--lr: one rate for every checkpoint, a comma list of one per checkpoint, or `saved`
    (None: each checkpoint's rate is read from its file)."""
    if text is None or text.strip().lower() == SAVED:
        return None
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(
                f"{param('lr', text)}: expected a learning rate, a comma list of one per "
                f"checkpoint, or {SAVED} (read from each checkpoint's optimizer)"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"{param('lr', text)}: learning rates must be positive numbers")
        values.append(value)
    return values


def learning_rates(values: list[float], n_checkpoints: int) -> list[float]:
    """One rate per checkpoint from --lr's values (one value: the same for all)."""
    if len(values) == 1:
        return values * n_checkpoints
    if len(values) != n_checkpoints:
        shown = ",".join(f"{v:g}" for v in values)
        raise UsageError(
            f"{param('lr', shown)}: {len(values)} learning rates for {n_checkpoints} "
            "checkpoint(s); give one value, or one per checkpoint in their order"
        )
    return list(values)
