"""`influence --png`: rows of images with captions, e.g. a test image beside its top proponents
and opponents among the training images (matplotlib, imported lazily, no pyplot)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from gradcli.present.escape import plot
from gradcli.present.pictures import _normalized_input, fit_title, new_figure, save_atomic

TILE_INCHES = 1.7
COLOURS = {"test": "black", "proponent": "tab:green", "opponent": "tab:red", "self": "tab:purple"}


@dataclass
class Tile:
    """One image of a row: (H, W) or (H, W, C), its caption, and what it is (its colour)."""

    image: np.ndarray | None  # None: an empty cell
    caption: str  # lines (each drawn as text, never mathtext)
    role: str = "test"


def write_rows(path: pathlib.Path, rows: list[tuple[str, list[Tile]]], title: str) -> None:
    """One PNG at `path` (written atomically): a labelled row of tiles per (label, tiles)."""
    import matplotlib.style

    columns = max(len(tiles) for _, tiles in rows)
    with matplotlib.style.context("default"):  # a user's matplotlibrc must not change the files
        fig = new_figure(TILE_INCHES * columns + 0.6, TILE_INCHES * 1.15 * len(rows) + 0.5)
        fit = lambda text: fit_title(text, chars=max(40, 12 * columns))  # noqa: E731
        fig.suptitle(plot(title, fit), fontsize=10)
        axes = fig.subplots(len(rows), columns, squeeze=False)
        for r, (label, tiles) in enumerate(rows):
            for c in range(columns):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                tile = tiles[c] if c < len(tiles) else None
                if tile is None or tile.image is None:
                    ax.axis("off")
                    continue
                shown, _ = _normalized_input(tile.image)
                ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
                caption = "\n".join(plot(line) for line in tile.caption.split("\n"))
                ax.set_title(caption, fontsize=8, color=COLOURS.get(tile.role))
                if c == 0:
                    ax.set_ylabel(plot(label), fontsize=9)
        save_atomic(fig, path)
