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
    TERMINATED = 143  # SIGTERM: 128 + 15, as shells report it


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


def first_line(exc: BaseException, limit: int = 300) -> str:
    """One useful line of an exception's text, for a one-line `error: ...` message.

    TensorFlow's errors start with a header that ends in a colon ("Graph execution error:")
    followed by a stack of "Detected at node ..." frames; the reason is the first line after
    them. A header that ends in a colon gets that reason appended; an empty text gives the
    exception's type name.
    """
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0].strip()
    if head.endswith(":"):
        for line in lines[1:]:
            text = line.strip()
            if (
                line[0].isspace()  # stack frames and code lines
                or text.endswith(":")
                or text.startswith(("Detected at node", "Traceback", "[[", "File "))
            ):
                continue
            head = f"{head} {text}"
            break
    return head[:limit]
