"""`gradcli diff` and `--against`: figures against a NumPy reference written here, gates,
provenance warnings and errors, mismatched keys, and model-vs-conversion comparisons."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import load, run_process


@pytest.fixture(scope="session")
def pair(tmp_path_factory, keras):
    """A small MLP (A), the same with one layer's kernel perturbed (B), its .h5 and its
    SavedModel export, an input, and the results of both models written by gradcli."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    d = tmp_path_factory.mktemp("diff")
    inp = keras.Input((12,), name="x")
    h = keras.layers.Dense(16, activation="tanh", name="h")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h), name="mlp")
    model.compile(loss="mse")
    model.save(d / "a.keras")
    model.save(d / "a.h5")
    model.export(str(d / "a_export"), verbose=False)
    kernel = model.get_layer("h").kernel.numpy()
    model.get_layer("h").kernel.assign(kernel + rng.normal(scale=0.3, size=kernel.shape))
    model.save(d / "b.keras")
    np.save(d / "x.npy", rng.normal(size=(9, 12)).astype(np.float32))
    np.save(d / "x2.npy", rng.normal(size=(9, 12)).astype(np.float32))
    return d


def _result(cli, d, name, model, *args, input_name="x.npy"):
    path = d / name
    if not path.exists():
        r = cli(*args[:1], d / model, d / input_name, *args[1:], "-o", path)
        assert r.code == 0, r.err
    return path


def _diff(cli, a, b, *args):
    r = cli("diff", a, b, "--json", *args)
    return r, (json.loads(r.out) if r.out.strip() else None)


# ------------------------------------------------------------------ the NumPy reference


def ref_ranks(x: np.ndarray) -> np.ndarray:
    """Tie-averaged ranks by counting (O(n^2), independent of the code under test)."""
    less = (x[None, :] < x[:, None]).sum(axis=1)
    equal = (x[None, :] == x[:, None]).sum(axis=1)
    return less + (equal + 1) / 2.0


def ref_spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ref_ranks(a), ref_ranks(b))[0, 1])


def ref_figures(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return {
        "cosine": a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64),
        "rel_diff": np.linalg.norm(a64 - b64) / np.linalg.norm(b64),
        "max_abs_diff": np.max(np.abs(a64 - b64)),
        "sign_agreement": np.mean(np.sign(a64) == np.sign(b64)),
    }


def test_rank_average_matches_counting_reference():
    from gradcli.present.diff_figures import rank_average, spearman

    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    np.testing.assert_allclose(rank_average(x), ref_ranks(x))
    y = x + rng.integers(0, 3, size=40)
    assert spearman(x, y) == pytest.approx(ref_spearman(x, y), abs=1e-12)
    assert spearman(np.ones(5), np.ones(5)) == 1.0  # both constant
    assert spearman(np.ones(5), np.arange(5.0)) == 0.0  # one constant


# ------------------------------------------------------------------ gradcli diff


def test_a_file_diffed_with_itself_is_identical(cli, pair):
    a = _result(cli, pair, "in_a.npz", "a.keras", "wrt-input")
    r, rec = _diff(cli, a, a)
    assert r.code == 0, r.err
    (row,) = rec["tensors"]
    assert (row["name"], row["cosine"], row["rel_diff"], row["max_abs_diff"]) == ("x", 1, 0, 0)
    assert row["rank_corr"] == row["rank_corr_min"] == row["top_overlap"] == 1.0
    assert rec["warnings"] == [] and rec["gates"] == []


def test_perturbed_layer_figures_match_numpy_and_gates_trip(cli, pair):
    a = _result(cli, pair, "w_a.npz", "a.keras", "wrt-weights")
    b = _result(cli, pair, "w_b.npz", "b.keras", "wrt-weights")
    r, rec = _diff(cli, b, a)  # B (the reference) is the unperturbed model
    assert r.code == 0, r.err
    with np.load(a, allow_pickle=False) as fa, np.load(b, allow_pickle=False) as fb:
        rows = {t["name"]: t for t in rec["tensors"]}
        assert set(rows) == {"h/kernel", "h/bias", "out/kernel", "out/bias"}
        for key, row in rows.items():
            ref = ref_figures(fb[key], fa[key])
            for figure, value in ref.items():
                assert row[figure] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, figure)
            assert "rank_corr" not in row  # weights are not per-sample maps
    worst = min(t["cosine"] for t in rec["tensors"])
    assert worst < 0.999
    r, rec = _diff(cli, b, a, "--min-cosine", "0.999")
    assert r.code == 1
    tripped = {t["name"] for t in rec["tensors"] if t["tripped"]}
    assert tripped == {t["name"] for t in rec["tensors"] if t["cosine"] < 0.999}
    assert rec["gates"] == ["low-cosine"]
    r = cli("diff", b, a, "--max-rel-diff", "1e-3")
    assert r.code == 1
    assert "✗ high-rel-diff" in r.out


