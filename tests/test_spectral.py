"""The curvature estimators (gradcli/engine: vectors, lanczos, spectral, stochastic) against
dense symmetric matrices whose spectra are known: NumPy only, no TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from gradcli.engine import lanczos, spectral, stochastic, vectors


def symmetric(eigenvalues, seed: int = 0) -> np.ndarray:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    e = np.asarray(eigenvalues, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(e), len(e))))
    return (q * e) @ q.T


class Counted:
    """A matrix as a matvec that counts its products."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.calls = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.a @ v


# 400 eigenvalues: a bulk in [-1, 1] and outliers on both sides, 8 three times
OUTLIERS = [10.0, 8.0, 8.0, 8.0, 6.0, -9.0, -5.0]
SPECTRUM = np.concatenate([OUTLIERS, np.random.default_rng(1).uniform(-1, 1, 393)])


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return symmetric(SPECTRUM, seed=2)


# ------------------------------------------------------------------ eigenvalues


@pytest.mark.parametrize(
    ("which", "k", "expected"),
    [
        ("LA", 1, [10.0]),
        ("LA", 5, [10.0, 8.0, 8.0, 8.0, 6.0]),
        ("SA", 2, [-9.0, -5.0]),
        ("LM", 3, [10.0, -9.0, 8.0]),
    ],
)
def test_top_eigen_finds_the_ranked_eigenvalues_within_their_residuals(big, which, k, expected):
    matvec = Counted(big)
    got = spectral.top_eigen(matvec, 400, k, which=which, tol=1e-6, max_steps=120, seed=3)
    assert got.which == which and got.converged.all()
    assert got.matvecs == matvec.calls
    np.testing.assert_allclose(got.values, expected, atol=1e-9)
    # each reported residual is the true one, and bounds the eigenvalue's error
    true_res = np.linalg.norm(got.vectors @ big - got.values[:, None] * got.vectors, axis=1)
    np.testing.assert_allclose(got.residuals, true_res, rtol=1e-3, atol=1e-9)
    assert (got.residuals <= got.tol * got.norm).all()
    assert np.all(abs(got.values - expected) <= got.residuals + 1e-12)
    np.testing.assert_allclose(got.vectors @ got.vectors.T, np.eye(k), atol=1e-6)
    # Lanczos, not a full decomposition: far fewer products than the dimension
    assert got.matvecs < (160 if k > 1 else 80)


def test_a_repeated_eigenvalue_is_found_by_the_confirming_restart(big):
    got = spectral.top_eigen(Counted(big), 400, 4, tol=1e-6, max_steps=120, seed=4)
    np.testing.assert_allclose(got.values, [10, 8, 8, 8], atol=1e-9)
    # the eigenspace of 8 is spanned: the found vectors project onto it fully
    w, u = np.linalg.eigh(big)
    space = u[:, abs(w - 8) < 1e-9]
    np.testing.assert_allclose(np.linalg.norm(got.vectors[1:] @ space, axis=1), 1, atol=1e-6)
    # one Krylov space sees one copy of 8: without the confirming restarts 6 takes its place
    single = spectral.top_eigen(big.__matmul__, 400, 4, tol=1e-6, seed=4, confirm=False)
    assert 6.0 in np.round(single.values, 6)


def test_negative_curvature_is_reported_and_top_follows_which():
    a = symmetric([-9.0, 3.0, 2.5, *np.linspace(-1, 1, 97)], seed=5)
    top = spectral.top_eigen(a.__matmul__, 100, tol=1e-8, seed=0)
    assert top.values[0] == pytest.approx(3.0, abs=1e-8)
    assert spectral.top_eigen(a.__matmul__, 100, which="SA", tol=1e-8).values[0] == (
        pytest.approx(-9.0, abs=1e-8)
    )
    assert spectral.top_eigen(a.__matmul__, 100, which="LM", tol=1e-8).values[0] == (
        pytest.approx(-9.0, abs=1e-8)
    )
    power = spectral.power_iteration(a.__matmul__, 100, tol=1e-9, max_iter=500, seed=0)
    assert power.which == "LM" and power.converged.all()
    assert power.values[0] == pytest.approx(-9.0, rel=1e-4)


