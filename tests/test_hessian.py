"""gradcli hessian against the exact Hessian of small models: `tape.jacobian` of the gradient in
float64 (the mean loss over all samples, a few dozen weights), its eigenvalues and traces by
NumPy; the input Hessian of each sample the same way. Products, eigenvalues and traces are
checked on float64 models (to float64 rounding or the estimator's own error), the command on
a saved float32 model, and bad input for its exit code and one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import npz

N = 24


def _mlp(keras, dtype: str, seed: int = 0, activation: str = "tanh"):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5,), name="x", dtype=dtype)
    h = keras.layers.Dense(6, activation=activation, name="d1", dtype=dtype)(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="d2", dtype=dtype)(h), name="mlp")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)
    model.compile(loss=loss)
    return model, loss


@pytest.fixture(scope="session")
def curved(tmp_path_factory, keras, tf):
    """A tanh MLP (57 weights) saved in float32, its float64 twin in memory, N samples with
    labels, and the exact float64 Hessian of the mean loss (weights in model order)."""
    rng = np.random.default_rng(3)
    d = tmp_path_factory.mktemp("hessian")
    m32, _ = _mlp(keras, "float32")
    m32.save(d / "mlp.keras")
    m64, loss = _mlp(keras, "float64")
    for a, b in zip(m64.weights, m32.weights, strict=True):
        a.assign(b.numpy().astype(np.float64))
    x = rng.normal(size=(N, 5))
    y = rng.integers(0, 3, size=(N,))
    np.save(d / "x.npy", x.astype(np.float32))
    np.save(d / "y.npy", y)
    variables = [v.value for v in m64.trainable_variables]
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = loss(y, m64(x))
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(value, variables)], 0)
    blocks = outer.jacobian(flat, variables)
    h = np.concatenate([b.numpy().reshape(len(flat), -1) for b in blocks], axis=1)
    sizes = [int(np.prod(v.shape)) for v in variables]
    return {
        "dir": d,
        "model": d / "mlp.keras",
        "x": d / "x.npy",
        "y": d / "y.npy",
        "m64": m64,
        "x64": x,
        "y64": y,
        "h": (h + h.T) / 2,
        "names": [v.path for v in m64.trainable_variables],
        "ends": np.cumsum([0, *sizes]),
    }


def _block(curved, *names: str) -> np.ndarray:
    """The rows and columns of the exact Hessian that belong to these variables."""
    index = np.concatenate(
        [
            np.arange(curved["ends"][k], curved["ends"][k + 1])
            for k, n in enumerate(curved["names"])
            if n in names
        ]
    )
    return curved["h"][np.ix_(index, index)]


# ------------------------------------------------------------------ the product itself


@pytest.mark.parametrize("mode", ["double-backward", "forward-over-backward"])
def test_each_product_is_the_exact_hessian_times_v_at_any_batch_size(curved, mode):
    from gradcli.api import _handle
    from gradcli.engine.batched import Batch
    from gradcli.engine.hvp import WeightHessian
    from gradcli.engine.objective import build_objective

    handle = _handle(curved["m64"], False)
    engine = WeightHessian(handle, build_objective(handle, has_target=True), mode=mode)
    x, y = curved["x64"], curved["y64"].astype(np.int32)

    def batches(size):
        return lambda: [
            Batch(i, min(N, i + size), [x[i : i + size]], [y[i : i + size]])
            for i in range(0, N, size)
        ]

    engine.gradient(batches(N))
    v = np.random.default_rng(0).normal(size=curved["h"].shape[0])
    vs = [
        v[a:b].reshape(var.shape)
        for a, b, var in zip(curved["ends"][:-1], curved["ends"][1:], engine.variables, strict=True)
    ]
    want = curved["h"] @ v
    for size in (N, 7, 1):
        got = np.concatenate([p.ravel() for p in engine.product(batches(size), vs)])
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13 * abs(want).max())


# ------------------------------------------------------------------ estimates, float64


@pytest.fixture(scope="session")
def weights_run(curved):
    import gradcli

    return gradcli.hessian(
        curved["m64"],
        curved["x64"],
        curved["y64"],
        top_k=3,
        tol=1e-9,
        probes=200,
        per_layer=True,
        density=True,
        density_runs=8,
        density_steps=60,
        seed=1,
    )


def test_top_k_eigenvalues_and_vectors_are_the_exact_ones(curved, weights_run):
    rec = weights_run.record
    exact = np.linalg.eigvalsh(curved["h"])[::-1][:3]
    eig = rec["eigen"]
    assert eig["which"] == "largest" and all(eig["converged"])
    np.testing.assert_allclose(eig["values"], exact, rtol=1e-8)
    vectors = weights_run.arrays
    y = np.concatenate(
        [vectors[f"eigenvectors/{n}"].reshape(3, -1) for n in curved["names"]], axis=1
    ).astype(np.float64)
    residual = np.linalg.norm(y @ curved["h"] - exact[:, None] * y, axis=1)
    assert residual.max() < 1e-6 * exact[0]  # float32 vectors
    np.testing.assert_allclose(weights_run.arrays["eigenvalues"], eig["values"])


def test_hutchinson_is_within_its_standard_error_at_several_probe_counts(curved, weights_run):
    samples = weights_run.arrays["trace/samples"]
    exact = float(np.trace(curved["h"]))
    assert len(samples) == 200
    for m in (10, 50, 200):
        est, se = samples[:m].mean(), samples[:m].std(ddof=1) / np.sqrt(m)
        assert abs(est - exact) <= 3 * se, (m, est, se, exact)
    t = weights_run.record["trace"]
    assert t["probes"] == 200 and t["value"] == pytest.approx(samples.mean())
    for name in curved["names"]:  # HAWQ's per-variable traces, from the same probes
        row = weights_run.figures[name]
        exact_block = np.trace(_block(curved, name))
        assert abs(row["trace"] - exact_block) <= 3.5 * row["trace_stderr"], name
    assert sum(weights_run.figures[n]["trace"] for n in curved["names"]) == pytest.approx(
        t["value"]
    )


def test_each_layer_has_its_own_blocks_trace_and_top_eigenvalue(curved, weights_run):
    layers = {e["layer"]: e for e in weights_run.record["layers"]}
    assert list(layers) == ["d1", "d2"]
    for layer in layers:
        block = _block(curved, f"{layer}/kernel", f"{layer}/bias")
        entry = layers[layer]
        assert entry["size"] == len(block)
        assert entry["top"] == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-7)
        assert abs(entry["trace"] - np.trace(block)) <= 3.5 * entry["trace_stderr"]


def test_density_moments_are_the_traces_of_h_and_h_squared(curved, weights_run):
    dens = weights_run.record["density"]
    n = len(curved["h"])
    for p, exact in ((1, np.trace(curved["h"]) / n), (2, np.trace(curved["h"] @ curved["h"]) / n)):
        est = dens["mean"] if p == 1 else dens["second_moment"]
        assert abs(est["value"] - exact) <= 3 * est["stderr"], (p, est, exact)
    assert sum(dens["mass"]) == pytest.approx(1.0, abs=1e-3)
    assert len(dens["edges"]) == dens["bins"] + 1 == 101
    nodes, weights = weights_run.arrays["density/nodes"], weights_run.arrays["density/weights"]
    assert nodes.shape == weights.shape == (8, 57)  # Lanczos ends when the space is spanned
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_smallest_and_magnitude_and_batch_size_change_nothing_else(curved, weights_run):
    import gradcli

    e = np.linalg.eigvalsh(curved["h"])
    common = dict(tol=1e-9, probes=200, seed=1)
    small = gradcli.hessian(
        curved["m64"], curved["x64"], curved["y64"], which="smallest", batch_size=5, **common
    )
    assert small.record["eigen"]["values"][0] == pytest.approx(e[0], rel=1e-7, abs=1e-9)
    # the probes are the same whatever the batch size: the trace is the same to rounding
    np.testing.assert_allclose(
        small.arrays["trace/samples"], weights_run.arrays["trace/samples"], rtol=1e-10
    )
    big = gradcli.hessian(curved["m64"], curved["x64"], curved["y64"], which="magnitude", **common)
    lm = e[np.argmax(abs(e))]
    assert big.record["eigen"]["values"][0] == pytest.approx(lm, rel=1e-7)


# ------------------------------------------------------------------ --wrt input


def test_each_samples_input_hessian_top_eigenvalues_are_exact_at_any_batch_size(curved, tf):
    import gradcli

    m64, loss = curved["m64"], curved["m64"].loss
    x = tf.constant(curved["x64"])
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            per_sample = loss.call(curved["y64"], m64(x))
        g = inner.gradient(per_sample, x)
    h = outer.batch_jacobian(g, x).numpy()  # (N, 5, 5): each sample's own input Hessian
    exact = np.sort(np.linalg.eigvalsh((h + np.swapaxes(h, 1, 2)) / 2), axis=1)[:, ::-1][:, :2]
    runs = [
        gradcli.hessian(
            m64, curved["x64"], curved["y64"], wrt="input", top_k=2, tol=1e-10, batch_size=b
        )
        for b in (5, N)
    ]
    for r in runs:
        np.testing.assert_allclose(r.arrays["eigenvalues"], exact, rtol=1e-8, atol=1e-12)
        assert r.record["per_sample"]["converged"] == N
    # the same start vector per sample, whatever the batch: the same runs to rounding
    np.testing.assert_allclose(
        runs[0].arrays["eigenvalues"], runs[1].arrays["eigenvalues"], rtol=1e-12, atol=1e-15
    )
    assert runs[0].record["per_sample"]["steps"] == runs[1].record["per_sample"]["steps"]
    sharpest = runs[0].record["per_sample"]["sharpest"][0]
    assert sharpest["index"] == int(np.argmax(exact[:, 0]))


# ------------------------------------------------------------------ the command


def test_the_command_on_a_saved_model_with_its_outputs_and_gate(curved, cli, tmp_path):
    exact = np.linalg.eigvalsh(curved["h"])[-1]
    out, png, junit = tmp_path / "h.npz", tmp_path / "d.png", tmp_path / "r.xml"
    args = [curved["model"], curved["x"], "-t", curved["y"], "--probes", "20"]
    r = cli(
        "hessian",
        *args,
        "--hvp",
        "forward-over-backward",
        "--png",
        png,
        "-o",
        out,
        "--junit",
        junit,
        "--max-sharpness",
        exact / 2,
        "--json",
        "--density-steps",
        "20",
    )
    assert r.code == 1, r.err
    rec = json.loads(r.out)
    assert rec["gates"] == ["too-sharp"] and rec["sharpness"]["tripped"] is True
    assert rec["eigen"]["values"][0] == pytest.approx(exact, rel=1e-4)  # float32 products
    assert rec["provenance"]["parameters"]["seed"] == 0
    assert rec["provenance"]["parameters"]["hvp"] == "forward-over-backward"
    assert rec["provenance"]["estimates"]["trace_probes"] == 20
    assert set(npz(out)) >= {
        "eigenvalues",
        "trace/samples",
        "density/mass",
        "eigenvectors/d1/kernel",
    }
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'type="too-sharp"' in junit.read_text()
    shown = cli("hessian", *args, "--max-sharpness", exact * 2, "-k", "2", "--per-layer")
    assert shown.code == 0, shown.err
    for words in (
        "λ1 = ",
        "λ2 = ",
        "trace (Hutchinson, 20 probes)",
        "top λ (own block)",
        "d2/bias",
        f"sharpness {exact:.6g}"[:14],
    ):
        assert words in shown.out, words
    md = cli("hessian", *args, "--format", "markdown")
    assert md.code == 0 and "| variable | shape | trace ± se | status |" in md.out


def test_a_directory_of_checkpoints_gives_one_row_each(curved, cli, tmp_path, keras):
    m, _ = _mlp(keras, "float32", seed=1)
    m.save(tmp_path / "b.keras")
    (tmp_path / "a.keras").write_bytes(curved["model"].read_bytes())
    r = cli("hessian", tmp_path, curved["x"], "-t", curved["y"], "--probes", "5")
    assert r.code == 0, r.err
    assert "hessian: 2 models" in r.out and "top λ" in r.out
    lines = cli("hessian", tmp_path, curved["x"], "-t", curved["y"], "--probes", "5", "--json").out
    values = [json.loads(line)["eigen"]["values"][0] for line in lines.splitlines()]
    assert len(values) == 2 and values[0] != values[1]


# ------------------------------------------------------------------ what it says, and refuses


def test_relu_and_a_class_score_have_no_input_curvature_and_say_so(cli, tmp_path, keras):
    m, _ = _mlp(keras, "float32", activation="relu")
    m.save(tmp_path / "relu.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32))
    r = cli(
        "hessian",
        tmp_path / "relu.keras",
        tmp_path / "x.npy",
        "--class",
        "0",
        "--wrt",
        "input",
        "--fail-on",
        "zero",
    )
    assert r.code == 1
    assert "✗ zero" in r.out and "piecewise linear in the input" in r.err


def test_a_nonfinite_gradient_names_its_variable(models, cli):
    r = cli(
        "hessian",
        models["nan"],
        models["dir"] / "x5.npy",
        "-t",
        models["dir"] / "y2.npy",
        "--loss",
        "mse",
        "--fail-on",
        "nonfinite",
        "--json",
    )
    assert r.code == 1
    rec = json.loads(r.out)
    assert rec["gates"] == ["nonfinite"] and rec["tensors"][0]["name"].endswith("kernel")
    assert rec["tensors"][0]["status"] == "nonfinite" and "eigen" not in rec
    assert "gradient is not finite" in r.err


def test_a_nonfinite_product_names_its_variable(cli, tmp_path, keras):
    """(w x)^2 at w = 0, x = 1e20: a zero gradient, but H = 2 x x^T overflows float32 in the
    kernel's rows only (the bias's are 2 x^T v, finite)."""
    inp = keras.Input((3,), name="x")
    m = keras.Model(inp, keras.layers.Dense(1, kernel_initializer="zeros", name="d")(inp))
    m.save(tmp_path / "big.keras")
    np.save(tmp_path / "x.npy", np.full((4, 3), 1e20, np.float32))
    np.save(tmp_path / "y.npy", np.zeros((4, 1), np.float32))
    args = ["--loss", "mse", "--fail-on", "nonfinite", "--json"]
    r = cli("hessian", tmp_path / "big.keras", tmp_path / "x.npy", "-t", tmp_path / "y.npy", *args)
    assert r.code == 1 and "d/kernel: the Hessian-vector product is not finite" in r.err
    rec = json.loads(r.out)
    assert [t["status"] for t in rec["tensors"]] == ["nonfinite", "ok"] and "eigen" not in rec


def test_an_op_without_a_second_derivative_is_exit_4(cli, tmp_path, keras):
    inp = keras.Input((4, 4, 1), name="img")
    h = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inp)
    h = keras.layers.Resizing(6, 6, interpolation="bicubic", name="up")(h)
    m = keras.Model(inp, keras.layers.Dense(1, name="head")(keras.layers.Flatten()(h)))
    m.save(tmp_path / "bicubic.keras")
    np.save(tmp_path / "img.npy", np.ones((2, 4, 4, 1), np.float32))
    r = cli("hessian", tmp_path / "bicubic.keras", tmp_path / "img.npy", "--probes", "2")
    assert r.code == 4
    assert r.err.count("\n") == 1 and "no second derivative through the op ResizeBicubic" in r.err


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["-k", "99"], 2, "--top-k 99: the Hessian has 57 rows"),
        (["--which", "smallest", "--max-sharpness", "1"], 2, "--max-sharpness gates the largest"),
        (["--wrt", "input", "--per-layer"], 2, "--per-layer is for --wrt weights"),
        (["--wrt", "input", "--png", "d.png"], 2, "--png is for --wrt weights"),
        (["--wrt", "input", "--training"], 2, "defined in inference mode"),
        (["--wrt", "input", "-k", "6"], 2, "--top-k 6: the Hessian has 5 rows"),
    ],
)
def test_bad_options_are_one_line_before_any_work(curved, cli, extra, code, words):
    r = cli("hessian", curved["model"], curved["x"], "-t", curved["y"], *extra)
    assert r.code == code and words in r.err and r.err.count("\n") == 1, r.err


def test_a_basis_that_cannot_fit_and_a_model_without_weights(cli, tmp_path, keras):
    inp = keras.Input((300,), name="x")
    wide = keras.Model(inp, keras.layers.Dense(300, name="wide")(inp))
    wide.save(tmp_path / "wide.keras")
    still = keras.Model(inp, keras.layers.Activation("tanh", name="act")(inp))
    still.save(tmp_path / "still.keras")
    np.save(tmp_path / "x.npy", np.zeros((2, 300), np.float32))
    r = cli("hessian", tmp_path / "wide.keras", tmp_path / "x.npy", "--lanczos-steps", "90000")
    assert r.code == 2 and r.err.count("\n") == 1
    assert "--top-k and --lanczos-steps: the Lanczos basis would hold 90,001 vectors" in r.err
    r = cli("hessian", tmp_path / "still.keras", tmp_path / "x.npy")
    assert r.code == 3 and "has no trainable weights" in r.err and r.err.count("\n") == 1
