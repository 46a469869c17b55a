"""Exit codes and the exception hierarchy that the CLI turns into them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    GATE = 1  # a health gate or a gradient check tripped
    USAGE = 2  # bad option or value
    INPUT = 3  # a model, input or target cannot be read or does not fit
    GRADIENT = 4  # the gradient cannot be computed
    INTERRUPTED = 130


class GradcliError(Exception):
    """An error a user can act on; its message is printed as one line."""

    exit_code: ExitCode = ExitCode.GRADIENT


class UsageError(GradcliError):
    """An option or value that cannot be used (exit 2)."""

    exit_code = ExitCode.USAGE


class InputError(GradcliError):
    """A model, input, target or baseline that cannot be read or does not fit (exit 3)."""

    exit_code = ExitCode.INPUT


class ModelError(InputError):
    """A model file that cannot be loaded or lacks what the command needs (exit 3)."""


class GradientError(GradcliError):
    """The gradient cannot be computed (exit 4)."""

    exit_code = ExitCode.GRADIENT
