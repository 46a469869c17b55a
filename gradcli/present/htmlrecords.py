"""The body of one record on the HTML page, per record kind (present.records.Kind): gradients,
weights (with the per-sample spread and the gradient flow), finite differences, comparison,
what a model is, and an error; a kind it does not know gets the generic body (htmlgeneric.py).
Every value from a file is escaped (htmlkit.esc); figures are the table's."""

from __future__ import annotations

import os

from gradcli.present.htmlgeneric import generic
from gradcli.present.htmlkit import (
    Locate,
    Table,
    cell,
    code,
    esc,
    facts,
    num_cell,
    number,
    row_class,
    shape_text,
    status_cell,
)
from gradcli.present.records import Kind, Record
from gradcli.present.svgcharts import flow_chart
from gradcli.present.svgfigures import diff_chart, spread_chart
from gradcli.present.table import figure
from gradcli.present.thumbnails import PictureError, thumbnail

PAGE_PICTURES = 16  # pictures inlined per model; the others are listed by path


def body(rec: Record, locate: Locate | None) -> str:
    """The HTML of one record (without its heading)."""
    if rec.get("error"):
        return f'<p class="errtext">error: {esc(rec.get("error"))}</p>'
    render = {
        Kind.MODEL: _info,
        Kind.GRADIENTS: _gradients,
        Kind.WEIGHTS: _gradients,
        Kind.CHECK: _check,
        Kind.DIFF: _diff,
    }.get(rec.kind)
    return render(rec, locate) if render else _other(rec, locate)


def _other(rec: Record, locate: Locate | None) -> str:
    """A kind without a layout of its own: the generic body, then the pictures it names (a
    list of PNG paths, or one PNG chart), inlined like a gradient record's."""
    png = rec.get("png")
    if isinstance(png, str) and png.lower().endswith(".png"):
        png = [png]
    shown = [p for p in png if isinstance(p, str)] if isinstance(png, list) else []
    return generic(rec) + (pictures(shown, locate) if shown else "") + outputs(rec)


# ------------------------------------------------------------------ gradients, weights


def _gradients(rec: Record, locate: Locate | None) -> str:
    parts = [facts(_gradient_facts(rec))]
    parts.append(_tensor_table(rec))
    for t in rec.get("tensors") or []:
        sparse = t.get("sparse")
        if sparse:
            parts.append(
                f'<p class="note">{code(t["name"])}: sparse gradient, '
                f"{_thousands(sparse.get('rows_touched'))} of {_thousands(sparse.get('rows'))} "
                "rows touched "
                "(the others are zero)</p>"
            )
    parts += [_top_features(rec, t) for t in rec.get("tensors") or [] if t.get("top")]
    if rec.get("per_sample"):
        parts.append(_per_sample(rec["per_sample"]))
        chart = spread_chart(rec["per_sample"])
        if chart:
            parts.append(
                f"<figure>{chart}<figcaption>per-sample spread: each layer's per-sample gradient "
                "norms \u2016g_i\u2016 (bar: median to max; ticks: p90, p99) and the norm of "
                "their mean \u2016G\u2016 (diamond, value at the right). \u2016G\u2016 far "
                "below the bar: the samples' gradients mostly cancel (a noisy mean)"
                "</figcaption></figure>"
            )
    if rec.get("layer_summary"):
        parts.append(
            "<figure>" + flow_chart(rec["layer_summary"]) + "<figcaption>gradient flow: the L2 "
            "norm of each layer's weight gradient, log scale (layers not ok in red)"
            "</figcaption></figure>"
        )
    png = rec.get("png")
    if isinstance(png, list) and png:
        parts.append(pictures(png, locate))
    parts.append(outputs(rec))
    return "".join(parts)


