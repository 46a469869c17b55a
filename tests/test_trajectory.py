"""The trajectory over a directory of checkpoints, saved during a real short training run:
each layer's gradient norm and |g|/|θ| per checkpoint, against the per-checkpoint JSON
figures and a plain tf.GradientTape on each checkpoint; the gate verdicts per checkpoint; the
same figures drawn as SVG (the `--html` page) and as PNG (`wrt-weights DIR --png`)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from report_runs import json_run, render, training_checkpoints

from gradcli.present.svgcharts import (
    PANEL_GAP,
    PANEL_HEIGHT,
    STRIP,
    LogAxis,
    trajectory_chart,
)
from gradcli.present.trajectory import (
    PALETTE,
    VERDICT_OK,
    VERDICT_TRIPPED,
    checkpoint_labels,
    trajectory,
)

LAYERS = ["h1", "h2", "out"]  # the Dropout between them has no variables
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def training(tmp_path_factory, keras):
    """Checkpoints of a real run, wrt-weights over them without (a chart per model and the
    trajectory in a directory) and with a norm bound that the first checkpoints trip and the
    last ones do not (the trajectory alone, and the HTML page)."""
    root = tmp_path_factory.mktemp("training")
    paths = training_checkpoints(keras, root)
    args = ("wrt-weights", paths["dir"], paths["x"], "--target", paths["y"], "--json")
    paths["charts"] = root / "charts"
    code, free, err = json_run(*args, "--png", paths["charts"])
    assert code == 0, err
    largest = [max(t["l2"] for t in r["tensors"]) for r in free]
    bound = float(np.median(largest))
    paths["png"], paths["html"] = root / "trajectory-gated.png", root / "run.html"
    code, gated, err = json_run(
        *args, "--max-norm", repr(bound), "--png", paths["png"], "--html", paths["html"]
    )
    assert code == 1, err
    return paths, free, gated


def test_checkpoints_in_directory_order_with_their_verdicts(training):
    paths, _, gated = training
    t = trajectory(gated)
    files = sorted(p.name for p in paths["dir"].iterdir())
    assert files == ["epoch_00.keras", "epoch_01.keras", "epoch_02.keras", "epoch_03.keras"]
    assert [c.label for c in t.checkpoints] == files
    verdicts = [c.verdict for c in t.checkpoints]
    assert verdicts == [VERDICT_TRIPPED if r["gates"] else VERDICT_OK for r in gated]
    assert VERDICT_TRIPPED in verdicts and VERDICT_OK in verdicts
    assert [c.gates for c in t.checkpoints] == [tuple(r["gates"]) for r in gated]


def test_norms_and_ratios_are_the_checkpoint_figures(training):
    """Each point is the layer's figure in that checkpoint's JSON line: its summary norm, and
    ‖g‖/‖θ‖ over the layer's variables' rows."""
    _, free, _ = training
    t = trajectory(free)
    assert t.per_layer and [s.name for s in t.series] == LAYERS
    for i, rec in enumerate(free):
        summary = {s["layer"]: s["l2"] for s in rec["layer_summary"]}
        rows = {r["name"]: r for r in rec["tensors"]}
        for s in t.series:
            assert s.norms[i] == summary[s.name]
            own = [rows[f"{s.name}/kernel"], rows[f"{s.name}/bias"]]
            g = math.sqrt(sum(r["l2"] ** 2 for r in own))
            theta = math.sqrt(sum(r["param_l2"] ** 2 for r in own))
            assert s.ratios[i] == pytest.approx(g / theta, rel=1e-12)


def test_norms_and_ratios_against_a_plain_tape(training, tf, keras):
    """The same figures from each checkpoint file by hand: the mean per-sample MSE over the
    input, one GradientTape, norms per layer over its trainable variables."""
    paths, free, _ = training
    t = trajectory(free)
    x, y = np.load(paths["x"]), np.load(paths["y"])
    for i, c in enumerate(t.checkpoints):
        model = keras.saving.load_model(paths["dir"] / c.label)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(y - model(x, training=False)))
        layers = [model.get_layer(name) for name in LAYERS]
        grads = tape.gradient(loss, [v for layer in layers for v in layer.trainable_weights])
        k = 0
        for layer, s in zip(layers, t.series, strict=True):
            count = len(layer.trainable_weights)
            g = math.sqrt(sum(float(np.sum(np.square(v))) for v in grads[k : k + count]))
            theta = math.sqrt(
                sum(float(np.sum(np.square(w.numpy()))) for w in layer.trainable_weights)
            )
            k += count
            assert s.norms[i] == pytest.approx(g, rel=1e-4)
            assert s.ratios[i] == pytest.approx(g / theta, rel=1e-4)
    # training moved the gradients: the figures are not the same at every checkpoint
    assert len({round(n, 6) for n in t.series[0].norms}) == len(t.checkpoints)


def test_the_svg_points_are_the_figures(training):
    """Every line of the chart (norms panel, then |g|/|θ| panel) passes through the figures,
    read back from its pixel coordinates through the chart's log axis."""
    _, _, gated = training
    t = trajectory(gated)
    svg = ET.fromstring(trajectory_chart(t))
    lines = svg.findall(f".//{SVG}polyline")
    assert len(lines) == 2 * len(t.series)
    height = PANEL_HEIGHT
    tops = (STRIP, STRIP + PANEL_HEIGHT + PANEL_GAP)
    for panel, attr in enumerate(("norms", "ratios")):
        values = [v for s in t.series for v in getattr(s, attr)]
        axis = LogAxis(values, tops[panel] + height, tops[panel])
        for s, line in zip(t.series, lines[panel * len(t.series) :], strict=False):
            ys = [float(p.split(",")[1]) for p in line.get("points").split()]
            frac = [(axis.start - y) / (axis.start - axis.end) for y in ys]
            back = [10 ** (axis.lo + f * (axis.hi - axis.lo)) for f in frac]
            assert back == pytest.approx(list(getattr(s, attr)), rel=0.01)
            assert line.find(f"{SVG}title").text == s.name
    verdicts = svg.findall(f".//{SVG}g[@class='verdict']")
    assert len(verdicts) == len(t.checkpoints)
    for g, c in zip(verdicts, t.checkpoints, strict=True):
        shaded = any(r.get("fill-opacity") for r in g.findall(f"{SVG}rect"))
        assert shaded == (c.verdict != VERDICT_OK)
        assert c.label in g.find(f"{SVG}title").text