def test_largest_magnitude_waits_for_both_ends_of_the_spectrum():
    """+5 is far from the rest and converges first; -6 sits close to a bulk down to -5: a
    run that stopped at the first converged end would report 5 (it did, for some seeds)."""
    a = symmetric([5.0, -6.0, *np.linspace(-5.0, 0.5, 298)], seed=16)
    for seed in range(12):
        got = spectral.top_eigen(a.__matmul__, 300, which="LM", seed=seed)
        assert got.converged.all() and abs(got.values[0] + 6) <= got.residuals[0]


def test_power_iteration_with_deflation_matches_the_matrix():
    a = symmetric([5.0, -4.0, 2.0, *np.linspace(-0.5, 0.5, 57)], seed=6)
    matvec = Counted(a)
    got = spectral.power_iteration(matvec, 60, k=2, tol=1e-10, max_iter=2000, seed=1)
    np.testing.assert_allclose(got.values, [5.0, -4.0], rtol=1e-6)
    assert got.matvecs == matvec.calls and got.converged.all()
    # PyHessian's default stop (1e-3 relative change of the quotient) is looser than it sounds
    loose = spectral.power_iteration(a.__matmul__, 60, k=1, seed=1)
    assert abs(loose.values[0] - 5.0) < 0.05 and loose.matvecs < 100


def test_too_few_steps_are_reported_as_not_converged(big):
    got = spectral.top_eigen(big.__matmul__, 400, 2, tol=1e-10, max_steps=4, seed=0)
    assert not got.converged.any() and len(got.values) == 1
    assert got.residuals[0] > got.tol * got.norm
    # the value is still a Rayleigh quotient: inside the spectrum, below the top
    assert -9 <= got.values[0] < 10


def test_an_exhausted_krylov_space_gives_exact_eigenvalues():
    a = symmetric([3.0, 3.0, -1.0, -1.0, -1.0, 2.0], seed=7)
    got = spectral.top_eigen(a.__matmul__, 6, 6, tol=1e-9, seed=0)
    np.testing.assert_allclose(got.values, [3, 3, 2, -1, -1, -1], atol=1e-9)


def test_the_same_seed_repeats_the_same_result(big):
    one = spectral.top_eigen(big.__matmul__, 400, 2, seed=11)
    two = spectral.top_eigen(big.__matmul__, 400, 2, seed=np.random.default_rng(11))
    np.testing.assert_array_equal(one.values, two.values)
    np.testing.assert_array_equal(one.vectors, two.vectors)
    assert one.matvecs == two.matvecs


def test_bad_arguments_and_non_finite_products_are_refused(big):
    with pytest.raises(ValueError, match="which must be one of"):
        spectral.top_eigen(big.__matmul__, 400, which="XX")
    with pytest.raises(ValueError, match="k must be between 1 and 400"):
        spectral.top_eigen(big.__matmul__, 400, k=0)
    nan = np.full(400, np.nan)
    with pytest.raises(lanczos.NonFiniteProduct):
        spectral.top_eigen(lambda v: nan, 400)
    with pytest.raises(lanczos.NonFiniteProduct):
        stochastic.hutchinson(lambda v: nan, 400, 3)
    with pytest.raises(ValueError, match="shape"):
        stochastic.slq(lambda v: v[:3], 400, 1, 5)


# ------------------------------------------------------------------ traces


def test_hutchinson_is_exact_on_a_diagonal_matrix():
    d = np.random.default_rng(0).normal(size=50)
    got = stochastic.hutchinson(lambda v: d * v, 50, 5, seed=0)
    assert got.total.value == pytest.approx(d.sum(), abs=1e-12)
    assert got.total.stderr == pytest.approx(0, abs=1e-12) and got.total.probes == 5


@pytest.mark.parametrize("probes", [4, 16, 64])
def test_hutchinson_is_within_its_standard_error(probes):
    """Over 300 deterministic seeds: the errors in units of the reported standard error are
    centred, of unit spread, and inside 2 standard errors as often as Student's t says."""
    a = symmetric(np.random.default_rng(3).uniform(-2, 3, 60), seed=8)
    trace = np.trace(a)
    # Var(v^T A v) for Rademacher v: 2 (||A||_F^2 - sum diag^2)
    variance = 2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2))
    runs = [stochastic.hutchinson(a.__matmul__, 60, probes, seed=s).total for s in range(300)]
    z = np.array([(r.value - trace) / r.stderr for r in runs])
    assert abs(np.mean(z)) < 0.2
    # t with 3 degrees of freedom has a spread of sqrt(3); with 15 and 63, about 1
    assert 0.85 < np.std(z) < (2.0 if probes == 4 else 1.2)
    inside = np.mean(abs(z) < 2)
    # P(|t| < 2): 0.861 (3 dof), 0.936 (15), 0.950 (63)
    assert {4: 0.80, 16: 0.90, 64: 0.92}[probes] < inside < 0.985
    mean_square = np.mean([r.stderr**2 * probes for r in runs])
    assert mean_square == pytest.approx(variance, rel=0.12)


