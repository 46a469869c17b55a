"""TracIn over per-sample gradients, the NumPy side: stream train blocks, keep top-K, shard, merge
(no TensorFlow: `gradcli merge` runs it in the CLI's own process).

Nothing here knows how the per-sample gradients are produced (full vectors, projected
vectors, ghost-norm squared norms): the caller hands over numbers per train block.

TracInCP(z, z') = sum_c eta_c <g_c(z), g_c(z')>; self-influence(z) = sum_c eta_c |g_c(z)|^2.

Streaming. Only whole train blocks are merged: the caller computes a block's scores at every
checkpoint (the test gradients of every checkpoint are held, train rows are streamed), sums
them in checkpoint order, and hands the block (T, b) over. Per test sample only the K best
(proponents: largest scores) and K worst (opponents: smallest) train rows are kept; memory is
O(T * (K + b)), never T * N, unless the full matrix is asked for and fits (`check_matrix`).

Order, one rule everywhere (streaming, top-K of self-influence, merge): best score first;
equal scores by smaller train row index; NaN scores last. This is a total order on (score,
row), so the top K of any partition of the rows, merged, is the top K of the whole: the merge
only selects, it computes nothing.

Shards. `--shard K/N` splits the train rows by batches: the rows are cut into batches of
`batch_size` and shard K takes batches K, K+N, K+2N, ... (every N-th, as `--shard` splits a
directory of models). Every row is therefore computed in the same batch, with the same shapes,
as in an unsharded run with the same batch size, so sharded + merged is bit-identical to
unsharded on the same kind of machine. A shard's result holds exactly what the merge needs:
its rows with their self-influence (and their loss at the last checkpoint, for reference),
and per test sample its top-K candidates with row indices and scores (`ShardResult.arrays`);
`merge` checks that the shards are the N parts of one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gradcli.errors import InputError, UsageError, param

_FLOAT = np.float64


def batch_slices(n_rows: int, batch_size: int, shard: tuple[int, int] | None = None) -> list[slice]:
    """The train batches a run (or shard K of N) processes, in order."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    k, n = shard or (0, 1)
    starts = range(k * batch_size, n_rows, n * batch_size)
    return [slice(s, min(s + batch_size, n_rows)) for s in starts]


