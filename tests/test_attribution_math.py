"""TracIn's NumPy side against brute force: streaming top-K, shards and their exact merge, the
random projection's error bound, `--shard auto`, checkpoint order, learning rates."""

from __future__ import annotations

import json
import math
import zipfile

import h5py
import numpy as np
import pytest

from gradcli.commands import cli_flags
from gradcli.commands import values as option_values
from gradcli.commands.shardenv import shard_from_env
from gradcli.engine import projection as pj
from gradcli.engine import tracin as at
from gradcli.errors import ExitCode, InputError, ModelError, UsageError, render
from gradcli.io import checkpoints as order
from gradcli.load import learning_rates as ck

CLI_FLAGS = cli_flags()

# ------------------------------------------------------------------ brute-force references


def brute_top(scores: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per test sample (row of scores (T, N)), the k best by a plain Python sort."""
    out_s, out_r = [], []
    for row in scores:
        pairs = [(s, j) for j, s in enumerate(row)]
        nan = [p for p in pairs if math.isnan(p[0])]
        real = sorted(
            (p for p in pairs if not math.isnan(p[0])),
            key=lambda p: (-p[0] if largest else p[0], p[1]),
        )
        best = (real + sorted(nan, key=lambda p: p[1]))[:k]
        out_s.append([p[0] for p in best])
        out_r.append([p[1] for p in best])
    return np.array(out_s), np.array(out_r)


def tracin_problem(n_train=37, n_test=5, dim=4, checkpoints=3, seed=0):
    """Per-checkpoint per-sample vectors with small integer entries and learning rates that are
    powers of two: every score is exact in float64, and many scores tie."""
    rng = np.random.default_rng(seed)
    train = [rng.integers(-1, 2, (n_train, dim)).astype(np.float32) for _ in range(checkpoints)]
    test = [rng.integers(-1, 2, (n_test, dim)).astype(np.float32) for _ in range(checkpoints)]
    etas = [0.5, 0.25, 1.0][:checkpoints]
    scores = sum(
        e * (a.astype(float) @ b.astype(float).T) for e, a, b in zip(etas, train, test, strict=True)
    )
    self_inf = sum(e * (a.astype(float) ** 2).sum(1) for e, a in zip(etas, train, strict=True))
    return train, test, etas, scores.T, self_inf  # scores (T, N)


def run_tracin(train, test, etas, k, batch, shard=None, keep_matrix=False):
    """What the command will do: stream the shard's batches, all checkpoints per block."""
    run = {"checkpoints": ["a", "b", "c"][: len(etas)], "lr": etas, "batch_size": batch}
    acc = at.Accumulator(run, n_test=len(test[0]), k=k, keep_matrix=keep_matrix, shard=shard)
    for part in at.batch_slices(len(train[0]), batch, shard):
        rows = np.arange(part.start, part.stop)
        block = sum(
            at.checkpoint_scores(e, a[part], b) for e, a, b in zip(etas, train, test, strict=True)
        )
        own = sum(at.self_terms(e, a[part]) for e, a in zip(etas, train, strict=True))
        acc.add(rows, own, block)
    return acc.result()


def assert_same_result(a: at.ShardResult, b: at.ShardResult) -> None:
    assert a.run == b.run and a.k == b.k
    for name in at.ShardResult.ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name


# ------------------------------------------------------------------ streaming top-K


@pytest.mark.parametrize("k", [1, 4, 37, 50])
@pytest.mark.parametrize("batch", [1, 5, 16, 64])
def test_streamed_top_k_equals_a_full_sort_with_ties(k, batch):
    train, test, etas, scores, self_inf = tracin_problem()
    assert len(np.unique(scores)) < scores.size / 3  # plenty of ties to break
    result = run_tracin(train, test, etas, k, batch, keep_matrix=True)
    for largest, got_s, got_r in [
        (True, result.proponent_scores, result.proponent_rows),
        (False, result.opponent_scores, result.opponent_rows),
    ]:
        want_s, want_r = brute_top(scores, k, largest)
        assert np.array_equal(got_r, want_r) and np.array_equal(got_s, want_s)
    assert np.array_equal(result.rows, np.arange(37))
    assert np.array_equal(result.self_influence, self_inf)  # exact: integer data
    assert np.array_equal(result.matrix, scores)


def test_nan_scores_go_last_and_ties_go_to_the_smaller_row():
    scores = np.array([[1.0, np.nan, 3.0, 3.0, -0.0, 0.0, np.nan, -np.inf]])
    for largest in (True, False):
        s, r = at.merge_top(
            np.zeros((1, 0)), np.zeros(0, np.int64), scores, np.arange(8), 8, largest
        )
        want_s, want_r = brute_top(scores, 8, largest)
        assert np.array_equal(r, want_r) and np.array_equal(s, want_s, equal_nan=True)
    assert list(r[0, -2:]) == [1, 6]  # both NaN last, by row


def test_top_self_influence():
    values = np.array([2.0, 5.0, 5.0, 1.0, np.nan])
    s, r = at.top_rows(values, np.array([10, 11, 12, 13, 14]), 3)
    assert list(r) == [11, 12, 10] and list(s) == [5.0, 5.0, 2.0]


# ------------------------------------------------------------------ shards


@pytest.mark.parametrize("n_rows, batch", [(37, 5), (37, 1), (10, 16), (64, 8)])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_shards_partition_the_rows_by_whole_batches(n_rows, batch, n):
    whole = at.batch_slices(n_rows, batch)
    parts = [at.batch_slices(n_rows, batch, (k, n)) for k in range(n)]
    assert sorted((s.start, s.stop) for p in parts for s in p) == [(s.start, s.stop) for s in whole]
    rows = np.concatenate([at.shard_rows(n_rows, batch, (k, n)) for k in range(n)])
    assert np.array_equal(np.sort(rows), np.arange(n_rows))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])  # 9 shards of 8 batches: one shard is empty
