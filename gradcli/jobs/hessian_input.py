"""`hessian --wrt input`: each sample's top eigenvalue(s) of its input Hessian d^2 o_i / d x_i^2
(the local curvature of the decision function at x_i), all samples of a batch at once: one
Lanczos run per sample (engine.spectral.batched_top), every step one product call of the
batch (engine.hvp.InputHessian). A sample's start vector depends on --seed and its index
only, and a run stops on its own tolerance, so results do not depend on --batch-size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.commands.hessian import WHICH
from gradcli.engine.batched import read_batches
from gradcli.engine.hvp import InputHessian, NonFiniteVariable
from gradcli.engine.spectral import batched_top
from gradcli.engine.vectors import Layout
from gradcli.errors import param
from gradcli.jobs.context import Context, committed
from gradcli.jobs.curvature import TOP, check_basis, check_k, gate, json_number, sharpness, stream
from gradcli.present.gates import Status

BASIS_BUDGET = 256 << 20  # the batch's Lanczos bases (rows x steps x input size, float64)
SHARPEST = 5  # samples listed by their top eigenvalue


@dataclass
class PerSample:
    """What the batches found, sample by sample."""

    n: int
    k: int
    steps: int  # products per Lanczos run at most
    rows: int  # samples per product call
    values: np.ndarray = field(init=False)  # (N, k)
    residuals: np.ndarray = field(init=False)
    converged: np.ndarray = field(init=False)
    used: np.ndarray = field(init=False)  # (N,) products each sample's run took
    nonzero: np.ndarray | None = None  # per input: any non-zero product
    failed: NonFiniteVariable | None = None
    products: int = 0  # product calls of all batches

    def __post_init__(self) -> None:
        self.values = np.full((self.n, self.k), np.nan)
        self.residuals = np.full((self.n, self.k), np.nan)
        self.converged = np.zeros((self.n, self.k), dtype=bool)
        self.used = np.zeros(self.n, dtype=np.int64)


def run_input(ctx: Context, out: Path | None) -> dict:
    job, handle = ctx.job, ctx.handle
    engine = InputHessian(handle, ctx.objective, mode=job.hvp, jit=job.jit)
    shapes = [tuple(int(d) for d in s.array.shape[1:]) for s in ctx.input_sources]
    layout = Layout(engine.names, shapes)
    d, k = layout.n, job.top_k
    check_k(k, d, "one per input value of a sample")
    steps = min(max(job.lanczos_steps, k), d)
    check_basis(d, steps + k, ["top_k", "lanczos_steps"], "input values")
    rows = max(1, min(ctx.batch_size(), BASIS_BUDGET // (8 * (steps + 3) * d)))
    found = PerSample(ctx.n, k, steps, rows, nonzero=np.zeros(len(shapes), dtype=bool))
    specs = {
        "eigenvalues": ((ctx.n, k), "<f8"),
        "residuals": ((ctx.n, k), "<f8"),
        **{
            f"eigenvectors/{n}": ((ctx.n, k, *s), "<f4")
            for n, s in zip(layout.names, shapes, strict=True)
        },
    }
    with ctx.sink(out, specs) as sink:
        batches = read_batches(ctx.input_sources, engine.input_dtypes, ctx.targets, ctx.n, rows)
        for batch in batches:
            try:
                top = _batch(job, engine, layout, batch, found)
            except NonFiniteVariable as exc:
                found.failed = exc
                break
            if sink is not None:
                b = batch.stop - batch.start
                sink.write("eigenvalues", top.values)
                sink.write("residuals", top.residuals)
                for name, s in zip(layout.names, shapes, strict=True):
                    part = top.vectors[:, :, layout.slices[name]]
                    sink.write(f"eigenvectors/{name}", part.reshape(b, k, *s))
            ctx.progress(batch.stop)
        if found.failed is not None and sink is not None:
            sink.abort()
            sink = None
        written = committed(sink)
    return _record(ctx, job, layout, found, written)


def _batch(job: Any, engine: InputHessian, layout: Layout, batch: Any, found: PerSample):
    """One batch: every sample's Lanczos run, one product call per step."""
    b = batch.stop - batch.start
    shapes = layout.shapes

    def matvec(q: np.ndarray) -> np.ndarray:
        vs = [p.reshape(b, *s) for p, s in zip(_split(layout, q), shapes, strict=True)]
        _, hv = engine.product(batch.inputs, batch.targets, vs)
        for j, h in enumerate(hv):
            found.nonzero[j] |= bool(np.any(h))
        return np.concatenate([h.reshape(b, -1) for h in hv], axis=1)

    start = np.stack(
        [stream(job.seed, TOP, i).standard_normal(layout.n) for i in range(batch.start, batch.stop)]
    )
    top = batched_top(
        matvec, start, found.k, which=WHICH[job.which], tol=job.tol, max_steps=found.steps
    )
    at = slice(batch.start, batch.stop)
    found.values[at], found.residuals[at] = top.values, top.residuals
    found.converged[at], found.used[at] = top.converged, top.steps
    found.products += int(top.steps.max())
    return top


