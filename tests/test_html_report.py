"""The HTML report (`--html FILE`, gradcli/present/html.py) on records of real runs: every
record kind renders its rows, a kind the page does not know renders generically, the page
loads nothing and its policy admits only its own style and script, the file is written with
the run's other outputs (all or nothing), pictures are inlined within the page's size budget.

The page is checked here by parsing it (stdlib html.parser); test_html_browser.py opens
pages in a real headless Chromium (and holds the hostile-names tests, which share its runs).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from report_runs import deep_checkpoints, json_run, noisy_pictures_model, render

from gradcli.present import thumbnails
from gradcli.present.escape import printable
from gradcli.present.html import render_file
from gradcli.present.records import Record

BUDGET = 2_000_000  # bytes: a page with 16 pictures, or over 100 layers


class Page(HTMLParser):
    """The elements of a page, its tables' body rows, and the text of each element kind."""

    def __init__(self, data: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []  # per table: the body rows' cell texts
        self.text: list[str] = []
        self._in: list[str] = []
        self._raw: dict[str, str] = {}
        self.feed(data.decode("utf-8"))

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.rows.append([])
        elif tag == "tr" and "tbody" in self._in:
            self.rows[-1].append("")
        if tag not in ("meta", "img", "br", "input", "link"):
            self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag) :]

    def handle_data(self, data):
        if self._in and self._in[-1] in ("style", "script"):
            self._raw[self._in[-1]] = self._raw.get(self._in[-1], "") + data
        self.text.append(data)
        if "tbody" in self._in and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data

    def raw(self, tag: str) -> str:
        return self._raw.get(tag, "")

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)


def page_of(records: list[dict], **kw) -> tuple[bytes, Page]:
    data = render(records, **kw)
    return data, Page(data)


def _records(cli, *args, codes=(0, 1)) -> list[dict]:
    import json

    result = cli(*args, "--json")
    assert result.code in codes, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# ------------------------------------------------------------------ every record kind

KINDS = {
    "info": ("info", "{linear}"),
    "wrt-input --top": ("wrt-input", "{linear}", "{dir}/x5.npy", "--top", "2"),
    "integrated": ("wrt-input", "{cnn}", "{dir}/img.npy", "--class", "1", "-m", "integrated"),
    "gradcam --png": (
        "wrt-input", "{cnn}", "{dir}/img.npy", "--class", "0", "-m", "gradcam", "--png", "{tmp}/p",
    ),
    "wrt-layer": ("wrt-layer", "{nested}", "{dir}/x5.npy", "--layer", "block/inner/deep"),
    "per-sample": (
        "wrt-weights", "{seqni}", "{dir}/x5.npy", "--target", "{dir}/labels4.npy",
        "--per-sample", "--top", "2", "--max-norm", "0.3",
    ),
    "flow --png": (
        "wrt-weights", "{legacy_h5}", "{dir}/x5.npy", "--target", "{dir}/y1.npy", "--png",
        "{tmp}/flow.png",
    ),
    "jacobian": ("jacobian", "{two_io}", "{dir}/two_x.npz", "--output", "reg"),
    "check": ("check", "{linear}", "{dir}/x5.npy", "--target", "{dir}/y3.npy"),
}  # fmt: skip


@pytest.fixture(scope="module")
def kinds(models, tmp_path_factory):
    """One real run of each kind of record (shared by the tests of this module)."""
    tmp = tmp_path_factory.mktemp("kinds")
    found = {}
    for kind, args in KINDS.items():
        code, records, err = json_run(*[a.format(tmp=tmp, **models) for a in args], "--json")
        assert code in (0, 1) and len(records) == 1, err
        found[kind] = records[0]
    return found


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_record_kind_renders_its_rows(kinds, kind, tmp_path):
    """Every kind of record becomes a page whose first sortable table has a row per tensor
    (info: per layer), each named as the record names it; tripped rows are marked."""
    rec = kinds[kind]
    data, page = page_of([rec])
    expected = rec.get("layers") if rec["command"] == "info" else rec["tensors"]
    table = page.rows[1] if rec["command"] == "info" else page.rows[0]  # info: io table first
    assert len(table) == len(expected)
    for row, item in zip(table, expected, strict=True):
        assert printable(item["name"]) in row
    tripped = [t for t in rec.get("tensors") or [] if t.get("tripped")]
    marked = [attrs for tag, attrs in page.tags if tag == "tr" and attrs.get("class") == "tripped"]
    assert len(marked) == len(tripped)
    text = "".join(page.text)
    if kind == "per-sample":
        assert tripped, "--max-norm 0.3 trips the larger tensors"
        assert "gates tripped: too-large" in text
        assert page.count("svg") == 2  # the gradient flow and the per-sample spread
        assert "per-sample spread" in text
    pictures = rec.get("png") if isinstance(rec.get("png"), list) else []
    assert page.count("img") == len(pictures)
    if kind == "flow --png":  # the page draws its own chart (SVG); the PNG is named
        assert page.count("svg") == 1
        assert rec["png"] in text


