"""Pictures that say what they show: per method, the panel title names its quantity and the
colormap fits its sign; titles fit; maps at float noise are drawn blank, said to be."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLES
from gradcli.methods import METHODS
from gradcli.present import pictures

CNN = SAMPLES / "shapes_cnn.keras"
X = SAMPLES / "shapes_x.npy"

# method -> (the map panel's title starts with, colormap, signed)
EXPECTED = {
    "vanilla": ("|gradient| (max ", "inferno", False),
    "gradxinput": ("gradient × input (max ", "RdBu_r", True),
    "smoothgrad": ("|SmoothGrad| (max ", "inferno", False),
    "squaregrad": ("SquareGrad (max ", "inferno", False),
    "vargrad": ("VarGrad (max ", "inferno", False),
    "integrated": ("Integrated Gradients (max ", "RdBu_r", True),
    "gradcam": ("Grad-CAM (max ", "inferno", False),
    "gradcam++": ("Grad-CAM++ (max ", "inferno", False),
    "layercam": ("Layer-CAM (max ", "inferno", False),
}


@pytest.fixture
def figures(monkeypatch):
    """Every figure gradcli saves in this process, with its path."""
    saved = []
    original = pictures.save_atomic

    def keep(fig, path):
        saved.append(fig)
        original(fig, path)

    monkeypatch.setattr(pictures, "save_atomic", keep)
    return saved


def panels(fig):
    """(suptitle, map panel title, map colormap name, map colour limits)."""
    ax_map = fig.axes[1]
    image = ax_map.images[0]
    return fig._suptitle.get_text(), ax_map.get_title(), image.get_cmap().name, image.get_clim()


def test_every_method_is_covered():
    assert sorted(EXPECTED) == sorted(METHODS)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_title_and_colormap_per_method(cli, figures, tmp_path, method):
    r = cli("wrt-input", CNN, X, "--class", "pred", "-m", method, "--samples", "4",
            "--steps", "16", "--png", tmp_path / "maps", "--png-limit", "2")  # fmt: skip
    assert r.code == 0, r.err
    assert len(figures) == 2
    title, label, cmap, clim = panels(figures[0])
    start, want_cmap, signed = EXPECTED[method]
    quantity = METHODS[method].quantity
    assert label.startswith(start)
    assert cmap == want_cmap and clim == ((-1.0, 1.0) if signed else (0.0, 1.0))
    where = "on layer pool2, over image" if METHODS[method].needs_layer else "w.r.t. image"
    flat = " ".join(title.split())
    assert flat.startswith(f"shapes_cnn.keras: {quantity} of predicted class of logits")
    assert where in flat and title.endswith("\xa0-\xa0sample\xa00")  # kept on one line
    assert all(len(line) <= pictures.TITLE_CHARS for line in title.split("\n"))


@pytest.mark.parametrize(
    "method, style, cmap", [("vanilla", "signed", "RdBu_r"), ("integrated", "magnitude", "inferno")]
)
def test_png_style_overrides_the_default(cli, figures, tmp_path, method, style, cmap):
    r = cli("wrt-input", CNN, X, "--class", "pred", "-m", method, "--steps", "8",
            "--png", tmp_path / "maps", "--png-limit", "1", "--png-style", style)  # fmt: skip
    assert r.code == 0, r.err
    _, label, got, _ = panels(figures[0])
    assert got == cmap
    assert label.startswith("gradient (" if method == "vanilla" else "|Integrated Gradients| (")


def test_signed_map_is_red_where_positive_white_at_zero_blue_where_negative():
    g = np.zeros((20, 20))
    g[2:8, 2:8], g[12:18, 12:18] = 1.0, -1.0
    style = pictures.MapStyle("Integrated Gradients", signed=True)
    fig = pictures._heatmap_figure(np.zeros((20, 20)), g, 0, None, style, False)
    image = fig.axes[1].images[0]
    rgba = image.to_rgba(image.get_array())[..., :3]
    red, blue, white = rgba[4, 4], rgba[14, 14], rgba[10, 0]
    assert red[0] > 0.3 and red[0] > 2 * red[2]  # RdBu_r at +1: (0.40, 0, 0.12)
    assert blue[2] > 0.3 and blue[2] > 2 * blue[0]  # at -1: (0.02, 0.19, 0.38)
    assert white.min() > 0.9  # zero is white


def test_float_noise_is_drawn_blank_and_said(tmp_path):
    g = np.zeros((2, 10, 10))
    g[0, 3, 3] = 1.3e-13
    g[1, 5, 5] = 2.0
    fig = pictures._heatmap_figure(np.zeros((10, 10)), g[0], 0, "t", pictures.MapStyle("g"), True)
    assert fig.axes[1].get_title() == "|g| (all below 1e-12: noise, not drawn)"
    assert not fig.axes[1].images[0].get_array().any()
    # without the vanishing verdict, a sample a million times below the others is near zero
    assert pictures.near_zero(g, faint=False) == [True, False]
    cams = pictures._cam_image_figure(np.zeros((10, 10)), g[0], 0, None, "Grad-CAM", True)
    assert cams.axes[1].get_title() == "Grad-CAM (all below 1e-12: noise, not drawn)"


def test_a_vanishing_run_draws_blank_maps(cli, figures, tmp_path, keras):
    base = keras.saving.load_model(CNN)
    w, b = base.get_layer("logits").get_weights()
    x = keras.Input((28, 28, 1), name="image")
    h = x
    for layer in base.layers[1:-1]:
        h = layer(h)
    dense = keras.layers.Dense(3, activation="softmax", name="probs")
    dense.build((None, 32))
    dense.set_weights([w * 10, b * 10])
    keras.Model(x, dense(h)).save(tmp_path / "saturated.keras")
    r = cli("wrt-input", tmp_path / "saturated.keras", X, "--class", "pred", "-m", "gradcam",
            "--png", tmp_path / "maps", "--png-limit", "1")  # fmt: skip
    assert r.code == 0, r.err
    _, label, _, _ = panels(figures[0])
    assert label.startswith("Grad-CAM (all below 1e-") and label.endswith(": noise, not drawn)")


def test_long_titles_wrap_then_shorten_in_the_middle():
    text = "shapes_cnn.keras: Integrated Gradients of per-sample loss: " + "word " * 20
    wrapped = pictures.fit_title(text)
    assert wrapped.split("\n")[0].startswith("shapes_cnn.keras") and "\u2026" not in wrapped
    assert all(len(line) <= pictures.TITLE_CHARS for line in wrapped.split("\n"))
    long = "model.keras: " + "x" * 400 + "\xa0-\xa0sample\xa03"
    fitted = pictures.fit_title(long)
    assert len(fitted.split("\n")) <= 3 and "\u2026" in fitted and fitted.endswith("sample\xa03")