def _gradient_facts(rec: Record) -> list[tuple[str, str]]:
    pairs = [("objective", esc(rec.get("objective") or ""))]
    if rec.get("output") and not rec.get("objective"):
        pairs.append(("differentiated", f"d {code(rec['output'])} / d input"))
    pairs.append(("samples (N)", number(rec.get("n"))))
    pairs.append(("method", esc(rec.get("method") or "")))
    classes = rec.get("classes")
    if classes:
        source = {"pred": "predicted", "file": "from the file", "array": "given"}
        counts = " · ".join(f"{esc(k)}: {number(v)}" for k, v in classes["counts"].items())
        pairs.append((f"classes ({source.get(classes['source'], '')})", counts))
    cam = rec.get("cam")
    if cam:
        chosen = ", the default: the last layer whose output is more than 1x1"
        resized = ", ".join(esc(r) for r in cam.get("resized") or [])
        pairs.append(
            (
                "CAM layer",
                f"{code(cam['layer'])} ({esc(cam['class'])}{chosen if cam['default'] else ''})"
                + (f"; resized to {resized}" if resized else ""),
            )
        )
    comp = rec.get("completeness")
    if comp:
        pairs.append(
            (
                f"IG completeness ({number(rec.get('steps'))} steps)",
                f"sum of attributions vs o(x) - o(baseline): max gap "
                f"{number(comp['max_abs_gap'], 3)} ({number(100 * comp['max_rel_gap'], 3)}% "
                f"relative), mean gap {number(comp['mean_abs_gap'], 3)}",
            )
        )
    return pairs


def _tensor_table(rec: Record) -> str:
    tensors = rec.get("tensors") or []
    weights = any("param_l2" in t for t in tensors)
    values = rec.value_label
    sensitivity = any("sensitivity" in t for t in tensors)
    columns = [("#", True), ("variable" if weights else "tensor", False), ("shape", False)]
    columns.append(("L2", True))
    if weights:
        columns.append(("|g|/|\u03b8|", True))
    columns += [(f"mean {esc(values)}", True), (f"max {esc(values)}", True)]
    columns += [("zero frac", True), ("non-finite", True)]
    if sensitivity:
        columns.append(("sensitivity", True))
    columns.append(("status", False))
    table = Table(columns)
    for i, t in enumerate(tensors):
        cells = [num_cell(i), cell(t.get("name"), mono=True), cell(shape_text(t.get("shape")))]
        cells.append(num_cell(t.get("l2")))
        if weights:
            cells.append(num_cell(t.get("relative")))
        zero = t.get("zero_fraction")
        cells += [num_cell(t.get("mean_abs")), num_cell(t.get("max_abs"))]
        cells.append(num_cell(zero, shown="-" if zero is None else f"{zero:.3f}"))
        cells.append(num_cell(t.get("nonfinite")))
        if sensitivity:
            cells.append(num_cell(t.get("sensitivity"), 3))
        cells.append(status_cell(t.get("status"), bool(t.get("tripped"))))
        table.row(cells, row_class(t))
    return table.html()


def _top_features(rec: Record, t: dict) -> str:
    values = esc(rec.value_label)
    table = Table([("rank", True), ("feature", False), (f"mean {values}", True)])
    for rank, f in enumerate(t["top"], 1):
        where = f["feature"] if "index" not in f else tuple(f["index"])
        table.row([num_cell(rank), cell(where), num_cell(f.get("mean_abs"))])
    return (
        f"<h4>top {len(t['top'])} features of {code(t['name'])} (mean {values} over samples)</h4>"
        + table.html()
    )


def _per_sample(ps: dict) -> str:
    dist = ps.get("sample_norm") or {}
    bad = f" · {number(dist['nonfinite'])} non-finite" if dist.get("nonfinite") else ""
    head = (
        f"<h4>per-sample gradients g_i (N={number(ps.get('n'))}, "
        f"{esc(ps.get('mode', 'inference'))} mode)</h4><p>\u2016g_i\u2016 median "
        f"{number(dist.get('median'))} · p90 {number(dist.get('p90'))} · p99 "
        f"{number(dist.get('p99'))} · max {number(dist.get('max'))}{bad}</p>"
    )
    table = Table(
        [
            ("layer", False),
            ("\u2016G\u2016", True),
            ("tr \u03a3", True),
            ("SNR", True),
            ("B_simple", True),
            ("median \u2016g_i\u2016", True),
            ("max \u2016g_i\u2016", True),
        ]
    )
    rows = [(r.get("layer"), r) for r in ps.get("layers") or []]
    for name, row in [*rows, ("(model)", ps.get("model") or {})]:
        norms = row.get("sample_norm") or {}
        table.row(
            [cell(name, mono=True)]
            + [num_cell(row.get(k)) for k in ("g_norm", "trace_cov", "snr", "b_simple")]
            + [num_cell(norms.get("median")), num_cell(norms.get("max"))]
        )
    notes = (
        '<p class="note">tr \u03a3: trace of the g_i\'s covariance · SNR = \u2016G\u2016\u00b2 / '
        "(tr \u03a3 / N) · B_simple = tr \u03a3 / \u2016G\u2016\u00b2 (critical batch size "
        "estimate)</p>"
    )
    if ps.get("note"):
        notes += f'<p class="note">{esc(ps["note"])}</p>'
    top = ""
    if ps.get("top"):
        samples = Table([("rank", True), ("sample", True), ("\u2016g_i\u2016", True)])
        samples.columns.append(("objective", True))
        for rank, item in enumerate(ps["top"], 1):
            samples.row(
                [num_cell(rank), num_cell(item.get("index"))]
                + [num_cell(item.get("norm")), num_cell(item.get("objective"))]
            )
        top = f"<h4>top {len(ps['top'])} samples by \u2016g_i\u2016</h4>" + samples.html()
    return head + table.html() + notes + top