def test_attribution_maps_rank_correlation_and_top_overlap(cli, pair):
    a = _result(cli, pair, "in_a.npz", "a.keras", "wrt-input")
    b = _result(cli, pair, "in_b.npz", "b.keras", "wrt-input")
    r, rec = _diff(cli, b, a, "--top-percent", "25")
    assert r.code == 0, r.err
    (row,) = rec["tensors"]
    ga, gb = np.load(a)["x"], np.load(b)["x"]
    rhos = [ref_spearman(np.abs(gb[i]), np.abs(ga[i])) for i in range(len(ga))]
    k = math.ceil(12 * 0.25)
    overlaps = [
        len(set(np.argsort(-np.abs(gb[i]))[:k]) & set(np.argsort(-np.abs(ga[i]))[:k])) / k
        for i in range(len(ga))
    ]
    assert row["rank_corr"] == pytest.approx(np.mean(rhos), abs=1e-12)
    assert row["rank_corr_min"] == pytest.approx(np.min(rhos), abs=1e-12)
    assert row["top_overlap"] == pytest.approx(np.mean(overlaps), abs=1e-12)
    assert row["top_overlap_min"] == pytest.approx(np.min(overlaps), abs=1e-12)
    # the gate is on the lowest sample's correlation: just above it trips, at it passes
    r, rec = _diff(cli, b, a, "--min-rank-corr", repr(float(np.min(rhos)) + 1e-6))
    assert r.code == 1 and rec["tensors"][0]["status"] == "low-rank-corr"
    r, rec = _diff(cli, b, a, "--min-rank-corr", repr(float(np.min(rhos)) - 1e-6))
    assert r.code == 0 and rec["tensors"][0]["status"] == "ok"


def test_mismatched_keys_and_shapes_are_rows_not_crashes(cli, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, k=np.ones((2, 3)), only_a=np.zeros(3), s=np.ones((4, 2)))
    np.savez_compressed(b, k=np.ones((2, 3)), only_b=np.zeros(3), s=np.ones((2, 4)))
    r, rec = _diff(cli, a, b)
    assert r.code == 0, r.err
    status = {t["name"]: t["status"] for t in rec["tensors"]}
    assert status == {
        "k": "ok",
        "only_a": "only-in-a",
        "s": "shape-mismatch",
        "only_b": "only-in-b",
    }
    assert r.err.count("note: ") == 2  # neither file has provenance
    assert "has no provenance" in r.err
    r, rec = _diff(cli, a, b, "--min-cosine", "0.5")
    assert r.code == 1
    assert {t["name"] for t in rec["tensors"] if t["tripped"]} == {"only_a", "s", "only_b"}


def test_provenance_mismatches_warn_or_refuse(cli, pair):
    vanilla = _result(cli, pair, "in_a.npz", "a.keras", "wrt-input")
    other_input = _result(cli, pair, "in_a_x2.npz", "a.keras", "wrt-input", input_name="x2.npy")
    r, rec = _diff(cli, vanilla, other_input)
    assert r.code == 0
    assert any(w.startswith("input differs") for w in rec["warnings"])
    assert "warning: input differs" in r.err
    grad_x_input = _result(cli, pair, "in_gxi.npz", "a.keras", "wrt-input", "-m", "gradxinput")
    r, rec = _diff(cli, vanilla, grad_x_input)
    assert r.code == 0
    assert any(w.startswith("method differs") for w in rec["warnings"])
    weights = _result(cli, pair, "w_a.npz", "a.keras", "wrt-weights")
    r = cli("diff", vanilla, weights)
    assert r.code == 3
    assert r.err == (
        "error: A is a wrt-input result, B a wrt-weights result: different quantities, "
        "nothing to compare\n"
    )


def test_bad_files_are_one_line_errors(cli, tmp_path):
    (tmp_path / "t.npz").write_bytes(b"not a zip")
    r = cli("diff", tmp_path / "t.npz", tmp_path / "t.npz")
    assert r.code == 3 and r.err.startswith("error: A ") and r.err.count("\n") == 1
    r = cli("diff", tmp_path / "none.npz", tmp_path / "t.npz")
    assert (r.code, r.err) == (3, f"error: A {tmp_path / 'none.npz'}: no such file\n")


