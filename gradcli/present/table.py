"""`--format table`: Rich tables for people (no TensorFlow here).

One file on purpose: a renderer per record kind (gradients, per-sample, flow, diff, check,
info, many models), all sharing the number formats, status cells and header; each is short.
Curvature records (hessian) are curvature.py's.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcli.present.escape import rich_text
from gradcli.present.gates import style
from gradcli.present.gates import worst as worst_status
from gradcli.present.records import Kind, Record, TensorRow


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def figure(row: dict, key: str) -> float | None:
    """A row's figure; NaN or inf where the record says so (its JSON holds null there)."""
    bad = row.get("nonfinite_figures") or {}
    return float(bad[key]) if key in bad else row.get(key)


def _shape(shape: list) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _cells(*values: object) -> list[Text]:
    """Table cells: text from files is shown as it is, never read as Rich markup."""
    return [v if isinstance(v, Text) else rich_text(v) for v in values]


def _status(t: TensorRow) -> Text:
    status = t.status
    text = Text(status, style=style(status))
    if t.tripped:
        text = Text(f"✗ {status}", style="bold red")
    return text


def render(records: list[Record], console: Console) -> None:
    """Everything a run produced, for a terminal."""
    if len(records) > 1:
        if records[0].kind == Kind.CURVATURE:
            from gradcli.present.curvature import render_many

            render_many(records, console)
            return
        _render_many(records, console)
        return
    for rec in records:
        render_one(rec, console)


def render_one(rec: Record, console: Console) -> None:
    if rec.error:
        console.print(rich_text(f"{rec.model}: error: {rec.error}", style="red"))
        return
    if rec.kind == Kind.CURVATURE:
        from gradcli.present.curvature import render as render_curvature

        render_curvature(rec, console, _header(rec))
        return
    _RENDER.get(rec.kind, _render_gradients)(rec, console)


def _header(rec: Record, method: bool = True) -> Text:
    parts = [f" ({rec.format}, {rec.loader})"]
    if rec.n is not None:
        parts.append(f"N={rec.n}")
    if rec.objective:
        parts.append(f"objective: {rec.objective}")
    elif rec.extra.get("output"):  # a Jacobian: the output itself, no objective
        parts.append(f"d {rec.extra['output']} / d input")
    if method and rec.method and rec.method != "vanilla":
        parts.append(f"method: {rec.method}")
    return Text.assemble(rich_text(rec.model, "bold"), rich_text(" · ".join(parts)))


def _render_info(rec: Record, console: Console) -> None:
    info = rec.extra
    console.print(rich_text(rec.model, "bold"))
    console.print(
        rich_text(
            f"format: {rec.format} · loader: {rec.loader}"
            + (f" · endpoint: {info['endpoint']}" if info.get("endpoint") else "")
        )
    )
    loss = info["loss"] + (f" ({info['loss_note']})" if info.get("loss_note") else "")
    console.print(rich_text(f"compiled loss: {loss}"))
    console.print(f"trainable parameters: {info['trainable_params']:,}")
    io = Table(show_edge=False)
    for col in ("", "name", "shape", "dtype"):
        io.add_column(col)
    for kind in ("input", "output"):
        for item in info[kind + "s"]:
            io.add_row(*_cells(kind, item["name"], _shape(["N", *item["shape"]]), item["dtype"]))
    console.print(io)
    if not info["layers"]:
        console.print(
            "layers: none (a SavedModel served through its function; wrt-layer needs a Keras model)"
        )
        return
    console.print("layers (--layer takes the index or the name):")
    layers = Table(show_edge=False)
    for col, justify in (
        ("index", "right"),
        ("name", "left"),
        ("class", "left"),
        ("output shape", "left"),
        ("params", "right"),
    ):
        layers.add_column(col, justify=justify)
    for layer in info["layers"]:
        index = "" if layer["index"] is None else str(layer["index"])
        name = "  " * layer.get("depth", 0) + layer["name"]
        layers.add_row(
            *_cells(index, name, layer["class"], layer["output_shape"], f"{layer['params']:,}")
        )
    console.print(layers)