@pytest.mark.parametrize("keep_matrix", [False, True])
def test_sharded_and_merged_equals_unsharded_bit_for_bit(n, keep_matrix):
    train, test, etas, scores, _ = tracin_problem(n_train=37, n_test=4)
    whole = run_tracin(train, test, etas, 6, 5, keep_matrix=keep_matrix)
    shards = [run_tracin(train, test, etas, 6, 5, (k, n), keep_matrix) for k in range(n)]
    merged = at.merge(shards[::-1], n_train=37)  # any order of shards
    assert_same_result(merged, whole)
    # and through the saved arrays, as shard files would carry them
    again = [at.ShardResult.from_arrays(s.arrays(), s.run, s.shard, s.k) for s in shards]
    assert_same_result(at.merge(again, n_train=37), whole)


def test_sharded_merge_with_real_float_scores_is_still_exact():
    rng = np.random.default_rng(3)
    train = [rng.normal(size=(50, 9)).astype(np.float32) for _ in range(3)]
    test = [rng.normal(size=(6, 9)).astype(np.float32) for _ in range(3)]
    etas = [0.1, 0.03, 0.007]
    whole = run_tracin(train, test, etas, 5, 8)
    merged = at.merge([run_tracin(train, test, etas, 5, 8, (k, 4)) for k in range(4)])
    assert_same_result(merged, whole)


def test_merge_refuses_what_is_not_one_run():
    train, test, etas, _, _ = tracin_problem()
    shards = [run_tracin(train, test, etas, 3, 5, (k, 3)) for k in range(3)]
    cases = [
        (shards[:2], "missing shard 2/3"),
        (shards + [shards[1]], "shard 1/3 given twice"),
        (shards[:2] + [run_tracin(train, test, etas, 3, 5, (2, 4))], "cut 3 and 4 ways"),
        (shards[:2] + [run_tracin(train, test, etas, 3, 5)], "a whole run"),
        (shards[:2] + [run_tracin(train, test, [1.0] * 3, 3, 5, (2, 3))], "lr differs"),
        (shards[:2] + [run_tracin(train, test, etas, 4, 5, (2, 3))], "top K differs"),
    ]
    for parts, message in cases:
        with pytest.raises(InputError, match=message) as info:
            at.merge(parts)
        assert info.value.exit_code == ExitCode.INPUT
    with pytest.raises(InputError, match="cover 37 rows, not the 40"):
        at.merge(shards, n_train=40)