def test_the_page_opens_with_the_trajectory(training):
    paths, _, gated = training
    page = paths["html"].read_text()
    assert page.encode() == render(gated)  # --html wrote the page of the records --json gave
    assert page.index("<h2>trajectory</h2>") < page.index("<h2>models</h2>")
    assert page.count("<section id=") == len(gated)
    assert page.count('<g class="verdict">') == len(gated)


def test_trajectory_png(training):
    """`--png FILE.png` of a directory run is the trajectory alone, each layer's line in its
    colour; `--png DIR` keeps a flow chart per model and adds DIR/trajectory.png."""
    import matplotlib.image

    paths, free, gated = training
    t = trajectory(gated)
    pixels = matplotlib.image.imread(paths["png"])[..., :3]
    assert pixels.shape[1] == 900 and pixels.shape[0] > 600
    for k in range(len(t.series)):  # each layer's line is drawn in its colour
        rgb = np.array([int(PALETTE[k][i : i + 2], 16) / 255 for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=-1) < 0.03).sum() > 100
    assert all(r["png"] is None for r in gated)
    charts = sorted(p.name for p in paths["charts"].iterdir())
    assert charts == ["epoch_00.png", "epoch_01.png", "epoch_02.png", "epoch_03.png"] + [
        "trajectory.png"
    ]
    assert [r["png"] for r in free] == [str(paths["charts"] / c) for c in charts[:-1]]


def test_checkpoint_labels_are_the_paths_below_the_shared_directory():
    assert checkpoint_labels(["r/ck/e1.keras", "r/ck/sub/e2.keras"]) == ["e1.keras", "sub/e2.keras"]
    assert checkpoint_labels(["d/a\\b.keras", "d/c.keras"]) == ["a\\b.keras", "c.keras"]  # as named
    assert checkpoint_labels(["x.keras", "y.keras"]) == ["x.keras", "y.keras"]


def test_json_lines_carry_each_layer_parameter_norm(training, keras):
    """What the chart needs is in the --json lines: each layer_summary entry's param_l2 is
    ‖θ‖ over the layer's trainable variables, read from the checkpoint file."""
    paths, free, _ = training
    for rec in free:
        model = keras.saving.load_model(rec["model"])
        for entry in rec["layer_summary"]:
            weights = model.get_layer(entry["layer"]).trainable_weights
            theta = math.sqrt(sum(float(np.sum(np.square(w.numpy()))) for w in weights))
            assert entry["param_l2"] == pytest.approx(theta, rel=1e-6)


def test_other_commands_trace_each_tensor(training):
    """A directory run of wrt-input: one line per input, its gradient norm per checkpoint."""
    paths, _, _ = training
    code, records, err = json_run("wrt-input", paths["dir"], paths["x"], "--json")
    assert code == 0, err
    t = trajectory(records)
    assert not t.per_layer and not t.has_ratios
    assert [s.name for s in t.series] == ["features"]
    assert list(t.series[0].norms) == [r["tensors"][0]["l2"] for r in records]


def test_a_model_named_like_the_trajectory_chart_is_refused_before_work(cli, models, tmp_path):
    """`--png DIR` writes DIR/trajectory.png beside the models' charts: a model whose chart
    would be that file is refused (exit 3) before anything is computed or written."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("a.keras", "trajectory.keras"):
        (zoo / name).write_bytes(models["linear"].read_bytes())
    charts = tmp_path / "charts"
    result = cli("wrt-weights", zoo, models["dir"] / "x5.npy", "--png", charts)
    assert result.code == 3 and result.err.count("\n") == 1
    assert "trajectory.png" in result.err and "give each output its own path" in result.err
    assert not charts.exists()
    result = cli("wrt-weights", zoo, models["dir"] / "x5.npy", "--png", tmp_path / "t.png")
    assert result.code == 0, result.err
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG" and not charts.exists()