def _render_gradients(rec: Record, console: Console) -> None:
    console.print(_header(rec))
    classes = rec.extra.get("classes")
    if classes:  # --class pred / FILE.npy: which classes the samples were explained for
        source = {"pred": "predicted", "file": "from the file", "array": "given"}
        counts = " · ".join(f"{k}: {v}" for k, v in classes["counts"].items())
        console.print(f"classes ({source.get(classes['source'], '')}), samples each: {counts}")
    cam = rec.extra.get("cam")
    if cam:
        chosen = (
            ", the default: the last layer whose output is more than 1x1" if cam["default"] else ""
        )
        resized = f"; resized to {', '.join(cam['resized'])}" if cam["resized"] else ""
        console.print(rich_text(f"CAM layer: {cam['layer']} ({cam['class']}{chosen}){resized}"))
    weights = rec.kind == Kind.WEIGHTS
    table = Table(show_edge=False)
    table.add_column("variable" if weights else "tensor")
    table.add_column("shape")
    table.add_column("L2", justify="right")
    if weights:
        table.add_column("|g|/|θ|", justify="right")
    values = rec.value_label
    for col in (f"mean {values}", f"max {values}", "zero frac", "non-finite"):
        table.add_column(col, justify="right")
    table.add_column("status", no_wrap=True)
    for t in rec.tensors:
        row = [t.name, _shape(t.shape), fmt(t.l2)]
        if weights:
            row.append(fmt(t.extra.get("relative")))
        row += [
            fmt(t.mean_abs),
            fmt(t.max_abs),
            "-" if t.zero_fraction is None else f"{t.zero_fraction:.3f}",
            fmt(t.nonfinite),
            _status(t),
        ]
        table.add_row(*_cells(*row))
    console.print(table)
    for t in rec.tensors:
        sparse = t.extra.get("sparse")
        if sparse:  # an embedding table: shown dense, its untouched rows are zero
            console.print(
                rich_text(
                    f"{t.name}: sparse gradient, {sparse['rows_touched']:,} of "
                    f"{sparse['rows']:,} rows touched (the others are zero)"
                )
            )
    comp = rec.extra.get("completeness")
    if comp:
        console.print(
            f"IG completeness ({rec.extra['steps']} steps): sum of attributions vs "
            f"o(x) - o(baseline): max gap {fmt(comp['max_abs_gap'], 3)} "
            f"({100 * comp['max_rel_gap']:.3g}% relative), mean gap "
            f"{fmt(comp['mean_abs_gap'], 3)}"
        )
    for t in rec.tensors:
        top_features = t.extra.get("top")
        if top_features:
            console.print(
                rich_text(
                    f"top {len(top_features)} features of {t.name} (mean {values} over samples):"
                )
            )
            top = Table(show_edge=False)
            top.add_column("rank", justify="right")
            top.add_column("feature")
            top.add_column(f"mean {values}", justify="right")
            for rank, f in enumerate(top_features, 1):
                where = str(f["feature"]) if "index" not in f else str(tuple(f["index"]))
                top.add_row(*_cells(str(rank), where, fmt(f["mean_abs"])))
            console.print(top)
    if rec.extra.get("per_sample"):
        _render_per_sample(rec.extra["per_sample"], console)
    if rec.extra.get("layer_summary"):
        _render_flow(rec.extra["layer_summary"], console)
    _render_footer(rec, console)


