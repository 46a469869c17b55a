"""Report files (`--junit FILE`, and every other file format of formats.py): rendered to a temp
file of an output transaction (io.outputs.Outputs), renamed into place with the run's other
outputs at its commit; without a transaction, in one of its own."""

from __future__ import annotations

import os
from pathlib import Path

from gradcli.errors import InputError
from gradcli.io.outputs import Outputs, default_mode
from gradcli.present.formats import OUTPUT_FORMATS
from gradcli.present.records import Record


def write_report(
    fmt: str, records: list[Record], path: str | os.PathLike, outputs: Outputs | None = None
) -> None:
    """Write format `fmt`'s file of `records` to `path`, staged in `outputs` (or committed at
    once in a transaction of its own). Nothing is renamed into place if writing fails."""
    dest = Path(path)
    own = outputs is None
    transaction = Outputs() if own else outputs
    tmp = transaction.temp_file(dest)
    try:
        OUTPUT_FORMATS[fmt].renderer().write_file(records, tmp, transaction.locate)
        os.chmod(tmp, default_mode())
    except OSError as exc:
        transaction.abort()
        raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        if own:
            transaction.abort()
        raise
    transaction.stage(tmp, dest)
    if own:
        transaction.commit()
