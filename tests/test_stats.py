"""Per-tensor figures accumulated over batches equal the figures of the whole array."""

from __future__ import annotations

import numpy as np
import pytest

from gradcli.engine.sparse import GradientSum, SparseGradient
from gradcli.present.figures import TensorStats, layer_summary
from gradcli.present.gates import Gates


def test_streamed_figures_equal_whole_array_figures():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(100, 7)).astype(np.float32)
    g[rng.random(g.shape) < 0.2] = 0
    st = TensorStats("g", g.shape)
    for start in range(0, 100, 13):
        st.update(g[start : start + 13])
    assert abs(st.l2 - np.linalg.norm(g.astype(np.float64))) < 1e-6 * st.l2
    assert abs(st.mean_abs - np.abs(g).mean(dtype=np.float64)) < 1e-9
    assert st.max_abs == float(np.abs(g).max())
    assert st.zero_fraction == np.count_nonzero(g == 0) / g.size
    assert st.record(Gates())["status"] == "ok"


def test_nonfinite_zero_and_bounds_statuses():
    st = TensorStats("g", (2, 2))
    st.update(np.array([[np.nan, 1.0], [np.inf, 0.0]], np.float32))
    assert st.nonfinite == 2 and st.zeros == 1
    rec = st.record(Gates(frozenset({"nonfinite"})))
    assert rec["status"] == "nonfinite" and rec["tripped"]
    assert rec["l2"] == 1.0
    zero = TensorStats("z", (3,))
    zero.update(np.zeros(3, np.float32))
    assert zero.record(Gates())["status"] == "zero"
    assert not zero.record(Gates())["tripped"]
    big = TensorStats("b", (1,))
    big.update(np.array([5.0]))
    assert big.record(Gates(max_norm=1.0))["status"] == "too-large"
    assert big.record(Gates(min_norm=10.0))["tripped"]


def test_layer_summary_sums_squares_per_layer():
    records = [
        {"status": "ok", "l2": 3.0, "param_l2": 6.0},
        {"status": "ok", "l2": 4.0, "param_l2": 8.0},
        {"status": "disconnected", "l2": None, "param_l2": 2.0},
    ]
    summary = layer_summary(records, ["a", "a", "b"])
    assert summary == [
        {"layer": "a", "l2": 5.0, "status": "ok", "param_l2": 10.0},
        {"layer": "b", "l2": 0.0, "status": "disconnected", "param_l2": 2.0},
    ]


@pytest.mark.parametrize("k", [0, 1, 7, 500])
def test_sparse_batch_sums_equal_the_dense_sum(k):
    """Embedding-table batches (rows, repeated indices) summed without densifying them give
    the sum of their dense tables, and count the rows they touched."""
    rng = np.random.default_rng(k)
    total = GradientSum((30, 4))
    dense = np.zeros((30, 4))
    for _ in range(3):
        indices = rng.integers(0, 30, k)
        values = rng.normal(size=(k, 4)).astype(np.float32)
        batch = SparseGradient(values, indices, (30, 4))
        total.add(batch)
        np.add.at(dense, indices, values.astype(np.float64))
    np.testing.assert_allclose(total.total, dense, rtol=1e-6, atol=1e-12)
    assert total.sparse and total.rows_touched == np.count_nonzero(np.abs(dense).sum(1))
