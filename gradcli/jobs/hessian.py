"""`hessian`: curvature of the mean objective w.r.t. the trainable weights from Hessian-vector
products (engine.hvp): top-k eigenvalues by Lanczos (engine.spectral), Hutchinson traces of
the whole Hessian, each layer's and each variable's diagonal block (engine.stochastic), each
layer's own top eigenvalue (--per-layer) and the spectral density (--density). `--wrt input`
is hessian_input.py's.

Every estimate draws from its own seeded stream (`--seed`, then the estimate's number), so a
run is repeatable and one estimate's options do not move another's probes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gradcli.commands.hessian import WHICH
from gradcli.engine.hvp import NonFiniteVariable, WeightHessian
from gradcli.engine.spectral import top_eigen
from gradcli.engine.stochastic import Estimate, hutchinson, slq
from gradcli.engine.vectors import Layout, restricted
from gradcli.errors import ModelError, param
from gradcli.jobs.context import Context
from gradcli.jobs.curvature import (
    DENSITY,
    LAYERS,
    TOP,
    TRACE,
    check_basis,
    check_k,
    data_batches,
    eigen_json,
    estimate_json,
    gate,
    json_number,
    sharpness,
    stream,
)
from gradcli.jobs.wrt_weights import unique_names, variable_layers
from gradcli.present.gates import Status


class Products:
    """The flat product the estimators call: counts products, reports progress, remembers
    which variables ever had a non-zero row of H (a variable without is `zero`)."""

    def __init__(self, ctx: Context, engine: WeightHessian, layout: Layout, data, planned: int):
        self.ctx, self.engine, self.layout, self.data = ctx, engine, layout, data
        self.planned = planned
        self.nonzero = np.zeros(len(layout.names), dtype=bool)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        parts = self.engine.product(self.data, self.layout.split(v))
        for k, p in enumerate(parts):
            self.nonzero[k] |= bool(np.any(p))
        done = self.engine.products
        self.planned = max(self.planned, done + 1)
        self.ctx.emit("progress", **self.ctx.progress_fields(done, self.planned))
        return self.layout.flatten(parts)


def run(ctx: Context, out: Path | None, png: Path | None) -> dict:
    job = ctx.job
    if job.wrt == "input":
        from gradcli.jobs.hessian_input import run_input

        return run_input(ctx, out)
    handle = ctx.handle
    engine = WeightHessian(handle, ctx.objective, mode=job.hvp, training=job.training, jit=job.jit)
    if not engine.all_variables:
        raise ModelError(f"{handle.path.name} has no trainable weights: it has no weight Hessian")
    size = sum(int(np.prod(v.shape)) for v in engine.all_variables)
    _check_sizes(job, size)
    data = data_batches(ctx, engine.input_dtypes, ctx.batch_size())
    grad = engine.gradient(data)
    all_names = unique_names(engine.all_names)
    names = [n for n, ok in zip(all_names, grad.connected, strict=True) if ok]
    engine.names = names  # a non-finite product names its variable as the record does
    layout = Layout(names, [tuple(v.shape) for v in engine.variables])
    _check_sizes(job, layout.n)
    owner = dict(zip(names, variable_layers(handle, engine.names, engine.variables), strict=True))
    layers = layout.blocks(owner.get)
    planned = 30 * job.top_k + job.probes + (job.density_runs * job.density_steps * job.density)
    matvec = Products(ctx, engine, layout, data, planned + 30 * len(layers) * job.per_layer)
    found: dict[str, Any] = {}
    failed = next(
        (
            NonFiniteVariable(name, "gradient")
            for name, g in zip(all_names, grad.gradients, strict=True)
            if g is not None and not np.all(np.isfinite(g))
        ),
        None,
    )
    try:
        if failed is None:
            _estimate(job, layout, layers, matvec, found)
    except NonFiniteVariable as exc:
        failed = exc
    rows = _rows(job, all_names, engine, grad, layout, matvec, found, failed)
    record = _record(ctx, job, layout, owner, grad, found, failed, matvec, rows)
    ctx.provenance()["estimates"] = _used(found, engine.products)
    written = ctx.save_whole(out, _arrays(layout, found))
    if png is not None and "density" in found:
        record["png"] = _draw(ctx, png, found, job)
    record["out"] = written
    return gate(record, record["sharpness"])


def _check_sizes(job: Any, n: int) -> None:
    check_k(job.top_k, n, "one per trainable weight")
    steps = min(job.lanczos_steps, n)
    check_basis(n, steps + job.top_k, ["top_k", "lanczos_steps"], "weights")
    if job.density:
        check_basis(n, min(job.density_steps, n), ["density_steps"], "weights")


def _estimate(job: Any, layout: Layout, layers: dict, matvec: Products, found: dict) -> None:
    """Each estimate in turn (found[...] as each finishes: a non-finite product stops the
    rest, and what was found is still reported)."""
    which, n = WHICH[job.which], layout.n
    steps = min(job.lanczos_steps, n)
    found["top"] = top_eigen(
        matvec, n, job.top_k, which=which, tol=job.tol, max_steps=steps, seed=stream(job.seed, TOP)
    )
    found["trace"] = hutchinson(
        matvec,
        n,
        job.probes,
        blocks=layout.blocks(),
        rtol=job.trace_rtol,
        seed=stream(job.seed, TRACE),
    )
    if job.per_layer:
        found["layers"] = {}
        for i, (name, block) in enumerate(layers.items()):
            product, size = restricted(matvec, n, block)
            found["layers"][name] = top_eigen(
                product,
                size,
                1,
                which=which,
                tol=job.tol,
                max_steps=min(steps, size),
                seed=stream(job.seed, LAYERS, i),
            )
    if job.density:
        quad = slq(
            matvec,
            n,
            job.density_runs,
            min(job.density_steps, n),
            seed=stream(job.seed, DENSITY),
        )
        found["quadrature"] = quad
        found["density"] = quad.density(job.bins)


def _rows(job, all_names, engine, grad, layout, matvec, found, failed) -> list[dict]:
    """One row per trainable variable: its block's trace (HAWQ), its status."""
    trace = found.get("trace")
    blocks = trace.blocks if trace is not None else {}
    gates = job.gates
    rows = []
    for name, variable, g in zip(all_names, engine.all_variables, grad.gradients, strict=True):
        shape = [int(d) for d in variable.shape]
        size = int(np.prod(shape))
        row: dict[str, Any] = {"name": name, "shape": shape, "size": size}
        if g is None:
            status = Status.DISCONNECTED
        elif failed is not None and failed.name == name:
            status = Status.NONFINITE
        elif failed is None and not matvec.nonzero[layout.names.index(name)]:
            status = Status.ZERO
        else:
            status = Status.OK
        row["status"] = status.value
        row["tripped"] = status != Status.OK and gates.tripped(status)
        est = blocks.get(name)
        row["trace"] = json_number(est.value) if est is not None else None
        row["trace_stderr"] = json_number(est.stderr) if est is not None else None
        row["trace_per_weight"] = json_number(est.value / size) if est is not None else None
        row["gradient_l2"] = None if g is None else json_number(np.linalg.norm(g))
        rows.append(row)
    return rows