def test_saved_results_that_do_not_hold_together_are_refused():
    train, test, etas, _, _ = tracin_problem()
    good = run_tracin(train, test, etas, 3, 5, (0, 2), keep_matrix=True)
    arrays = good.arrays()
    broken = [
        ({"rows": arrays["rows"].astype(float)}, "must be integers"),
        ({"self_influence": arrays["self_influence"][:-1]}, "one length"),
        ({"loss": arrays["loss"][:-1]}, "one length"),
        ({"proponent_scores": arrays["proponent_scores"][:, :2]}, "proponent_rows has shape"),
        ({"opponent_rows": arrays["opponent_rows"] + 10_000}, "does not cover"),
        ({"matrix": arrays["matrix"][:, 1:]}, "matrix has shape"),
        ({"proponent_scores": arrays["proponent_scores"].astype("U8")}, "floating point"),
    ]
    for change, message in broken:
        with pytest.raises(InputError, match=f"^s0.npz: not a TracIn result: .*{message}"):
            at.ShardResult.from_arrays({**arrays, **change}, good.run, (0, 2), 3, "s0.npz")
    with pytest.raises(InputError, match="no rows, loss, proponent_rows"):
        at.ShardResult.from_arrays(
            {
                "self_influence": arrays["self_influence"],
                "proponent_scores": arrays["proponent_scores"],
                "opponent_scores": arrays["opponent_scores"],
                "opponent_rows": arrays["opponent_rows"],
            },
            good.run,
            (0, 2),
            3,
            "s0.npz",
        )


def test_a_score_matrix_that_does_not_fit_is_refused_pointing_to_top():
    at.check_matrix(100, 1000, limit=10**6)
    with pytest.raises(UsageError) as info:
        at.check_matrix(10_000, 1_000_000, limit=8 * 2**30)
    text = render(info.value, CLI_FLAGS)
    assert info.value.exit_code == ExitCode.USAGE
    assert "74.5 GiB" in text and "--top" in text


# ------------------------------------------------------------------ the projection


