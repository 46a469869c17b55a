"""`make smoke`: gradcli installed the ways the README says, tested from outside the checkout.

1. The README's install recipes (the ```sh block under "## Install"), each paragraph in a
   fresh environment in a temporary directory, run line by line with bash in a copy of the
   checkout: `pip install .` in a new venv, `pipx install .` with its own PIPX_HOME, and
   `pip wheel` + `pip install` of the wheel in another new venv.
2. From an empty temporary directory, with the installed `gradcli` first on PATH: every
   command once on a copy of sample_models/ with the wheel's install (a few with the
   others), checking exit codes and that each output exists and loads (.npz with
   allow_pickle=False, PNG signature, JUnit XML, HTML, JSON, Markdown), then that nothing else
   was left there.
3. The CI recipes' install line (pip from a git URL, pinned to a commit) builds a wheel
   holding every file of the package at that commit.
4. The pre-commit hook with the real pre-commit: `pre-commit try-repo <checkout>
   gradcli-check` in a temporary git repository passes a good model and refuses a bad one
   (a Lambda layer) with gradcli's message; `pre-commit autoupdate --freeze` pins the
   README's config to a commit.

Steps 1-2 copy the checkout's tracked and new files; step 3 builds the last commit, and
try-repo (4) sees committed and changed tracked files: `git add` a new module first.
The installs (each about 45 s of TensorFlow) run in parallel. Run it from the dev venv
(pipx and pre-commit are dev extras): `.venv/bin/python scripts/smoke.py [--keep]`.
One line per check; a failure says what and why (and where the logs are); exit 1 if any.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from smoke_checks import Check, command_checks, lambda_model

ROOT = Path(__file__).resolve().parent.parent
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
VERSION = re.search(r'__version__ = "(.+)"', (ROOT / "gradcli/_version.py").read_text()).group(1)
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


# ------------------------------------------------------------------ the README's recipes


@dataclass
class Recipe:
    lines: list[str]

    @property
    def kind(self) -> str:
        return "pipx" if any(line.split()[0] == "pipx" for line in self.lines) else "venv"

    @property
    def wheel(self) -> bool:
        return any(".whl" in line for line in self.lines)


def readme_recipes(readme: str) -> list[Recipe]:
    """The install recipes: paragraphs of the ```sh block under "## Install", comments off."""
    found = re.search(r"^## Install\n.*?^```sh\n(.*?)^```", readme, re.S | re.M)
    if found is None:
        raise ValueError("README.md has no ```sh block under '## Install'")
    recipes, lines = [], []
    for raw in found.group(1).splitlines() + [""]:
        line = "" if raw.lstrip().startswith("#") else raw.split(" #")[0].strip()
        if line:
            lines.append(line)
        elif not raw.strip() and lines:
            recipes.append(Recipe(lines))
            lines = []
    return recipes


def readme_git_spec(readme: str) -> str:
    """The one `gradcli @ git+URL@<commit>` requirement the CI recipes pip-install."""
    specs = set(re.findall(r'pip install "(gradcli @ git\+[^"]+)"', readme))
    if len(specs) != 1:
        raise ValueError(f"README.md: expected one git install line in its CI recipes: {specs}")
    return specs.pop()


def readme_precommit_config(readme: str) -> str:
    found = re.search(r"^```yaml\n(# \.pre-commit-config\.yaml\n.*?)^```", readme, re.S | re.M)
    if found is None:
        raise ValueError("README.md has no ```yaml block starting '# .pre-commit-config.yaml'")
    return found.group(1)


# ------------------------------------------------------------------ running things


@dataclass
class Results:
    passed: int = 0
    failed: list[str] = field(default_factory=list)

    def record(self, name: str, problem: str | None) -> None:
        with _print_lock:
            if problem is None:
                self.passed += 1
                print(f"  ok    {name}", flush=True)
            else:
                self.failed.append(name)
                print(f"  FAIL  {name}: {problem}", flush=True)


def user_env(bin_dirs: list[Path], **extra: str) -> dict[str, str]:
    """The environment of a user who installed gradcli into bin_dirs: nothing of the dev venv
    or the checkout on PATH, no PYTHONPATH, no gradcli settings."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "_GRADCLI_COMPLETE"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GRADCLI_")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and ROOT not in Path(p).parents]
    env["PATH"] = os.pathsep.join([*map(str, bin_dirs), *path])
    return {**env, **extra}


def run(args: list, cwd: Path, env: dict, log: Path, timeout: int = 1200) -> int:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, args))}   (in {cwd})\n")
        out.flush()
        proc = subprocess.run(
            list(map(str, args)),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    return proc.returncode


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join("        " + line for line in text[-lines:])


def copy_checkout(dest: Path) -> None:
    """The checkout's files as a clone has them (tracked and new, not ignored ones)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


