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
    """An error a user can act on; its message is printed as one line.

    Parameters in the message are marked with `param(...)`: `str(exc)` names them as a Python
    caller knows them (`class_index=`), `render(exc, commands.cli_flags())` as the CLI's flags.
    """

    exit_code: ExitCode = ExitCode.GRADIENT

    def __str__(self) -> str:
        return render(self)


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


# ------------------------------------------------------------------ naming parameters
#
# The library speaks Python and the CLI speaks flags. A message names a parameter with
# `param("class_index")`; `str(exc)` (what a Python caller sees) shows `class_index=`, and
# the CLI's funnel shows the flag (`--class`) through `render(exc, commands.cli_flags())`.

_MARK = "\x1f"


def param(name: str, value: object = None) -> str:
    """A parameter's name (and the value given to it) inside an error message, shown as
    `name=value` to Python callers and as `--flag value` by the CLI."""
    if value is None:
        return f"{_MARK}{name}{_MARK}"
    return f"{_MARK}{name}{_VALUE}{value}{_MARK}"


_VALUE = "\x1e"


def render_text(text: str, names: dict[str, str] | None = None) -> str:
    """A message's text with its parameters named by `names` (default: Python `name=`)."""
    if _MARK not in text:
        return text
    parts = text.split(_MARK)
    for i in range(1, len(parts), 2):
        key, _, value = parts[i].partition(_VALUE)
        if names is None:
            parts[i] = f"{key}={value}"
        else:
            flag = names.get(key, "--" + key.replace("_", "-"))
            parts[i] = f"{flag} {value}" if value else flag
    return "".join(parts)


def render(exc: BaseException, names: dict[str, str] | None = None) -> str:
    """An error's text with its parameters named by `names` (default: Python `name=`)."""
    return render_text(Exception.__str__(exc), names)


OUT_OF_MEMORY = f"out of memory; try a smaller {param('batch_size')}"


def marked(exc: BaseException) -> str:
    """The one line a user sees for any exception, parameters still marked (for `render_text`):
    what travels from the worker to the CLI and into per-model error records."""
    if isinstance(exc, GradcliError):
        return Exception.__str__(exc)
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY
    return f"{type(exc).__name__}: {first_line(exc)}"


def exit_code(exc: BaseException) -> int:
    """The exit code an exception ends a run with."""
    if isinstance(exc, GradcliError):
        return int(exc.exit_code)
    return int(ExitCode.GRADIENT)