def shard_rows(n_rows: int, batch_size: int, shard: tuple[int, int] | None = None) -> np.ndarray:
    """The train row indices of a run (or shard K of N), in processing order (ascending)."""
    parts = [np.arange(s.start, s.stop) for s in batch_slices(n_rows, batch_size, shard)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def checkpoint_scores(eta: float, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """One checkpoint's contribution to a block: eta * train @ test.T, (b, T) in float64."""
    return eta * (np.asarray(train, _FLOAT) @ np.asarray(test, _FLOAT).T)


def self_terms(eta: float, train: np.ndarray) -> np.ndarray:
    """One checkpoint's self-influence terms of a block: eta * |g|^2 per row, from vectors."""
    train = np.asarray(train, _FLOAT).reshape(len(train), -1)
    return eta * np.einsum("ij,ij->i", train, train)


def order(scores: np.ndarray, rows: np.ndarray, largest: bool) -> np.ndarray:
    """Indices that sort each row of `scores` (..., n) best first by the module's rule."""
    key = -scores if largest else scores
    return np.lexsort((np.broadcast_to(rows, scores.shape), key), axis=-1)


def merge_top(
    scores_a: np.ndarray,
    rows_a: np.ndarray,
    scores_b: np.ndarray,
    rows_b: np.ndarray,
    k: int,
    largest: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The best min(k, n_a + n_b) of two candidate sets (T, n) per test sample, best first.
    Rows may be (n,) (the same train rows for every test sample) or (T, n)."""
    t = scores_a.shape[0]
    scores = np.concatenate([scores_a, scores_b], axis=1)
    rows = np.concatenate(
        [np.broadcast_to(rows_a, scores_a.shape), np.broadcast_to(rows_b, scores_b.shape)], axis=1
    ).astype(np.int64)
    keep = order(scores, rows, largest)[:, :k]
    picked = np.arange(t)[:, None]
    return scores[picked, keep], rows[picked, keep]


def top_rows(
    values: np.ndarray, rows: np.ndarray, k: int, largest: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (value, row) of a 1-D set, e.g. the most self-influential train samples."""
    keep = order(np.asarray(values, _FLOAT), np.asarray(rows, np.int64), largest)[:k]
    return np.asarray(values)[keep], np.asarray(rows)[keep]


def matrix_bytes(n_test: int, n_train: int) -> int:
    return 8 * n_test * n_train


def check_matrix(n_test: int, n_train: int, limit: int) -> None:
    """Refuse, before any work, a full score matrix that would not fit in `limit` bytes."""
    need = matrix_bytes(n_test, n_train)
    if need > limit:
        raise UsageError(
            f"the full score matrix ({n_test} test x {n_train} train samples, "
            f"{need / 2**30:.1f} GiB) would not fit in memory ({limit / 2**30:.1f} GiB); "
            f"keep only the top samples per test sample with {param('top')}"
        )


@dataclass(eq=False)
class ShardResult:
    """What one run (or one shard of a run) found; `merge` combines shards exactly.

    rows (n,), self_influence (n,) and loss (n,): the train rows covered, ascending, their
    self-influence and their loss at the last checkpoint. proponents/opponents: (T, k')
    scores and rows, k' = min(k, n), best first.
    matrix: (T, n) scores over `rows` when it was kept. `run` holds what must agree across
    shards (checkpoints, learning rates, projection, layers, sizes, batch size) and is
    recorded with the result. `shard` is (K, N), or None for a whole run."""

    run: dict
    shard: tuple[int, int] | None
    k: int
    rows: np.ndarray
    self_influence: np.ndarray
    loss: np.ndarray
    proponent_scores: np.ndarray
    proponent_rows: np.ndarray
    opponent_scores: np.ndarray
    opponent_rows: np.ndarray
    matrix: np.ndarray | None = None
    source: str = field(default="", compare=False)

    ARRAYS = (
        "rows",
        "self_influence",
        "loss",
        "proponent_scores",
        "proponent_rows",
        "opponent_scores",
        "opponent_rows",
        "matrix",
    )

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (an `.npz`); `run`, `shard` and `k` go with the provenance."""
        out = {name: getattr(self, name) for name in self.ARRAYS}
        return {name: value for name, value in out.items() if value is not None}

    @classmethod
    def from_arrays(
        cls, arrays: dict, run: dict, shard: tuple[int, int] | None, k: int, source: str = ""
    ) -> ShardResult:
        missing = [n for n in cls.ARRAYS if n != "matrix" and n not in arrays]
        if missing:
            raise InputError(f"{source}: not a TracIn result: no {', '.join(missing)}")
        fields = {n: np.asarray(arrays[n]) for n in cls.ARRAYS if n in arrays}
        _check_arrays(fields, k, source)
        return cls(run=run, shard=shard, k=k, source=source, **fields)


def _check_arrays(fields: dict[str, np.ndarray], k: int, source: str) -> None:
    """Shapes and dtypes of a saved result agree with each other (a file is data: refuse what
    does not, with one line, before anything indexes with it)."""

    def bad(why: str) -> InputError:
        return InputError(f"{source}: not a TracIn result: {why}")

    rows, own, loss = fields["rows"], fields["self_influence"], fields["loss"]
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or not own.shape == loss.shape == rows.shape:
        raise bad("rows, self_influence and loss must be integers and numbers of one length")
    if own.dtype.kind != "f" or loss.dtype.kind != "f":
        raise bad("self_influence and loss must be floating point")
    shape = fields["proponent_scores"].shape
    if len(shape) != 2 or shape[1] > min(k, rows.size):
        raise bad(f"proponent_scores has shape {shape}, expected (test samples, <= {k})")
    for name in ("proponent_rows", "opponent_scores", "opponent_rows"):
        if fields[name].shape != shape:
            raise bad(f"{name} has shape {fields[name].shape}, not {shape}")
    for name in ("proponent_rows", "opponent_rows"):
        if fields[name].dtype.kind not in "iu" or not np.isin(fields[name], rows).all():
            raise bad(f"{name} names train rows the result does not cover")
    for name in ("proponent_scores", "opponent_scores"):
        if fields[name].dtype.kind != "f":
            raise bad(f"{name} must be floating point")
    matrix = fields.get("matrix")
    if matrix is not None and matrix.shape != (shape[0], rows.size):
        raise bad(f"matrix has shape {matrix.shape}, expected {(shape[0], rows.size)}")


class Accumulator:
    """Streams the train blocks of one run or shard (`add`), then gives its `result`."""

    def __init__(
        self,
        run: dict,
        *,
        n_test: int = 0,
        k: int = 0,
        keep_matrix: bool = False,
        shard: tuple[int, int] | None = None,
    ):
        self.run, self.shard, self.k, self.n_test = run, shard, k, n_test
        self._rows: list[np.ndarray] = []
        self._self: list[np.ndarray] = []
        self._loss: list[np.ndarray] = []
        self._matrix: list[np.ndarray] | None = [] if keep_matrix else None
        empty = np.zeros((n_test, 0), _FLOAT), np.zeros((n_test, 0), np.int64)
        self._best, self._worst = empty, empty

    def add(
        self,
        rows: np.ndarray,
        self_influence: np.ndarray,
        scores: np.ndarray | None = None,
        loss: np.ndarray | None = None,
    ) -> None:
        """One finished train block: its rows (b,), their self-influence (b,), their scores
        (b, T) against the test samples, summed over every checkpoint, and their loss at the
        last checkpoint (b,) (NaN when not given)."""
        rows = np.asarray(rows, np.int64)
        self._rows.append(rows)
        self._self.append(np.asarray(self_influence, _FLOAT))
        missing = np.full(rows.shape, np.nan)
        self._loss.append(missing if loss is None else np.asarray(loss, _FLOAT))
        if not self.n_test:
            return
        if scores is None:
            raise ValueError("this run has test samples: each block needs its scores")
        block = np.asarray(scores, _FLOAT).T  # (T, b)
        if self._matrix is not None:
            self._matrix.append(block)
        self._best = merge_top(*self._best, block, rows, self.k, largest=True)
        self._worst = merge_top(*self._worst, block, rows, self.k, largest=False)

    def result(self) -> ShardResult:
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        values = np.concatenate(self._self) if self._self else np.zeros(0, _FLOAT)
        loss = np.concatenate(self._loss) if self._loss else np.zeros(0, _FLOAT)
        matrix = None
        if self._matrix is not None:
            matrix = np.concatenate([np.zeros((self.n_test, 0)), *self._matrix], axis=1)
        ordered = np.argsort(rows, kind="stable")
        if matrix is not None:
            matrix = matrix[:, ordered]
        return ShardResult(
            self.run,
            self.shard,
            self.k,
            rows[ordered],
            values[ordered],
            loss[ordered],
            *self._best,
            *self._worst,
            matrix=matrix,
        )


def _name(result: ShardResult) -> str:
    return result.source or (f"shard {result.shard[0]}/{result.shard[1]}" if result.shard else "")


def _check_shards(results: Sequence[ShardResult]) -> int:
    """The shard count N, after checking that `results` are the N parts of one run."""
    first = results[0]
    for other in results[1:]:
        if other.run != first.run or other.k != first.k:
            keys = sorted(set(first.run) | set(other.run))
            diff = [key for key in keys if first.run.get(key) != other.run.get(key)]
            what = f"{diff[0]} differs" if diff else f"top K differs ({first.k} vs {other.k})"
            raise InputError(f"{_name(other)} is not from the same run as {_name(first)}: {what}")
    if any(r.shard is None for r in results):
        whole = next(r for r in results if r.shard is None)
        raise InputError(f"{_name(whole)} is a whole run, not a shard: nothing to merge it with")
    counts = {r.shard[1] for r in results}
    if len(counts) > 1:
        raise InputError(f"the shards were cut {' and '.join(map(str, sorted(counts)))} ways")
    n = counts.pop()
    seen: dict[int, ShardResult] = {}
    for r in results:
        if r.shard[0] in seen:
            raise InputError(f"shard {r.shard[0]}/{n} given twice: {_name(seen[r.shard[0]])}")
        seen[r.shard[0]] = r
    missing = [f"{k}/{n}" for k in range(n) if k not in seen]
    if missing:
        raise InputError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return n


def merge(results: Sequence[ShardResult], n_train: int | None = None) -> ShardResult:
    """The whole run's result from its N shards, exactly (selection only, no arithmetic).
    With `n_train`, also checks that every train row is covered exactly once."""
    if not results:
        raise ValueError("nothing to merge")
    _check_shards(results)
    results = sorted(results, key=lambda r: r.shard[0])
    first = results[0]
    rows = np.concatenate([r.rows for r in results])
    ordered = np.argsort(rows, kind="stable")
    rows = rows[ordered]
    if n_train is not None and not np.array_equal(rows, np.arange(n_train)):
        raise InputError(f"the shards cover {rows.size} rows, not the {n_train} train samples")
    if rows.size > 1 and np.any(rows[1:] == rows[:-1]):
        raise InputError("two shards hold the same train row")
    best = first.proponent_scores, first.proponent_rows
    worst = first.opponent_scores, first.opponent_rows
    for r in results[1:]:
        best = merge_top(*best, r.proponent_scores, r.proponent_rows, first.k, largest=True)
        worst = merge_top(*worst, r.opponent_scores, r.opponent_rows, first.k, largest=False)
    matrix = None
    if all(r.matrix is not None for r in results):
        matrix = np.concatenate([r.matrix for r in results], axis=1)[:, ordered]
    return ShardResult(
        first.run,
        None,
        first.k,
        rows,
        np.concatenate([r.self_influence for r in results])[ordered],
        np.concatenate([r.loss for r in results])[ordered],
        *best,
        *worst,
        matrix=matrix,
    )