# ------------------------------------------------------------------ 1 + 2: install, then use


def venv_recipes(recipes: list[tuple[int, Recipe]], tmp: Path, models: Path, results: Results):
    """The venv recipes in one new venv, in turn, the wheel's first: pip reinstalls gradcli
    from the clone over it (the dependencies are there already). A venv each would cost 45 s
    of TensorFlow each and prove nothing more: all install one dependency list."""
    venv = tmp / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True)
    env = user_env([venv / "bin"], VIRTUAL_ENV=str(venv))
    for i, recipe in sorted(recipes, key=lambda item: not item[1].wheel):
        if not install(i, recipe, tmp, venv / "bin", env, results):
            return
        checks = command_checks(models, VERSION, full=recipe.wheel, python=venv / "bin/python")
        run_checks(label(i, recipe), checks, env, tmp / f"run-{i}", results)


def pipx_recipe(i: int, recipe: Recipe, tmp: Path, models: Path, results: Results) -> None:
    home = tmp / "pipx"
    tools = tmp / "tools"  # pipx alone, not the dev venv's other programs
    tools.mkdir()
    (tools / "pipx").symlink_to(shutil.which("pipx", path=str(Path(sys.executable).parent)))
    env = user_env(
        [home / "bin", tools],
        PIPX_HOME=str(home),
        PIPX_BIN_DIR=str(home / "bin"),
        PIPX_MAN_DIR=str(home / "man"),
        PIPX_DEFAULT_PYTHON=BASE_PYTHON,
    )
    if install(i, recipe, tmp, home / "bin", env, results):
        python = home / "venvs/gradcli/bin/python"
        checks = command_checks(models, VERSION, full=recipe.wheel, python=python)
        run_checks(label(i, recipe), checks, env, tmp / f"run-{i}", results)


def label(i: int, recipe: Recipe) -> str:
    return f"recipe {i + 1} ({' && '.join(recipe.lines)})"


def install(i: int, recipe: Recipe, tmp: Path, bin_dir: Path, env: dict, results: Results) -> bool:
    """Run the recipe's lines with bash in a fresh copy of the checkout; True if gradcli is
    then the program of bin_dir on PATH."""
    clone, log = tmp / f"clone-{i}", tmp / f"install-{i}.log"
    copy_checkout(clone)
    say(f"installing: {label(i, recipe)}")
    start = time.monotonic()
    for line in recipe.lines:
        code = run(["bash", "-c", line], clone, env, log)
        if code:
            results.record(f"{label(i, recipe)}: `{line}`", f"exit {code}\n{tail(log)}")
            return False
    found = shutil.which("gradcli", path=env["PATH"])
    where = None if found == str(bin_dir / "gradcli") else f"gradcli on PATH is {found}"
    results.record(f"{label(i, recipe)}: installed in {time.monotonic() - start:.0f} s", where)
    return where is None


def run_checks(label: str, checks: list[Check], env: dict, cwd: Path, results: Results) -> None:
    """The checks two at a time (each is mostly a TensorFlow start-up), the ones that read
    another's output after it; then: no temporary file left behind."""
    cwd.mkdir()
    first, then = [c for c in checks if not c.after], [c for c in checks if c.after]
    for batch in (first, then):
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda check: timed(check.run, cwd, env), batch))
        for check, (problem, seconds) in zip(batch, outcomes, strict=True):
            results.record(f"{label}: {check.name} ({seconds:.1f} s)", problem)
    leftovers = sorted(p.name for p in cwd.rglob("*") if p.name.endswith(".tmp"))
    results.record(f"{label}: no temporary files left", f"{leftovers}" if leftovers else None)


def timed(fn, *args):
    start = time.monotonic()
    return fn(*args), time.monotonic() - start


# ------------------------------------------------------------------ 3: the CI recipes' install


def git_install(readme: str, tmp: Path, results: Results) -> None:
    name = "CI recipes: pip builds gradcli from a git URL pinned to a commit"
    head = git_out("rev-parse", "HEAD")
    spec = readme_git_spec(readme)
    spec = re.sub(r"git\+https://\S+?/gradcli@<commit>", f"git+file://{ROOT}@{head}", spec)
    log, dist = tmp / "git-wheel.log", tmp / "git-wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, spec]
    if run(pip, tmp, user_env([]), log):
        return results.record(name, f"`pip wheel {spec}` failed\n{tail(log)}")
    expected = {p for p in git_out("ls-tree", "-r", "--name-only", head, "gradcli").split()}
    (wheel,) = dist.glob("gradcli-*.whl")
    missing = expected - set(zipfile.ZipFile(wheel).namelist())
    results.record(name, f"the wheel lacks {sorted(missing)}" if missing else None)


