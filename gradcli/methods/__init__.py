"""Attribution methods on the engine: vanilla, gradient x input, SmoothGrad and its noise-tunnel
variants (SquareGrad, VarGrad), Integrated Gradients, and the CAM family (cam.py).

Each method is one `Method` entry of `METHODS`: what one sample costs on the tape (its
expansion), how it turns gradients into attributions, what it adds to the record, its help
line and the options it reads. The CLI's `--method` choices and help come from this table, so
this module stays light at import (NumPy is imported inside the functions that compute).

SmoothGrad copies (SquareGrad and VarGrad use the same noisy copies) and IG steps are stacked
on the batch axis and go through the same compiled tape as vanilla gradients, in calls of at
most `rows_per_call` rows: no Python loop per step. A CAM method watches one layer and gets its
activation and gradient from one tape call per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from gradcli.engine.batched import Batch, GradientEngine
    from gradcli.methods.cam import CamLayer


@dataclass
class MethodOptions:
    method: str = "vanilla"
    samples: int = 25
    noise: float = 0.15
    seed: int = 0
    steps: int = 50
    baseline: list[np.ndarray] | None = None  # per input: (N, ...) rows, or None for zeros
    baseline_name: str = "zeros"  # what the record calls the baseline
    cam_layer: CamLayer | None = None  # CAM methods: the layer (cam.py)


@dataclass
class Attribution:
    """Per-input attributions of a batch, and the objective where the method reports it.

    A CAM's `values` are its map resized to each input (None for an input without the
    layer's spatial axes) and `layer_map` the map at the layer's resolution."""

    values: list[np.ndarray | None]
    objective: np.ndarray | None = None
    completeness: dict = field(default_factory=dict)  # IG: per-sample gaps
    layer_map: np.ndarray | None = None


Attribute = Callable[["GradientEngine", "Batch", MethodOptions, int], Attribution]
# work on a batch that needs no tape (noisy copies, IG path points): Context.batches runs it in
# the reader thread, so it overlaps the previous batch's tape calls
Prepare = Callable[["Batch", MethodOptions], Any]


def _one_row(options: MethodOptions) -> int:
    return 1


def _no_extras(options: MethodOptions, completeness: list[dict]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """One wrt-input method: its name, help, options it reads, and how it computes."""

    name: str
    help: str  # one clause of --method's help
    attribute: Attribute  # (engine, batch, options, rows_per_call) -> Attribution
    # what its values are, named in pictures and tables ("gradient", "Grad-CAM")
    quantity: str = "attribution"
    # how --png draws it by default: "signed" (diverging colormap centred on zero),
    # "magnitude", or "own" for a quantity that is never negative (CAMs, SquareGrad, VarGrad)
    png_style: str = "magnitude"
    expansion: Callable[[MethodOptions], int] = _one_row  # tape rows per input sample
    extras: Callable[[MethodOptions, list[dict]], dict[str, Any]] = _no_extras  # record keys
    options: tuple[str, ...] = ()  # the Job fields (options) it reads besides the common ones
    # True: it reads a layer's activation and gradient (--layer; the engine watches the layer
    # and returns its activation instead of input gradients)
    needs_layer: bool = False
    # the tape's inputs for a batch, built off the main thread; `attribute` finds them in
    # `batch.prepared` (and builds them itself where nobody did)
    prepare: Prepare | None = None


def prepared(batch: Batch, options: MethodOptions, prepare: Prepare) -> Any:
    """What `prepare` made of this batch in the reader thread, or made now."""
    return batch.prepared if batch.prepared is not None else prepare(batch, options)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the table (its name becomes a --method choice)."""
    METHODS[method.name] = method
    return method


