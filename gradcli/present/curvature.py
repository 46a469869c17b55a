"""Curvature records (`hessian`) for people: Rich tables and Markdown (no TensorFlow here).

A weights record shows the top eigenvalues with their residuals, the Hutchinson trace with
its standard error, a row per layer (its block's trace and, with --per-layer, its own top
eigenvalue), a row per variable (its block's trace: HAWQ's figure) and the density's
summary; an input record the distribution of the per-sample top eigenvalues and the
sharpest samples. A directory run is one row per checkpoint: sharpness and trace over
training.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcli.present.escape import markdown, markdown_code, rich_text
from gradcli.present.gates import style
from gradcli.present.records import Record
from gradcli.present.table import fmt

PRODUCTS = "Hessian-vector products"


def _pm(value: float | None, stderr: float | None) -> str:
    return f"{fmt(value)} ± {fmt(stderr, 2)}" if stderr is not None else fmt(value)


def eigen_line(e: dict) -> str:
    """What Lanczos found and the work it took."""
    return (
        f"top eigenvalues ({e['which']}; Lanczos, tol {fmt(e['tol'])} of |H| ≈ "
        f"{fmt(e['norm'], 3)}, {e['products']} products, {e['restarts']} restart(s)):"
    )


def eigen_items(e: dict) -> list[str]:
    out = []
    for i, (v, r, ok) in enumerate(zip(e["values"], e["residuals"], e["converged"], strict=True)):
        state = "converged" if ok else "not converged"
        out.append(f"λ{i + 1} = {fmt(v, 6)} (residual {fmt(r, 2)}, {state})")
    return out


def trace_line(t: dict) -> str:
    stop = f", stopped at rtol {fmt(t['rtol'])}" if t.get("rtol") is not None else ""
    return (
        f"trace (Hutchinson, {t['probes']} probes{stop}): {_pm(t['value'], t['stderr'])} "
        f"(per weight {fmt(t.get('per_weight'))})"
    )


def density_line(d: dict) -> str:
    return (
        f"density (stochastic Lanczos quadrature, {d['runs']} run(s) x {d['steps']} steps, "
        f"{d['bins']} bins): mean eigenvalue {_pm(d['mean']['value'], d['mean']['stderr'])}, "
        f"so trace ≈ {fmt(d['trace'])}; histogram in the JSON and .npz"
    )


def per_sample_line(ps: dict) -> str:
    top = ps.get("top") or {}
    return (
        f"input Hessian per sample (top eigenvalue, {ps['which']}): median "
        f"{fmt(top.get('median'))} · p90 {fmt(top.get('p90'))} · max {fmt(top.get('max'))} · "
        f"min {fmt(top.get('min'))}; {ps['converged']} converged (tol {fmt(ps['tol'])}, at "
        f"most {ps['max_steps']} products each, {ps['products']} product calls)"
    )


def sharpness_line(s: dict) -> str | None:
    if "limit" not in s:
        return None
    verdict = "too-sharp" if s.get("tripped") else "ok"
    return f"sharpness {fmt(s.get('value'), 6)} (limit {fmt(s['limit'], 6)}): {verdict}"


def _status(row) -> Text:
    status = str(row.get("status"))
    if row.get("tripped"):
        return Text(f"✗ {status}", style="bold red")
    return Text(status, style=style(status))


def render(rec: Record, console: Console, header: Text) -> None:
    """One curvature record."""
    console.print(header)
    x = rec.extra
    if x.get("wrt") == "input":
        _render_input(rec, console)
    else:
        _render_weights(rec, console)
    for key, label in (("out", "wrote"), ("png", "wrote")):
        if x.get(key):
            console.print(rich_text(f"{label} {x[key]}"))
    line = sharpness_line(x.get("sharpness") or {})
    if line:
        console.print(Text(line, style="bold red" if x["sharpness"].get("tripped") else ""))
    if rec.gates:
        console.print(Text(f"gates tripped: {', '.join(rec.gates)}", style="bold red"))


def _render_weights(rec: Record, console: Console) -> None:
    x = rec.extra
    console.print(
        f"Hessian of the mean objective w.r.t. {x['size']:,} weights: objective "
        f"{fmt(x.get('objective_mean'))}, gradient L2 {fmt(x.get('gradient_l2'))}; "
        f"{x['products']} {PRODUCTS}"
    )
    if x.get("eigen"):
        console.print(eigen_line(x["eigen"]))
        for item in eigen_items(x["eigen"]):
            console.print(f"  {item}")
    if x.get("trace"):
        console.print(trace_line(x["trace"]))
    layers = x.get("layers") or []
    if layers:
        per_layer = any("top" in entry for entry in layers)
        table = Table(show_edge=False, title=None)
        cols = ["layer", "weights", "trace ± se", "trace/weight"]
        cols += ["top λ (own block)", "residual"] if per_layer else []
        for col in cols:
            table.add_column(col, justify="left" if col == "layer" else "right")
        for entry in layers:
            row = [
                rich_text(entry["layer"]),
                f"{entry['size']:,}",
                _pm(entry.get("trace"), entry.get("trace_stderr")),
                fmt(entry.get("trace_per_weight")),
            ]
            if per_layer:
                row += [fmt(entry.get("top"), 6), fmt(entry.get("residual"), 2)]
            table.add_row(*row)
        console.print(table)
    table = Table(show_edge=False)
    for col in ("variable", "shape", "trace ± se", "trace/weight", "gradient L2", "status"):
        table.add_column(col, justify="left" if col in ("variable", "shape", "status") else "right")
    for t in rec.tensors:
        table.add_row(
            rich_text(t.name),
            "(" + ", ".join(str(d) for d in t.shape) + ")",
            _pm(t.get("trace"), t.get("trace_stderr")),
            fmt(t.get("trace_per_weight")),
            fmt(t.get("gradient_l2")),
            _status(t),
        )
    console.print(table)
    if x.get("density"):
        console.print(density_line(x["density"]))


def _render_input(rec: Record, console: Console) -> None:
    ps = rec.extra["per_sample"]
    console.print(per_sample_line(ps))
    if ps.get("sharpest"):
        table = Table(show_edge=False)
        for col in ("rank", "sample", "top λ"):
            table.add_column(col, justify="right")
        for rank, item in enumerate(ps["sharpest"], 1):
            table.add_row(str(rank), str(item["index"]), fmt(item["value"], 6))
        console.print(table)
    table = Table(show_edge=False)
    for col in ("input", "shape", "status"):
        table.add_column(col)
    for t in rec.tensors:
        table.add_row(rich_text(t.name), "(" + ", ".join(map(str, t.shape)) + ")", _status(t))
    console.print(table)


def top_value(rec: Record) -> float | None:
    """The figure a directory run lists per model: λ1, or the largest per-sample one."""
    if rec.get("wrt") == "input":
        return ((rec.get("per_sample") or {}).get("top") or {}).get("max")
    values = (rec.get("eigen") or {}).get("values") or [None]
    return values[0]


def trace_text(rec: Record) -> str:
    t = rec.get("trace")
    return _pm(t.get("value"), t.get("stderr")) if t else "-"


def render_many(records: list[Record], console: Console) -> None:
    """A directory of checkpoints: one row each (sharpness over training)."""
    console.print(f"{records[0].command}: {len(records)} models")
    table = Table(show_edge=False)
    for col in ("model", "N", "top λ", "trace ± se", "result"):
        table.add_column(col, justify="right" if col in ("N", "top λ") else "left")
    for rec in records:
        if rec.error:
            table.add_row(
                rich_text(rec.model), "-", "-", "-", rich_text(f"error: {rec.error}", "red")
            )
            continue
        result = (
            Text(f"gates tripped: {', '.join(rec.gates)}", style="bold red")
            if rec.gates
            else Text("ok", style="green")
        )
        table.add_row(
            rich_text(rec.model), fmt(rec.n), fmt(top_value(rec), 6), trace_text(rec), result
        )
    console.print(table)


# ------------------------------------------------------------------ Markdown


def markdown_lines(rec: Record, table) -> list[str]:
    """One record as Markdown (`table(header, rows, right)` builds a GFM table)."""
    x = rec.extra
    head = f"**{markdown_code(rec.model)}** · {rec.command} · N={rec.n}"
    if rec.objective:
        head += f" · objective: {markdown(rec.objective)}"
    head += " · " + ("✗ " + ", ".join(rec.gates) if rec.gates else "ok")
    lines = [head, ""]
    if x.get("wrt") == "input":
        lines.append(markdown(per_sample_line(x["per_sample"])))
    else:
        if x.get("eigen"):
            lines.append(
                markdown(eigen_line(x["eigen"]))
                + " "
                + markdown("; ".join(eigen_items(x["eigen"])))
            )
        if x.get("trace"):
            lines += ["", markdown(trace_line(x["trace"]))]
        if x.get("density"):
            lines += ["", markdown(density_line(x["density"]))]
    line = sharpness_line(x.get("sharpness") or {})
    if line:
        lines += ["", f"**{markdown(line)}**"]
    rows = []
    for t in rec.tensors:
        status = f"**✗ {t.status}**" if t.tripped else str(t.status)
        trace = _pm(t.get("trace"), t.get("trace_stderr")) if "trace" in t else "-"
        rows.append([markdown_code(t.name, table=True), markdown(str(t.shape)), trace, status])
    name = "variable" if x.get("wrt") != "input" else "input"
    return [*lines, "", *table([name, "shape", "trace ± se", "status"], rows, {2})]


def markdown_many(records: list[Record], table) -> list[str]:
    rows = []
    for rec in records:
        if rec.error:
            rows.append(
                [markdown_code(rec.model, table=True), "-", "-", "error: " + markdown(rec.error)]
            )
            continue
        verdict = "✗ " + ", ".join(rec.gates) if rec.gates else "ok"
        rows.append(
            [markdown_code(rec.model, table=True), fmt(top_value(rec), 6), trace_text(rec), verdict]
        )
    head = f"### gradcli {records[0].command}: {len(records)} model(s)"
    return [head, "", *table(["model", "top λ", "trace ± se", "result"], rows, {1, 2})]
