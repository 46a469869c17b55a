"""`gradcli influence` and `gradcli merge` against a hand-written TracIn: one eager tape per
sample at each checkpoint, dot products summed with the learning rate Keras reads from each
loaded checkpoint; projections within their Johnson-Lindenstrauss bound; shards merged bit
for bit; the README's Kubernetes and Slurm commands run here with their variables set; bad
input refused with its exit code and one line."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest

from conftest import ROOT, npz

TOP = 4


def per_sample_gradients(keras, tf, model, x, y, names=None) -> np.ndarray:
    """(N, P): one plain eager tape per sample, over the variables named (default all)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = [v for v in model.trainable_variables if names is None or v.path in names]
    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = loss(y[i : i + 1], model(x[i : i + 1]))
        grads = tape.gradient(value, variables)
        rows.append(np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64))
    return np.stack(rows)


def reference(keras, tf, run, names=None) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """(scores (T, N), self-influence (N,), learning rates, sum_c lr_c |h_c| |g_c| (T, N))
    over the checkpoints, with the rate Keras reads from each loaded file."""
    scores, own, rates, norms = 0.0, 0.0, [], 0.0
    for path in run["checkpoints"]:
        model = keras.models.load_model(path)
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        g = per_sample_gradients(keras, tf, model, run["x"], run["y"], names)
        h = per_sample_gradients(keras, tf, model, run["xt"], run["yt"], names)
        scores = scores + lr * h @ g.T
        own = own + lr * np.einsum("ij,ij->i", g, g)
        norms = norms + lr * np.outer(np.linalg.norm(h, axis=1), np.linalg.norm(g, axis=1))
        rates.append(lr)
    return scores, own, rates, norms


