"""bench/hvp_modes.py's two Hessian-vector products (forward-over-backward, double-backward)
against an analytic Hessian (softmax regression) and the exact one of a small tanh MLP."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "hvp_modes.py"


@pytest.fixture(scope="module")
def hvp_modes():
    spec = importlib.util.spec_from_file_location("hvp_modes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def softmax_regression(keras):
    """Dense(3) on 5 features in float64, a batch of 9, and its Hessian worked out by hand:
    mean_i kron(x~_i x~_i^T, diag(p_i) - p_i p_i^T), x~ = [x, 1] (kernel rows, then bias)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((5,), dtype="float64")
    model = keras.Model(inp, keras.layers.Dense(3, dtype="float64")(inp))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 5)), rng.integers(0, 3, size=(9,))
    kernel, bias = (v.numpy() for v in model.trainable_variables)
    z = x @ kernel + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    xt = np.hstack([x, np.ones((9, 1))])
    h = np.mean(
        [np.kron(np.outer(a, a), np.diag(q) - np.outer(q, q)) for a, q in zip(xt, p, strict=True)],
        axis=0,
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    return model, loss, x, y, h


@pytest.mark.parametrize("mode", ["forward-over-backward", "double-backward"])
@pytest.mark.parametrize("compiled", [True, False])
def test_each_mode_is_the_analytic_hessian_times_v(hvp_modes, softmax_regression, mode, compiled):
    model, loss, x, y, h = softmax_regression
    fns = hvp_modes.hvp_functions(model, loss, compile=compiled)
    v = np.random.default_rng(2).normal(size=h.shape[0])
    vs = [v[:15].reshape(5, 3), v[15:]]
    got = np.concatenate([np.ravel(a) for a in fns[mode](x, y, vs)])
    np.testing.assert_allclose(got, h @ v, rtol=1e-12, atol=1e-14)


def test_the_reference_hessian_is_the_analytic_one(hvp_modes, softmax_regression):
    model, loss, x, y, h = softmax_regression
    np.testing.assert_allclose(hvp_modes.exact_hessian(model, loss, x, y), h, atol=1e-14)


def test_both_modes_match_the_exact_hessian_of_a_tanh_mlp(hvp_modes):
    errors = hvp_modes.check_against_exact(seed=3)
    assert set(errors) == {"forward-over-backward", "double-backward", "symmetry"}
    assert max(errors.values()) < 1e-12, errors