def _split(layout: Layout, q: np.ndarray) -> list[np.ndarray]:
    return [q[:, layout.slices[name]] for name in layout.names]


def _record(ctx: Context, job: Any, layout: Layout, found: PerSample, written) -> dict:
    gates = job.gates
    tensors = []
    for j, name in enumerate(layout.names):
        if found.failed is not None and found.failed.name == name:
            status = Status.NONFINITE
        elif found.failed is None and not found.nonzero[j]:
            status = Status.ZERO
        else:
            status = Status.OK
        tensors.append(
            {
                "name": name,
                "shape": [ctx.n, *layout.shapes[j]],
                "status": status.value,
                "tripped": status != Status.OK and gates.tripped(status),
            }
        )
    first = found.values[:, 0]
    known = first[np.isfinite(first)]
    good = found.converged[:, 0]
    summary: dict[str, Any] = {
        "which": job.which,
        "k": job.top_k,
        "tol": job.tol,
        "max_steps": found.steps,
        "rows": found.rows,
        "products": found.products,
        "converged": int(good.sum()),
        "steps": {"median": json_number(np.median(found.used)), "max": int(found.used.max())},
    }
    if known.size:
        summary["top"] = {
            "min": json_number(known.min()),
            "median": json_number(np.median(known)),
            "p90": json_number(np.percentile(known, 90)),
            "max": json_number(known.max()),
            "mean": json_number(known.mean()),
        }
        rank = {"largest": first, "smallest": -first, "magnitude": abs(first)}[job.which]
        order = np.argsort(-np.nan_to_num(rank, nan=-np.inf), kind="stable")[:SHARPEST]
        summary["sharpest"] = [{"index": int(i), "value": json_number(first[i])} for i in order]
    ctx.notes.extend(_notes(found, known, good))
    lam = None
    if job.which == "largest" and known.size == len(first):
        lam = float(np.max(first))
    ctx.provenance()["estimates"] = {"products": found.products, "rows": found.rows}
    record = ctx.record_rows(
        tensors,
        method=f"Hessian-vector products ({job.hvp})",
        wrt="input",
        hvp=job.hvp,
        size=layout.n,
        per_sample=summary,
        sharpness=sharpness(job, lam),
        out=written,
    )
    return gate(record, record["sharpness"])


def _notes(found: PerSample, known: np.ndarray, good: np.ndarray) -> list[str]:
    notes = []
    if found.failed is not None:
        notes.append(
            f"{found.failed.name}: the input Hessian-vector product is not finite (NaN or "
            "infinity): the estimates stopped there"
        )
    elif not found.nonzero.any():
        notes.append(
            "the input Hessian is zero for every sample: the objective is piecewise linear in "
            "the input here (ReLU, max-pooling and a class score), whose curvature sits on the "
            f"kinks that autodiff does not see; a loss through a softmax ({param('target')}) "
            "or smooth activations have curvature"
        )
    if known.size and (~good).any():
        notes.append(
            f"{int((~good).sum())} sample(s) did not reach {param('tol')} within "
            f"{param('lanczos_steps')} products; their residuals bound the error"
        )
    return notes