def _layer_rows(layout: Layout, owner: dict[str, str], found: dict) -> list[dict]:
    """One entry per layer: its block's trace (the sum of its variables' from the same
    probes) and, with --per-layer, its own top eigenvalue."""
    trace = found.get("trace")
    tops = found.get("layers", {})
    out = []
    for name, block in layout.blocks(owner.get).items():
        size = sum(s.stop - s.start for s in block)
        entry: dict[str, Any] = {"layer": name, "size": size}
        if trace is not None:
            cols = [i for i, v in enumerate(layout.names) if owner[v] == name]
            est = Estimate.of(trace.block_samples[:, cols].sum(axis=1))
            entry.update(trace=json_number(est.value), trace_stderr=json_number(est.stderr))
            entry["trace_per_weight"] = json_number(est.value / size)
        if name in tops:
            e = tops[name]
            entry.update(
                top=json_number(e.values[0]),
                residual=json_number(e.residuals[0]),
                converged=bool(e.converged[0]),
                products=e.matvecs,
            )
        out.append(entry)
    return out


def _record(ctx, job, layout, owner, grad, found, failed, matvec, rows) -> dict:
    extra: dict[str, Any] = {
        "method": f"Hessian-vector products ({job.hvp})",
        "wrt": "weights",
        "hvp": job.hvp,
        "size": layout.n,
        "objective_mean": json_number(grad.objective_mean),
        "gradient_l2": json_number(
            math.sqrt(sum(float(np.sum(g**2)) for g in grad.gradients if g is not None))
        ),
    }
    top = found.get("top")
    if top is not None:
        extra["eigen"] = eigen_json(top, job.which)
        extra["eigen"]["max_steps"] = min(job.lanczos_steps, layout.n)
    trace = found.get("trace")
    if trace is not None:
        extra["trace"] = {**estimate_json(trace.total), "rtol": job.trace_rtol}
        extra["trace"]["per_weight"] = json_number(trace.total.value / layout.n)
    extra["layers"] = _layer_rows(layout, owner, found)
    if "density" in found:
        extra["density"] = _density_json(found, job, layout.n)
    extra["products"] = matvec.engine.products
    lam = None if top is None or job.which != "largest" else float(top.values[0])
    extra["sharpness"] = sharpness(job, lam)
    notes = _notes(job, top, failed, matvec, layout)
    ctx.notes.extend(notes)
    return ctx.record_rows(rows, **extra)