def method_help() -> str:
    """--method's help: each method's clause, in table order."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."


def _tape_in_chunks(
    engine: GradientEngine, inputs: list[np.ndarray], targets: list[np.ndarray], rows_per_call: int
) -> list[np.ndarray]:
    import numpy as np

    rows = len(inputs[0])
    if rows <= rows_per_call:
        return engine.gradients(inputs, targets).inputs
    parts: list[list[np.ndarray]] = [[] for _ in inputs]
    for start in range(0, rows, rows_per_call):
        stop = min(rows, start + rows_per_call)
        got = engine.gradients(
            [x[start:stop] for x in inputs], [t[start:stop] for t in targets]
        ).inputs
        for part, g in zip(parts, got, strict=True):
            part.append(g)
    return [np.concatenate(p) for p in parts]


def attribute(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    """Attributions for one batch of samples under the chosen method."""
    return METHODS[options.method].attribute(engine, batch, options, rows_per_call)


def _vanilla(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    result = engine.gradients(batch.inputs, batch.targets)
    return Attribution(result.inputs, result.objective)


def _gradxinput(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    result = engine.gradients(batch.inputs, batch.targets)
    values = [x * g for x, g in zip(batch.inputs, result.inputs, strict=True)]
    return Attribution(values, result.objective)


def smoothgrad_noise(
    x: np.ndarray, index: int, input_number: int, options: MethodOptions
) -> np.ndarray:
    """Noise for one sample: depends on (seed, sample index, input), never on the batch."""
    import numpy as np

    rng = np.random.default_rng([options.seed, index, input_number])
    spread = float(np.max(x) - np.min(x)) if x.size else 0.0
    sigma = options.noise * spread
    return rng.standard_normal((options.samples, *x.shape), dtype=np.float32) * sigma


def _noisy_copies(batch: Batch, options: MethodOptions) -> tuple[list, list]:
    """The tape's rows for a batch: `samples` noisy copies of each row, and the targets."""
    import numpy as np

    s = options.samples
    noisy = []
    for k, x in enumerate(batch.inputs):
        rows = np.empty((len(x), s, *x.shape[1:]), dtype=x.dtype)
        for i in range(len(x)):
            rows[i] = x[i] + smoothgrad_noise(x[i], batch.start + i, k, options)
        noisy.append(rows.reshape(len(x) * s, *x.shape[1:]))
    return noisy, [np.repeat(t, s, axis=0) for t in batch.targets]