def test_block_traces_sum_to_the_total_and_estimate_each_block():
    layout = vectors.Layout(["d1/kernel", "d1/bias", "d2/kernel"], [(6, 5), (5,), (5, 3)])
    a = symmetric(np.random.default_rng(4).uniform(-1, 2, layout.n), seed=9)
    per_layer = layout.blocks(lambda name: name.split("/")[0])
    assert list(per_layer) == ["d1", "d2"] and len(per_layer["d1"]) == 2
    blocks = {**layout.blocks(), **{f"layer {k}": v for k, v in per_layer.items()}}
    zs = []
    for seed in range(100):
        got = stochastic.hutchinson(a.__matmul__, layout.n, 20, blocks=blocks, seed=seed)
        np.testing.assert_allclose(got.block_samples[:, :3].sum(axis=1), got.samples, rtol=1e-12)
        for name, est in got.blocks.items():
            parts = vectors.as_slices(blocks[name])
            index = np.concatenate([np.arange(layout.n)[s] for s in parts])
            zs.append((est.value - np.trace(a[np.ix_(index, index)])) / est.stderr)
    zs = np.array(zs)
    assert abs(np.mean(zs)) < 0.1 and 0.9 < np.std(zs) < 1.15


def test_hutchinson_stops_early_at_its_relative_tolerance():
    a = symmetric(np.random.default_rng(5).uniform(1, 2, 40), seed=10)
    got = stochastic.hutchinson(a.__matmul__, 40, 1000, rtol=0.01, seed=0)
    assert 10 <= got.total.probes < 1000
    assert got.total.stderr <= 0.01 * abs(got.total.value)


# ------------------------------------------------------------------ density


def test_slq_quadrature_is_exact_for_low_moments_per_probe():
    a = symmetric(np.random.default_rng(6).uniform(-3, 4, 120), seed=11)
    steps = 6
    got = stochastic.slq(a.__matmul__, 120, probes=4, steps=steps, seed=2)
    rng = np.random.default_rng(2)
    for p in range(4):
        v = lanczos.rademacher(rng, 120)
        np.testing.assert_allclose(got.weights[p].sum(), 1, atol=1e-12)
        for power in range(1, 2 * steps):  # Gauss quadrature: exact to degree 2 steps - 1
            exact = v @ np.linalg.matrix_power(a, power) @ v / 120
            node_sum = np.sum(got.weights[p] * got.nodes[p] ** power)
            assert node_sum == pytest.approx(exact, rel=1e-8, abs=1e-8)
    # mean eigenvalue = trace / n, from the very same probes as the Hutchinson trace
    assert got.moment(1).value * 120 == pytest.approx(got.trace.total.value, rel=1e-10)


def test_slq_moments_estimate_the_spectrum():
    e = np.random.default_rng(7).uniform(-3, 4, 200)
    a = symmetric(e, seed=12)
    got = stochastic.slq(a.__matmul__, 200, probes=30, steps=20, seed=3)
    for power in (1, 2, 3):
        est = got.moment(power)
        assert abs(est.value - np.mean(e**power)) < 4 * est.stderr


def test_slq_density_puts_the_mass_where_the_eigenvalues_are():
    rng = np.random.default_rng(8)
    e = np.concatenate([rng.normal(-1, 0.05, 150), rng.normal(2, 0.05, 50)])
    got = stochastic.slq(symmetric(e, seed=13).__matmul__, 200, probes=20, steps=40, seed=0)
    dens = got.density(bins=60)
    assert dens.mass.sum() == pytest.approx(1, abs=3e-3)
    assert np.sum(dens.pdf * np.diff(dens.edges)) == pytest.approx(dens.mass.sum())
    low = dens.mass[dens.centers < 0.5].sum()
    assert low == pytest.approx(0.75, abs=0.06)
    # its peaks sit on the clusters
    peak_low = dens.centers[np.argmax(np.where(dens.centers < 0.5, dens.pdf, 0))]
    peak_high = dens.centers[np.argmax(np.where(dens.centers > 0.5, dens.pdf, 0))]
    assert peak_low == pytest.approx(-1, abs=0.15) and peak_high == pytest.approx(2, abs=0.15)
    # broadening and range are the caller's to choose
    narrow = got.density(bins=10, sigma=0.01, lo=-2, hi=3)
    assert narrow.sigma == 0.01 and narrow.edges[0] == -2 and narrow.edges[-1] == 3