def lowbias32(x: int) -> int:
    """Wellons' lowbias32 in plain unsigned 32-bit Python arithmetic: the reference."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_the_int64_mixer_is_exactly_lowbias32():
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.integers(0, 2**32, 2000), [0, 1, 2**31, 2**32 - 1]])
    assert [lowbias32(int(x)) for x in xs] == pj.mix32(xs).tolist()
    assert len(set(pj.mix32(np.arange(100_000)).tolist())) == 100_000  # a bijection


def test_tensorflow_int64_ops_give_the_same_buckets(tf):
    """The in-graph version can match the reference exactly: the hash needs only int64
    and, xor, shifts and products below 2**49."""

    def mul32(x, c):
        low, high = tf.bitwise.bitwise_and(x, 0xFFFF), tf.bitwise.right_shift(x, 16)
        high = tf.bitwise.left_shift(high * (c & 0xFFFF), 16)
        return tf.bitwise.bitwise_and(low * c + high, pj.MASK32)

    def mix(x):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
        x = mul32(x, 0x7FEB352D)
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
        x = mul32(x, 0x846CA68B)
        return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))

    seed, variable, dim = 1234, 3, 96
    key = pj._key(seed, variable, 0)
    key2 = int(pj.mix32(key ^ pj._GOLDEN))
    j = tf.range(50_000, dtype=tf.int64)
    h = mix(tf.bitwise.bitwise_and(mix(tf.bitwise.bitwise_xor(j, key)) + key2, pj.MASK32))
    columns = tf.math.floormod(tf.bitwise.bitwise_and(h, 0x7FFFFFFF), dim)
    want, signs = pj.entries(seed, variable, 50_000, dim)
    assert np.array_equal(columns.numpy(), want[0])
    assert np.array_equal(1 - 2 * tf.bitwise.right_shift(h, 31).numpy(), signs[0])


@pytest.mark.parametrize("blocks", [1, 4])
def test_projection_is_the_linear_map_of_its_matrix(blocks):
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (4,), (2, 2, 5)]
    grads = [rng.normal(size=(6, *s)) for s in shapes]
    flat = np.concatenate([g.reshape(6, -1) for g in grads], axis=1)
    r = pj.matrix([math.prod(s) for s in shapes], seed=7, dim=16, blocks=blocks)
    assert np.allclose(pj.project(grads, 7, 16, blocks), flat @ r, rtol=1e-12, atol=1e-12)
    # computable per variable and per slice of a variable, from (seed, variable, coordinate)
    cols, signs = pj.entries(7, 2, 20, 16, blocks)
    tail_cols, tail_signs = pj.entries(7, 2, 20, 16, blocks, start=12)
    assert np.array_equal(cols[:, 12:], tail_cols) and np.array_equal(signs[:, 12:], tail_signs)
    assert (cols // (16 // blocks) == np.arange(blocks)[:, None]).all()  # one bucket per block
    # a variable's projection does not depend on which other variables are selected
    alone = pj.project([grads[2]], 7, 16, blocks, variables=[2])
    assert np.allclose(alone, grads[2].reshape(6, -1) @ r[12 + 4 :], atol=1e-12)


def pairs(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two 3,000-element vectors: spread out (like most gradients) or dominated by a few
    coordinates (the worst case for a sparse sketch)."""
    x = rng.normal(size=3000)
    y = 0.6 * x + 0.8 * rng.normal(size=3000)
    if kind == "concentrated":
        x[:5] *= 40
        y[:5] *= 40
    return x, y


@pytest.mark.parametrize("kind", ["spread", "concentrated"])
@pytest.mark.parametrize("blocks", [1, 4])
def test_projected_inner_products_are_unbiased_with_the_stated_variance(kind, blocks):
    x, y = pairs(kind, np.random.default_rng(5))
    sizes = [1000, 1500, 500]  # three variables
    xs = np.split(x[None], np.cumsum(sizes)[:-1], axis=1)
    ys = np.split(y[None], np.cumsum(sizes)[:-1], axis=1)
    dim, seeds = 256, 400
    est = np.array(
        [
            (pj.project(xs, s, dim, blocks) @ pj.project(ys, s, dim, blocks).T)[0, 0]
            for s in range(seeds)
        ]
    )
    var = pj.variance(x, y, dim)
    assert abs(est.mean() - x @ y) < 4 * math.sqrt(var / seeds)
    # the sample variance of 400 draws is within ~30% of the true one for any sane tail
    assert 0.7 < est.var(ddof=1) / var < 1.3


@pytest.mark.parametrize("blocks", [1, 4])
def test_tracin_scores_stay_within_the_jl_bound_at_dim_1024(blocks):
    """Scores of 40 train x 10 test gradients (P = 5,000) projected to 1,024 numbers, over 20
    seeds: |error| <= eps |g||g'| with eps = sqrt(2 / (dim delta)) for delta = 5%, in at
    least 95% of the pairs (the bound); and in fact close to the Gaussian spread."""
    rng = np.random.default_rng(11)
    base = rng.normal(size=(1, 5000))
    train = base + rng.normal(size=(40, 5000))
    test = base + rng.normal(size=(10, 5000))
    exact = train @ test.T
    norms = np.linalg.norm(train, axis=1)[:, None] * np.linalg.norm(test, axis=1)[None]
    dim, delta = 1024, 0.05
    eps = pj.error_bound(dim, delta)
    assert abs(eps - 0.198) < 1e-3
    rel = []
    for seed in range(20):
        sizes = [2000, 3000]
        tr = pj.project(np.split(train, [2000], axis=1), seed, dim, blocks)
        te = pj.project(np.split(test, [2000], axis=1), seed, dim, blocks)
        assert tr.shape == (40, dim) and sum(sizes) == 5000
        rel.append(np.abs(tr @ te.T - exact) / norms)
    rel = np.concatenate(rel)
    assert np.mean(rel > eps) <= delta
    assert np.mean(rel) < 2 * math.sqrt(2 / dim)  # typical error ~ sqrt((1 + cos^2) / dim)


