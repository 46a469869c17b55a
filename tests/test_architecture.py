"""Architecture contracts over the import graph: every import statement, function bodies
included, read with `ast` (no dependency; it sees what ruff's TID253 cannot).

Forbidden imports are checked on direct imports (a function-level import counts: it is an
edge too); lightness is checked transitively over module-level imports only, which is what
`import` executes. A dotted path a spec names (commands/, methods/) is resolved at run time
and is no import edge: the registry tests check those resolve.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(os.environ.get("ARCH_PACKAGE", Path(__file__).resolve().parents[1] / "gradcli"))
HEAVY = {"numpy", "tensorflow", "keras", "tf_keras", "matplotlib", "h5py", "junitparser"}
TF = {"tensorflow", "keras", "tf_keras"}
# layer -> what its modules may never import, in any statement (function bodies included);
# "methods.*" is any module of methods but its light table (the package itself)
FORBIDDEN: dict[str, set[str]] = {
    "cli": {"engine", "load", "jobs", "methods.*", *TF},
    "commands": {"engine", "load", "jobs", "methods.*", "cli", "process", "io", "numpy", *TF},
    "present": {"engine", "load", "jobs", "methods", "commands", "cli", "process", *TF},
    "io": {"engine", "load", "present", "jobs", "methods", "commands", "cli", "process", *TF},
    "load": {"engine", "present", "methods", "jobs", "commands", "cli", "process"},
    "engine": {
        "cli",
        "present",
        "jobs",
        "methods",
        "commands",
        "process",
        "io.outputs",
        "io.npzfile",
        "io.overlap",
    },  # io's writers
    "methods": {"jobs", "cli", "process", "present", "commands"},
    "jobs": {"cli", "process"},
    "process": {"cli", "engine", "methods", "present"},  # load: the worker imports load.backend
}
# what `gradcli --help` loads: their module-level imports, transitively, stay light
LIGHT = [
    "gradcli",
    "gradcli.errors",
    "gradcli.cli",
    "gradcli.cli.launch",
    "gradcli.cli.app",
    "gradcli.cli.options",
    "gradcli.cli.prescan",
    "gradcli.cli.params",
    "gradcli.cli.funnel",
    "gradcli.cli.preflight",
    "gradcli.cli.completion",
    "gradcli.commands",
    "gradcli.commands.wire",
    "gradcli.commands.display",
    "gradcli.methods",
    "gradcli.present.formats",
    "gradcli.present.gates",
    "gradcli.present.records",
    "gradcli.io.paths",
    "gradcli.io.modelfiles",
    "gradcli.io.collisions",
    "gradcli.process.supervisor",
]
# the one module of each that may import it
IMPORTERS = {
    "tensorflow": "gradcli.load.backend",
    "keras": "gradcli.load.backend",
    "tf_keras": "gradcli.load.backend",
}


def modules_of(package: Path) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules_of(PACKAGE)


def imports_of(name: str, modules: dict[str, Path], top_level_only: bool = False) -> set[str]:
    """What module `name` imports: gradcli modules by full name, others by top-level package.
    `TYPE_CHECKING` blocks are skipped; with `top_level_only`, so are function bodies."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        for t in targets:
            while t.startswith("gradcli") and t not in modules and "." in t:
                t = t.rpartition(".")[0]
            found.add(t if t.startswith("gradcli") else t.split(".")[0])
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            ):
                continue
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return found


def layer(module: str) -> str:
    """gradcli.engine.core -> engine; gradcli.errors -> errors; gradcli -> gradcli."""
    return module.split(".")[1] if "." in module else module


def banned(target: str, rule: str) -> bool:
    if rule.endswith(".*"):  # any module of the layer but its package
        base = f"gradcli.{rule[:-2]}"
        return target.startswith(base + ".")
    if "." in rule:  # one module of a layer, e.g. io.outputs
        return target == f"gradcli.{rule}" or target.startswith(f"gradcli.{rule}.")
    if target.startswith("gradcli."):
        return layer(target) == rule
    return target == rule


def violations(modules: dict[str, Path]) -> set[str]:
    found = set()
    for name in modules:
        rules = FORBIDDEN.get(layer(name), set()) if name != "gradcli" else set()
        for target in imports_of(name, modules):
            for rule in rules:
                if banned(target, rule):
                    found.add(f"{name} imports {target} ({layer(name)} may not import {rule})")
            if target in IMPORTERS and name != IMPORTERS[target]:
                found.add(f"{name} imports {target} (only {IMPORTERS[target]} may)")
    return found


def test_layers_import_only_what_they_may():
    found = violations(MODULES)
    assert not found, "\n".join(sorted(found))


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "gradcli"
    for sub in ("cli", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "core.py").write_text("X = 1\n")
    (pkg / "cli" / "app.py").write_text("def f():\n    from ..engine import core\n")
    (pkg / "engine" / "tape.py").write_text("def g():\n    import tensorflow\n")
    assert violations(modules_of(pkg)) == {
        "gradcli.cli.app imports gradcli.engine.core (cli may not import engine)",
        "gradcli.engine.tape imports tensorflow (only gradcli.load.backend may)",
    }


def test_the_package_graph_is_acyclic():
    graph: dict[str, set[str]] = defaultdict(set)
    for name in MODULES:
        for target in imports_of(name, MODULES):
            if target.startswith("gradcli.") and layer(target) != layer(name):
                graph[layer(name)].add(layer(target))
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "cycle: " + " -> ".join([*path, node])
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


@pytest.mark.parametrize("root", LIGHT)
def test_light_modules_load_nothing_heavy_at_import(root):
    assert root in MODULES, f"{root} is listed as light but does not exist"
    seen, todo, heavy = set(), [root], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]  # importing a.b.c runs a and a.b first
        if parent:
            todo.append(parent)
        for target in imports_of(name, MODULES, top_level_only=True):
            if target in MODULES:
                todo.append(target)
            elif target in HEAVY:
                heavy.append(f"{name} imports {target}")
    assert not heavy, "\n".join(heavy)


def test_package_inits_import_nothing():
    # the tables import their light spec modules (LIGHT covers them); the root is lazy
    tables = ("gradcli", "gradcli.commands", "gradcli.methods")
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name not in tables:
            found = imports_of(name, MODULES, top_level_only=True)
            assert not found & (HEAVY | set(MODULES)), (name, found)


def test_no_module_over_400_lines_without_saying_why():
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        lines = text.count("\n")
        if lines > 400 and "One file on purpose" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{name}: {lines} lines")
    assert not long, "\n".join(long)