def pictures(paths: list, locate: Locate | None) -> str:
    """The first PAGE_PICTURES pictures, inlined (scaled for the page), the rest by path."""
    figures = []
    for path in paths[:PAGE_PICTURES]:
        where = locate(str(path)) if locate else str(path)
        name = os.path.basename(str(path))
        try:
            thumb = thumbnail(where)
        except PictureError as exc:
            figures.append(f'<p class="warning">picture {code(path)} not shown: {esc(exc)}</p>')
            continue
        scaled = ""
        if (thumb.width, thumb.height) != (thumb.source_width, thumb.source_height):
            scaled = f", shown at {thumb.width}x{thumb.height} of {thumb.source_width}x"
            scaled += f"{thumb.source_height}"
        figures.append(
            f'<figure><img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="{esc(name)}"><figcaption>{code(path)}{scaled}</figcaption></figure>'
        )
    rest = len(paths) - PAGE_PICTURES
    more = ""
    if rest > 0:
        more = f'<p class="note">{rest} more picture(s) beside them, not inlined here</p>'
    return f"<h4>pictures ({len(paths)})</h4>" + "".join(figures) + more


def outputs(rec: Record) -> str:
    lines = []
    if rec.get("out"):
        lines.append(f"arrays written to {code(rec['out'])}")
    png = rec.get("png")
    if isinstance(png, str) and png:
        lines.append(f"full-resolution chart written to {code(png)}")
    if rec.get("gates"):
        lines.append(f'<span class="errtext">gates tripped: {esc(", ".join(rec["gates"]))}</span>')
    return "".join(f'<p class="note">{line}</p>' for line in lines)


# ------------------------------------------------------------------ check, diff, info


def _thousands(x: object) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else number(x)


def _check(rec: Record, locate: Locate | None) -> str:
    subset = ""
    if rec.get("samples"):
        subset = f"; the first {number(rec['samples'])} of {number(rec.get('n'))} samples"
    pairs = [
        ("objective", esc(rec.get("objective") or "")),
        ("samples (N)", number(rec.get("n"))),
        (
            "finite differences",
            f"{esc(rec.get('precision'))}, eps {number(rec.get('eps'))}, "
            f"{number(rec.get('directions'))} random direction(s) per tensor, "
            f"rtol {number(rec.get('rtol'))}{subset}",
        ),
    ]
    table = Table(
        [("#", True), ("tensor", False), ("shape", False), ("rel error", True), ("ratio", True)]
        + [("autodiff vs finite diff, per direction", False), ("status", False)]
    )
    for i, t in enumerate(rec.get("tensors") or []):
        pairs_ad = zip(t.get("autodiff") or [], t.get("finite_diff") or [], strict=False)
        directions = "; ".join(f"{number(a, 6)} vs {number(f, 6)}" for a, f in pairs_ad)
        table.row(
            [num_cell(i), cell(t.get("name"), mono=True), cell(shape_text(t.get("shape")))]
            + [num_cell(t.get("rel_error"), 3), num_cell(t.get("error_ratio"), 3)]
            + [f"<td>{directions}</td>", status_cell(t.get("status"), bool(t.get("tripped")))],
            row_class(t),
        )
    rule = (
        '<p class="note">a direction passes when |ad - fd| \u2264 rtol \u00b7 max(|ad|, |fd|) + '
        "fd error (ratio \u2264 1)</p>"
    )
    return facts(pairs) + table.html() + rule + outputs(rec)


