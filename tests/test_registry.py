"""The tables hold together: every command spec resolves and appears in the CLI and the API,
every method resolves, every output format renders every record kind, and the knowledge the
tables hold is written nowhere else (no command name as a literal outside commands/, no
`--flag` text in engine/ or load/ messages, every `param()` names an option that exists)."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from conftest import ROOT
from gradcli.commands import COMMANDS, api_specs, cli_flags, worker_commands
from gradcli.commands.spec import OWN, REPORT_FILES, resolve
from gradcli.methods import METHODS
from gradcli.present.formats import OUTPUT_FORMATS
from gradcli.present.records import Kind, Record

PACKAGE = ROOT / "gradcli"
PROTOCOL = {"command", "skip", "reports"}  # fields no flag sets
# fields a command has (its options class shares them) but does not offer on its command line
HIDDEN = {
    "jacobian": {"target", "loss", "from_logits", "class_index", "logits"},
    "check": {"logits", "jit", "out", "fail_on", "max_norm", "min_norm"},
    "influence": {"class_index", "logits", "training", "jit", "fail_on", "max_norm", "min_norm"},
    "hessian": {"max_norm", "min_norm"},
}


def _sources(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_spec_resolves(name):
    from gradcli.cli.options import PRESENTATION

    spec = COMMANDS[name]
    assert spec.help.strip() and spec.name == name
    assert callable(spec.implementation())
    fields = set(spec.field_names())
    for item in spec.layout:
        assert item in fields | set(PRESENTATION) | set(spec.cli_only) | {OWN, REPORT_FILES}, item
    shown = set(spec.layout)
    if OWN in shown:
        own = spec.options.__dict__.get("__annotations__", {})
        shown |= set(own)
    assert fields - shown - PROTOCOL == HIDDEN.get(name, set())
    assert set(spec.files) <= fields and set(spec.provenance_params) <= fields
    assert set(spec.provenance_defaults) <= set(spec.provenance_params)
    assert spec.record_kind in set(Kind)
    for field in dataclasses.fields(spec.options):
        flag = field.metadata.get("flag")
        if flag is not None and flag.complete:
            assert callable(resolve(flag.complete))


def test_every_command_has_a_help_page_and_a_python_function(cli):
    import gradcli

    api_source = ast.parse((PACKAGE / "api.py").read_text())
    functions = {n.name for n in api_source.body if isinstance(n, ast.FunctionDef)}
    assert set(api_specs()) <= functions
    assert set(api_specs()) <= set(dir(gradcli))
    for name in COMMANDS:
        r = cli(name, "--help")
        assert r.code == 0 and COMMANDS[name].help.split("\n")[0][:40] in " ".join(r.out.split())


def test_the_worker_runs_the_commands_the_table_says():
    assert worker_commands() == {n for n, s in COMMANDS.items() if s.in_worker}
    from gradcli.process import supervisor

    for name in COMMANDS:
        assert supervisor.wants_worker([name, "m.keras"]) == COMMANDS[name].in_worker


def test_every_module_of_commands_contributes_one_spec():
    from gradcli.commands.spec import CommandSpec

    parts = {"__init__", "spec", "fields", "layouts", "wire", "display", "values", "shardenv"}
    found = {}
    for path in _sources("commands"):
        if path.stem in parts:
            continue
        module = __import__(f"gradcli.commands.{path.stem}", fromlist=["*"])
        specs = [v for v in vars(module).values() if isinstance(v, CommandSpec)]
        assert len(specs) == 1, path
        found[specs[0].name] = specs[0]
    assert found == COMMANDS


def test_local_commands_import_no_tensorflow_at_import():
    from test_architecture import HEAVY, MODULES, imports_of

    for spec in COMMANDS.values():
        if spec.in_worker:
            continue
        todo, seen = [spec.impl.partition(":")[0]], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for target in imports_of(name, MODULES, top_level_only=True):
                if target in MODULES:
                    todo.append(target)
                assert target not in HEAVY - {"numpy"}, f"{name} imports {target}"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_resolves(name):
    from gradcli.commands.wrt_input import WrtInputJob

    method = METHODS[name]
    assert method.help and method.name == name
    assert set(method.options) <= {f.name for f in dataclasses.fields(WrtInputJob)}
    for part in (method.attribute, method.prepare, method.extras):
        assert part is None or callable(resolve(part) if isinstance(part, str) else part)


# ------------------------------------------------------------------ one record per kind

ROW = {
    "name": "t",
    "shape": [2, 3],
    "status": "ok",
    "tripped": False,
    "l2": 1.0,
    "mean_abs": 0.1,
    "max_abs": 0.5,
    "zero_fraction": 0.0,
    "nonfinite": 0,
}
BASE = {
    "version": "0",
    "model": "model-name.keras",
    "format": "keras",
    "loader": "keras",
    "n": 2,
    "objective": "sum of y",
    "method": "vanilla",
    "gates": [],
    "exit_code": 0,
}
RECORDS = {
    Kind.MODEL: {
        **BASE,
        "command": "info",
        "endpoint": None,
        "loss": "mse",
        "loss_note": None,
        "inputs": [{"name": "x", "shape": [3], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1], "dtype": "float32"}],
        "layers": [
            {
                "index": 0,
                "name": "d",
                "class": "Dense",
                "output_shape": "(None, 1)",
                "params": 4,
                "depth": 0,
            }
        ],
        "trainable_params": 4,
        "tensors": [],
    },
    Kind.GRADIENTS: {**BASE, "command": "wrt-input", "tensors": [ROW]},
    Kind.WEIGHTS: {
        **BASE,
        "command": "wrt-weights",
        "tensors": [{**ROW, "param_l2": 2.0, "relative": 0.5}],
        "layer_summary": [{"layer": "d", "l2": 1.0, "status": "ok"}],
    },
    Kind.CHECK: {
        **BASE,
        "command": "check",
        "method": "finite differences",
        "precision": "float64",
        "eps": 1e-5,
        "rtol": 1e-4,
        "directions": 1,
        "tensors": [
            {
                **ROW,
                "autodiff": [1.0],
                "finite_diff": [1.0],
                "fd_error": [0.0],
                "rel_error": 0.0,
                "error_ratio": 0.0,
            }
        ],
    },
    Kind.CURVATURE: {
        **BASE,
        "command": "hessian",
        "method": "Hessian-vector products (double-backward)",
        "tensors": [
            {
                "name": "t",
                "shape": [2, 3],
                "size": 6,
                "status": "ok",
                "tripped": False,
                "trace": 1.0,
                "trace_stderr": 0.1,
                "trace_per_weight": 0.17,
                "gradient_l2": 0.5,
            }
        ],
        "wrt": "weights",
        "hvp": "double-backward",
        "size": 6,
        "objective_mean": 0.7,
        "gradient_l2": 0.5,
        "eigen": {
            "which": "largest",
            "values": [2.0],
            "residuals": [1e-4],
            "converged": [True],
            "tol": 1e-3,
            "norm": 2.0,
            "products": 5,
            "restarts": 0,
            "max_steps": 6,
        },
        "trace": {"value": 1.0, "stderr": 0.1, "probes": 10, "rtol": None, "per_weight": 0.17},
        "layers": [{"layer": "d", "size": 6, "trace": 1.0, "trace_stderr": 0.1}],
        "products": 15,
        "sharpness": {"value": 2.0, "limit": 3.0, "tripped": False},
    },
    Kind.DIFF: {
        **BASE,
        "command": "diff",
        "a": "model-name.keras",
        "b": "b.npz",
        "per_sample": False,
        "top_percent": 10.0,
        "warnings": [],
        "notes": [],
        "limits": {},
        "tensors": [
            {
                "name": "t",
                "shape": [2, 3],
                "status": "ok",
                "tripped": False,
                "cosine": 1.0,
                "rel_diff": 0.0,
                "max_abs_diff": 0.0,
                "sign_agreement": 1.0,
            }
        ],
    },
    Kind.INFLUENCE: {
        **BASE,
        "command": "influence",
        "method": "tracin",
        "checkpoints": [{"path": "ckpt-1.keras", "lr": 0.1}, {"path": "ckpt-2.keras", "lr": 0.05}],
        "lr_source": "saved",
        "variables": ["d/kernel", "d/bias"],
        "parameters": 4,
        "projection": {
            "method": "countsketch",
            "seed": 0,
            "dim": 2,
            "blocks": 1,
            "delta": 0.05,
            "error_bound": 4.47,
        },
        "n_train": 2,
        "n_test": 1,
        "rows": 2,
        "shard": [0, 1],
        "top": 1,
        "batch_size": 2,
        "self_influence": {
            "listed": True,
            "median": 1.0,
            "mean": 1.0,
            "max": 1.5,
            "nonfinite": 0,
            "top": [{"row": 1, "score": 1.5, "loss": 0.7}],
        },
        "test": [
            {
                "index": 0,
                "proponents": [{"row": 1, "score": 0.5}],
                "opponents": [{"row": 0, "score": -0.5}],
            }
        ],
        "out": "out.npz",
        "png": ["png/test_0000.png"],
        "tensors": [],
    },
}


def test_every_kind_has_a_golden_record():
    assert set(RECORDS) == set(Kind)
    assert {COMMANDS[r["command"]].record_kind for r in RECORDS.values()} == set(Kind)


@pytest.mark.parametrize("fmt", list(OUTPUT_FORMATS))
@pytest.mark.parametrize("kind", list(Kind))
def test_every_output_format_renders_every_record_kind(fmt, kind, tmp_path):
    from gradcli.commands.display import typed

    error = {
        "command": RECORDS[kind]["command"],
        "model": "broken.keras",
        "error": "no",
        "exit_code": 3,
        "tensors": [],
        "gates": [],
    }
    for records in ([RECORDS[kind]], [RECORDS[kind], error]):
        shown = typed(json.loads(json.dumps(records)))
        assert all(isinstance(r, Record) and r.kind == kind for r in shown)
        spec = OUTPUT_FORMATS[fmt]
        renderer = spec.renderer()
        if spec.streams:
            for rec in records:
                assert json.loads(renderer.line(rec)) == rec
            continue
        if spec.stdout:
            console = Console(file=io.StringIO(), record=True, width=100, color_system=None)
            renderer.render(shown, console)
            text = console.export_text() or console.file.getvalue()
        else:
            renderer.write_file(shown, tmp_path / "report")
            text = (tmp_path / "report").read_text()
        assert "model-name.keras" in text, (fmt, kind, text)
        if len(records) > 1:
            assert "broken.keras" in text, (fmt, kind, text)


# ------------------------------------------------------------------ written once


def _constants(path: Path):
    """Every string constant of a module except docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node


def test_no_command_name_literal_outside_commands():
    found = []
    for path in _sources():
        if path.is_relative_to(PACKAGE / "commands"):
            continue
        for node in _constants(path):
            if node.value in COMMANDS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


FLAG_TEXT = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@pytest.mark.parametrize("layer", ["engine", "load"])
def test_no_flag_text_in_engine_or_load_messages(layer):
    found = []
    for path in _sources(layer):
        for node in _constants(path):
            if FLAG_TEXT.search(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:70]!r}")
    assert not found, "\n".join(found)


def test_every_param_names_an_option_that_exists():
    flags = cli_flags()
    offered = set(flags.values())
    for spec in COMMANDS.values():
        for field in dataclasses.fields(spec.options):
            flag = field.metadata.get("flag")
            if flag is not None:
                offered.update(flag.names)
    missing = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "param"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                name = node.args[0].value
                flag = flags.get(name, "--" + name.replace("_", "-"))
                if flag not in offered:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: param({name!r})")
    assert not missing, "\n".join(missing)
