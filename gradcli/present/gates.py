"""Gradient statuses (the JSON `status` values): which gates they are, their report style.

Light on purpose (no NumPy): the CLI reads `--fail-on`'s choices from here at import time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """What a tensor's gradient (or a gradient check row) came out as."""

    OK = "ok"
    NONFINITE = "nonfinite"
    ZERO = "zero"
    VANISHING = "vanishing"  # at float-noise level relative to what it flows through
    DISCONNECTED = "disconnected"
    TOO_LARGE = "too-large"  # above --max-norm
    TOO_SMALL = "too-small"  # below --min-norm
    MISMATCH = "mismatch"  # check: analytic and numeric gradients disagree
    UNRESOLVED = "unresolved"  # check: float32 rounding hides the difference
    TOO_SHARP = "too-sharp"  # hessian: the largest eigenvalue above --max-sharpness

    @property
    def style(self) -> str:
        """The Rich style the report shows it in."""
        return _STYLE[self]


_STYLE = {
    Status.OK: "green",
    Status.ZERO: "yellow",
    Status.VANISHING: "yellow",
    Status.TOO_SMALL: "yellow",
    Status.TOO_LARGE: "red",
    Status.NONFINITE: "red",
    Status.DISCONNECTED: "magenta",
    Status.MISMATCH: "red",
    Status.UNRESOLVED: "yellow",
    Status.TOO_SHARP: "red",
}

# the statuses --fail-on names; the norm bounds trip by themselves
FAIL_ON_CHOICES = tuple(
    s.value for s in (Status.NONFINITE, Status.ZERO, Status.VANISHING, Status.DISCONNECTED)
)
_BOUNDS = (Status.TOO_LARGE, Status.TOO_SMALL, Status.TOO_SHARP)

# the summary table's "worst" column: the first of these a model's rows have
_WORST_FIRST = (
    Status.NONFINITE,
    Status.MISMATCH,
    Status.DISCONNECTED,
    Status.TOO_LARGE,
    Status.TOO_SHARP,
    Status.TOO_SMALL,
    Status.ZERO,
    Status.VANISHING,
    Status.OK,
)


def style(status: str, default: str = "") -> str:
    """The report style of a status value (`default` for one this module does not know)."""
    try:
        return Status(status).style
    except ValueError:
        return default


def worst(statuses: Iterable[str]) -> Status:
    """The most serious of some statuses, for a one-word summary."""
    present = set(statuses)
    for s in _WORST_FIRST:
        if s in present:
            return s
    return Status.OK


@dataclass
class Gates:
    """What trips a run: statuses named in --fail-on, and the norm bounds."""

    fail_on: frozenset[str] = frozenset()
    max_norm: float | None = None
    min_norm: float | None = None

    def tripped(self, status: str) -> bool:
        if status in _BOUNDS:
            return True  # a bound the user gave is a gate by itself
        return status in self.fail_on