def test_projection_parameters_are_checked_and_recorded():
    for seed, dim, blocks in [(-1, 8, 1), (2**32, 8, 1), (0, 10, 4), (0, 0, 1)]:
        with pytest.raises(ValueError):
            pj.check_parameters(seed, dim, blocks)
    assert pj.record(3, 1024, 4) == {"method": "countsketch", "seed": 3, "dim": 1024, "blocks": 4}


# ------------------------------------------------------------------ --shard auto


@pytest.mark.parametrize(
    "env, shard",
    [
        ({"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "4"}, (2, 4)),
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "8",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "7",
                "SLURM_ARRAY_TASK_STEP": "1",
            },
            (3, 8),
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_ARRAY_TASK_COUNT": "8",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "8",
            },
            (0, 8),
        ),  # --array=1-8
        (
            {
                "SLURM_ARRAY_TASK_ID": "10",
                "SLURM_ARRAY_TASK_COUNT": "8",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "14",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            (5, 8),
        ),  # 0-14:2
        (
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "6"},
            (0, 2),
        ),  # no COUNT: from MIN, MAX
    ],
)
def test_shard_auto_reads_the_scheduler(env, shard):
    assert shard_from_env(env) == shard


@pytest.mark.parametrize(
    "env, names",
    [
        ({}, ["JOB_COMPLETION_INDEX", "JOB_COMPLETIONS", "SLURM_ARRAY_TASK_ID"]),
        ({"JOB_COMPLETION_INDEX": "0"}, ["JOB_COMPLETIONS", "spec.completions"]),
        ({"JOB_COMPLETION_INDEX": "4", "JOB_COMPLETIONS": "4"}, ["0 <= K < N"]),
        ({"JOB_COMPLETION_INDEX": "x", "JOB_COMPLETIONS": "4"}, ["JOB_COMPLETION_INDEX='x'"]),
        (
            {"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "2", "SLURM_ARRAY_TASK_ID": "0"},
            ["both", "JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"],
        ),
        ({"SLURM_ARRAY_TASK_ID": "3"}, ["SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"]),
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "7",
            },
            ["not one range"],
        ),  # --array=1,3,7
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "6",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            ["not in the range"],
        ),
    ],
)
def test_shard_auto_refuses_a_missing_or_inconsistent_environment(env, names):
    with pytest.raises(UsageError) as info:
        shard_from_env(env)
    text = render(info.value, CLI_FLAGS)
    assert text.startswith("--shard auto: ") and info.value.exit_code == ExitCode.USAGE
    for name in names:
        assert name in text


# ------------------------------------------------------------------ checkpoints and rates


def test_checkpoints_sort_naturally():
    names = ["ckpt-10.keras", "ckpt-2.keras", "CKPT-3.keras", "ckpt-02.keras", "ckpt-1.keras"]
    assert order.order_checkpoints(names) == [
        "ckpt-1.keras",
        "ckpt-02.keras",
        "ckpt-2.keras",
        "CKPT-3.keras",
        "ckpt-10.keras",
    ]
    keras_names = ["model.10-0.31.keras", "model.02-0.90.keras", "model.09-0.35.keras"]
    assert order.order_checkpoints(keras_names) == sorted(keras_names, key=lambda n: int(n[6:8]))
    assert order.order_checkpoints(["b/epoch_10", "a/epoch_9", "epoch_1"]) == [
        "a/epoch_9",
        "b/epoch_10",
        "epoch_1",  # the directory part decides first
    ]


