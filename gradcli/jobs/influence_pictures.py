"""`influence --png DIR`: for each test sample (up to --png-limit) a PNG of the test image above
its top proponents and opponents among the training images; with --self, one PNG of the most
self-influential training images. Staged in the run's output transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradcli.engine.tracin import ShardResult, top_rows
from gradcli.errors import UsageError, param
from gradcli.io.outputs import Outputs


def image_like(shape: tuple) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 2, 3, 4))


def check_images(handle: Any) -> None:
    """--png needs one image-like input (refused before any work)."""
    shapes = [tuple(i.shape) for i in handle.inputs]
    if len(shapes) != 1 or not image_like(shapes[0]) or None in shapes[0]:
        raise UsageError(
            f"{param('png')}: draws image inputs (H, W) or (H, W, C); the model takes "
            f"{', '.join(str(s) for s in shapes)}"
        )


def _row(data: Any, index: int) -> np.ndarray:
    return data.inputs[0].read(index, index + 1)[0]


def _label(data: Any, index: int) -> str:
    """A sample's label when it is one number (a class), else nothing."""
    if len(data.targets) != 1:
        return ""
    value = np.asarray(data.targets[0].read(index, index + 1)).ravel()
    if value.size != 1:
        return ""
    v = value[0]
    return f" · y={int(v)}" if float(v).is_integer() else f" · y={float(v):.3g}"


def _tiles(data: Any, scores: np.ndarray, rows: np.ndarray, role: str) -> list:
    from gradcli.present.influence_pictures import Tile

    return [
        Tile(_row(data, int(r)), f"#{int(r)}{_label(data, int(r))}\nscore {s:.3g}", role)
        for s, r in zip(scores, rows, strict=True)
        if np.isfinite(s)
    ]


def draw(job: Any, result: ShardResult, train: Any, test: Any, outputs: Outputs) -> list[str]:
    """Write the pictures into a staged directory; the paths they will have in DIR."""
    from gradcli.present.influence_pictures import Tile, write_rows

    png = Path(job.png)
    stage = outputs.stage_dir(png)
    name = Path(job.model).name
    written = []
    if test is not None:
        for j in range(min(job.png_limit, test.n)):
            rows = [
                ("test", [Tile(_row(test, j), f"test #{j}{_label(test, j)}", "test")]),
                (
                    "proponents",
                    _tiles(
                        train, result.proponent_scores[j], result.proponent_rows[j], "proponent"
                    ),
                ),
                (
                    "opponents",
                    _tiles(train, result.opponent_scores[j], result.opponent_rows[j], "opponent"),
                ),
            ]
            rows = [r for r in rows if r[1]]
            file = f"test_{j:04d}.png"
            write_rows(stage / file, rows, f"{name}: TracIn proponents and opponents of test #{j}")
            written.append(str(png / file))
    if job.self_influence:
        scores, rows = top_rows(result.self_influence, result.rows, job.top)
        tiles = _tiles(train, scores, rows, "self")
        if tiles:
            write_rows(
                stage / "self_influence.png",
                [("self-influence", tiles)],
                f"{name}: the {len(tiles)} most self-influential training samples",
            )
            written.append(str(png / "self_influence.png"))
    return written
