"""The HTML report (gradcli/present/html.py) on records of real runs: every record kind
renders its rows, the page loads nothing and its policy admits only its own style and script,
names from files stay text, pictures are inlined within the page's size budget.

The page is checked here by parsing it (stdlib html.parser); test_html_browser.py opens the
same pages in a real headless Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from report_runs import (
    HOSTILE_RUNS,
    deep_checkpoints,
    hostile_records,
    json_run,
    noisy_pictures_model,
)

from gradcli.escaping import printable
from gradcli.present import thumbnails
from gradcli.present.html import render_file
from gradcli.present.htmlkit import esc

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


def page_of(records: list[dict], **kw) -> tuple[bytes, Page]:
    data = render_file(records, **kw)
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


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_record_kind_renders_its_rows(cli, models, tmp_path, kind):
    """Every kind of record becomes a page whose first sortable table has a row per tensor
    (info: per layer), each named as the record names it; tripped rows are marked."""
    args = [a.format(tmp=tmp_path, **models) for a in KINDS[kind]]
    (rec,) = _records(cli, *args)
    data, page = page_of([rec])
    expected = rec.get("layers") if rec["command"] == "info" else rec["tensors"]
    table = page.rows[1] if rec["command"] == "info" else page.rows[0]  # info: io table first
    assert len(table) == len(expected)
    for row, item in zip(table, expected, strict=True):
        assert printable(item["name"]) in row
    tripped = [t for t in rec.get("tensors") or [] if t.get("tripped")]
    marked = [attrs for tag, attrs in page.tags if tag == "tr" and attrs.get("class") == "tripped"]
    assert len(marked) == len(tripped)
    if kind == "per-sample":
        assert tripped, "--max-norm 0.3 trips the larger tensors"
        assert "gates tripped: too-large" in "".join(page.text)
    pictures = rec.get("png") if isinstance(rec.get("png"), list) else []
    assert sum(1 for tag, _ in page.tags if tag == "img") == len(pictures)
    if kind == "flow --png":  # the page draws its own chart (SVG); the PNG is named
        assert sum(1 for tag, _ in page.tags if tag == "svg") == 1
        assert str(tmp_path / "flow.png") in "".join(page.text)


def test_diff_and_error_records(cli, models, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    x = models["dir"] / "x5.npy"
    _records(cli, "wrt-input", models["linear"], x, "-o", a)
    _records(cli, "wrt-input", models["linear_export"], x, "-o", b)
    (rec,) = _records(cli, "diff", a, b, "--min-cosine", "0.5")
    _, page = page_of([rec])
    assert [r.split("(")[0] for r in page.rows[0]] == ["0x"]  # one key: the input, x
    assert "B (the reference)" in page.text

    (rec,) = _records(cli, "wrt-input", models["linear"], x, "--against", models["linear_export"])
    _, page = page_of([rec])
    assert f"gradcli wrt-input --against: {models['linear']}" in page.text
    assert len(page.rows[0]) == 1 and "the two runs" in page.text

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "a.keras").write_bytes(models["linear"].read_bytes())
    (zoo / "b.keras").write_bytes(b"junk")
    recs = _records(cli, "wrt-weights", zoo, x, "--target", models["dir"] / "y3.npy", codes=(3,))
    _, page = page_of(recs)
    summary = page.rows[0]
    assert len(summary) == 2 and "error: " in summary[1] and "not a .keras archive" in summary[1]
    assert any(attrs.get("class") == "error" for tag, attrs in page.tags if tag == "tr")


def test_an_embedding_table_says_how_many_rows_it_touched(cli, keras, tmp_path):
    ids = keras.Input((5,), dtype="int32", name="ids")
    emb = keras.layers.Embedding(20, 3, name="emb")(ids)
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten()(emb))
    keras.Model(ids, out).save(tmp_path / "text.keras")
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3, 2, 1], [4, 4, 4, 1, 2]], np.int32))
    (rec,) = _records(cli, "wrt-weights", tmp_path / "text.keras", tmp_path / "ids.npy")
    _, page = page_of([rec])
    assert "emb/embeddings" in "".join(page.text)
    assert ": sparse gradient, 4 of 20 rows touched (the others are zero)" in "".join(page.text)


def test_typed_records_render_as_their_json(cli, models):
    from gradcli.records import Record

    records = _records(cli, "wrt-weights", models["seqni"], models["dir"] / "x5.npy")
    assert render_file([Record.from_json(r) for r in records]) == render_file(records)


def test_policy_admits_only_the_page_own_style_and_script(cli, models):
    (rec,) = _records(cli, "wrt-weights", models["seqni"], models["dir"] / "x5.npy")
    data, page = page_of([rec])
    policy = next(
        a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["img-src"] == "data:"
    assert directives["style-src"] == f"'{_sha(page.raw('style'))}'"
    assert directives["script-src"] == f"'{_sha(page.raw('script'))}'"
    assert "unsafe" not in policy
    assert [t for t, _ in page.tags].count("script") == 1
    assert [t for t, _ in page.tags].count("style") == 1
    # nothing else the policy would refuse or that loads from elsewhere
    for tag, attrs in page.tags:
        assert "style" not in attrs and not any(k.startswith("on") for k in attrs), tag
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:image/", "#")), attrs[key]


# ------------------------------------------------------------------ hostile names


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, keras):
    runs = hostile_records(keras, tmp_path_factory.mktemp("hostile"))
    return {name: (records, render_file(records)) for name, records in runs.items()}


@pytest.mark.parametrize("run", list(HOSTILE_RUNS))
def test_hostile_names_are_text(hostile, run):
    """Every hostile name is on the page as escaped text (control characters as escapes),
    never as markup: the parsed page has only the page's own elements and attributes."""
    records, data = hostile[run]
    page = Page(data)
    text = data.decode()
    for name in HOSTILE_RUNS[run]:
        assert esc(name) in text
        assert printable(name) in "".join(page.text)
        assert name not in text  # raw: never
    own = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h4", "p"}
    own |= {"span", "main", "footer", "script", "dl", "dt", "dd", "code", "details", "summary"}
    own |= {"div", "table", "thead", "tbody", "tr", "th", "td", "button", "figure", "img", "a"}
    own |= {"figcaption", "section", "ul", "li", "svg", "g", "text", "rect", "line", "path"}
    own |= {"circle", "polyline"}
    assert {tag for tag, _ in page.tags} <= own
    assert not [attrs for _, attrs in page.tags if any(k.startswith("on") for k in attrs)]
    assert [t for t, _ in page.tags].count("script") == 1
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