def _noisy_gradients(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> list[np.ndarray]:
    """Per input, the gradients at the `samples` noisy copies of each row: (B, samples, ...)."""
    noisy, targets = prepared(batch, options, _noisy_copies)
    grads = _tape_in_chunks(engine, noisy, targets, rows_per_call)
    s = options.samples
    return [g.reshape(len(x), s, *x.shape[1:]) for g, x in zip(grads, batch.inputs, strict=True)]


def _noise_tunnel(reduce: Callable[[np.ndarray], np.ndarray]) -> Attribute:
    """A method reducing the gradients at the noisy copies (axis 1) in float64."""

    def attribute_noisy(
        engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
    ) -> Attribution:
        grads = _noisy_gradients(engine, batch, options, rows_per_call)
        values = [reduce(g).astype(x.dtype) for g, x in zip(grads, batch.inputs, strict=True)]
        return Attribution(values)

    return attribute_noisy


def _mean(g: np.ndarray) -> np.ndarray:
    return g.mean(axis=1, dtype="float64")


def _mean_square(g: np.ndarray) -> np.ndarray:
    return (g.astype("float64") ** 2).mean(axis=1)


def _variance(g: np.ndarray) -> np.ndarray:
    # the population variance (ddof 0) over the noisy copies, as Captum's NoiseTunnel
    return g.var(axis=1, dtype="float64")


_smoothgrad = _noise_tunnel(_mean)
_squaregrad = _noise_tunnel(_mean_square)
_vargrad = _noise_tunnel(_variance)


def _cam(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    from gradcli.methods.cam import cam_maps, input_spatial, resize

    layer = options.cam_layer
    assert layer is not None  # the command resolves it before the first batch
    result = engine.gradients(batch.inputs, batch.targets)
    (g,) = result.layers
    if g is None:
        from gradcli.errors import GradientError

        raise GradientError(
            f"the objective does not depend on layer {layer.info.path!r}: no CAM (its "
            "gradient is disconnected)"
        )
    (a,) = result.activations or [None]
    maps = cam_maps(options.method, layer, a, g)
    values = []
    for x in batch.inputs:
        size = input_spatial(x.shape[1:], layer)
        values.append(None if size is None else resize(maps, size))
    return Attribution(values, result.objective, layer_map=maps)


def _path_points(batch: Batch, options: MethodOptions) -> tuple[list, list, list]:
    """The tape's rows for a batch: `steps` points on the path from each row's baseline to
    the row (midpoint rule), the targets, and the baselines."""
    import numpy as np

    m = options.steps
    # midpoint rule: second-order accurate with exactly `steps` gradient evaluations
    alphas = ((np.arange(m, dtype=np.float64) + 0.5) / m).astype(np.float32)
    baselines = []
    for k, x in enumerate(batch.inputs):
        if options.baseline is None or options.baseline[k] is None:
            baselines.append(np.zeros_like(x))
        else:
            b = options.baseline[k]
            baselines.append(
                np.broadcast_to(b[batch.start : batch.stop] if len(b) > 1 else b, x.shape).astype(
                    x.dtype
                )
            )
    path_inputs = []
    for x, b in zip(batch.inputs, baselines, strict=True):
        shape = (1,) * (x.ndim - 1)
        a = alphas.reshape(1, m, *shape)
        rows = b[:, None] + a * (x - b)[:, None]
        path_inputs.append(rows.reshape(len(x) * m, *x.shape[1:]).astype(x.dtype))
    return path_inputs, [np.repeat(t, m, axis=0) for t in batch.targets], baselines


def _integrated(
    engine: GradientEngine, batch: Batch, options: MethodOptions, rows_per_call: int
) -> Attribution:
    import numpy as np

    m = options.steps
    path_inputs, targets, baselines = prepared(batch, options, _path_points)
    grads = _tape_in_chunks(engine, path_inputs, targets, rows_per_call)
    values = []
    for g, x, b in zip(grads, batch.inputs, baselines, strict=True):
        mean = g.reshape(len(x), m, *x.shape[1:]).mean(axis=1, dtype=np.float64)
        values.append(((x - b) * mean).astype(x.dtype))
    o_x = engine.objective_values(batch.inputs, batch.targets)
    o_b = engine.objective_values(baselines, batch.targets)
    total = sum(v.reshape(len(v), -1).sum(axis=1, dtype=np.float64) for v in values)
    delta = o_x.astype(np.float64) - o_b.astype(np.float64)
    gap = np.abs(total - delta)
    return Attribution(values, o_x, {"gap": gap, "delta": delta})


def _smoothgrad_extras(options: MethodOptions, completeness: list[dict]) -> dict[str, Any]:
    return {"samples": options.samples, "noise": options.noise, "seed": options.seed}


def _integrated_extras(options: MethodOptions, completeness: list[dict]) -> dict[str, Any]:
    import numpy as np

    gap = np.concatenate([c["gap"] for c in completeness])
    delta = np.concatenate([c["delta"] for c in completeness])
    rel = gap / np.maximum(np.abs(delta), 1e-12)
    return {
        "steps": options.steps,
        "baseline": options.baseline_name,
        "completeness": {
            "max_abs_gap": float(gap.max()),
            "mean_abs_gap": float(gap.mean()),
            "max_rel_gap": float(rel.max()),
            "mean_rel_gap": float(rel.mean()),
            "mean_abs_delta": float(np.abs(delta).mean()),
        },
    }


def value_label(method: str | None) -> str:
    """How a table names a method's values: |g| (a gradient), |attr|, or CAM."""
    found = METHODS.get(method or "vanilla")
    if found is None or found.name == "vanilla":
        return "|g|"
    return "CAM" if found.needs_layer else "|attr|"


register(Method("vanilla", "d o / d x", _vanilla, quantity="gradient"))
register(
    Method("gradxinput", "x * grad", _gradxinput, quantity="gradient × input", png_style="signed")
)
for _name, _help, _attribute, _style in (
    ("smoothgrad", "mean over noisy copies", _smoothgrad, "magnitude"),
    ("squaregrad", "mean of grad^2 over the noisy copies", _squaregrad, "own"),
    ("vargrad", "variance of grad over the noisy copies", _vargrad, "own"),
):  # the noise tunnel: the same noisy copies, options and record keys, reduced differently
    register(
        Method(
            _name,
            _help,
            _attribute,
            quantity={"smoothgrad": "SmoothGrad", "squaregrad": "SquareGrad"}.get(_name, "VarGrad"),
            png_style=_style,
            expansion=lambda o: o.samples,
            extras=_smoothgrad_extras,
            options=("samples", "noise", "seed"),
            prepare=_noisy_copies,
        )
    )
register(
    Method(
        "integrated",
        "Integrated Gradients",
        _integrated,
        quantity="Integrated Gradients",
        png_style="signed",
        expansion=lambda o: o.steps,
        extras=_integrated_extras,
        options=("steps", "baseline"),
        prepare=_path_points,
    )
)
for _name, _quantity in (
    ("gradcam", "Grad-CAM"),
    ("gradcam++", "Grad-CAM++"),
    ("layercam", "Layer-CAM"),
):
    register(
        Method(
            _name,
            f"{_quantity} on --layer",
            _cam,
            quantity=_quantity,
            png_style="own",
            options=("layers",),
            needs_layer=True,
        )
    )