def _render_per_sample(ps: dict, console: Console) -> None:
    """wrt-weights --per-sample: the spread of the g_i, per layer and model, and the top
    samples."""
    dist = ps["sample_norm"]
    bad = f" · {dist['nonfinite']} non-finite" if dist.get("nonfinite") else ""
    console.print(
        f"per-sample gradients g_i (N={ps['n']}, {ps.get('mode', 'inference')} mode): "
        f"‖g_i‖ median {fmt(dist['median'])} · p90 {fmt(dist['p90'])} · "
        f"p99 {fmt(dist['p99'])} · max {fmt(dist['max'])}{bad}"
    )
    table = Table(show_edge=False)
    for col, justify in (
        ("layer", "left"),
        ("‖G‖", "right"),
        ("tr Σ", "right"),
        ("SNR", "right"),
        ("B_simple", "right"),
        ("median ‖g_i‖", "right"),
        ("max ‖g_i‖", "right"),
    ):
        table.add_column(col, justify=justify)
    for name, row in [*((r["layer"], r) for r in ps["layers"]), ("model", ps["model"])]:
        norms = row.get("sample_norm") or {}
        table.add_row(
            rich_text(name, "bold" if row is ps["model"] else ""),
            fmt(row["g_norm"]),
            fmt(row["trace_cov"]),
            fmt(row["snr"]),
            fmt(row["b_simple"]),
            fmt(norms.get("median")),
            fmt(norms.get("max")),
        )
    console.print(table)
    console.print(
        "  tr Σ: trace of the g_i's covariance · SNR = ‖G‖² / (tr Σ / N) · "
        "B_simple = tr Σ / ‖G‖² (critical batch size estimate)"
    )
    if ps.get("note"):
        console.print(rich_text(f"  {ps['note']}"))
    if ps.get("top"):
        console.print(f"top {len(ps['top'])} samples by gradient norm ‖g_i‖:")
        top = Table(show_edge=False)
        for col in ("rank", "sample", "‖g_i‖", "objective"):
            top.add_column(col, justify="right")
        for rank, item in enumerate(ps["top"], 1):
            top.add_row(str(rank), str(item["index"]), fmt(item["norm"]), fmt(item["objective"]))
        console.print(top)


def _render_flow(summary: list[dict], console: Console, width: int = 30) -> None:
    logs = [math.log10(s["l2"]) for s in summary if s["l2"] and s["status"] == "ok"]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    span = max(hi - lo, 1e-9)
    console.print("gradient flow per layer (bar: log10 of the L2 norm):")
    table = Table(show_edge=False)
    table.add_column("layer")
    table.add_column("L2", justify="right")
    table.add_column("log-norm")
    for s in summary:
        if s["status"] != "ok" or not s["l2"]:
            bar = Text(s["status"], style=style(s["status"], "red"))
        else:
            frac = (math.log10(s["l2"]) - lo) / span if logs and hi > lo else 1.0
            n = max(1, round(1 + frac * (width - 1)))
            bar = Text("█" * n, style="cyan")
        table.add_row(rich_text(s["layer"]), fmt(s["l2"]), bar)
    console.print(table)
    if logs:
        console.print(f"  (bars span 10^{lo:.1f} to 10^{hi:.1f})")


def _render_diff(rec: Record, console: Console) -> None:
    """A diff record (`gradcli diff`, `--against`): a row per tensor, B the reference."""
    info = rec.extra
    console.print(Text.assemble(("A", "bold"), " ", rich_text(info["a"])))
    console.print(Text.assemble(("B", "bold"), " ", rich_text(info["b"]), " (the reference)"))
    per_sample = info.get("per_sample")
    table = Table(show_edge=False)
    table.add_column("tensor")
    table.add_column("shape")
    for col in ("cosine", "rel diff", "max abs diff", "sign agree"):
        table.add_column(col, justify="right")
    if per_sample:
        table.add_column("rank ρ mean (min)", justify="right")
        table.add_column(f"top {fmt(info.get('top_percent'))}%", justify="right")
    table.add_column("status", no_wrap=True)
    for t in rec.tensors:
        f = t.extra
        row = [
            t.name,
            _shape(t.shape),
            fmt(figure(f, "cosine"), 6),
            fmt(figure(f, "rel_diff"), 3),
            fmt(figure(f, "max_abs_diff"), 3),
            fmt(f.get("sign_agreement"), 4),
        ]
        if per_sample:
            if "rank_corr" in f:
                row += [
                    f"{fmt(figure(f, 'rank_corr'), 3)} ({fmt(figure(f, 'rank_corr_min'), 3)})",
                    fmt(f.get("top_overlap"), 3),
                ]
            else:
                row += ["-", "-"]
        row.append(_status(t))
        table.add_row(*_cells(*row))
    console.print(table)
    for run in info.get("runs") or []:
        if run.get("out"):
            console.print(rich_text(f"wrote {run['out']} ({run['model']})"))
    if rec.gates:
        console.print(Text(f"gates tripped: {', '.join(rec.gates)}", style="bold red"))