def git_out(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


# ------------------------------------------------------------------ 4: the pre-commit hook


def precommit(readme: str, tmp: Path, models: Path, results: Results) -> None:
    repo, log = tmp / "hook-repo", tmp / "pre-commit.log"
    repo.mkdir()
    tools = Path(sys.executable).parent
    env = user_env(
        [],
        PRE_COMMIT_HOME=str(tmp / "pre-commit-home"),
        GIT_AUTHOR_NAME="smoke",
        GIT_AUTHOR_EMAIL="smoke@example.org",
        GIT_COMMITTER_NAME="smoke",
        GIT_COMMITTER_EMAIL="smoke@example.org",
    )
    git = ["git", "-c", "init.defaultBranch=main", "-c", "core.hooksPath=/dev/null"]
    pre_commit = [tools / "pre-commit"]
    run([*git, "init", "-q"], repo, env, log)

    name = "pre-commit autoupdate --freeze pins the README's config to a commit"
    config = readme_precommit_config(readme).replace(
        "https://github.com/<owner>/gradcli", str(ROOT)
    )
    (repo / ".pre-commit-config.yaml").write_text(config)
    code = run([*pre_commit, "autoupdate", "--freeze"], repo, env, log, timeout=300)
    rev = re.search(r"rev: ([0-9a-f]{40})", (repo / ".pre-commit-config.yaml").read_text())
    known = (
        rev is not None
        and not subprocess.run(
            ["git", "cat-file", "-e", f"{rev.group(1)}^{{commit}}"], cwd=ROOT, check=False
        ).returncode
    )
    results.record(name, None if code == 0 and known else f"exit {code}, rev {rev}\n{tail(log)}")

    (repo / "models").mkdir()
    shutil.copy2(models / "tabular_mlp.keras", repo / "models/good.keras")
    run([*git, "add", "."], repo, env, log)
    say("pre-commit: installing the hook's environment (try-repo on the checkout)")
    start = time.monotonic()
    code = run([*pre_commit, "try-repo", ROOT, "gradcli-check"], repo, env, log)
    took = time.monotonic() - start
    name = f"pre-commit try-repo: a good model commits ({took:.0f} s with the hook's install)"
    results.record(name, None if code == 0 else f"exit {code}\n{tail(log)}")
    run([*git, "commit", "-q", "-m", "good model"], repo, env, log)

    lambda_model(models / "tabular_mlp.keras", repo / "models/bad.keras")
    run([*git, "add", "."], repo, env, log)
    before = log.stat().st_size
    code = run([*pre_commit, "try-repo", ROOT, "gradcli-check"], repo, env, log)
    said = log.read_text()[before:]
    message = "models/bad.keras: Lambda layer 'hidden2' holds Python code"
    problem = None if code == 1 and message in said else f"exit {code}, no {message!r}\n{tail(log)}"
    results.record("pre-commit try-repo: a model with a Lambda layer is refused", problem)


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args()
    readme = (ROOT / "README.md").read_text()
    recipes = readme_recipes(readme)
    tmp = Path(tempfile.mkdtemp(prefix="gradcli-smoke-"))
    models = tmp / "sample_models"
    shutil.copytree(ROOT / "sample_models", models)
    results = Results()
    say(f"gradcli {VERSION} smoke test in {tmp} ({len(recipes)} install recipes from README.md)")
    start = time.monotonic()
    numbered = list(enumerate(recipes))
    venvs = [(i, r) for i, r in numbered if r.kind == "venv"]
    jobs = [lambda: venv_recipes(venvs, tmp, models, results)]
    jobs += [
        lambda i=i, r=r: pipx_recipe(i, r, tmp, models, results)
        for i, r in numbered
        if r.kind == "pipx"
    ]
    jobs += [
        lambda: git_install(readme, tmp, results),
        lambda: precommit(readme, tmp, models, results),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            try:
                future.result()
            except Exception as exc:  # a bug of this script or a missing tool: say which
                results.record("smoke script", f"{type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - start
    if results.failed or options.keep:
        say(f"logs and environments kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    for name in results.failed:
        say(f"failed: {name}")
    say(f"took {elapsed:.0f} s")
    say(f"smoke: {results.passed} passed, {len(results.failed)} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
