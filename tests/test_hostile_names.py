"""Names are data in every sink: one model whose every name is hostile (file name, input,
layers, output, variables, npz keys, the paths provenance records), rendered in every report
format, byte for byte against what a safe renderer gives; and the bytes a real process
sends to the terminal.

The safe renderer: the same run on a twin whose names are plain placeholders of the same
printed length (same weights, same numbers), each placeholder then replaced by its hostile
name as the sink's escaping shows it. Any name that skipped its escaping, any markup,
heading, link, table cell or control sequence it caused, changes the bytes.

What Keras and TensorFlow refuse themselves: `/` in any name (Keras: layer, input and model
names alike); file names cannot hold `/` or NUL (a path can hold `[/]` across a directory).
A layer that is called in a computation must also make a valid TensorFlow node name,
`[A-Za-z0-9.][A-Za-z0-9_>./]*` (TensorFlow refuses the graph otherwise: exit 4), so the
model that is differentiated has layers named within that alphabet (`_`, `>` and `.` are
the hostile ones left), and a second model, only described (`info` runs no model code),
has fully hostile layer names.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pytest

from gradcli.present.escape import markdown, markdown_code, printable

# Each hostile name is short enough that a table row fits in 120 columns (the CLI's width
# when stdout is not a terminal), so no cell wraps.
HOSTILE = {
    "file": "m\x1b[2J[b]`<i>$x$|\n# OK",  # the model's file name (stem)
    "input": "x\x07[red]<img src=x>&amp;",  # its input: the npz key, PNG names
    "flatten": "f_>x.",  # layers that are computed: the alphabet TensorFlow takes
    "dense": "d._>y_",  # the output layer: output name, variables, flow chart labels
    "named": "k\x1b[2J<h1>`$a$",  # a model only described, whose layers are hostile:
    "named_flatten": "l\r# *_~$\\frac{$\u202e",  # (mathtext that cannot even parse)
    "named_dense": "o\x1b]8;;x\x07`|[link=x]",
    "in1": "i\x1b[31m<b>|[i]",  # input file names: provenance paths, diff warnings
    "in2": "j\n> ![p](x)`",
    "zfile": "z\x1b[H`<",  # a directory run (short names: its table has room for little)
    "link": "n\x07[b]",  # a dangling symlink there: a row with its error
    "key": "q\x1b[2J[/]`|<b>",  # an npz key of a result file another tool wrote
}
RUNS = ("hostile_run", "twinned_run")  # same length: paths line up in tables
ZOOS = ("zh", "zt")


def _placeholder(role: str, name: str) -> str:
    """A plain name of the same printed length, starting like the hostile one (same order)."""
    size = len(printable(name))
    return (name[0] + role.upper() + "Z" * size)[:size]


TWIN = {role: _placeholder(role, name) for role, name in HOSTILE.items()}


def _model(keras, names: dict[str, str], prefix: str, weights=None):
    x_in = keras.Input((4, 4, 1), name=names["input"])
    flat = keras.layers.Flatten(name=names[prefix + "flatten"])(x_in)
    out = keras.layers.Dense(2, activation="tanh", name=names[prefix + "dense"])(flat)
    model = keras.Model(x_in, out, name="net")
    if weights is not None:
        model.set_weights(weights)
    model.compile(loss="mse")
    return model


def _build(keras, root: Path, names: dict[str, str], weights=None):
    root.mkdir()
    model = _model(keras, names, "", weights)
    paths = {"model": root / f"{names['file']}.keras", "named": root / f"{names['named']}.keras"}
    model.save(paths["model"])
    _model(keras, names, "named_", model.get_weights()).save(paths["named"])
    rng = np.random.default_rng(0)
    for key in ("in1", "in2"):
        paths[key] = root / f"{names[key]}.npz"
        np.savez(paths[key], **{names["input"]: rng.normal(size=(3, 4, 4, 1)).astype("f4")})
    values = np.arange(1.0, 6.0)
    paths["k1"], paths["k2"] = root / "k1.npz", root / "k2.npz"
    np.savez(paths["k1"], **{names["key"]: values})
    np.savez(paths["k2"], **{names["key"]: values * [1, 1, 1, 1, 2]})
    zoo = root.parent / ZOOS[RUNS.index(root.name)]
    zoo.mkdir()
    (zoo / f"{names['zfile']}.keras").write_bytes(paths["model"].read_bytes())
    (zoo / f"{names['link']}.keras").symlink_to("x")
    paths["zoo"] = zoo
    return paths, model.get_weights()


@pytest.fixture(scope="module")
def twins(tmp_path_factory, keras):
    keras.utils.set_random_seed(0)
    base = tmp_path_factory.mktemp("names")
    hostile, weights = _build(keras, base / RUNS[0], HOSTILE)
    twin, _ = _build(keras, base / RUNS[1], TWIN, weights)
    return base, hostile, twin


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Substitution:
    """Twin output -> what the hostile run must print, sink by sink."""

    def __init__(self, hostile: dict[str, Path], twin: dict[str, Path]) -> None:
        pairs = [(TWIN[r], HOSTILE[r]) for r in HOSTILE] + [(RUNS[1], RUNS[0])]
        pairs.append((ZOOS[1] + "/", ZOOS[0] + "/"))
        for key in ("model", "named", "in1", "in2"):  # the files differ: so do their hashes
            h, t = _sha(hostile[key]), _sha(twin[key])
            pairs += [(t, h), (t[:12], h[:12])]
        self.pairs = sorted(pairs, key=lambda p: -len(p[0]))

    def raw(self, text: str) -> str:
        for t, h in self.pairs:
            text = text.replace(t, h)
        return text

    def table(self, text: str) -> str:
        for t, h in self.pairs:
            text = text.replace(t, printable(h))
        return text

    def json(self, text: str) -> str:
        for t, h in self.pairs:
            text = text.replace(json.dumps(t)[1:-1], json.dumps(h)[1:-1])
        return text

    def xml(self, text: str) -> str:
        for t, h in self.pairs:
            text = text.replace(t, xml_escape(printable(h), {'"': "&quot;"}))
        return text

    def markdown(self, text: str) -> str:
        lines = []
        for line in text.split("\n"):
            in_table = line.startswith("|")
            parts = re.split(r"(`[^`]*`)", line)  # the twin's code spans hold no backtick
            for i, part in enumerate(parts):
                if i % 2:
                    parts[i] = markdown_code(self.raw(part[1:-1]), table=in_table)
                else:
                    for t, h in self.pairs:
                        part = part.replace(markdown(t), markdown(h))
                    parts[i] = part
            lines.append("".join(parts))
        return "\n".join(lines)


def _runs(base: Path, paths: dict[str, Path]) -> dict[str, list[str]]:
    """Each command's arguments (relative paths: short table lines), one per report."""
    run = paths["model"].parent.name
    rel = {k: str(p.relative_to(base)) for k, p in paths.items()}
    m, i1 = rel["model"], rel["in1"]
    return {
        "info": ["info", rel["named"]],
        "wrt-input": ["wrt-input", m, i1, "-o", f"{run}/r1.npz", "--png", f"{run}/png"],
        "wrt-weights": [
            *("wrt-weights", m, i1, "-o", f"{run}/w1.npz", "--png", f"{run}/flow.png"),
            *("--max-norm", "0.1"),
        ],
        # results of wrt-weights: an attribution map's diff has columns enough to squeeze
        # a name to an ellipsis in 120 columns (the placeholder could not line up)
        "diff": ["diff", f"{run}/w1.npz", f"{run}/w2.npz", "--min-cosine", "0.9999"],
        "diff-keys": ["diff", rel["k1"], rel["k2"], "--max-rel-diff", "0.01"],
        "directory": ["wrt-input", rel["zoo"], i1],
    }