def test_the_spread_chart_draws_the_per_sample_figures(kinds):
    """Each layer's bar runs from its median per-sample norm to its max, with ticks at p90 and
    p99 and a diamond at ‖G‖, read back through the chart's log axis."""
    import xml.etree.ElementTree as ET

    from gradcli.present.svgfigures import LABEL_WIDTH, spread_chart
    from gradcli.present.svgkit import WIDTH, LogAxis

    ps = kinds["per-sample"]["per_sample"]
    rows = [*ps["layers"], ps["model"]]
    svg = ET.fromstring(spread_chart(ps))
    ns = "{http://www.w3.org/2000/svg}"
    values = [
        v
        for r in rows
        for v in (*(r["sample_norm"][k] for k in ("median", "p90", "p99", "max")), r["g_norm"])
    ]
    axis = LogAxis(values, LABEL_WIDTH + 8, WIDTH - 110)

    def back(x: float) -> float:  # the figure at x on the chart's log axis
        return 10 ** (axis.lo + (x - axis.start) / (axis.end - axis.start) * (axis.hi - axis.lo))

    bars = [g for g in svg.findall(f"{ns}g") if g.find(f"{ns}rect") is not None]
    assert len(bars) == len(rows)
    for g, r in zip(bars, rows, strict=True):
        rect = g.find(f"{ns}rect")
        x, w = float(rect.get("x")), float(rect.get("width"))
        dist = r["sample_norm"]
        assert back(x) == pytest.approx(dist["median"], rel=0.01)
        assert back(x + w) == pytest.approx(dist["max"], rel=0.01)
        ticks = sorted(back(float(line.get("x1"))) for line in g.findall(f"{ns}line"))
        assert ticks == pytest.approx(sorted([dist["p90"], dist["p99"]]), rel=0.01)
        diamond = g.find(f"{ns}path[@class='point']").get("d")
        assert back(float(diamond[1:].split()[0])) == pytest.approx(r["g_norm"], rel=0.01)


def test_a_kind_the_page_does_not_know_renders_generically():
    """A record of a kind added after the report (its figures unknown to it): header, gates,
    a table of its tensors with every scalar column, its other lists of rows as tables, its
    scalar figures as facts; names from files escaped."""
    data = {
        "version": "0",
        "command": "new-command",
        "model": "m<odel>.keras",
        "n": 4,
        "objective": "mean loss",
        "gates": ["too-large"],
        "exit_code": 1,
        "trace": 12.5,
        "settings": {"iterations": 20, "seed": 0},
        "eigenvalues": [3.0, 2.0, 1.0],
        "tensors": [
            {"name": "<b>d</b>/kernel", "shape": [3, 2], "status": "too-large", "tripped": True,
             "top_eigenvalue": 3.0, "trace": 7.5, "density": [1, 2]},
            {"name": "d/bias", "shape": [2], "status": "ok", "tripped": False, "trace": 5.0},
        ],
        "influence": [{"train_index": 7, "score": -0.5, "label": "<i>cat</i>"}],
        "self_influence": {"median": 0.25, "top": [{"row": 3, "score": 2.5}, {"row": 9}]},
        "test": [{"index": 0, "proponents": [{"row": 3, "score": 0.5}, {"row": "<b>9</b>"}]}],
    }  # fmt: skip
    page_bytes = render_file([Record.from_json(data, kind="novel")])
    page = Page(page_bytes)
    text = "".join(page.text)
    assert "new-command" in text and "m<odel>.keras" in text and "<b>" not in page_bytes.decode()
    assert "gates tripped: too-large" in text
    for fact in ("trace", "12.5", "settings.iterations", "20", "eigenvalues", "[3, 2, 1]"):
        assert fact in text
    tensors, influence, top, tests = page.rows
    assert len(tensors) == 2 and "<b>d</b>/kernel" in tensors[0] and "too-large" in tensors[0]
    assert "7.5" in tensors[0] and "[1, 2]" in tensors[0] and "5" in tensors[1]
    heads = [a for t, a in page.tags if t == "th"]
    # #, name, shape, top_eigenvalue, trace, density, status; #, 3 columns; #, 2; #, 2
    assert len(heads) == 7 + 4 + 3 + 3
    assert influence == ["07-0.5<i>cat</i>"]
    assert "self_influence.median" in text and "self_influence.top" in text
    assert top == ["032.5", "19-"]  # a list of rows within a dict is a table of its own
    assert tests == ["00row 3, score 0.5; row <b>9</b>"]  # rows within a row: its cell's text
    assert page.count("tr") - 4 == 6 and page.count("b") == 0