def _train(keras, model, optimizer, x, y, directory, count, epochs=2):
    directory.mkdir()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    paths = []
    for c in range(count):
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
        paths.append(directory / f"ckpt-{c + 1}.keras")
        model.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory, keras):
    """An MLP (3 checkpoints, SGD on a saved ExponentialDecay schedule) and a small CNN (2
    checkpoints, Adam), trained a few steps on random data, with their arrays on disk."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("tracin")
    out = {}
    for name, shape, count in (("mlp", (5,), 3), ("cnn", (6, 6, 1), 2)):
        x = rng.normal(size=(40, *shape)).astype("float32")
        y = rng.integers(0, 3, 40)
        xt = rng.normal(size=(5, *shape)).astype("float32")
        yt = rng.integers(0, 3, 5)
        if name == "mlp":
            model = keras.Sequential(
                [
                    keras.Input(shape),
                    keras.layers.Dense(8, activation="tanh", name="hidden"),
                    keras.layers.Dense(3, name="logits"),
                ]
            )
            schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 5, 0.5)
            optimizer = keras.optimizers.SGD(schedule)
        else:
            model = keras.Sequential(
                [
                    keras.Input(shape),
                    keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
                    keras.layers.Flatten(name="flat"),
                    keras.layers.Dense(3, name="logits"),
                ]
            )
            optimizer = keras.optimizers.Adam(0.01)
        paths = _train(keras, model, optimizer, x, y, d / name, count)
        files = {}
        for key, value in (("x", x), ("y", y), ("xt", xt), ("yt", yt)):
            files[key] = d / f"{name}_{key}.npy"
            np.save(files[key], value)
        out[name] = {"dir": d / name, "checkpoints": paths, "files": files}
        out[name].update(x=x, y=y, xt=xt, yt=yt)
    return out


def args(run, *extra) -> list[str]:
    f = run["files"]
    return [str(run["dir"]), str(f["x"]), "-t", str(f["y"]), *map(str, extra)]


def with_test(run) -> list[str]:
    f = run["files"]
    return ["--test", str(f["xt"]), "--test-target", str(f["yt"])]


@pytest.fixture(scope="module")
def exact(runs, keras, tf):
    return {name: reference(keras, tf, run) for name, run in runs.items()}


def check_top(result: dict, scores: np.ndarray, k: int) -> None:
    """Proponents (opponents): each test sample's k largest (smallest) reference scores."""
    for j, row in enumerate(scores):
        best = np.argsort(-row, kind="stable")[:k]
        worst = np.argsort(row, kind="stable")[:k]
        np.testing.assert_allclose(result["proponent_scores"][j], row[best], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(result["opponent_scores"][j], row[worst], rtol=1e-4, atol=1e-7)
        gaps = np.abs(np.diff(np.sort(row)))
        if gaps.min() > 1e-5 * np.abs(row).max():  # no near-ties: the rows are determined
            assert list(result["proponent_rows"][j]) == list(best)
            assert list(result["opponent_rows"][j]) == list(worst)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_scores_and_self_influence_equal_per_sample_tapes(cli, runs, exact, tmp_path, name):
    scores, own, rates, _ = exact[name]
    out = tmp_path / "influence.npz"
    extra = ["--png", tmp_path / "png"] if name == "cnn" else []
    r = cli(
        "influence",
        *args(runs[name], *with_test(runs[name]), "--self", "--top", TOP, "--matrix", "-o", out),
        *extra,
        "--json",
    )
    assert r.code == 0, r.err
    result = npz(out)
    np.testing.assert_allclose(result["self_influence"], own, rtol=1e-5)
    np.testing.assert_allclose(result["matrix"], scores, rtol=1e-4, atol=1e-7)
    check_top(result, scores, TOP)
    assert list(result["rows"]) == list(range(40))
    record = json.loads(r.out)
    assert record["command"] == "influence" and record["method"] == "tracin"
    assert [c["lr"] for c in record["checkpoints"]] == pytest.approx(rates, rel=1e-6)
    assert record["lr_source"] == "saved"
    top = record["self_influence"]["top"]
    assert [t["row"] for t in top] == list(np.argsort(-own, kind="stable")[:TOP])
    assert record["test"][0]["proponents"][0]["row"] == int(result["proponent_rows"][0, 0])
    prov = record["provenance"]
    assert [c["sha256"] for c in prov["checkpoints"]] == prov["tracin"]["run"]["checkpoints"]
    assert all(len(c["sha256"]) == 64 for c in prov["checkpoints"])
    if name == "cnn":
        pictures = sorted(os.listdir(tmp_path / "png"))
        assert pictures == ["self_influence.png"] + [f"test_{j:04d}.png" for j in range(5)]
        assert record["png"][0].endswith("test_0000.png")


def test_the_last_layer_alone(cli, runs, keras, tf, tmp_path):
    """--layer last: TracInCPFast's shortcut, the reference over the last Dense only."""
    run = runs["mlp"]
    model = keras.models.load_model(run["checkpoints"][0])
    names = {v.path for v in model.get_layer("logits").trainable_variables}
    scores, own, _, _ = reference(keras, tf, run, names)
    out = tmp_path / "last.npz"
    r = cli("influence", *args(run, *with_test(run), "--layer", "last", "--top", 40, "-o", out))
    assert r.code == 0, r.err
    result = npz(out)
    np.testing.assert_allclose(result["self_influence"], own, rtol=1e-5)
    check_top(result, scores, 40)  # every row: the whole score matrix, ordered
    assert "3 checkpoint(s)" in r.out and "27 parameters in 2 variable(s)" in r.out


def test_projected_scores_stay_within_the_jl_bound(cli, runs, exact, tmp_path):
    """--proj-dim 64 on the CNN: scores within eps * sum_c lr_c |g_c||h_c| of the exact ones
    (eps = sqrt(2 / (dim * 0.05)): the Chebyshev bound, for at least 95% of them);
    self-influence stays exact."""
    from gradcli.engine.projection import error_bound

    run = runs["cnn"]
    scores, own, _, norms = exact["cnn"]
    out = tmp_path / "projected.npz"
    r = cli("influence", *args(run, *with_test(run), "--proj-dim", 64, "--matrix", "-o", out))
    assert r.code == 0, r.err
    result = npz(out)
    np.testing.assert_allclose(result["self_influence"], own, rtol=1e-5)
    error = np.abs(result["matrix"] - scores)
    assert (error <= error_bound(64, 0.05) * norms).mean() >= 0.95
    assert not np.allclose(result["matrix"], scores, rtol=1e-3)  # it did project
    assert "64-number CountSketch (seed 0)" in r.out and "±0.791" in r.out


def test_the_in_step_projection_is_the_numpy_reference(runs, keras):
    """The stream's CountSketch (computed inside the compiled step) against
    engine.projection.project on the engine's own per-sample gradients."""
    from gradcli.engine import projection
    from gradcli.engine.objective import build_objective
    from gradcli.engine.persample import GradientStream, PerSampleEngine, Projection
    from gradcli.load.loaders import load_model

    run = runs["cnn"]
    handle = load_model(run["checkpoints"][-1])
    objective = build_objective(handle, has_target=True)
    xs, ys = [run["x"][:12]], [run["y"][:12].astype("int32")]
    names = [n for n, _ in handle.named_variables()]
    chosen = names[:1] + names[2:]  # skip one: indices are positions among all variables
    stream = GradientStream(handle, objective, chosen, vectors=True, projection=Projection(3, 32))
    got = stream.batch(xs, ys)
    arrays = PerSampleEngine(handle, objective, arrays=True).gradients(xs, ys).arrays
    parts = [a for n, a in zip(names, arrays, strict=True) if n in chosen]
    want = projection.project(parts, 3, 32, variables=[names.index(n) for n in chosen])
    np.testing.assert_allclose(got.vectors, want, rtol=1e-5, atol=1e-6)
    flat = GradientStream(handle, objective, chosen, vectors=True).batch(xs, ys)
    np.testing.assert_allclose(flat.vectors, np.concatenate([p.reshape(12, -1) for p in parts], 1))
    np.testing.assert_allclose(got.squared_norms, (flat.vectors.astype(float) ** 2).sum(1), 1e-5)


# ------------------------------------------------------------------ shards, README recipes


def readme_block(marker: str) -> str:
    """The fenced block of the README that holds `marker`."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        if marker in block:
            return block
    raise AssertionError(f"no README block with {marker!r}")


def readme_data(runs, tmp_path):
    """/data of the README's recipes: the MLP's checkpoints and arrays under their names."""
    data = tmp_path / "data"
    shutil.copytree(runs["mlp"]["dir"], data / "checkpoints")
    for key, name in (("x", "x_train"), ("y", "y_train"), ("xt", "x_test"), ("yt", "y_test")):
        shutil.copy(runs["mlp"]["files"][key], data / f"{name}.npy")
    (data / "out").mkdir()
    return data


def folded_scalar(yaml: str, start: str) -> str:
    """The text of a YAML folded scalar (`>-`): the lines indented below its start, joined."""
    lines = yaml.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == start)
    indent = len(lines[first]) - len(lines[first].lstrip())
    words = []
    for line in lines[first + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        words.append(line.strip())
    return " ".join(words)


def run_recipe(cli, command: str, data, env: dict[str, str], monkeypatch):
    """A README command line run here, its paths under `data`, its variables set."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    text = re.sub(r"(?<![\w.-])/?data/", f"{data}/", command)
    words = shlex.split(os.path.expandvars(text))
    assert words[0] == "gradcli"
    expanded = []
    for word in words[1:]:
        expanded += sorted(glob.glob(word)) if "*" in word else [word]
    return cli(*expanded)


def test_readme_kubernetes_and_slurm_recipes_merge_to_the_unsharded_run(
    cli, runs, tmp_path, monkeypatch
):
    data = readme_data(runs, tmp_path)
    manifest = readme_block("completionMode: Indexed")
    command = folded_scalar(manifest, "- >-")
    merge = re.search(r"^(gradcli merge .*)$", readme_block("gradcli merge /data"), re.M)[1]
    assert "JOB_COMPLETIONS" in manifest and "--shard auto" in command
    for k in range(2):  # a 2-completion Job: the manifest's env, two pods
        env = {"JOB_COMPLETION_INDEX": str(k), "JOB_COMPLETIONS": "2"}
        r = run_recipe(cli, command, data, env, monkeypatch)
        assert r.code == 0, r.err
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    r = run_recipe(cli, merge, data, {}, monkeypatch)
    assert r.code == 0, r.err
    whole = tmp_path / "whole.npz"
    unsharded = command.replace("--shard auto", "").split(" -o ")[0] + f" -o {whole}"
    assert run_recipe(cli, unsharded, data, {}, monkeypatch).code == 0
    merged = npz(data / "out" / "influence.npz")
    expected = npz(whole)
    assert merged.keys() == expected.keys() and "proponent_rows" in merged
    for key, value in expected.items():  # bit for bit
        assert merged[key].dtype == value.dtype and np.array_equal(merged[key], value, True), key

    script = readme_block("#SBATCH --array").replace("\\\n", " ")
    line = re.search(r"^(gradcli influence .*)$", script, re.M)[1]
    for f in glob.glob(str(data / "out" / "*")):
        os.unlink(f)
    for task in (1, 2):  # --array=1-2: task IDs need not start at 0
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "2"}
        env.update(SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="2")
        r = run_recipe(cli, line, data, env, monkeypatch)
        assert r.code == 0, r.err
    slurm_merge = re.search(r"(gradcli merge [^\"]*)", script)[1]
    assert run_recipe(cli, slurm_merge, data, {}, monkeypatch).code == 0
    merged = npz(data / "out" / "influence.npz")
    for key, value in expected.items():
        assert np.array_equal(merged[key], value, True), key