def _render_all(cli, base: Path, paths: dict[str, Path]) -> dict[str, dict[str, str]]:
    run = paths["model"].parent.name
    commands = _runs(base, paths)
    in2 = str(Path(run) / paths["in2"].name)
    r = cli("wrt-weights", commands["wrt-input"][1], in2, "-o", f"{run}/w2.npz")
    assert r.code == 0, r.err
    out: dict[str, dict[str, str]] = {}
    for name, args in commands.items():
        junit = [] if args[0] == "info" else ["--junit", f"{run}/{name}.xml"]  # info has none
        results = {
            "table": cli(*args),
            "json": cli(*args, "--json", *junit),
            "markdown": cli(*args, "--format", "markdown"),
        }
        codes = {fmt: res.code for fmt, res in results.items()}
        assert len(set(codes.values())) == 1, (name, codes, results["table"].err)
        out[name] = {fmt: res.out for fmt, res in results.items()}
        out[name]["stderr"] = results["table"].err
        out[name]["junit"] = Path(base, junit[1]).read_text() if junit else ""
        out[name]["code"] = str(codes["table"])
    return out


def test_every_report_format_of_hostile_names_matches_a_safe_renderer(cli, twins, monkeypatch):
    base, hostile, twin = twins
    monkeypatch.chdir(base)
    got = _render_all(cli, base, hostile)
    safe = _render_all(cli, base, twin)
    sub = Substitution(hostile, twin)
    assert got["wrt-weights"]["code"] == got["diff"]["code"] == got["diff-keys"]["code"] == "1"
    assert got["directory"]["code"] == "3"  # the dangling link is a row with its error
    for name in got:
        g, s = got[name], safe[name]
        assert g["table"] == sub.table(s["table"]), name
        assert g["stderr"] == sub.table(s["stderr"]), name
        assert g["json"] == sub.json(s["json"]), name
        assert g["markdown"] == sub.markdown(s["markdown"]), name
        assert g["junit"] == sub.xml(s["junit"]), name
        for text in (g["table"], g["stderr"], g["markdown"], g["junit"]):
            assert not any(ord(c) < 32 and c not in "\n\t" for c in text), name  # XML indents
        for line in g["json"].splitlines():  # JSON holds the names exactly, and stays valid
            json.dumps(json.loads(line), allow_nan=False)
    record = json.loads(got["wrt-input"]["json"])
    assert [t["name"] for t in record["tensors"]] == [HOSTILE["input"]]
    assert record["provenance"]["input"]["path"].endswith(HOSTILE["in1"] + ".npz")
    with np.load(base / RUNS[0] / "r1.npz") as data:  # npz keys: the names as they are
        assert sorted(data.files) == sorted([HOSTILE["input"], "__gradcli__"])