def test_a_kind_the_page_does_not_know_shows_its_pictures(kinds):
    """The pictures a record of an unknown kind names are inlined like a gradient record's:
    a list of PNGs, or one PNG chart; a directory is only named."""
    pictures = kinds["gradcam --png"]["png"]
    base = {"version": "0", "command": "new-command", "model": "m.keras", "tensors": []}

    def images(png: object) -> int:
        rec = Record.from_json({**base, "png": png}, kind="novel")
        return Page(render_file([rec])).count("img")

    assert images(pictures[:2]) == 2
    assert images(pictures[0]) == 1
    assert images(str(Path(pictures[0]).parent)) == 0


def test_html_is_written_with_the_run_outputs(cli, models, tmp_path):
    """`--html` through the CLI: the page is committed with the run's pictures and arrays,
    and reads the pictures from where they are staged before that; `diff` and `--against`
    write theirs too."""
    report, png, out = tmp_path / "r.html", tmp_path / "cam", tmp_path / "g.npz"
    result = cli(
        "wrt-input", models["cnn"], models["dir"] / "img.npy", "--class", "0", "-m", "gradcam",
        "--png", png, "-o", out, "--html", report,
    )  # fmt: skip
    assert result.code == 0, result.err
    page = Page(report.read_bytes())
    shown = [base64.b64decode(a["src"].split(",", 1)[1]) for t, a in page.tags if t == "img"]
    assert shown == [p.read_bytes() for p in sorted(png.iterdir())]  # small: inlined as they are
    assert str(out) in "".join(page.text)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, x=np.arange(6.0), y=np.ones(3))
    np.savez(b, x=np.arange(6.0) + 1, y=np.ones(3))
    result = cli("diff", a, b, "--min-cosine", "0.999", "--html", tmp_path / "diff.html")
    assert result.code == 1
    page = Page((tmp_path / "diff.html").read_bytes())
    assert [r[:2] for r in page.rows[0]] == ["0x", "1y"] and page.count("svg") == 1
    assert "B (the reference)" in page.text
    x = models["dir"] / "x5.npy"
    result = cli("wrt-input", models["linear"], x, "--against", models["linear_export"],
                 "--html", tmp_path / "against.html")  # fmt: skip
    assert result.code == 0, result.err
    page = Page((tmp_path / "against.html").read_bytes())
    assert f"gradcli wrt-input --against: {models['linear']}" in page.text
    assert len(page.rows[0]) == 1 and "the two runs" in page.text


def test_an_embedding_table_says_how_many_rows_it_touched(cli, keras, tmp_path):
    """...and a run that fails writes no page (nor any other output)."""
    ids = keras.Input((5,), dtype="int32", name="ids")
    emb = keras.layers.Embedding(20, 3, name="emb")(ids)
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten()(emb))
    keras.Model(ids, out).save(tmp_path / "text.keras")
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3, 2, 1], [4, 4, 4, 1, 2]], np.int32))
    (rec,) = _records(cli, "wrt-weights", tmp_path / "text.keras", tmp_path / "ids.npy")
    _, page = page_of([rec])
    assert "emb/embeddings" in "".join(page.text)
    assert ": sparse gradient, 4 of 20 rows touched (the others are zero)" in "".join(page.text)
    before = sorted(tmp_path.iterdir())
    result = cli("wrt-input", tmp_path / "text.keras", tmp_path / "ids.npy", "--html",
                 tmp_path / "no.html", "-o", tmp_path / "no.npz")  # fmt: skip
    assert result.code == 4 and result.err.startswith("error: ")
    assert sorted(tmp_path.iterdir()) == before