def test_merge_refuses_what_is_not_one_run(cli, runs, tmp_path, monkeypatch):
    run = runs["mlp"]
    for k in range(2):
        r = cli("influence", *args(run, "--self", "--shard", f"{k}/2", "-o", tmp_path / f"{k}.npz"))
        assert r.code == 0, r.err
    other = tmp_path / "other.npz"
    r = cli("influence", *args(run, "--self", "--lr", "0.1", "--shard", "1/2", "-o", other))
    assert r.code == 0, r.err
    cases = [
        ([tmp_path / "0.npz", other], "other.npz is not from the same run as", "lr differs"),
        ([tmp_path / "0.npz"], "missing shard 1/2", ""),
        (
            [tmp_path / "0.npz", run["files"]["x"]],
            "not the -o file of a `gradcli influence` run",
            "",
        ),
    ]
    for files, words, more in cases:
        r = cli("merge", *files, "-o", tmp_path / "m.npz")
        assert r.code == 3 and words in r.err and more in r.err, r.err
        assert r.err.count("\n") == 1 and not (tmp_path / "m.npz").exists()
    r = cli("merge", tmp_path / "1.npz", tmp_path / "0.npz", "--format", "markdown")
    assert r.code == 0 and "| rank | train row | self-influence | loss |" in r.out
    assert "TracIn over 3 checkpoint\\(s\\)" in r.out
    r = cli("merge", tmp_path / "1.npz", tmp_path / "0.npz", "--junit", tmp_path / "j.xml")
    assert r.code == 0 and 'name="influence"' in (tmp_path / "j.xml").read_text()
    r = cli("merge", tmp_path / "1.npz", tmp_path / "0.npz", "-o", tmp_path / "0.npz")
    assert r.code == 3 and "--out" in r.err


