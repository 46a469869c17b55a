"""`influence`: TracIn over the checkpoints of one training run.

    score(z, z') = sum_c lr_c <g_c(z), g_c(z')>,   self-influence(z) = sum_c lr_c |g_c(z)|^2

with g_c(z) the gradient of sample z's loss at checkpoint c, over the chosen variables.

How it runs: the first checkpoint is loaded as the model (one compiled step for the whole
run); every checkpoint's weights are read (each file through the loader's checks, its
architecture compared with the first's) and kept; a checkpoint is made current by assigning
its weights. The test samples' gradients (or their projections) are computed once per
checkpoint and kept. The training set is streamed: chunks of batches are read from their
memory maps, and for each chunk every checkpoint is made current in turn; a batch's scores
are summed over the checkpoints in their order, then handed to the top-K accumulator
(engine.tracin). Memory: the weights of every checkpoint, the test vectors of every
checkpoint, one chunk of training rows, and per test sample its top K (the full matrix only
with --matrix).

Self-influence is always exact (squared per-sample norms, the ghost-norm fast path where it
applies); a projection (--proj-dim) applies to test scores only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.commands.influence import LAST
from gradcli.commands.values import learning_rates
from gradcli.engine.batched import target_dtype
from gradcli.engine.labels import check_targets
from gradcli.engine.objective import Objective, build_objective
from gradcli.engine.persample import GradientStream, Projection
from gradcli.engine.tracin import Accumulator, batch_slices, check_matrix, checkpoint_scores
from gradcli.errors import InputError, ModelError, UsageError, param
from gradcli.io.arrays import ArraySource, check_samples, read_arrays
from gradcli.io.checkpoints import checkpoint_paths
from gradcli.io.hashes import Hashes, check_unchanged, stamp
from gradcli.io.modelfiles import EXPECTED
from gradcli.io.outputs import Outputs
from gradcli.io.paths import check_output, output_file
from gradcli.io.zipmember import machine_memory
from gradcli.jobs.context import Emit
from gradcli.jobs.influence_pictures import check_images
from gradcli.jobs.influence_results import Finished, finish
from gradcli.jobs.wrt_weights import per_sample_rows
from gradcli.load.handles import ModelHandle
from gradcli.load.learning_rates import saved_rate
from gradcli.load.loaders import load_model

CHUNK_BYTES = 64 << 20  # training rows read at a time, for every checkpoint in turn
CHUNK_BATCHES = 16
VECTOR_BUDGET = 4  # test vectors may take at most 1/VECTOR_BUDGET of the machine's memory


@dataclass
class Checkpoint:
    path: Path
    weights: list[np.ndarray]  # every weight of the model (model.weights order), as saved
    lr: float
    iterations: int | None = None


@dataclass
class DataSet:
    """Inputs and loss targets of N samples (memory-mapped)."""

    inputs: list[ArraySource]
    targets: list[ArraySource]
    n: int

    def read(self, rows: slice, dtypes: list, target_types: list) -> tuple[list, list]:
        xs = [s.read(rows.start, rows.stop, d) for s, d in zip(self.inputs, dtypes, strict=True)]
        ys = [
            t.read(rows.start, rows.stop, d)
            for t, d in zip(self.targets, target_types, strict=True)
        ]
        return xs, ys


def run(job: Any, emit: Emit) -> int:
    """The whole run (the worker's entry): one record, all its outputs committed together."""
    if 0 in job.skip:  # a crashed attempt already emitted it
        return 0
    record = compute(job, emit)
    emit("result", index=0, record=record)
    return int(record["exit_code"])


def compute(job: Any, emit: Emit, collect: dict[str, np.ndarray] | None = None) -> dict:
    """The run's record, its outputs committed; `collect` gets the arrays (the Python API)."""
    for path, label, directory in ((job.out, "--out", False), (job.png, "--png", True)):
        if path is not None:
            where = Path(path) if directory else output_file(path, ".npz")
            check_output(where, label, directory=directory)
    paths = checkpoint_paths(job.model)
    if not paths:
        raise InputError(f"{job.model}: no checkpoints ({EXPECTED}) below it")
    rates = None if job.lr is None else learning_rates(job.lr, len(paths))
    files = _files(job, paths)
    before = {label: (path, stamp(path)) for label, path in files.items()}
    hashes = Hashes.start(files)
    handle = _keras_handle(load_model(paths[0], unsafe=job.unsafe))
    objective = build_objective(
        handle, output=job.output, loss=job.loss, from_logits=job.from_logits, has_target=True
    )
    train = _open(handle, objective, job.input, job.target, "input", "target")
    test = None
    if job.test is not None:
        test = _open(handle, objective, job.test, job.test_target, "test", "test target")
    if job.png is not None:
        check_images(handle)
    names = chosen_variables(handle, job.layers)
    projection = Projection(job.seed, job.proj_dim) if job.proj_dim else None
    stream = GradientStream(
        handle, objective, names, vectors=test is not None, projection=projection
    )
    size = per_sample_rows(stream, job.batch_size, 256)
    slices = batch_slices(train.n, size, job.shard)
    rows = sum(s.stop - s.start for s in slices)
    limit = machine_memory() // VECTOR_BUDGET
    if test is not None:
        _check_vectors(len(paths), test.n, stream.width, limit)
        if job.matrix:
            check_matrix(test.n, rows, limit)
    checkpoints = _checkpoints(handle, paths, rates, job.unsafe)
    run_ = Run(job, handle, objective, stream, checkpoints, emit)
    test_vectors = run_.test_vectors(test) if test is not None else []
    acc = Accumulator(
        {}, n_test=test.n if test else 0, k=job.top, keep_matrix=job.matrix, shard=job.shard
    )
    run_.stream_train(train, slices, test_vectors, acc)
    result = acc.result()
    done = Finished(
        job=job,
        handle=handle,
        objective=objective,
        checkpoints=[(c.path, c.lr, c.iterations) for c in checkpoints],
        lr_source="saved" if rates is None else "given",
        variables=stream.names,
        parameters=stream.parameters,
        projection=projection,
        batch_size=size,
        n_train=train.n,
        n_test=test.n if test else 0,
        hashes=hashes.result(),
        collect=collect,
    )
    with Outputs(lambda p: emit("temp", path=p)) as outputs:
        record = finish(done, result, outputs, train=train, test=test)
        check_unchanged(before)
        outputs.commit()
    return record


def _files(job: Any, paths: list[Path]) -> dict[str, str]:
    """The files the run reads, by label (hashed for the provenance, checked unchanged)."""
    found = {f"checkpoint {p}": str(p) for p in paths}
    for label, name in (
        ("input", "input"),
        ("target", "target"),
        ("test", "test"),
        ("test target", "test_target"),
    ):
        value = getattr(job, name)
        if value is not None:
            found[label] = value
    return found


def _keras_handle(handle: ModelHandle) -> ModelHandle:
    if not handle.has_layers:
        raise ModelError(
            f"{handle.path}: influence swaps the weights of Keras checkpoints (.keras, .h5, a "
            "tf.keras SavedModel); this SavedModel is a serving function without them"
        )
    return handle


def _open(
    handle: ModelHandle, objective: Objective, path: str, target: str, what: str, labels: str
) -> DataSet:
    """A set's inputs and loss targets, opened (memory-mapped) and checked against the model."""
    sources = read_arrays(path, [i.name for i in handle.inputs], what)
    n = check_samples(sources, {i.name: i.shape for i in handle.inputs}, what)
    names = objective.target_names
    found = read_arrays(target, names, labels)
    missing = [t for t in names if t not in found]
    if missing:
        raise InputError(f"{target}: no {labels} for output(s) {', '.join(missing)}")
    check_samples(found, {}, labels, n=n)
    targets = [found[t] for t in names]
    check_targets(objective, handle, targets)
    return DataSet([sources[i.name] for i in handle.inputs], targets, n)


def chosen_variables(handle: ModelHandle, layers: list[str]) -> list[str] | None:
    """The trainable variables of the layers named (`last`: the last layer with trainable
    weights), by name; None for all of them."""
    if not layers:
        return None
    named = handle.named_variables()
    owner = {id(v): name for name, v in named}
    chosen: list[str] = []
    for spec in layers:
        if spec == LAST:
            rows = [r for r in handle.layers if _own_weights(r.layer)]
            if not rows:
                raise UsageError(f"{param('layers', LAST)}: the model has no trainable weights")
            row = rows[-1]
        else:
            row = handle.find_layer(spec)
        found = [
            owner[id(w)] for w in getattr(row.layer, "trainable_weights", []) if id(w) in owner
        ]
        if not found:
            raise UsageError(f"{param('layers', spec)}: layer {row.path} has no trainable weights")
        chosen += [n for n in found if n not in chosen]
    return [name for name, _ in named if name in chosen]  # in the model's order


def _own_weights(layer: Any) -> bool:
    """A layer with trainable weights of its own (a nested model's are its layers')."""
    return bool(getattr(layer, "trainable_weights", None)) and not hasattr(layer, "layers")


def _check_vectors(checkpoints: int, n_test: int, width: int, limit: int) -> None:
    """The test vectors (every checkpoint's) must fit before any work."""
    need = 8 * checkpoints * n_test * width
    if need > limit:
        raise UsageError(
            f"the test gradients of {n_test} samples at {checkpoints} checkpoint(s) "
            f"({width:,} numbers each) need {need / 2**30:.1f} GiB, more than "
            f"{limit / 2**30:.1f} GiB; project them with {param('proj_dim')} D, count fewer "
            f"weights with {param('layers')}, or give fewer test samples"
        )


def _checkpoints(
    handle: ModelHandle, paths: list[Path], rates: list[float] | None, unsafe: bool
) -> list[Checkpoint]:
    """Every checkpoint's weights (the first is `handle`'s), checked to be of its
    architecture, with its learning rate."""
    reference = [(_path_of(v), tuple(v.shape)) for v in handle.model.weights]
    out = []
    for c, path in enumerate(paths):
        model = handle.model if c == 0 else _keras_handle(load_model(path, unsafe=unsafe)).model
        if c:
            _same_architecture(paths[0], reference, path, model.weights)
        weights = [np.array(v.numpy(), copy=True) for v in model.weights]
        if rates is not None:
            out.append(Checkpoint(path, weights, rates[c]))
        else:
            lr, iterations = saved_rate(path)
            out.append(Checkpoint(path, weights, lr, iterations))
    return out


def _path_of(v: Any) -> str:
    return getattr(v, "path", None) or v.name.split(":")[0]


def _same_architecture(first: Path, reference: list, path: Path, weights: list) -> None:
    """Exit 3 naming the checkpoint and its first difference from the first checkpoint."""
    got = [(_path_of(v), tuple(v.shape)) for v in weights]
    where = f"{path}: not the architecture of {first.name} (the first checkpoint):"
    for (name_a, shape_a), (name_b, shape_b) in zip(reference, got, strict=False):
        if name_a != name_b:
            raise ModelError(f"{where} weight {name_b!r} where it has {name_a!r}")
        if shape_a != shape_b:
            raise ModelError(f"{where} weight {name_b!r} has shape {shape_b}, there {shape_a}")
    if len(reference) != len(got):
        raise ModelError(f"{where} {len(got)} weights, it has {len(reference)}")


class Run:
    """The compute of one run: checkpoints made current in turn, test vectors, train blocks."""

    def __init__(
        self,
        job: Any,
        handle: ModelHandle,
        objective: Objective,
        stream: GradientStream,
        checkpoints: list[Checkpoint],
        emit: Emit,
    ) -> None:
        self.job, self.handle, self.objective = job, handle, objective
        self.stream, self.checkpoints, self.emit = stream, checkpoints, emit
        self.variables = list(handle.model.weights)
        self.done = 0
        self.total = 0

    def make_current(self, checkpoint: Checkpoint) -> None:
        for variable, value in zip(self.variables, checkpoint.weights, strict=True):
            variable.assign(value)

    def progress(self, rows: int) -> None:
        self.done += rows
        name = Path(self.job.model).name
        self.emit("progress", index=0, model=name, done=self.done, total=self.total)

    def _types(self, data: DataSet) -> list:
        return [target_dtype(t) for t in data.targets]

    def test_vectors(self, test: DataSet) -> list[np.ndarray]:
        """Every checkpoint's (T, width) test vectors, float64."""
        size = per_sample_rows(self.stream, self.job.batch_size, 256)
        out = []
        for checkpoint in self.checkpoints:
            self.make_current(checkpoint)
            parts = []
            for part in batch_slices(test.n, size):
                xs, ys = test.read(part, self.stream.input_dtypes, self._types(test))
                parts.append(np.asarray(self.stream.batch(xs, ys).vectors, np.float64))
            out.append(np.concatenate(parts))
        return out

    def stream_train(
        self, train: DataSet, slices: list[slice], tests: list[np.ndarray], acc: Accumulator
    ) -> None:
        """Every train batch of this run (or shard), each checkpoint in turn per chunk."""
        rows = sum(s.stop - s.start for s in slices)
        n_test = len(tests[0]) if tests else 0
        self.total = len(self.checkpoints) * (rows + n_test)
        self.progress(len(self.checkpoints) * n_test)
        row_bytes = sum(4 * int(np.prod(s.shape[1:], dtype=np.int64)) for s in train.inputs)
        batch_rows = max((s.stop - s.start for s in slices), default=1)
        chunk_size = max(1, min(CHUNK_BATCHES, CHUNK_BYTES // max(1, row_bytes * batch_rows)))
        types = self._types(train)
        for first in range(0, len(slices), chunk_size):
            chunk = slices[first : first + chunk_size]
            batches = [train.read(s, self.stream.input_dtypes, types) for s in chunk]
            own = [np.zeros(s.stop - s.start) for s in chunk]
            scores = [np.zeros((s.stop - s.start, n_test)) for s in chunk]
            loss = [np.zeros(s.stop - s.start) for s in chunk]
            for c, checkpoint in enumerate(self.checkpoints):
                self.make_current(checkpoint)
                for i, (xs, ys) in enumerate(batches):
                    step = self.stream.batch(xs, ys)
                    own[i] += checkpoint.lr * step.squared_norms
                    if n_test:
                        scores[i] += checkpoint_scores(checkpoint.lr, step.vectors, tests[c])
                    loss[i] = np.asarray(step.objective, np.float64)
                    self.progress(len(xs[0]) if xs else 0)
            for i, s in enumerate(chunk):
                acc.add(np.arange(s.start, s.stop), own[i], scores[i] if n_test else None, loss[i])