def learning_rates(text: str, n: int) -> list[float] | None:
    values = option_values.lr_value(text)
    return None if values is None else option_values.learning_rates(values, n)


def test_learning_rate_option():
    assert learning_rates("0.01", 3) == [0.01] * 3
    assert learning_rates("0.1, 0.05,0.01", 3) == [0.1, 0.05, 0.01]
    assert learning_rates("saved", 3) is None and learning_rates(" Saved ", 1) is None
    for text, message in [
        ("0.1,0.2", "2 learning rates for 3 checkpoint(s)"),
        ("fast", "expected a learning rate"),
        ("0.1,-1,2", "positive"),
        ("nan", "positive"),
    ]:
        with pytest.raises(UsageError) as info:
            learning_rates(text, 3)
        text = render(info.value, CLI_FLAGS)
        assert message in text and text.startswith("--lr ")
        assert info.value.exit_code == ExitCode.USAGE


def test_saved_rates_refused_with_a_reason():
    cases = [
        (None, 5, "no optimizer was saved"),
        ({"config": {"learning_rate": {"class_name": "Mine", "config": {}}}}, 5, "not one of"),
        (
            {"config": {"learning_rate": {"class_name": "ExponentialDecay", "config": {}}}},
            None,
            "iteration count",
        ),
        ({"config": {"name": "sgd"}}, 5, "no learning rate"),
    ]
    for optimizer, iterations, message in cases:
        with pytest.raises(ModelError, match=message) as info:
            ck.saved_learning_rate(optimizer, iterations, "c.keras")
        assert str(info.value).startswith("c.keras: ") and "lr=" in str(info.value)
    # Keras 2 spelling and its legacy decay: lr / (1 + decay * iterations)
    old = {"class_name": "SGD", "config": {"lr": 0.1, "decay": 0.01}}
    assert ck.saved_learning_rate(old, 100, "old.h5") == pytest.approx(0.05)


SCHEDULES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5)),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.5, staircase=True),
    ),
    (
        "InverseTimeDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.3, staircase=True),
    ),
    ("PiecewiseConstantDecay", dict(boundaries=[3, 10], values=[0.1, 0.05, 0.01])),
    (
        "PolynomialDecay",
        dict(initial_learning_rate=0.1, decay_steps=12, end_learning_rate=0.01, power=2.0),
    ),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=6, power=0.5, cycle=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=20, alpha=0.1)),
    (
        "CosineDecay",
        dict(initial_learning_rate=0.0, decay_steps=20, warmup_target=0.1, warmup_steps=5),
    ),
    (
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=4, t_mul=2.0, m_mul=0.5, alpha=0.01),
    ),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=4, t_mul=1.0)),
]


def test_every_keras_schedule_is_evaluated_as_keras_does(keras):
    for name, kwargs in SCHEDULES:
        schedule = getattr(keras.optimizers.schedules, name)(**kwargs)
        saved = keras.optimizers.schedules.serialize(schedule)
        for step in [0, 1, 3, 4, 5, 7, 10, 11, 19, 25, 60]:
            want = float(schedule(step))
            assert ck.schedule_value(saved, step) == pytest.approx(want, rel=1e-6, abs=1e-9), (
                name,
                step,
            )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, keras):
    """Models trained a few steps and saved as .keras and .h5: an SGD with a schedule, and an
    Adam whose learning-rate variable a callback-like assignment changed before saving."""
    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("rates")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)
    out = {}
    for name, optimizer in [
        ("sched", keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 4, 0.5))),
        ("adam", keras.optimizers.Adam(0.01)),
    ]:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)  # 10 steps
        if name == "adam":
            model.optimizer.learning_rate.assign(0.003)
        for suffix in (".keras", ".h5"):
            model.save(d / f"{name}{suffix}")
        out[name] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    return d, out


