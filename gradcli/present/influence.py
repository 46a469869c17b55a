"""An influence record (TracIn: `gradcli influence`, `gradcli merge`) for people: a Rich table
(`render`) and Markdown (`markdown_lines`). The JSON is the record itself; the JUnit report
gives it one test case (junit.py)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradcli.present.escape import markdown, markdown_code, rich_text
from gradcli.present.records import Record
from gradcli.present.table import fmt

SHOWN_TESTS = 10  # test samples in the table and Markdown; every one in the JSON and -o


def summary(rec: Record) -> list[str]:
    """What was computed, in lines of gradcli's words and numbers (names from files are
    escaped by each sink)."""
    extra = rec.extra
    checkpoints = extra.get("checkpoints") or []
    rates = ", ".join(fmt(c.get("lr")) for c in checkpoints)
    source = "read from the checkpoints" if extra.get("lr_source") == "saved" else "given"
    lines = [
        f"TracIn over {len(checkpoints)} checkpoint(s), learning rates {source}: {rates}",
        f"{extra.get('n_train')} training samples, {extra.get('n_test')} test samples · "
        f"{int(extra.get('parameters') or 0):,} parameters in {len(extra.get('variables') or [])} "
        "variable(s)",
    ]
    projection = extra.get("projection")
    if projection:
        lines.append(
            f"test scores through a {projection['dim']}-number CountSketch (seed "
            f"{projection['seed']}): within ±{fmt(projection['error_bound'], 3)} x |g||g'| of "
            f"the exact score with probability {1 - projection['delta']:.0%}; self-influence exact"
        )
    shard = extra.get("shard")
    if shard:
        lines.append(
            f"shard {shard[0]}/{shard[1]}: {extra.get('rows')} of {extra.get('n_train')} training "
            "rows (combine the shards' -o files with `gradcli merge`)"
        )
    own = extra.get("self_influence") or {}
    lines.append(
        f"self-influence: median {fmt(own.get('median'))} · mean {fmt(own.get('mean'))} · "
        f"max {fmt(own.get('max'))}"
        + (f" · {own['nonfinite']} non-finite" if own.get("nonfinite") else "")
    )
    return lines


def _tests(rec: Record) -> list[dict]:
    return (rec.extra.get("test") or [])[:SHOWN_TESTS]


def _more(rec: Record) -> str | None:
    n = len(rec.extra.get("test") or [])
    if n <= SHOWN_TESTS:
        return None
    return f"(the first {SHOWN_TESTS} of {n} test samples; every one in --json and -o)"


def _pairs(test: dict, k: int) -> list[tuple[dict | None, dict | None]]:
    pro, opp = test.get("proponents") or [], test.get("opponents") or []
    return [(pro[i] if i < len(pro) else None, opp[i] if i < len(opp) else None) for i in range(k)]


def _cell(item: dict | None, key: str) -> str:
    if item is None:
        return "-"
    return str(item[key]) if key == "row" else fmt(item.get(key))


def render(rec: Record, console: Console) -> None:
    console.print(
        Text.assemble(rich_text(rec.model, "bold"), rich_text(f" ({rec.format}) · {rec.objective}"))
    )
    for line in summary(rec):
        console.print(rich_text(line))
    own = rec.extra.get("self_influence") or {}
    if own.get("top"):
        console.print(
            f"top {len(own['top'])} training samples by self-influence (likeliest mislabelled "
            "first; the loss at the last checkpoint is a strong baseline):"
        )
        table = Table(show_edge=False)
        for col in ("rank", "train row", "self-influence", "loss"):
            table.add_column(col, justify="right")
        for rank, item in enumerate(own["top"], 1):
            table.add_row(str(rank), str(item["row"]), fmt(item["score"]), fmt(item.get("loss")))
        console.print(table)
    tests = _tests(rec)
    if tests:
        k = max(len(t.get("proponents") or []) for t in tests)
        console.print(
            f"top {k} proponents (training lowered the test loss) and opponents (raised it):"
        )
        table = Table(show_edge=False)
        for col in ("test", "rank", "proponent", "score", "opponent", "score"):
            table.add_column(col, justify="right")
        for test in tests:
            for rank, (pro, opp) in enumerate(_pairs(test, k), 1):
                table.add_row(
                    str(test["index"]) if rank == 1 else "",
                    str(rank),
                    _cell(pro, "row"),
                    _cell(pro, "score"),
                    _cell(opp, "row"),
                    _cell(opp, "score"),
                    end_section=rank == k,
                )
        console.print(table)
        if _more(rec):
            console.print(_more(rec))
    if rec.extra.get("out"):
        console.print(rich_text(f"wrote {rec.extra['out']}"))
    png = rec.extra.get("png")
    if png:
        console.print(
            rich_text(f"wrote {len(png)} PNG(s): {png[0]}" + (" ..." if len(png) > 1 else ""))
        )


def markdown_lines(rec: Record) -> list[str]:
    """The record as Markdown lines (cells escaped where they hold text from files)."""
    head = f"**{markdown_code(rec.model)}** · influence · {markdown(rec.objective or '')}"
    lines = [head, "", *(f"- {markdown(line)}" for line in summary(rec))]
    own = rec.extra.get("self_influence") or {}
    if own.get("top"):
        lines += ["", "| rank | train row | self-influence | loss |", "|---:|---:|---:|---:|"]
        for rank, item in enumerate(own["top"], 1):
            lines.append(
                f"| {rank} | {item['row']} | {fmt(item['score'])} | {fmt(item.get('loss'))} |"
            )
    tests = _tests(rec)
    if tests:
        k = max(len(t.get("proponents") or []) for t in tests)
        lines += [
            "",
            "| test | rank | proponent | score | opponent | score |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for test in tests:
            for rank, (pro, opp) in enumerate(_pairs(test, k), 1):
                first = str(test["index"]) if rank == 1 else ""
                cells = [_cell(pro, "row"), _cell(pro, "score"), _cell(opp, "row")]
                lines.append(
                    f"| {first} | {rank} | " + " | ".join(cells) + f" | {_cell(opp, 'score')} |"
                )
        if _more(rec):
            lines += ["", markdown(_more(rec))]
    return lines
