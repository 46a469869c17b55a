"""The shape of a loader strategy: which paths it claims, its checks, and its ordered steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gradcli.errors import ModelError, first_line
from gradcli.io.modelfiles import ModelFormat
from gradcli.load.handles import ModelHandle


class StepFailed(Exception):
    """A step's loader could not read the model: the strategy tries its next step.

    Anything else a step raises (a `ModelError` refusing unsafe content, a model without
    inputs) ends the load at once: no fallback ever runs past a refusal.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class Attempt:
    """One load of one path: what the steps share, and what the failed ones raised."""

    path: Path
    format: ModelFormat
    unsafe: bool
    failures: list[BaseException] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """One way to load, tried in order. `reports`: if every step fails, the last failure of
    a reporting step is the one the error names (a fallback's own failure says less)."""

    name: str
    run: Callable[[Attempt], ModelHandle]
    reports: bool = True


def _nothing(path: Path) -> None:
    return None


@dataclass(frozen=True)
class Strategy:
    """A loader for the paths it claims.

    `handle` is the class of the handles it returns: its `has_layers` and
    `supports_training` say what those can do. `validate` runs always (a wrong file type is
    refused even with --unsafe); `scan` runs in safe mode only, reads the path as data and
    returns the bytes of weights the loaders may create (None: not bounded). The steps run
    in order under that bound until one returns a handle.
    """

    name: str
    format: ModelFormat
    claims: Callable[[Path], bool]
    handle: type[ModelHandle]
    steps: tuple[Step, ...]
    failure: str  # "cannot load the model": the final error's words
    scan: Callable[[Path], int | None]
    validate: Callable[[Path], None] = _nothing
    bound_tf_keras: bool = False  # the weight bound also covers tf_keras's layers
    describe: Callable[[Path], ModelHandle] | None = None  # `info` without loading
    # the final error in gradcli's words, where the failure is understood (None: Keras's)
    explain: Callable[[Path, BaseException], str | None] = lambda path, exc: None

    def run_steps(self, attempt: Attempt) -> ModelHandle:
        reported: BaseException | None = None
        for step in self.steps:
            try:
                return step.run(attempt)
            except StepFailed as failed:
                attempt.failures.append(failed.cause)
                if step.reports:
                    reported = failed.cause
        reported = reported or attempt.failures[-1]
        why = self.explain(attempt.path, reported) or f"{self.failure}: {first_line(reported)}"
        raise ModelError(f"{attempt.path}: {why}") from reported
