"""What users install: the sdist and wheel `python -m build` makes hold every file of the
package, in any layout of subpackages; the README's install recipes are the smoke test's.

The wheel is built here from a copy of the checkout (without build isolation: the backend
of the dev venv, ~2 s); installing it and running every command is `make smoke`'s job
(scripts/smoke.py), which takes minutes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import smoke  # noqa: E402  (scripts/ is not a package)

# a subpackage without __init__.py and data files: a reorganised or grown package must not
# lose them (setuptools' `packages = [...]` lists lost exactly such a subpackage once)
PROBES = {
    "gradcli/_probe_ns/deep/mod.py": "VALUE = 1\n",
    "gradcli/_probe_ns/table.json": "{}\n",
    "gradcli/commands/_probe_notes.txt": "data beside a module\n",
}


def package_files(root: Path) -> set[str]:
    """Every file under root/gradcli, as a wheel names it (no bytecode caches)."""
    return {
        p.relative_to(root).as_posix()
        for p in (root / "gradcli").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "MANIFEST.in", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "gradcli", src / "gradcli")  # bytecode caches included, as in a checkout
    for rel, text in PROBES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    dist = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = dist.glob("gradcli-*.whl")
    (sdist,) = dist.glob("gradcli-*.tar.gz")
    return {"src": src, "wheel": wheel, "sdist": sdist}


def test_the_wheel_holds_every_file_of_the_package_and_nothing_else(built):
    expected = package_files(built["src"])
    assert set(PROBES) <= expected and "gradcli/commands/__init__.py" in expected
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    in_wheel = {n for n in names if n.startswith("gradcli/")}
    assert sorted(expected - in_wheel) == []  # lost files
    assert sorted(in_wheel - expected) == []  # strays (bytecode, build leftovers)
    assert "gradcli = gradcli.cli.launch:main" in scripts


def test_the_sdist_holds_every_file_of_the_package(built):
    with tarfile.open(built["sdist"]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert sorted(package_files(built["src"]) - names) == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert top.startswith("gradcli-")


def test_twine_accepts_both_distributions(built):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(built["wheel"]),
            str(built["sdist"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2


def test_the_readme_install_recipes_are_the_ones_the_smoke_test_runs():
    """The smoke test reads its install recipes from the README; here: that it finds them,
    that they cover a clone (pip, pipx) and a wheel, and that each names gradcli's own path."""
    recipes = smoke.readme_recipes((ROOT / "README.md").read_text())
    lines = [line for recipe in recipes for line in recipe.lines]
    assert "pip install ." in lines and "pipx install ." in lines
    assert any(line.startswith("pip wheel") for line in lines)
    assert any(line.startswith("pip install") and ".whl" in line for line in lines)
    assert all(recipe.kind in ("venv", "pipx") for recipe in recipes)


def test_every_document_the_repository_names_is_in_it():
    """One source for every fact: a Markdown document any file names is in the repository."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    names = {Path(t).name for t in tracked}
    dangling = []
    for rel in tracked:
        path = ROOT / rel
        if path.suffix in (".keras", ".h5", ".npy", ".npz", ".pb") or "variables" in path.parts:
            continue
        text = path.read_text(errors="replace")
        for mention in set(re.findall(r"[\w./-]*\b[\w-]+\.md\b", text)):
            if Path(mention).name not in names:
                dangling.append(f"{rel}: {mention}")
    assert dangling == []