def _render_check(rec: Record, console: Console) -> None:
    console.print(_header(rec, method=False))
    run = rec.extra
    subset = f"; the first {run['samples']} of {rec.n} samples" if run.get("samples") else ""
    console.print(
        f"finite differences: {run['precision']}, eps {fmt(run['eps'])}, "
        f"{run['directions']} random direction(s) per tensor, rtol {fmt(run['rtol'])}{subset}"
    )
    table = Table(show_edge=False)
    for col, justify in (
        ("tensor", "left"),
        ("shape", "left"),
        ("autodiff", "right"),
        ("finite diff", "right"),
        ("fd error", "right"),
        ("rel error", "right"),
        ("ratio", "right"),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify)
    for t in rec.tensors:
        row = t.extra
        ad = fd = err = None
        if row["autodiff"]:
            # the direction furthest outside its allowance
            k = max(range(len(row["autodiff"])), key=lambda i: _excess(row, run["rtol"], i))
            ad, fd = row["autodiff"][k], row["finite_diff"][k]
            err = (row.get("fd_error") or [None] * (k + 1))[k]
        table.add_row(
            rich_text(t.name),
            _shape(t.shape),
            fmt(ad, 6),
            fmt(fd, 6),
            fmt(err, 2),
            fmt(row["rel_error"], 3),
            fmt(row.get("error_ratio"), 3),
            _status(t),
        )
    console.print(table)
    console.print(
        "  a direction passes when |ad - fd| <= rtol * max(|ad|, |fd|) + fd error (ratio <= 1)"
    )
    _render_footer(rec, console)


def _excess(t: dict, rtol: float, i: int) -> float:
    a, f = t["autodiff"][i], t["finite_diff"][i]
    if a is None or f is None:
        return math.inf
    err = (t.get("fd_error") or [0.0] * (i + 1))[i] or 0.0
    allowed = rtol * max(abs(a), abs(f)) + err
    return abs(a - f) / allowed if allowed else (0.0 if a == f else math.inf)


def _render_footer(rec: Record, console: Console) -> None:
    if rec.extra.get("out"):
        console.print(rich_text(f"wrote {rec.extra['out']}"))
    png = rec.extra.get("png")
    if png:
        if isinstance(png, list):
            console.print(rich_text(f"wrote {len(png)} PNG heatmap(s) to {_common_dir(png)}"))
        else:
            console.print(rich_text(f"wrote {png}"))
    if rec.gates:
        console.print(Text(f"gates tripped: {', '.join(rec.gates)}", style="bold red"))


def _common_dir(paths: list[str]) -> str:
    import os

    return os.path.dirname(paths[0]) if paths else ""


def _render_many(records: list[Record], console: Console) -> None:
    command = records[0].command
    console.print(f"{command}: {len(records)} models")
    table = Table(show_edge=False)
    for col, justify in (
        ("model", "left"),
        ("format", "left"),
        ("N", "right"),
        ("tensors", "right"),
        ("largest L2", "right"),
        ("worst", "left"),
        ("result", "left"),
    ):
        table.add_column(
            col, justify=justify, overflow="fold" if col in ("model", "result") else "ellipsis"
        )
    for rec in records:
        if rec.error:
            table.add_row(
                *_cells(rec.model, "-", "-", "-", "-", "-"),
                rich_text(f"error: {rec.error}", "red"),
            )
            continue
        tensors = rec.tensors
        norms = [t.l2 for t in tensors if t.l2 is not None]
        worst = worst_status(t.status for t in tensors).value
        if rec.kind == Kind.MODEL:
            result = rich_text(f"{len(rec.extra['layers'])} layers, loss {rec.extra['loss']}")
        elif rec.gates:
            result = Text(f"gates tripped: {', '.join(rec.gates)}", style="bold red")
        else:
            result = Text("ok", style="green")
        table.add_row(
            *_cells(rec.model, rec.format),
            fmt(rec.n),
            str(len(tensors)) if rec.kind != Kind.MODEL else "-",
            fmt(max(norms)) if norms else "-",
            Text(worst, style=style(worst)) if tensors else "-",
            result,
        )
    console.print(table)


def _render_influence(rec: Record, console: Console) -> None:
    from gradcli.present.influence import render as render_influence  # it uses fmt from here

    render_influence(rec, console)


_RENDER = {
    Kind.INFLUENCE: _render_influence,
    Kind.MODEL: _render_info,
    Kind.GRADIENTS: _render_gradients,
    Kind.WEIGHTS: _render_gradients,
    Kind.CHECK: _render_check,
    Kind.DIFF: _render_diff,
}
