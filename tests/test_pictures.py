"""Tests for the pictures: heatmap PNGs, the gradient-flow chart, and the saliency map."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pytest

from gradcli.present import pictures
from gradcli.present.flowchart import write_flow_chart
from gradcli.present.pictures import saliency_map, write_heatmaps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = pathlib.Path(__file__).resolve().parents[1]
OK_RGB = (0x1F / 255, 0x77 / 255, 0xB4 / 255)
BAD_RGB = (0xD6 / 255, 0x27 / 255, 0x28 / 255)


def read_png(path: pathlib.Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def color_mask(img: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.02) -> np.ndarray:
    return np.all(np.abs(img[..., :3] - np.asarray(rgb)) < tol, axis=-1)


def square_gradient(top: int, left: int, shape=(28, 28)) -> np.ndarray:
    g = np.zeros(shape)
    g[top : top + 5, left : left + 5] = 1.0
    return g


# saliency_map


def test_saliency_peaks_on_the_square_and_is_normalised():
    rng = np.random.default_rng(0)
    g = rng.normal(0, 1e-3, (28, 28))
    g[10:15, 3:8] = rng.uniform(0.5, 1.0, (5, 5)) * rng.choice([-1, 1], (5, 5))
    s = saliency_map(g)
    assert s.shape == (28, 28)
    assert s.min() >= 0.0 and s.max() == pytest.approx(1.0)
    r, c = np.unravel_index(np.argmax(s), s.shape)
    assert 10 <= r < 15 and 3 <= c < 8
    outside = np.ones_like(s, dtype=bool)
    outside[10:15, 3:8] = False
    assert s[~outside].min() > 10 * s[outside].max()


def test_saliency_one_outlier_does_not_wash_out_the_rest():
    g = square_gradient(10, 10)
    g[0, 0] = 1e6
    s = saliency_map(g)
    assert s[0, 0] == 1.0
    np.testing.assert_allclose(s[10:15, 10:15], 1.0)  # plain max scaling would give 1e-6


def test_saliency_takes_max_abs_over_channels():
    g = np.zeros((16, 16, 3))  # two nonzero pixels: under 1%, so scaled by the max
    g[1, 2, 0] = -2.0
    g[1, 2, 2] = 1.0
    g[3, 3, 1] = 1.0
    s = saliency_map(g)
    assert s.shape == (16, 16)
    assert s[1, 2] == 1.0
    assert s[3, 3] == pytest.approx(0.5)
    assert s[0, 0] == 0.0


def test_saliency_single_nonzero_pixel_is_not_clipped_away():
    g = np.zeros((28, 28))
    g[5, 6] = 3e-9
    s = saliency_map(g)
    assert s[5, 6] == 1.0 and s.sum() == 1.0


def test_saliency_zero_and_nonfinite_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not saliency_map(np.zeros((8, 8, 1))).any()
        assert not saliency_map(np.full((8, 8), np.nan)).any()
        g = np.zeros((8, 8))
        g[0, 0], g[1, 1], g[2, 2] = np.nan, np.inf, 0.5
        s = saliency_map(g)
    assert np.isfinite(s).all()
    assert s[0, 0] == 0.0 and s[1, 1] == 1.0 and s[2, 2] == 1.0


def test_saliency_rejects_wrong_rank():
    with pytest.raises(ValueError, match="expected a gradient"):
        saliency_map(np.zeros((2, 3, 4, 5)))


# write_heatmaps


@pytest.mark.parametrize("shape", [(2, 28, 28), (1, 28, 28, 1), (1, 16, 20, 3), (1, 12, 12, 5)])
def test_heatmaps_written_as_valid_pngs(tmp_path, shape):
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=shape), rng.normal(size=shape)
    out = tmp_path / "new" / "dir"
    paths = write_heatmaps(out, "digits", x, g, start_index=41, title="m.keras")
    assert paths == [out / f"digits_{41 + i:04d}.png" for i in range(shape[0])]
    for p in paths:
        img = read_png(p)
        assert img.shape[:2] == (300, 900)  # 9 x 3 inches at 100 dpi
    assert sorted(os.listdir(out)) == [p.name for p in paths]  # no temp files left


def test_heatmap_panel_is_bright_where_the_gradient_is(tmp_path):
    x = np.full((2, 28, 28), 0.5)
    g = np.stack([square_gradient(2, 2), square_gradient(21, 21)])
    top_left, bottom_right = (
        read_png(p)[..., :3].mean(axis=-1) for p in write_heatmaps(tmp_path, "s", x, g)
    )
    h, w = top_left.shape
    diff = top_left - bottom_right
    for panel in (slice(w // 3, 2 * w // 3), slice(2 * w // 3, w)):  # heatmap, overlay
        upper_left = diff[: h // 2, panel][:, : (panel.stop - panel.start) // 2]
        lower_right = diff[h // 2 :, panel][:, (panel.stop - panel.start) // 2 :]
        assert upper_left.sum() > 20 and lower_right.sum() < -20
    # the input panel does not depend on the gradient
    assert np.abs(diff[:, : w // 3 - 5]).max() == 0.0


def test_heatmaps_survive_nan_inf_and_zero_gradients(tmp_path):
    x = np.random.default_rng(2).normal(size=(3, 10, 10, 1))
    g = np.zeros_like(x)
    g[0] = np.nan
    g[1, 2, 2, 0] = np.inf
    x[2, 0, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_heatmaps(tmp_path, "bad", x, g)
    assert [read_png(p).shape[:2] for p in paths] == [(300, 900)] * 3


def test_heatmaps_reject_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="shapes differ"):
        write_heatmaps(tmp_path, "s", np.zeros((1, 8, 8)), np.zeros((1, 8, 9)))
    with pytest.raises(ValueError, match="expected images"):
        write_heatmaps(tmp_path, "s", np.zeros((8, 8)), np.zeros((8, 8)))


def test_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "s_0000.png"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(pictures.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_heatmaps(tmp_path, "s", np.zeros((1, 8, 8)), np.ones((1, 8, 8)))
    with pytest.raises(OSError, match="disk full"):
        write_flow_chart(tmp_path / "flow.png", ["a"], [1.0])
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["s_0000.png"]


# write_flow_chart


def bar_runs(img: np.ndarray, rgb) -> list[tuple[int, int]]:
    """(first row, right-most column) of each vertical run of rows holding `rgb` pixels."""
    mask = color_mask(img, rgb)
    rows = np.flatnonzero(mask.any(axis=1))
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return [(int(r[0]), int(np.flatnonzero(mask[r].any(axis=0)).max())) for r in runs if r.size]


def test_flow_chart_bars_in_model_order_with_log_length(tmp_path):
    img = read_png(write_flow_chart(tmp_path / "a.png", ["first", "second"], [1e-1, 1e-5]))
    (top_row, top_end), (low_row, low_end) = bar_runs(img, OK_RGB)[:2]
    assert top_row < low_row and top_end > low_end + 100
    img = read_png(write_flow_chart(tmp_path / "b.png", ["first", "second"], [1e-5, 1e-1]))
    (_, top_end), (_, low_end) = bar_runs(img, OK_RGB)[:2]
    assert top_end + 100 < low_end
    assert not color_mask(img, BAD_RGB).any()  # nothing flagged, nothing red


def test_flow_chart_with_zero_nan_and_disconnected_layers(tmp_path):
    layers = ["conv1", "conv2", "conv3", "dense1", "dense2", "out"]
    norms = [0.5, 0.0, math.nan, None, 3e4, math.inf]
    statuses = ["ok", "zero", "nonfinite", "disconnected", "too-large", "ok"]
    path = tmp_path / "charts" / "flow.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_flow_chart(path, layers, norms, statuses, title="m.keras") == path
    img = read_png(path)
    assert img.shape[1] == 800
    red = color_mask(img, BAD_RGB)
    assert red.sum(axis=1).max() > 100  # the too-large layer is a long red bar
    assert bar_runs(img, BAD_RGB)[0][0] > bar_runs(img, OK_RGB)[0][0]  # below conv1's bar
    assert len(bar_runs(img, OK_RGB)) == 2  # conv1's bar and the legend: "out" (inf) is no bar
    assert leftovers(path.parent) == []


def test_flow_chart_derives_statuses_and_grows_with_depth(tmp_path):
    small = read_png(write_flow_chart(tmp_path / "s.png", ["a", "b"], [1.0, 0.0]))
    names = [f"block{i // 4}/dense_{i}/kernel" for i in range(25)]
    norms = list(np.logspace(0, -12, 25))
    big = read_png(write_flow_chart(tmp_path / "b.png", names, norms))
    assert big.shape[0] > 2 * small.shape[0]
    assert color_mask(small, BAD_RGB).any()  # the zero norm is flagged without a status


def test_flow_chart_all_layers_without_a_bar(tmp_path):
    path = write_flow_chart(tmp_path / "f.png", ["a", "b"], [math.nan, 0.0], None)
    assert read_png(path).shape[:2] == (300, 800)


def test_flow_chart_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="2 layers but 1 norms"):
        write_flow_chart(tmp_path / "f.png", ["a", "b"], [1.0])
    with pytest.raises(ValueError, match="statuses"):
        write_flow_chart(tmp_path / "f.png", ["a"], [1.0], ["ok", "ok"])
    with pytest.raises(ValueError, match="no layers"):
        write_flow_chart(tmp_path / "f.png", [], [])
    with pytest.raises(ValueError, match="negative"):
        write_flow_chart(tmp_path / "f.png", ["a"], [-1.0])
    assert not (tmp_path / "f.png").exists()


# imports


def test_matplotlib_is_lazy_and_pyplot_and_tensorflow_are_never_imported(tmp_path):
    code = f"""
import sys
import numpy as np
import gradcli.present.pictures as p
assert "matplotlib" not in sys.modules, "matplotlib imported at module level"
p.write_heatmaps({str(tmp_path)!r}, "s", np.zeros((1, 8, 8)), np.ones((1, 8, 8)))
import gradcli.present.flowchart as fc
fc.write_flow_chart({str(tmp_path / "f.png")!r}, ["a"], [1.0])
bad = [m for m in ("matplotlib.pyplot", "tensorflow", "keras") if m in sys.modules]
assert not bad, bad
"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