def test_markdown_of_hostile_names_is_only_text_and_tables(cli, twins, monkeypatch):
    """Parsed as CommonMark with GFM tables: no HTML, link, image or heading a name made,
    and every table row keeps its cells."""
    from markdown_it import MarkdownIt

    base, hostile, _ = twins
    monkeypatch.chdir(base)
    parser = MarkdownIt("commonmark").enable("table")
    for name, args in _runs(base, hostile).items():
        text = cli(*args, "--format", "markdown").out
        tokens = parser.parse(text)
        kinds = {t.type for t in tokens} | {
            c.type for t in tokens if t.children for c in t.children
        }
        assert not kinds & {"html_inline", "html_block", "image", "link_open"}, name
        headings = [t for t in tokens if t.type == "heading_open"]
        assert len(headings) == (1 if name in ("info", "directory") else 0), name  # ours
        header_cells = None
        for row in (line for line in text.splitlines() if line.startswith("|")):
            cells = len(re.findall(r"(?<!\\)\|", row)) - 1
            header_cells = header_cells if header_cells is not None else cells
            assert cells == header_cells, (name, row)
        shown = html.unescape(re.sub(r"<[^>]+>", "", parser.render(text)))
        for role in {"wrt-input": ["input"], "wrt-weights": ["dense"], "diff-keys": ["key"]}.get(
            name, []
        ):
            assert printable(HOSTILE[role]) in shown, (name, role)


def test_png_titles_and_labels_are_drawn_as_text(cli, twins, monkeypatch, tmp_path):
    """The heatmap's title and the flow chart's title and layer labels, byte for byte as
    matplotlib draws the same text with mathtext off for it (and on for its own tick labels,
    which are mathtext)."""
    from matplotlib.text import Text

    from gradcli.present import flowchart, pictures

    base, hostile, _ = twins
    monkeypatch.chdir(base)
    commands = _runs(base, hostile)
    rec_in = json.loads(cli(*commands["wrt-input"], "--json").out)
    rec_w = json.loads(cli(*commands["wrt-weights"], "--json").out)
    model_name = hostile["model"].name
    with np.load(hostile["in1"]) as x, np.load(base / RUNS[0] / "r1.npz") as g:
        x_in, g_in = x[HOSTILE["input"]], g[HOSTILE["input"]]
    # the safe renderer: text from names made printable only, and drawn as it is
    names: set[str] = set()

    def as_text(text: str, fit=None) -> str:
        shown = fit(printable(text)) if fit else printable(text)
        names.update([shown, *shown.split("\n")])  # matplotlib lays out line by line
        return shown

    preprocess = Text._preprocess_math
    monkeypatch.setattr(pictures, "plot", as_text)
    monkeypatch.setattr(flowchart, "plot", as_text)
    monkeypatch.setattr(
        Text, "_preprocess_math", lambda self, s: (s, False) if s in names else preprocess(self, s)
    )
    title = f"{model_name}: gradient of {rec_in['objective']}, w.r.t. {HOSTILE['input']}"
    (reference,) = pictures.write_heatmaps(tmp_path / "ref", "r", x_in[:1], g_in[:1], title=title)
    written = sorted(Path(p) for p in rec_in["png"])
    assert len(written) == 3 and written[0].name.startswith(HOSTILE["input"])
    assert written[0].read_bytes() == reference.read_bytes()
    summary = rec_w["layer_summary"]
    chart = flowchart.write_flow_chart(
        tmp_path / "flow.png",
        [s["layer"] for s in summary],
        [s["l2"] for s in summary],
        [s["status"] for s in summary],
        title=f"{model_name}: gradient flow",
    )
    assert [s["layer"] for s in summary] == [HOSTILE["dense"]]
    assert Path(rec_w["png"]).read_bytes() == chart.read_bytes()