def test_policy_admits_only_the_page_own_style_and_script(kinds):
    data, page = page_of([kinds["per-sample"]])
    policy = next(
        a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["img-src"] == "data:"
    assert directives["style-src"] == f"'{_sha(page.raw('style'))}'"
    assert directives["script-src"] == f"'{_sha(page.raw('script'))}'"
    assert "unsafe" not in policy
    assert page.count("script") == 1 and page.count("style") == 1
    # nothing else the policy would refuse or that loads from elsewhere
    for tag, attrs in page.tags:
        assert "style" not in attrs and not any(k.startswith("on") for k in attrs), tag
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:image/", "#")), attrs[key]


# ------------------------------------------------------------------ pictures, size budget


def test_pictures_that_cannot_be_read_are_named_not_inlined(kinds, tmp_path):
    """Pictures are read from where `locate` says they are (staged, before the commit); one
    that is not a PNG or is gone is named on the page, not inlined."""
    rec = kinds["gradcam --png"]
    pictures = rec["png"]
    staged = tmp_path / "staged"
    shutil.copytree(Path(pictures[0]).parent, staged)
    (staged / Path(pictures[0]).name).write_bytes(b"<svg onload=alert(1)>")  # not a PNG
    (staged / Path(pictures[1]).name).unlink()
    _, page = page_of([rec], locate=lambda p: staged / Path(p).name)
    text = "".join(page.text)
    assert "not a PNG file" in text and "cannot be read" in text
    assert page.count("img") == len(pictures) - 2
    path = Path(pictures[2])  # a picture that fits is inlined byte for byte
    thumb = thumbnails.thumbnail(path)
    assert base64.b64decode(thumb.uri.split(",", 1)[1]) == path.read_bytes()
    assert (thumb.width, thumb.height) == thumbnails.png_size(path.read_bytes()[:24])


def test_downscale_is_the_area_average():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(size=(30, 90, 3))
    half = thumbnails.downscale(pixels, 45)
    assert np.allclose(half, pixels.reshape(15, 2, 45, 2, 3).mean(axis=(1, 3)), atol=1e-12)
    third = thumbnails.downscale(pixels, 60)  # 1.5 source pixels per pixel
    assert third.shape == (20, 60, 3)
    assert np.allclose(third.mean(axis=(0, 1)), pixels.mean(axis=(0, 1)), atol=1e-12)
    # transparent pixels give no colour: red next to transparent blue stays red
    rgba = np.zeros((2, 4, 4))
    rgba[:, :2] = [1.0, 0.0, 0.0, 1.0]
    rgba[:, 2:] = [0.0, 0.0, 1.0, 0.0]
    (left, right) = thumbnails.downscale(rgba, 2)[0]
    assert np.allclose(left, [1, 0, 0, 1]) and right[3] == 0.0


def test_page_size_budget(tmp_path_factory, keras):
    """16 pictures of noise (the worst to compress: 900x300 PNGs of about 480 KB each) on one
    page, a directory of two 100-layer models (trajectory, flow charts, tables) on another:
    the two pages together within 2 MB. The second model's record is the first one's under
    another name with its norms halved (as large a page as a second run's, seconds less)."""
    root = tmp_path_factory.mktemp("budget")
    noisy = noisy_pictures_model(keras, root)
    deep = deep_checkpoints(keras, root)
    code, pictures, err = json_run(
        "wrt-input", noisy["model"], noisy["x"], "--class", "0", "--png", root / "p", "--json"
    )
    assert code == 0, err
    code, layers, err = json_run(
        "wrt-weights", deep["dir"], deep["x"], "--target", deep["y"], "--json"
    )
    assert code == 0, err
    later = copy.deepcopy(layers[0])
    later["model"] = str(Path(later["model"]).with_name("step_1.keras"))
    for row in later["layer_summary"] + later["tensors"]:
        row["l2"] = row["l2"] / 2
    layers.append(later)
    assert len(pictures[0]["png"]) == 16
    sources = sum(Path(p).stat().st_size for p in pictures[0]["png"])
    assert sources > 2 * BUDGET  # inlined as they are, they would not fit
    assert all(len(r["layer_summary"]) == 100 for r in layers) and len(layers) > 1
    data, page = page_of(pictures)
    deep_data, deep_page = page_of(layers)
    assert len(data) + len(deep_data) <= BUDGET, (len(data), len(deep_data))
    assert deep_page.count("polyline") >= 100  # the trajectory's lines
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 16
    for attrs in images:
        raw = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert len(raw) <= thumbnails.IMAGE_BUDGET
        assert int(attrs["width"]) <= thumbnails.PAGE_WIDTH
    assert re.search(r"shown at \d+x\d+ of 900x300", "".join(page.text))
