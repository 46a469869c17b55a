"""Rendered output, compared with golden text (Rich, 100 columns, no colour)."""

from __future__ import annotations

from rich.console import Console

from gradcli.commands.display import typed
from gradcli.present.json import line as to_json
from gradcli.present.table import render

RECORD = {
    "version": "0.1.0",
    "command": "wrt-weights",
    "model": "m.keras",
    "format": "keras",
    "loader": "keras",
    "n": 4,
    "objective": "sum of out",
    "method": "vanilla",
    "tensors": [
        {
            "name": "d/kernel",
            "shape": [3, 2],
            "status": "ok",
            "tripped": False,
            "l2": 1.5,
            "mean_abs": 0.25,
            "max_abs": 0.75,
            "zero_fraction": 0.0,
            "nonfinite": 0,
            "param_l2": 3.0,
            "relative": 0.5,
        },
        {
            "name": "e/kernel",
            "shape": [2, 1],
            "status": "disconnected",
            "tripped": True,
            "l2": None,
            "mean_abs": None,
            "max_abs": None,
            "zero_fraction": None,
            "nonfinite": None,
            "param_l2": 1.0,
            "relative": None,
        },
    ],
    "gates": ["disconnected"],
    "exit_code": 1,
    "layer_summary": [
        {"layer": "d", "l2": 1.5, "status": "ok"},
        {"layer": "e", "l2": 0.0, "status": "disconnected"},
    ],
    "out": "w.npz",
    "png": None,
}

GOLDEN = """\
m.keras (keras, keras) · N=4 · objective: sum of out
 variable ┃ shape  ┃  L2 ┃ |g|/|θ| ┃ mean |g| ┃ max |g| ┃ zero frac ┃ non-finite ┃ status
━━━━━━━━━━╇━━━━━━━━╇━━━━━╇━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━
 d/kernel │ (3, 2) │ 1.5 │     0.5 │     0.25 │    0.75 │     0.000 │          0 │ ok
 e/kernel │ (2, 1) │   - │       - │        - │       - │         - │          - │ ✗ disconnected
gradient flow per layer (bar: log10 of the L2 norm):
 layer ┃  L2 ┃ log-norm
━━━━━━━╇━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━
 d     │ 1.5 │ ██████████████████████████████
 e     │   0 │ disconnected
  (bars span 10^0.2 to 10^0.2)
wrote w.npz
gates tripped: disconnected
"""


def test_weights_table_golden():
    console = Console(record=True, width=100, color_system=None)
    render(typed([RECORD]), console)
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert text == GOLDEN


def test_json_is_one_line_with_nulls_for_missing_figures():
    line = to_json(RECORD)
    assert "\\n" not in line and "NaN" not in line
    assert '"l2": null' in line


def test_many_models_one_row_each_with_errors():
    console = Console(record=True, width=100, color_system=None)
    broken = {
        "command": "wrt-weights",
        "model": "b.keras",
        "error": "b.keras: not a .keras archive (expected a zip file)",
        "exit_code": 3,
        "tensors": [],
        "gates": [],
    }
    render(typed([RECORD, broken]), console)
    text = console.export_text()
    assert text.splitlines()[0] == "wrt-weights: 2 models"
    assert "m.keras" in text and "gates tripped: disconnected" in text
    assert "error: b.keras: not a .keras" in text
