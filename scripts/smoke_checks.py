"""The commands `make smoke` runs with an installed gradcli, and how their outputs are checked.

Each check runs one command in the run directory and says what is wrong (None: nothing):
the exit code, a traceback, or an output that is missing or does not load.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Verify = Callable[[subprocess.CompletedProcess, Path], "str | None"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Check:
    name: str
    args: list
    code: int = 0
    verify: list[Verify] = field(default_factory=list)
    stdin: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    program: list | None = None  # default: `gradcli` from PATH
    after: bool = False  # reads another check's output: runs once the others are done

    def run(self, cwd: Path, env: dict[str, str]) -> str | None:
        argv = [str(a) for a in (self.program or ["gradcli"]) + self.args]
        with open(self.stdin or "/dev/null", "rb") as stdin:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env={**env, **self.env},
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        if proc.returncode != self.code:
            return f"exit {proc.returncode}, expected {self.code}; stderr: {proc.stderr[-800:]!r}"
        if "Traceback" in proc.stderr:
            return f"a traceback on stderr: {proc.stderr[-800:]!r}"
        for verify in self.verify:
            try:
                problem = verify(proc, cwd)
            except Exception as exc:  # an output that does not load
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                return problem
        return None


# ------------------------------------------------------------------ what outputs must be


def npz(path: str, key: str, shape: tuple | None = None) -> Verify:
    def verify(proc, cwd):
        with np.load(cwd / path, allow_pickle=False) as data:
            provenance = json.loads(str(data["__gradcli__"]))
            if key not in data.files:
                return f"{path}: no key {key!r} in {data.files}"
            if shape is not None and data[key].shape != shape:
                return f"{path}[{key}]: shape {data[key].shape}, expected {shape}"
            if not np.isfinite(data[key]).all():
                return f"{path}[{key}]: not finite"
        return None if provenance.get("schema") else f"{path}: no provenance"

    return verify


def png(path: str, count: int = 1) -> Verify:
    def verify(proc, cwd):
        target = cwd / path
        files = sorted(target.glob("*.png")) if target.is_dir() else [target]
        bad = [f.name for f in files if f.read_bytes()[:8] != PNG_SIGNATURE]
        return f"{path}: {len(files)} PNGs, bad: {bad}" if len(files) != count or bad else None

    return verify


def junit(path: str, failures: int = 0) -> Verify:
    def verify(proc, cwd):
        root = ET.parse(cwd / path).getroot()
        cases = root.findall(".//testcase")
        failed = root.findall(".//testcase/failure")
        ok = root.tag in ("testsuites", "testsuite") and cases and len(failed) == failures
        return None if ok else f"{path}: {len(cases)} testcases, {len(failed)} failures"

    return verify


def html(path: str, sections: int) -> Verify:
    """An HTML report: one page, its policy in it, a section per model, nothing from outside."""

    def verify(proc, cwd):
        page = (cwd / path).read_text(encoding="utf-8")
        found = page.count("<section id=")
        ok = page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
        ok = ok and found == sections and not re.search(r"""(src|href)=["']?(https?:|//)""", page)
        return None if ok else f"{path}: not a self-contained page of {sections} sections"

    return verify


def json_lines(count: int = 1, **expected) -> Verify:
    def verify(proc, cwd):
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        wrong = [(k, r.get(k)) for r in records for k, v in expected.items() if r.get(k) != v]
        return (
            f"{len(records)} JSON lines, wrong {wrong}" if len(records) != count or wrong else None
        )

    return verify


def says(text: str, stream: str = "stdout", exact: bool = False) -> Verify:
    def verify(proc, cwd):
        said = getattr(proc, stream)
        ok = said.strip() == text if exact else text in said
        return None if ok else f"{stream} {said[-400:]!r} lacks {text!r}"

    return verify


def files(path: str, names: list[str]) -> Verify:
    def verify(proc, cwd):
        found = sorted(p.name for p in (cwd / path).iterdir())
        return None if found == names else f"{path}: {found}, expected {names}"

    return verify


# ------------------------------------------------------------------ the commands