@pytest.mark.parametrize("name", ["sched", "adam"])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_learning_rate_of_real_files_is_what_keras_reads(trained, keras, name, suffix):
    """The safe reader (config JSON and the iteration count's dataset, read as data)."""
    d, during = trained
    path = d / f"{name}{suffix}"
    got, iterations = ck.saved_rate(path)
    assert iterations == 10
    if suffix == ".keras":
        loaded = keras.models.load_model(path)
        want = float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate))
        assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx(during[name], rel=1e-6)
    assert got == pytest.approx(0.1 * 0.5 ** (10 / 4) if name == "sched" else 0.003, rel=1e-6)


def test_saved_rates_of_hostile_files_are_one_line_refusals(trained, tmp_path):
    """A config or an iteration count that is not what it must be: ModelError naming the file."""
    d, _ = trained
    with zipfile.ZipFile(d / "sched.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    config["compile_config"]["optimizer"]["config"] = ["not", "an", "object"]
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in members.items():
            z.writestr(n, json.dumps(config) if n == "config.json" else data)
    with pytest.raises(ModelError, match="bad.keras: its optimizer config is not a JSON object"):
        ck.saved_rate(bad)
    h5 = tmp_path / "bad.h5"
    h5.write_bytes((d / "sched.h5").read_bytes())
    with h5py.File(h5, "r+") as f:
        name = json.loads(f.attrs["training_config"])["optimizer_config"]["config"]["name"]
        del f[f"optimizer_weights/{name}/iteration"]
        f[f"optimizer_weights/{name}/iteration"] = -3
    with pytest.raises(ModelError, match="iteration count is -3.0, not a count"):
        ck.saved_rate(h5)


def test_a_model_saved_without_optimizer_has_no_saved_rate(tmp_path, keras):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save(tmp_path / "plain.keras")
    config, _ = json.loads(zipfile.ZipFile(tmp_path / "plain.keras").read("config.json")), None
    assert ck.optimizer_config(config) is None
    with pytest.raises(ModelError, match="no optimizer was saved"):
        ck.saved_learning_rate(ck.optimizer_config(config), None, "plain.keras")


# ------------------------------------------------------------------ the planted-noise bench


@pytest.mark.slow
def test_planted_label_noise_ranks_first_by_self_influence(cli, tmp_path, keras, tf):
    """bench/tracin_noise.py --quick at 400 samples (20 flipped), the command run in this
    process: precision at K far above the 5% of chance; its self-influence against one plain
    eager tape per sample with the rate Keras reads from each checkpoint."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("tracin_noise", ROOT / "bench/tracin_noise.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def command(*args: str) -> None:
        result = cli(*args)
        assert result.code == 0, result.err

    argv = ["--samples", "400", "--out", str(tmp_path), "--quick"]
    found = bench.main(argv, command=command, keras=keras)
    assert found["k"] == 20
    assert found["precision"] >= 0.5  # 10x chance; measured 90% (18/20)

    data, own = np.load(tmp_path / "data.npz"), bench.arrays(tmp_path / "self.npz")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = [0, 7, *map(int, data["flipped"][:2])]
    want, rates = np.zeros(len(rows)), []
    for c in range(3):
        model = keras.models.load_model(tmp_path / "checkpoints" / f"ckpt-{c + 1}.keras")
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        for r, i in enumerate(rows):
            with tf.GradientTape() as tape:
                value = loss(data["y"][i : i + 1], model(data["x"][i : i + 1]))
            g = np.concatenate([v.numpy().ravel() for v in tape.gradient(value, model.weights)])
            want[r] += rates[-1] * g @ g
    np.testing.assert_allclose(found["lr"], rates, rtol=1e-6)
    np.testing.assert_allclose(own["self_influence"][rows], want, rtol=1e-5)
