"""What one model's run shares across commands: the loaded model, its opened inputs and targets,
the objective, batches, progress events, output sinks and the JSON record envelope."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gradcli._version import __version__
from gradcli.commands import spec as spec_of
from gradcli.engine.batched import Batch, GradientEngine, read_batches
from gradcli.engine.batching import default_batch_size, input_rows
from gradcli.engine.classes import API_ARRAY, class_choice, class_source
from gradcli.engine.labels import check_classes, check_targets
from gradcli.engine.objective import PRED, Objective, build_objective
from gradcli.errors import ExitCode, InputError, UsageError, param
from gradcli.io.arrays import ArraySource, check_samples, read_arrays
from gradcli.io.hashes import Hashes
from gradcli.io.npzfile import NPZ_KEY, MemorySink, NpzStreamWriter
from gradcli.io.outputs import Outputs
from gradcli.io.overlap import BackgroundSink, enabled, prefetch
from gradcli.load.handles import ModelHandle
from gradcli.present.figures import TensorStats

Emit = Callable[..., None]
Sink = MemorySink | NpzStreamWriter | BackgroundSink


def base_record(job: Any, handle: ModelHandle) -> dict:
    """The keys every record of a loaded model starts with (`provenance` comes last, from
    `provenance_of` or `Context.provenance`)."""
    return {
        "version": __version__,
        "command": job.command,
        "model": str(handle.path),
        "format": handle.format,
        "loader": handle.loader,
    }


def provenance_of(job: Any, handle: ModelHandle) -> dict:
    """The provenance of a record that only describes the model (`info`)."""
    from gradcli.jobs.provenance import build

    hashes = Hashes({"model": str(handle.path)}).result()
    return build(job, model=str(handle.path), model_format=handle.format, hashes=hashes)


def _draw_seed(job: Any) -> None:
    """A method that reads --seed gets one drawn now when none was given: the provenance
    records the seed used, and every model of the run (and --against) gets the same noise."""
    from gradcli.methods import METHODS

    method = METHODS.get(job.method)
    if method is not None and "seed" in method.options:
        if job.seed is None:
            job.seed = int(np.random.SeedSequence().entropy % (2**31))


def _with_prepared(batch: Batch, prepare: Callable[[Batch], Any]) -> Batch:
    batch.prepared = prepare(batch)
    return batch


class Context:
    """Loaded model, opened arrays and the objective of one model's run."""

    def __init__(
        self,
        job: Any,
        handle: ModelHandle,
        emit: Emit,
        index: int,
        collect: dict[str, np.ndarray] | None = None,
        arrays: dict[str, ArraySource] | None = None,
        target_arrays: dict[str, ArraySource] | None = None,
        class_array: Any = None,
    ) -> None:
        self.job = job
        self.outputs: Outputs | None = None  # where run_one stages output files
        self.collect = collect  # the Python API gathers arrays here instead of an .npz
        self.handle = handle
        self.emit = emit
        self.index = index
        self._provenance: dict | None = None
        # what a command resolved that the job left open (a CAM's default layer): recorded
        # with the method's parameters
        self.resolved: dict[str, Any] = {}
        self.notes: list[str] = []  # `note:` lines for the record (CAM of a loss, vanishing)
        _draw_seed(job)
        names = [i.name for i in handle.inputs]
        if arrays is not None:
            self.inputs = arrays
        elif job.input is None:
            raise UsageError(f"{job.command} needs an INPUT file")
        else:
            self.inputs = read_arrays(job.input, names, "input")
        self.n = check_samples(self.inputs, {i.name: i.shape for i in handle.inputs}, "input")
        class_index, classes = class_choice(job.class_index)
        if class_array is not None:
            class_index, classes = None, API_ARRAY
        self.objective: Objective = build_objective(
            handle,
            output=job.output,
            class_index=class_index,
            classes=classes,
            loss=job.loss,
            from_logits=job.from_logits,
            logits=job.logits,
            has_target=job.target is not None or target_arrays is not None,
        )
        self.targets: list[ArraySource] = []
        if self.objective.target_names:  # labels of a loss (--target)
            tnames = self.objective.target_names
            sources = (
                target_arrays
                if target_arrays is not None
                else read_arrays(job.target, tnames, "target")
            )
            missing = [t for t in tnames if t not in sources]
            if missing:
                raise InputError(f"no target for output(s) {', '.join(missing)}")
            check_samples(sources, {}, "target", n=self.n)
            self.targets = [sources[t] for t in tnames]
            check_targets(self.objective, handle, self.targets)
        # per-sample classes (--class pred or FILE.npy): the tape's last per-sample array
        self.class_counts: dict[int, int] | None = None
        if self.objective.classes is not None:
            source = class_source(
                self.objective.classes,
                handle,
                self.objective.outputs[0],
                self.input_sources,
                self.n,
                class_array,
            )
            check_samples({"classes": source}, {}, "class", n=self.n)
            self.class_counts = check_classes(self.objective, handle, source)
            self.targets.append(source)
        # the files' sha256, read in a thread while the gradients are computed
        files = {
            "model": str(handle.path),
            "input": None if arrays is not None else job.input,
            "target": job.target,
            "classes": classes if classes not in (None, PRED, API_ARRAY) else None,
            "baseline": getattr(job, "baseline", None),
        }
        self.hashes = Hashes.start(files)

    @property
    def input_sources(self) -> list[ArraySource]:
        return [self.inputs[i.name] for i in self.handle.inputs]

    def batch_size(self) -> int:
        return self.job.batch_size or default_batch_size(self.handle)

    def method_batch(self, expansion: int) -> int:
        """Samples a batch holds for a method that runs `expansion` tape rows per sample
        (SmoothGrad copies, IG steps). Its tape calls are split at `batch_size()` rows
        anyway, so the batch itself may hold more: as many samples as the input rule allows
        (about 4M input values), so that per-batch work (objective passes, stats, writes)
        is spread over many tape calls instead of repeated for every one."""
        rows = self.batch_size()
        if expansion <= 1:
            return rows
        return max(1, max(rows, input_rows(self.handle)) // expansion)

    def batches(
        self, engine: GradientEngine, size: int, prepare: Callable[[Batch], Any] | None = None
    ):
        """The input in batches of `size` rows. The next batch is read, and `prepare` (a
        method's work before the tape: noisy copies, path points) sets its `prepared`, in a
        reader thread while the current one is on the tape."""
        batches = read_batches(self.input_sources, engine.input_dtypes, self.targets, self.n, size)
        if prepare is not None:
            batches = (_with_prepared(b, prepare) for b in batches)
        return prefetch(batches) if enabled() else batches

    def progress(self, done: int) -> None:
        self.emit("progress", **self.progress_fields(done, self.n))

    def progress_fields(self, done: int, total: int) -> dict:
        """A progress event's fields: which model (its file name, for the bar), how far."""
        name = self.handle.path.name
        return {"index": self.index, "model": name, "done": done, "total": total}

    def record(self, tensors: list[TensorStats], **extra: Any) -> dict:
        return self.record_rows([t.record(self.job.gates) for t in tensors], **extra)

    def record_rows(self, rows: list[dict], **extra: Any) -> dict:
        """The JSON record of a run: one row per tensor; tripped rows name the gates."""
        tripped = sorted({r["status"] for r in rows if r["tripped"]})
        faint = [r["name"] for r in rows if r["status"] == "vanishing"]
        if faint:
            self.notes.append(
                f"{', '.join(faint)}: vanishing: the gradient is at float-noise level against "
                "the tensor it flows through (its first-order share of the objective is below "
                "float rounding), so the objective hardly depends on it, as with a saturated "
                f"softmax or sigmoid ({param('logits')} differentiates before it)"
            )
        rec = base_record(self.job, self.handle)
        rec.update(
            n=self.n,
            # a Jacobian differentiates the output itself: it has no objective
            objective=self.objective.describe() if spec_of(self.job.command).objective else None,
            method=self.job.method,
            tensors=rows,
            gates=tripped,
            exit_code=int(ExitCode.GATE) if tripped else 0,
        )
        if self.objective.classes is not None:
            rec["classes"] = self.classes_used()
        rec.update(extra)
        notes = [*self.objective.notes, *self.notes]
        if notes:
            rec["notes"] = [*rec.get("notes", []), *notes]
        bounds = {"too-large": self.job.max_norm, "too-small": self.job.min_norm}
        if any(v is not None for v in bounds.values()):
            rec["limits"] = {k: v for k, v in bounds.items() if v is not None}
        rec["provenance"] = self.provenance()
        return rec

    def classes_used(self) -> dict:
        """Per-sample classes: where they came from and how many samples each class had."""
        classes = self.objective.classes
        counts = self.class_counts
        if counts is None:  # predicted while the batches were read
            counts = dict(sorted(getattr(self.targets[-1], "counts", {}).items()))
        source = {PRED: "pred", API_ARRAY: "array"}.get(classes or "", "file")
        return {"source": source, "counts": {str(k): v for k, v in counts.items()}}

    def provenance(self) -> dict:
        """This run's provenance (waits for the file hashes); the .npz and the record get
        the same one."""
        from gradcli.jobs.provenance import build

        if self._provenance is not None:
            return self._provenance
        job = self.job
        hashes = self.hashes.result()
        given: Any = job.class_index
        if self.objective.classes == API_ARRAY:
            given = "array"
        elif self.objective.classes not in (None, PRED):
            given = {"path": str(job.class_index), "sha256": hashes.get("classes")}
        objective = {
            "described": self.objective.describe(),
            "output": job.output,
            "class": given,
            "loss": job.loss,
            "from_logits": bool(job.from_logits),
            "logits": bool(job.logits),
        }
        self._provenance = build(
            job,
            model=str(self.handle.path),
            model_format=self.handle.format,
            hashes=hashes,
            objective=objective,
            batch_size=self.batch_size(),
        )
        if self._provenance.get("method") is not None:
            self._provenance["method"].update(self.resolved)
        return self._provenance

    def temp(self, path: str) -> None:
        self.emit("temp", path=path)

    def open_sink(self, out: Path | None, specs: dict[str, tuple[tuple[int, ...], str]]):
        """Where result arrays go: memory (API), a streaming .npz (-o), or nowhere."""
        sink: Sink | None = None
        if self.collect is not None:
            sink = MemorySink(self.collect, specs)
        elif out is not None:
            if NPZ_KEY in specs:
                raise InputError(
                    f"{out}: a tensor is named {NPZ_KEY!r}, the key gradcli keeps for provenance"
                )
            sink = NpzStreamWriter(out, specs, self.temp, self.outputs, provenance=self.provenance)
        if sink is not None and enabled():  # rows written while the next batch computes
            sink = BackgroundSink(sink)
        return sink

    @contextlib.contextmanager
    def sink(
        self, out: Path | None, specs: dict[str, tuple[tuple[int, ...], str]]
    ) -> Iterator[Sink | None]:
        """`open_sink` for a `with` block: a failure inside it aborts the sink (its temps go;
        the run's `Outputs` transaction removes the rest)."""
        sink = self.open_sink(out, specs)
        try:
            yield sink
        except BaseException:
            if sink is not None:
                sink.abort()
            raise

    def save_whole(self, out: Path | None, arrays: dict[str, np.ndarray]) -> str | None:
        """Write whole arrays to the run's sink; the path written, if any."""
        specs = {k: (v.shape, v.dtype.str) for k, v in arrays.items()}
        with self.sink(out, specs) as sink:
            for key, value in arrays.items():
                if sink is not None:
                    sink.write(key, value)
            return committed(sink)


def committed(sink: Sink | None) -> str | None:
    """Finish a sink; the path written, if any."""
    if sink is None:
        return None
    path = sink.commit()
    return str(path) if path else None