def test_diff_runs_without_tensorflow(pair, cli):
    a = _result(cli, pair, "in_a.npz", "a.keras", "wrt-input")
    code = (
        "import sys\n"
        "from gradcli.cli import main\n"
        f"try:\n    main(['diff', {str(a)!r}, {str(a)!r}, '--json'])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('TF', 'tensorflow' in sys.modules, code, file=sys.stderr)\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "TF False 0" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["tensors"][0]["cosine"] == 1


# ------------------------------------------------------------------ --against


@pytest.mark.parametrize("command", ["wrt-input", "wrt-weights"])
def test_h5_against_its_keras_conversion(cli, pair, tmp_path, command):
    out = tmp_path / "g.npz"
    r = cli(
        command, pair / "a.keras", pair / "x.npy", "--against", pair / "a.h5", "--json", "-o", out
    )
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["command"] == "diff" and rec["b"] == str(pair / "a.h5")
    assert rec["tensors"] and all(t["cosine"] >= 0.999999 for t in rec["tensors"])
    assert [run["out"] for run in rec["runs"]] == [str(out), str(tmp_path / "g.against.npz")]
    a = np.load(out, allow_pickle=False)
    b = np.load(tmp_path / "g.against.npz", allow_pickle=False)
    assert json.loads(str(b["__gradcli__"]))["model"]["path"] == str(pair / "a.h5")
    for t in rec["tensors"]:
        np.testing.assert_allclose(a[t["name"]], b[t["name"]], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("command", ["wrt-input", "wrt-weights"])
def test_model_against_its_export_and_a_perturbed_model(cli, pair, tf, command):
    r = cli(command, pair / "a.keras", pair / "x.npy", "--against", pair / "a_export", "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert len(rec["tensors"]) == (1 if command == "wrt-input" else 4)
    assert all(t["cosine"] >= 0.999999 for t in rec["tensors"])
    r = cli(
        command,
        pair / "b.keras",
        pair / "x.npy",
        "--against",
        pair / "a.keras",
        "--json",
        "--min-cosine",
        "0.999999",
    )
    assert r.code == 1
    rec = json.loads(r.out)
    assert "low-cosine" in rec["gates"]
    if command == "wrt-input":  # against a plain tape on both models
        x = tf.constant(np.load(pair / "x.npy"))
        grads = []
        for name in ("b.keras", "a.keras"):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(load(pair / name)(x))
            grads.append(tape.gradient(y, x).numpy())
        ref = ref_figures(*grads)
        assert rec["tensors"][0]["cosine"] == pytest.approx(ref["cosine"], rel=1e-5)
        assert rec["tensors"][0]["rel_diff"] == pytest.approx(ref["rel_diff"], rel=1e-3)


def test_against_refuses_directories_and_png(cli, pair, models, tmp_path):
    r = cli("wrt-input", models["dir"], pair / "x.npy", "--against", pair / "a.keras")
    assert r.code == 2 and r.err.startswith("error: --against compares one model with one model")
    r = cli(
        "wrt-input",
        pair / "a.keras",
        pair / "x.npy",
        "--against",
        pair / "a.keras",
        "--png",
        tmp_path / "p",
    )
    assert (r.code, r.err) == (2, "error: --png goes without --against\n")


def test_against_through_the_worker_leaves_only_the_outputs(pair, tmp_path):
    out = tmp_path / "o.npz"
    r = run_process(
        "wrt-weights",
        pair / "b.keras",
        pair / "x.npy",
        "--against",
        pair / "a.keras",
        "-o",
        out,
        "--max-rel-diff",
        "0.01",
    )
    assert r.code == 1, r.err
    assert "✗ high-rel-diff" in r.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.against.npz", "o.npz"]


def test_nonfinite_values_give_no_figure_and_trip_the_gates(cli, tmp_path):
    a = np.ones((3, 4))
    a[1, 2] = np.nan
    np.savez(tmp_path / "a.npz", g=a)
    np.savez(tmp_path / "b.npz", g=np.ones((3, 4)))
    r, rec = _diff(cli, tmp_path / "a.npz", tmp_path / "b.npz")
    (row,) = rec["tensors"]
    assert r.code == 0 and row["status"] == "ok"  # no gate given: reported, not tripped
    assert (row["cosine"], row["rel_diff"], row["rank_corr"], row["nonfinite"]) == (
        None,
        None,
        None,
        1,
    )
    assert row["sign_agreement"] == 11 / 12
    r, rec = _diff(cli, tmp_path / "a.npz", tmp_path / "b.npz", "--min-rank-corr", "0")
    assert r.code == 1 and rec["tensors"][0]["status"] == "low-rank-corr"


def test_keys_named_differently_pair_by_position_when_shapes_agree(cli, tmp_path):
    """A model's variables and its renamed export's: same shapes in the same order."""
    rng = np.random.default_rng(3)
    k, b = rng.normal(size=(4, 2)), rng.normal(size=2)
    np.savez(tmp_path / "a.npz", **{"d/kernel": k, "d/bias": b})
    np.savez(tmp_path / "b.npz", **{"m/d/kernel:0": k, "m/d/bias:0": -b})
    r, rec = _diff(cli, tmp_path / "a.npz", tmp_path / "b.npz")
    assert r.code == 0, r.err
    rows = {t["name"]: t for t in rec["tensors"]}
    assert set(rows) == {"d/kernel ~ m/d/kernel:0", "d/bias ~ m/d/bias:0"}
    assert rows["d/kernel ~ m/d/kernel:0"]["cosine"] == pytest.approx(1.0)
    assert rows["d/bias ~ m/d/bias:0"]["cosine"] == pytest.approx(-1.0)
    assert "keys paired by position" in r.err
    np.savez(tmp_path / "c.npz", **{"m/d/kernel:0": k, "m/d/bias:0": np.ones(3)})
    r, rec = _diff(cli, tmp_path / "a.npz", tmp_path / "c.npz")
    assert sorted(t["status"] for t in rec["tensors"]) == ["only-in-a"] * 2 + ["only-in-b"] * 2