def test_slq_is_seeded_and_gives_block_traces():
    layout = vectors.Layout(["a", "b"], [(10,), (20,)])
    a = symmetric(np.linspace(-1, 2, 30), seed=14)
    one = stochastic.slq(a.__matmul__, 30, 3, 8, blocks=layout.blocks(), seed=5)
    two = stochastic.slq(a.__matmul__, 30, 3, 8, blocks=layout.blocks(), seed=5)
    np.testing.assert_array_equal(one.nodes, two.nodes)
    np.testing.assert_allclose(one.trace.block_samples.sum(axis=1), one.trace.samples)


# ------------------------------------------------------------------ vectors


def test_layout_flattens_and_splits_per_variable_arrays():
    layout = vectors.Layout(["k", "b"], [(2, 3), (3,)])
    arrays = [np.arange(6.0).reshape(2, 3), np.array([7.0, 8.0, 9.0])]
    flat = layout.flatten(arrays)
    assert layout.n == 9 and flat.dtype == np.float64
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 7, 8, 9])
    for got, want in zip(layout.split(flat), arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    doubled = layout.matvec(lambda xs: [2 * x for x in xs])
    np.testing.assert_array_equal(doubled(flat), 2 * flat)
    with pytest.raises(ValueError, match=r"k: expected shape \(2, 3\)"):
        layout.flatten([np.zeros(6), np.zeros(3)])
    assert vectors.Layout.of(["k"], [np.zeros((4, 2))]).n == 8
    assert vectors.basis_bytes(1000, 100) == 8 * 1000 * 103


def test_a_restricted_product_is_the_diagonal_block():
    a = symmetric(np.linspace(-2, 5, 30), seed=15)
    block = [slice(0, 4), slice(20, 30)]
    index = np.r_[0:4, 20:30]
    sub, m = vectors.restricted(a.__matmul__, 30, block)
    assert m == 14
    got = spectral.top_eigen(sub, m, 2, tol=1e-10, seed=0)
    np.testing.assert_allclose(
        got.values, np.linalg.eigvalsh(a[np.ix_(index, index)])[::-1][:2], atol=1e-9
    )


def test_the_estimators_import_numpy_and_not_tensorflow():
    from test_architecture import MODULES, imports_of

    for root in ("vectors", "lanczos", "spectral", "stochastic"):
        seen, todo = set(), [f"gradcli.engine.{root}"]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for target in imports_of(name, MODULES, top_level_only=True):
                assert not target.startswith(("tensorflow", "keras", "scipy", "torch")), name
                if target in MODULES:
                    todo.append(target)
        assert seen <= {
            f"gradcli.engine.{m}" for m in ("vectors", "lanczos", "spectral", "stochastic")
        }


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_batched_top_gives_each_operator_its_own_top_pairs(which):
    rng = np.random.default_rng(4)
    mats = np.array([symmetric(rng.uniform(-3, 5, 30), seed=s) for s in range(4)])
    mats[2] = 0.0  # a zero Hessian: one product, eigenvalue 0, converged
    calls = []

    def matvec(q):
        calls.append(len(q))
        return np.einsum("bij,bj->bi", mats, q)

    got = spectral.batched_top(
        matvec, rng.normal(size=(4, 30)), 2, which=which, tol=1e-9, max_steps=30
    )
    for b in (0, 1, 3):
        e = np.linalg.eigvalsh(mats[b])
        key = {"LA": e, "SA": -e, "LM": abs(e)}[which]
        np.testing.assert_allclose(got.values[b], e[np.argsort(-key)][:2], atol=1e-8)
        y = got.vectors[b]
        assert np.abs(y @ mats[b] - got.values[b][:, None] * y).max() < 1e-6
    assert got.values[2, 0] == 0 and got.converged[2, 0] and got.steps[2] == 1
    assert len(calls) == got.steps.max() and got.converged[[0, 1, 3]].all()