def _density_json(found: dict, job: Any, n: int) -> dict:
    quad, dens = found["quadrature"], found["density"]
    mean, second = quad.moment(1), quad.moment(2)
    return {
        "runs": job.density_runs,
        "steps": int(quad.nodes.shape[1]),
        "bins": job.bins,
        "sigma": json_number(dens.sigma),
        "edges": [json_number(e) for e in dens.edges],
        "mass": [json_number(m) for m in dens.mass],
        "mean": estimate_json(mean),
        "second_moment": estimate_json(second),
        "trace": json_number(mean.value * n),
    }


def _notes(job, top, failed, matvec, layout) -> list[str]:
    notes = []
    if failed is not None:
        notes.append(
            f"{failed.name}: the {failed.what} is not finite (NaN or infinity): the estimates "
            "stopped there; figures not reached are null"
        )
    elif not matvec.nonzero.any():
        notes.append(
            "the Hessian is zero along every product: the objective is piecewise linear in "
            "the weights here (ReLU, max-pooling and a class score or a linear loss), whose "
            "curvature sits on the kinks that autodiff does not see; a loss through a softmax "
            f"({param('target')}) or smooth activations have curvature"
        )
    if top is not None and not top.converged.all():
        notes.append(
            f"{int((~top.converged).sum())} eigenvalue(s) did not reach {param('tol')} within "
            f"{param('lanczos_steps')} products; their residuals bound the error"
        )
    if job.training:
        notes.append(
            f"{param('training')}: layers that use batch statistics (BatchNormalization) make "
            f"the Hessian depend on {param('batch_size')}, and dropout draws new masks at every "
            "product, so the estimates see a different matrix each time"
        )
    return notes


def _used(found: dict, products: int) -> dict:
    """What the estimates used, for the provenance (the record has more)."""
    used: dict[str, Any] = {"products": products}
    if "top" in found:
        used["lanczos_products"] = found["top"].matvecs
        used["lanczos_restarts"] = found["top"].restarts
    if "trace" in found:
        used["trace_probes"] = found["trace"].total.probes
    return used


def _arrays(layout: Layout, found: dict) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    top = found.get("top")
    if top is not None:
        arrays["eigenvalues"] = top.values.astype(np.float64)
        per = [layout.split(v) for v in top.vectors]
        for k, name in enumerate(layout.names):
            arrays[f"eigenvectors/{name}"] = np.stack([p[k] for p in per]).astype(np.float32)
    trace = found.get("trace")
    if trace is not None:
        arrays["trace/samples"] = trace.samples.astype(np.float64)
    if "density" in found:
        quad, dens = found["quadrature"], found["density"]
        arrays["density/edges"] = dens.edges
        arrays["density/mass"] = dens.mass
        arrays["density/nodes"] = quad.nodes
        arrays["density/weights"] = quad.weights
    return arrays


def _draw(ctx: Context, png: Path, found: dict, job: Any) -> str:
    from gradcli.io.paths import output_file
    from gradcli.present.density import write_density

    png = output_file(png, ".png")
    staged = ctx.outputs.stage_file(png) if ctx.outputs is not None else png
    top = found.get("top")
    write_density(
        staged,
        found["density"].edges,
        found["density"].mass,
        marks=[] if top is None else [float(v) for v in top.values],
        title=f"{Path(ctx.handle.path).name}: Hessian eigenvalue density "
        f"({ctx.objective.describe()})",
    )
    return str(png)