def command_checks(m: Path, version: str, full: bool, python: Path) -> list[Check]:
    """Every command once (full), or the few that show an install works."""
    cnn, tab, tab_x = m / "shapes_cnn.keras", m / "tabular_mlp.keras", m / "tabular_x.npy"
    quick = [
        Check("--version", ["--version"], verify=[says(f"gradcli {version}", exact=True)]),
        Check(
            "python -m gradcli --version",
            ["-m", "gradcli", "--version"],
            program=[python],
            verify=[says(f"gradcli {version}", exact=True)],
        ),
        Check("info", ["info", tab], verify=[says("hidden1")]),
        Check(
            "wrt-input -o",
            ["wrt-input", tab, tab_x, "-o", "quick.npz"],
            verify=[npz("quick.npz", "features", (64, 10))],
        ),
    ]
    if not full:
        return quick
    x, y = m / "shapes_x.npy", m / "shapes_y.npy"
    complete = {"_GRADCLI_COMPLETE": "complete_bash"}
    return quick[:2] + [  # the other installs show info's table; wrt-input -o is below
        Check("--help", ["--help"], verify=[says("wrt-weights"), says("--install-completion")]),
        Check(
            "info --json (SavedModel export)",
            ["info", m / "tabular_export", "--json"],
            verify=[json_lines(command="info", format="savedmodel")],
        ),
        Check(
            "wrt-input --png -o --junit",
            [
                "wrt-input",
                cnn,
                x,
                "--class",
                "0",
                "--png",
                "saliency",
                "--png-limit",
                "2",
                "-o",
                "saliency.npz",
                "--junit",
                "input.xml",
            ],
            verify=[
                npz("saliency.npz", "image", (16, 28, 28, 1)),
                png("saliency", 2),
                junit("input.xml"),
            ],
        ),
        Check(
            "wrt-input -m integrated --json",
            ["wrt-input", cnn, x, "--target", y, "-m", "integrated", "--steps", "8", "--json"],
            verify=[json_lines(command="wrt-input", method="integrated")],
        ),
        Check(
            "wrt-input -m gradcam --format markdown",
            ["wrt-input", cnn, x, "--class", "0", "-m", "gradcam", "--format", "markdown"],
            verify=[says("| `image`"), says("|---")],
        ),
        Check(
            "wrt-input from stdin",
            ["wrt-input", tab, "-", "--json"],
            stdin=tab_x,
            verify=[json_lines(command="wrt-input", n=64)],
        ),
        Check(
            "wrt-layer nested path --json -o",
            [
                "wrt-layer",
                m / "nested.keras",
                m / "legacy_x.npy",
                "--layer",
                "block/a",
                "--json",
                "-o",
                "layer.npz",
            ],
            verify=[json_lines(command="wrt-layer"), npz("layer.npz", "block/a", (32, 16))],
        ),
        Check(
            "wrt-weights .h5 --png -o",
            [
                "wrt-weights",
                m / "legacy_mlp.h5",
                m / "legacy_x.npy",
                "--target",
                m / "legacy_y.npy",
                "--png",
                "flow.png",
                "-o",
                "weights.npz",
            ],
            verify=[npz("weights.npz", "seqni/d1/kernel", (6, 16)), png("flow.png")],
        ),
        Check(
            "wrt-weights on a directory of models --json -o DIR --png FILE.png --html",
            [
                "wrt-weights",
                m / "checkpoints",
                tab_x,
                "--target",
                m / "tabular_y.npy",
                "--fail-on",
                "nonfinite,disconnected",
                "--json",
                "-o",
                "ckpt",
                "--png",
                "trajectory.png",
                "--html",
                "ckpt.html",
            ],
            verify=[
                json_lines(3, command="wrt-weights"),
                files("ckpt", ["epoch_00.npz", "epoch_02.npz", "epoch_10.npz"]),
                png("trajectory.png"),
                html("ckpt.html", 3),
            ],
        ),
        Check(
            "influence --self --test --shard 0/1 -o",
            [
                "influence",
                m / "checkpoints",
                tab_x,
                "--target",
                m / "tabular_y.npy",
                "--test",
                tab_x,
                "--test-target",
                m / "tabular_y.npy",
                "--self",
                "--top",
                "3",
                "--shard",
                "0/1",
                "-o",
                "shard.npz",
            ],
            verify=[says("top 3 proponents"), npz("shard.npz", "self_influence", (64,))],
        ),
        Check(
            "merge --json -o (no TensorFlow)",
            ["merge", "shard.npz", "--json", "-o", "influence.npz"],
            verify=[
                json_lines(command="influence", n=64),
                npz("influence.npz", "proponent_rows", (64, 3)),
            ],
            after=True,
        ),
        Check(
            "jacobian -o",
            ["jacobian", tab, tab_x, "-o", "jac.npz"],
            verify=[npz("jac.npz", "features", (64, 1, 10))],
        ),
        Check(
            "check --wrt weights --json",
            [
                "check",
                m / "two_io.keras",
                m / "two_io_x.npz",
                "--target",
                m / "two_io_y.npz",
                "--wrt",
                "weights",
                "--json",
            ],
            verify=[json_lines(command="check")],
        ),
        Check(
            "hessian on a directory of checkpoints --json -o DIR",
            [
                "hessian",
                m / "checkpoints",
                tab_x,
                "--target",
                m / "tabular_y.npy",
                "--probes",
                "10",
                "--json",
                "-o",
                "curvature",
            ],
            verify=[
                json_lines(3, command="hessian"),
                files("curvature", ["epoch_00.npz", "epoch_02.npz", "epoch_10.npz"]),
            ],
        ),
        Check(
            "diff --junit",
            [
                "diff",
                "saliency.npz",
                "saliency.npz",
                "--min-cosine",
                "0.999",
                "--junit",
                "diff.xml",
            ],
            verify=[junit("diff.xml")],
            after=True,
        ),
        Check(
            "a tripped gate exits 1",
            ["wrt-input", tab, tab_x, "--max-norm", "1e-9", "--json"],
            code=1,
            verify=[json_lines(gates=["too-large"])],
        ),
        Check(
            "a missing model exits 3 with one line",
            ["info", "missing.keras"],
            code=3,
            verify=[says("error: missing.keras: no such file or directory", "stderr", True)],
        ),
        Check(
            "--show-completion bash",
            ["--show-completion", "bash"],
            verify=[says("_GRADCLI_COMPLETE=complete_bash")],
        ),
        Check(
            "completion of commands",
            [],
            verify=[says("wrt-layer", exact=True)],
            env={**complete, "COMP_WORDS": "gradcli wrt-l", "COMP_CWORD": "1"},
        ),
        Check(
            "completion of --layer names",
            [],
            verify=[says("block/a\nblock/b", exact=True)],
            env={
                **complete,
                "COMP_WORDS": f"gradcli wrt-layer {m / 'nested.keras'} x.npy --layer block/",
                "COMP_CWORD": "5",
            },
        ),
    ]


def lambda_model(source: Path, dest: Path) -> None:
    """`source` (.keras) with its layer `hidden2` turned into a Lambda layer in the config:
    what safe mode refuses (nothing here runs it)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["config"]["name"] == "hidden2":
                        layer["class_name"] = "Lambda"
                data = json.dumps(config).encode()
            zout.writestr(info, data)