def test_pictures_that_cannot_be_read_are_named_not_inlined(cli, models, tmp_path):
    (rec,) = _records(
        cli, "wrt-input", models["cnn"], models["dir"] / "img.npy", "--png", tmp_path / "p"
    )
    pictures = rec["png"]
    Path(pictures[0]).write_bytes(b"<svg onload=alert(1)>")  # not a PNG
    Path(pictures[1]).unlink()
    _, page = page_of([rec])
    text = "".join(page.text)
    assert "not a PNG file" in text and "cannot be read" in text
    assert sum(1 for tag, _ in page.tags if tag == "img") == len(pictures) - 2


def test_locate_reads_pictures_from_where_they_are_staged(cli, models, tmp_path):
    (rec,) = _records(
        cli, "wrt-input", models["cnn"], models["dir"] / "img.npy", "--png", tmp_path / "p"
    )
    staged = tmp_path / "staged"
    (tmp_path / "p").rename(staged)
    _, page = page_of([rec], locate=lambda p: staged / Path(p).name)
    assert sum(1 for tag, _ in page.tags if tag == "img") == len(rec["png"])


# ------------------------------------------------------------------ pictures, size budget


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


def test_a_picture_that_fits_is_inlined_byte_for_byte(cli, models, tmp_path):
    (rec,) = _records(
        cli, "wrt-input", models["cnn"], models["dir"] / "img.npy", "--png", tmp_path / "p"
    )
    path = Path(rec["png"][0])
    thumb = thumbnails.thumbnail(path)
    assert base64.b64decode(thumb.uri.split(",", 1)[1]) == path.read_bytes()
    assert (thumb.width, thumb.height) == thumbnails.png_size(path.read_bytes()[:24])


@pytest.fixture(scope="module")
def budget_pages(tmp_path_factory, keras):
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
    return pictures, layers


@pytest.mark.slow
def test_page_size_budget(budget_pages):
    """16 pictures of noise (the worst to compress: 900x300 PNGs of about 480 KB each) on one
    page, a directory of 100-layer models (trajectory, flow charts, tables) on another: the
    two pages together within 2 MB."""
    pictures, layers = budget_pages
    assert len(pictures[0]["png"]) == 16
    sources = sum(Path(p).stat().st_size for p in pictures[0]["png"])
    assert sources > 2 * BUDGET  # inlined as they are, they would not fit
    assert all(len(r["layer_summary"]) == 100 for r in layers) and len(layers) > 1
    data, page = page_of(pictures)
    deep, deep_page = page_of(layers)
    assert len(data) + len(deep) <= BUDGET, (len(data), len(deep))
    assert [t for t, _ in deep_page.tags].count("polyline") >= 100  # the trajectory's lines
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 16
    for attrs in images:
        raw = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert len(raw) <= thumbnails.IMAGE_BUDGET
        assert int(attrs["width"]) <= thumbnails.PAGE_WIDTH
    assert re.search(r"shown at \d+x\d+ of 900x300", "".join(page.text))