def test_the_python_api(runs, tmp_path):
    import gradcli

    run = runs["mlp"]
    f = run["files"]
    whole = gradcli.influence(run["dir"], f["x"], f["y"], self_influence=True, top=3, lr=0.1)
    assert whole.record["self_influence"]["top"][0]["row"] == int(
        np.argmax(whole.arrays["self_influence"])
    )
    parts = [
        gradcli.influence(
            run["dir"],
            f["x"],
            f["y"],
            self_influence=True,
            top=3,
            lr=[0.1],
            shard=(k, 2),
            out=tmp_path / f"{k}.npz",
        )
        for k in range(2)
    ]
    assert sum(p.arrays["rows"].size for p in parts) == 40
    merged = gradcli.merge([tmp_path / "1.npz", tmp_path / "0.npz"])
    for key, value in whole.arrays.items():
        assert np.array_equal(merged.arrays[key], value, True), key


# ------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_with_its_exit_code(cli, runs, keras, tmp_path, monkeypatch):
    for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    run = runs["mlp"]
    f = run["files"]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in run["checkpoints"][:2]:
        shutil.copy(p, mixed / p.name)
    first = keras.models.load_model(run["checkpoints"][0])
    name, kernel = first.name, first.get_layer("hidden").kernel.path  # the same weight paths
    layers = [keras.layers.Dense(9, name="hidden"), keras.layers.Dense(3, name="logits")]
    other = keras.Sequential([keras.Input((5,)), *layers], name=name)
    other.compile(optimizer="sgd", loss="mse")
    other.save(mixed / "ckpt-3.keras")
    plain = tmp_path / "plain"
    plain.mkdir()
    keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)]).save(plain / "m.keras")
    np.save(tmp_path / "wide.npy", np.zeros((4, 6), "float32"))
    cases = [
        (
            args(run, "--self", "--lr", "0.1,0.2"),
            2,
            "--lr 0.1,0.2: 2 learning rates for 3 checkpoint(s)",
        ),
        (args(run, "--lr", "fast", "--self"), 2, "--lr fast: expected a learning rate"),
        (args(run), 2, "nothing to compute: give --test X with --test-target Y"),
        (args(run, "--test", f["xt"]), 2, "--test needs --test-target"),
        (args(run, "--self", "--matrix"), 2, "--matrix is about test scores"),
        (args(run, "--self", "--png", tmp_path / "p"), 2, "--png: draws image inputs"),
        (args(run, "--self", "--shard", "auto"), 2, "--shard auto: no array-job variables"),
        (
            [mixed, f["x"], "-t", f["y"], "--self"],
            3,
            f"{mixed / 'ckpt-3.keras'}: not the architecture of ckpt-1.keras (the first "
            f"checkpoint): weight '{kernel}' has shape (5, 9), there (5, 8)",
        ),
        (
            [plain, f["x"], "-t", f["y"], "--self", "--loss", "mse"],
            3,
            "no optimizer was saved with the model; give the learning rates with --lr",
        ),
        (
            args(run, "--test", tmp_path / "wide.npy", "--test-target", f["yt"]),
            3,
            "expected shape (N, 5) for test",
        ),
    ]
    for argv, code, words in cases:
        r = cli("influence", *argv)
        assert r.code == code and words in r.err, (argv, r.err)
        assert r.err.count("\n") == 1 and "Traceback" not in r.err
    import gradcli.jobs.influence as job

    monkeypatch.setattr(job, "machine_memory", lambda: 4000)  # 1000 bytes allowed
    r = cli("influence", *args(run, *with_test(run), "--matrix", "--proj-dim", 2))
    assert r.code == 2 and "would not fit in memory" in r.err and "--top" in r.err
