"""Option values as the CLI reads them, before any job runs: --class, --fail-on, --shard,
--png's directory (light: no NumPy). A bad value is a UsageError (exit 2)."""

from __future__ import annotations

import os
from typing import Any

from gradcli.errors import UsageError
from gradcli.present.gates import FAIL_ON_CHOICES


def same(value: Any) -> Any:
    return value


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


_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".webp", ".tif", ".tiff")


def check_png_directory(value: str) -> None:
    """wrt-input --png names a directory (a PNG per sample): a name like a picture file that
    is not an existing directory is refused, rather than made into a directory q.png."""
    if value.lower().endswith(_PICTURE_SUFFIXES) and not os.path.isdir(value):
        stem = value[: value.rfind(".")]
        raise UsageError(
            f"--png {value}: wrt-input writes one PNG per sample into a directory, and this "
            f"looks like a file name; give a directory, e.g. --png {stem}/"
        )


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


def check_method_options(
    method: str, layer: str | None, baseline: str, png: str | None, png_style: str | None
) -> None:
    """wrt-input's options that go with some methods only, and --png's directory."""
    from gradcli.methods import METHODS

    found = METHODS[method]
    if "baseline" not in found.options and baseline != "zeros":
        raise UsageError("--baseline goes with --method integrated")
    if layer is not None and not found.needs_layer:
        cams = ", ".join(m.name for m in METHODS.values() if m.needs_layer)
        raise UsageError(
            f"--layer goes with a CAM method ({cams}); for the gradient at a layer use "
            "`gradcli wrt-layer`"
        )
    if png_style is not None:
        if png is None:
            raise UsageError("--png-style goes with --png")
        if png_style == "signed" and found.png_style == "own":
            raise UsageError(
                f"--png-style signed: {method} is never negative; it is drawn as it is"
            )
    if png is not None:
        check_png_directory(png)