# ------------------------------------------------------------------ a real terminal's bytes


def _gradcli() -> str:
    return str(Path(sys.executable).with_name("gradcli"))


def test_a_real_process_never_sends_a_control_character_from_a_name(twins, tmp_path):
    """stdout and stderr of the console script, names full of ESC sequences, BEL, CR, LF and
    Rich markup, and a model path holding `[/]` (Rich's closing tag; it used to crash every
    row of a directory run, exit 4)."""
    base, hostile, _ = twins
    zoo = tmp_path / "zoo"
    (zoo / "a[").mkdir(parents=True)
    (zoo / "a[" / "]b.keras").write_bytes(hostile["model"].read_bytes())
    (zoo / "c.keras").write_bytes(hostile["model"].read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "GRADCLI_INPROCESS"}
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    runs = [
        (["info", hostile["model"]], 0),
        (["wrt-input", hostile["model"], hostile["in1"], "--fail-on", "zero"], 0),
        (["info", hostile["named"]], 0),
        (["wrt-layer", hostile["model"], hostile["in1"], "--layer", HOSTILE["flatten"]], 0),
        (["info", "zoo"], 0),  # relative: the table's model column is not folded
        (["info", zoo / "missing.keras"], 3),
    ]
    for args, code in runs:
        proc = subprocess.run(
            [_gradcli(), *map(str, args)], capture_output=True, env=env, timeout=300, cwd=tmp_path
        )
        assert proc.returncode == code, (args, proc.stderr.decode())
        for stream in (proc.stdout, proc.stderr):
            assert not any(b < 32 and b != 10 for b in stream), (args, stream[:300])
        if args[1] == hostile["named"]:
            text = proc.stdout.decode()
            assert printable(HOSTILE["named_dense"]) in text  # shown, escaped like repr
            assert "[red]" in text and "[link=x]" in text  # markup shown, not applied
        if args[1] == "zoo":
            text = proc.stdout.decode()
            assert "zoo/a[/]b.keras" in text and "zoo/c.keras" in text


# ------------------------------------------------------------------ each sink on its own

NASTY = [
    "plain",
    "\x1b[2J\x07\x00\x7f\x9b\u202e\u200b\u2028\udcff",
    "``` ` `` x ``",
    "`lead",
    "trail`",
    " both ",
    "a\\|b | c \\",
    "<script>alert(1)</script> &amp; &#x41;",
    "[x](javascript:alert(1)) ![i](x) <http://x> www.x.com a@b.co :+1: @team $x^2$",
    "# h\n=== \r\n> q\n- l\n1. n *e* _e_ ~~s~~ **b**",
]


def test_printable_escapes_exactly_what_repr_does():
    for text in NASTY:
        shown = printable(text)
        assert shown.isprintable()
        assert repr(text)[1:-1].replace("\\\\", "\\").replace("\\'", "'") == shown
    assert printable("ok [bold] é 模型") == "ok [bold] é 模型"


@pytest.mark.parametrize("text", NASTY)
def test_markdown_sinks_render_the_printable_text_literally(text):
    """CommonMark with GFM tables: each inline's text is exactly printable(text) (plain text
    loses the spaces at its ends, as any Markdown paragraph or cell does), in a paragraph, in
    bold, in a table cell; nothing but text, code and bold comes of it."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark").enable("table")
    want = printable(text)

    def inlines(source: str) -> list[str]:
        out = []
        for token in parser.parse(source):
            if token.type != "inline":
                continue
            kinds = {c.type for c in token.children}
            assert kinds <= {"text", "code_inline", "strong_open", "strong_close"}, kinds
            rendered = parser.renderer.renderInline(token.children, parser.options, {})
            out.append(html.unescape(re.sub(r"<[^>]+>", "", rendered)))
        return out

    assert inlines(markdown(text)) == [want.strip(" ")]
    assert inlines(markdown_code(text)) == [want]
    assert inlines(f"**{markdown_code(text)}** {markdown(text)}") == [f"{want} {want}".rstrip(" ")]
    table = f"| h | k |\n|---|---|\n| {markdown(text)} | {markdown_code(text, table=True)} |\n"
    assert inlines(table) == ["h", "k", want.strip(" "), want]