def _diff(rec: Record, locate: Locate | None) -> str:
    per_sample = bool(rec.get("per_sample"))
    pairs = [("A", code(rec.get("a"))), ("B (the reference)", code(rec.get("b")))]
    columns = [("#", True), ("tensor", False), ("shape", False), ("cosine", True)]
    columns += [("rel diff", True), ("max abs diff", True), ("sign agree", True)]
    if per_sample:
        columns += [("rank \u03c1 mean", True), ("rank \u03c1 min", True)]
        columns.append((f"top {number(rec.get('top_percent'))}% overlap", True))
    table = Table([*columns, ("status", False)])
    for i, t in enumerate(rec.get("tensors") or []):
        cells = [num_cell(i), cell(t.get("name"), mono=True), cell(shape_text(t.get("shape")))]
        cells += [num_cell(figure(t, "cosine"), 6), num_cell(figure(t, "rel_diff"), 3)]
        cells += [num_cell(figure(t, "max_abs_diff"), 3), num_cell(t.get("sign_agreement"))]
        if per_sample:
            cells += [num_cell(figure(t, k), 3) for k in ("rank_corr", "rank_corr_min")]
            cells.append(num_cell(t.get("top_overlap"), 3))
        cells.append(status_cell(t.get("status"), bool(t.get("tripped"))))
        table.row(cells, row_class(t))
    said = "".join(f'<p class="warning">warning: {esc(w)}</p>' for w in rec.get("warnings") or [])
    said += "".join(f'<p class="note">note: {esc(n)}</p>' for n in rec.get("notes") or [])
    runs = ""
    for run in rec.get("runs") or []:
        gates = ", ".join(run.get("gates") or []) or "none tripped"
        runs += f"<li>{code(run.get('model'))}: {esc(run.get('objective'))}; gates: {esc(gates)}"
        runs += (f"; wrote {code(run['out'])}" if run.get("out") else "") + "</li>"
    if runs:
        runs = f"<h4>the two runs</h4><ul>{runs}</ul>"
    chart = diff_chart(rec)
    if chart:
        chart = (
            f"<figure>{chart}<figcaption>each tensor's cosine between A and B and its relative "
            "L2 difference from B, the reference (dashed red: a gate's limit; red bars: tripped)"
            "</figcaption></figure>"
        )
    return facts(pairs) + table.html() + (chart or "") + said + runs + outputs(rec)


def _info(rec: Record, locate: Locate | None) -> str:
    loss = esc(rec.get("loss")) + (f" ({esc(rec['loss_note'])})" if rec.get("loss_note") else "")
    pairs = [
        ("serving endpoint", code(rec["endpoint"]) if rec.get("endpoint") else ""),
        ("compiled loss", loss),
        ("trainable parameters", _thousands(rec.get("trainable_params"))),
    ]
    io_table = Table([("", False), ("name", False), ("shape", False), ("dtype", False)], False)
    for kind in ("input", "output"):
        for item in rec.get(kind + "s") or []:
            io_table.row(
                [cell(kind), cell(item.get("name"), mono=True)]
                + [cell(shape_text(["N", *item.get("shape", [])])), cell(item.get("dtype"))]
            )
    layers = rec.get("layers") or []
    if not layers:
        return (
            facts(pairs)
            + io_table.html()
            + (
                '<p class="note">layers: none (a SavedModel served through its function; '
                "wrt-layer needs a Keras model)</p>"
            )
        )
    table = Table(
        [("index", True), ("name (--layer takes it or the index)", False), ("class", False)]
        + [("output shape", False), ("params", True)]
    )
    for layer in layers:
        indent = "\u00a0\u00a0" * int(layer.get("depth", 0) or 0)
        table.row(
            [num_cell(layer.get("index")), cell(indent + str(layer.get("name")), mono=True)]
            + [cell(layer.get("class")), cell(layer.get("output_shape"))]
            + [num_cell(layer.get("params"), shown=_thousands(layer.get("params")))]
        )
    return facts(pairs) + io_table.html() + table.html()
