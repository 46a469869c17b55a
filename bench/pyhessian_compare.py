"""PyHessian beside gradcli on twin models: top Hessian eigenvalue, trace, wall time.

Run with `.venv/bin/python bench/pyhessian_compare.py [--models mlp,cnn,bench-cnn]`.
Everything goes to bench-out/pyhessian/; PyTorch is never a gradcli dependency:

1. bench-out/pyhessian-venv, a venv of its own: `pip install torch==2.13.0` (the CPU build
   on this machine's disk), then PyHessian from PyPI (`pyhessian`); made once, checked by
   importing both.
2. Keras models with random weights (seed 0), saved as .keras, with 256 inputs and labels:
   "mlp" (tanh, 20 -> 32 -> 16 -> 10, 1,370 weights) and "cnn" (12x12x3, two ReLU
   convolutions with max-pooling, 2,842 weights), small enough for the exact Hessian;
   "bench-cnn" is bench/bench.py's CNN (315,722 weights, 128 inputs), for wall time only.
   The objective is the mean sparse categorical cross-entropy of the logits (their compiled
   loss), w.r.t. every trainable weight, in inference mode.
3. The PyTorch twin (bench/pyhessian_twin.py, run by the venv's Python) gets the same
   weights: Dense kernels transposed, convolution kernels HWIO -> OIHW, inputs NHWC ->
   NCHW, and NHWC order restored before Flatten. It checks that the twins agree (loss and
   every weight's gradient, float32 rounding), then times PyHessian's `eigenvalues()` (power
   iteration, top 1) and `trace()` (Hutchinson) with their defaults (100 iterations at most,
   tol 1e-3), counting its Hessian-vector products.
4. Columns:
   - exact: the float64 Hessian (`tape.jacobian` of the gradient, a float64 rebuild of the
     model), its extreme eigenvalues and trace (not for bench-cnn);
   - engine: gradcli/engine's estimators (Lanczos top-1, tol 1e-3, both "LA", the largest
     eigenvalue and the command's default, and "LM", the largest magnitude as PyHessian's;
     Hutchinson, 100 probes) over a TensorFlow double-backward HVP in float32
     (bench/hvp_modes.py): what the command will compute, timed in this process;
   - gradcli: `gradcli hessian MODEL X --target Y --json`, whole process (start-up, loading,
     the gradient pass, top-1 and 100 Hutchinson probes);
   - PyHessian on the twin.
   Agreement is judged in the estimators' own error: a Lanczos value within its residual
   (plus float32 rounding) of the exact one; a trace by how many of its standard errors it
   is from the exact one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "pyhessian"
VENV = ROOT / "bench-out" / "pyhessian-venv"
TORCH = "torch==2.13.0"
GRADCLI = Path(sys.executable).with_name("gradcli")
MODELS = ("mlp", "cnn", "bench-cnn")


# ------------------------------------------------------------------ the PyHessian venv


def venv_python() -> Path:
    """The venv's Python, made on first use; it must import torch and pyhessian."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import torch, pyhessian; print(torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"setting up {VENV} ({TORCH}, pyhessian): a minute or two", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, "pyhessian", "numpy"], check=True)
    subprocess.run(probe, check=True, capture_output=True)
    return python


# ------------------------------------------------------------------ the Keras side


def build(name: str, dtype: str = "float32"):
    """The model `name` (module docstring) with seeded random weights, and its input shape."""
    import keras

    keras.utils.set_random_seed(0)
    dense, conv = keras.layers.Dense, keras.layers.Conv2D

    def pool():
        return keras.layers.MaxPooling2D(dtype=dtype)

    if name == "mlp":
        shape = (20,)
        stack = [dense(32, "tanh", dtype=dtype), dense(16, "tanh", dtype=dtype)]
    elif name == "cnn":
        shape = (12, 12, 3)
        stack = [conv(8, 3, activation="relu", dtype=dtype), pool()]
        stack += [conv(16, 3, activation="relu", dtype=dtype), keras.layers.Flatten(dtype=dtype)]
    else:  # bench/bench.py's CNN
        shape = (32, 32, 3)
        stack = [conv(32, 3, activation="relu", dtype=dtype), pool()]
        stack += [conv(64, 3, activation="relu", dtype=dtype), pool()]
        stack += [keras.layers.Flatten(dtype=dtype), dense(128, "relu", dtype=dtype)]
    inp = keras.Input(shape, dtype=dtype)
    h = inp
    for layer in [*stack, dense(10, dtype=dtype)]:
        h = layer(h)
    return keras.Model(inp, h, name=name.replace("-", "_")), shape


def loss_fn(dtype: str = "float32"):
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)


def twin_spec(model) -> list[dict]:
    """The layer chain for the PyTorch side, and each layer's weights in PyTorch's layout."""
    import keras

    spec = []
    for layer in model.layers[1:]:
        kind = type(layer).__name__
        entry: dict = {"kind": kind}
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
            entry["activation"] = layer.get_config()["activation"]
            entry["shape"] = list(layer.kernel.shape)
        elif not isinstance(layer, keras.layers.MaxPooling2D | keras.layers.Flatten):
            raise ValueError(f"no PyTorch twin for {kind}")
        spec.append(entry)
    return spec


def to_torch_layout(kind: str, kernel: np.ndarray) -> np.ndarray:
    # Dense (in, out) -> Linear (out, in); Conv2D (kh, kw, in, out) -> Conv2d (out, in, kh, kw)
    return kernel.T if kind == "Dense" else kernel.transpose(3, 2, 0, 1)


def prepare(name: str) -> dict:
    """Save the model, data, the twin's spec and weights, and the Keras loss and gradient."""
    import tensorflow as tf
    from hvp_modes import tf_variables

    model, shape = build(name)
    rows = 128 if name == "bench-cnn" else 256
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=(rows,))
    model.compile(loss=loss_fn())
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    paths = {"model": d / "model.keras", "x": d / "x.npy", "y": d / "y.npy"}
    model.save(paths["model"])
    np.save(paths["x"], x)
    np.save(paths["y"], y)
    with tf.GradientTape() as tape:
        loss = loss_fn()(y, model(x, training=False))
    grads = tape.gradient(loss, tf_variables(model))
    weights, reference = {}, {"loss": np.float64(loss)}
    spec = twin_spec(model)
    at = 0
    for i, (entry, layer) in enumerate(zip(spec, model.layers[1:], strict=True)):
        if "shape" in entry:
            kernel, bias = (v.numpy() for v in layer.trainable_variables)
            weights[f"{i}.weight"] = to_torch_layout(entry["kind"], kernel)
            weights[f"{i}.bias"] = bias
            reference[f"{i}.weight"] = to_torch_layout(entry["kind"], grads[at].numpy())
            reference[f"{i}.bias"] = grads[at + 1].numpy()
            at += 2
    np.savez(d / "weights.npz", **weights)
    np.savez(d / "reference.npz", **reference)
    (d / "spec.json").write_text(json.dumps({"layers": spec, "input": list(shape)}))
    return {"name": name, "dir": d, "keras": model, "arrays": (x, y), **paths}


def exact(name: str, model, x, y) -> dict:
    """Extreme eigenvalues and trace of the float64 Hessian (a float64 rebuild)."""
    from hvp_modes import exact_hessian

    twin, _ = build(name, "float64")
    for a, b in zip(twin.weights, model.weights, strict=True):
        a.assign(np.asarray(b.numpy(), np.float64))
    start = time.perf_counter()
    h = exact_hessian(twin, loss_fn("float64"), x.astype(np.float64), y)
    e = np.linalg.eigvalsh((h + h.T) / 2)
    lm = e[-1] if abs(e[-1]) >= abs(e[0]) else e[0]
    return {
        "top_lm": float(lm),
        "lambda_max": float(e[-1]),
        "lambda_min": float(e[0]),
        "trace": float(np.trace(h)),
        "params": int(h.shape[0]),
        "seconds": time.perf_counter() - start,
    }


def engine_side(model, x, y, probes: int) -> dict:
    """Lanczos top-1 (largest magnitude, tol 1e-3) and Hutchinson over a float32 TF HVP."""
    import tensorflow as tf
    from hvp_modes import hvp_functions

    from gradcli.engine import spectral, stochastic, vectors

    hvp = hvp_functions(model, loss_fn())["double-backward"]
    layout = vectors.Layout(
        [v.path for v in model.trainable_variables],
        [tuple(v.shape) for v in model.trainable_variables],
    )
    xt, yt = tf.constant(x), tf.constant(y)
    products = 0

    def matvec(v: np.ndarray) -> np.ndarray:
        nonlocal products
        products += 1
        vs = [tf.constant(a, tf.float32) for a in layout.split(v)]
        return layout.flatten([a.numpy() for a in hvp(xt, yt, vs)])

    matvec(np.zeros(layout.n))  # trace the function outside the timings
    out = {}
    for which in ("LA", "LM"):
        start = time.perf_counter()
        top = spectral.top_eigen(matvec, layout.n, which=which, tol=1e-3, seed=0)
        out[which] = {
            "value": float(top.values[0]),
            "residual": float(top.residuals[0]),
            "products": top.matvecs,
            "seconds": time.perf_counter() - start,
        }
    start = time.perf_counter()
    trace = stochastic.hutchinson(matvec, layout.n, probes, seed=0).total
    return {
        "top_la": out["LA"],
        "top_lm": out["LM"],
        "trace": trace.value,
        "trace_stderr": trace.stderr,
        "trace_probes": trace.probes,
        "trace_seconds": time.perf_counter() - start,
    }


def gradcli_side(model: Path, x: Path, y: Path) -> dict:
    """`gradcli hessian MODEL X --target Y --json` (defaults: top-1 largest eigenvalue at tol
    1e-3, Hutchinson with 100 probes), whole process: its JSON and wall time."""
    argv = [str(GRADCLI), "hessian", str(model), str(x), "--target", str(y), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return {"record": json.loads(proc.stdout), "seconds": seconds}


def gradcli_figures(result: dict) -> dict:
    """The figures this comparison reads from the command's JSON record."""
    rec = result["record"]
    return {
        "top_la": rec["eigen"]["values"][0],
        "top_products": rec["eigen"]["products"],
        "trace": rec["trace"]["value"],
        "trace_stderr": rec["trace"]["stderr"],
        "products": rec["products"],
        "seconds": result["seconds"],
    }


# ------------------------------------------------------------------ report


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def report(name: str, ex: dict | None, en: dict, gc: dict | None, py: dict) -> list[str]:
    gcf = gradcli_figures(gc)
    la, lm = en["top_la"], en["top_lm"]
    lines = [
        f"### {name}: {en['params']:,} weights; twins: loss {py['twin']['loss']:.1e}, "
        f"gradient {py['twin']['gradient']:.1e} apart (max relative)",
        "| | exact (float64) | engine (Lanczos + Hutchinson) | gradcli hessian | PyHessian |",
        "|---|---|---|---|---|",
        f"| lambda_max (LA, sharpness) | {fmt(ex and ex['lambda_max'])} "
        f"| {fmt(la['value'])} (residual {fmt(la['residual'], 2)}, {la['products']} HVPs, "
        f"{la['seconds']:.2f} s) | {fmt(gcf['top_la'])} ({gcf['top_products']} HVPs) | - |",
        f"| largest magnitude (LM) | {fmt(ex and ex['top_lm'])} "
        f"| {fmt(lm['value'])} (residual {fmt(lm['residual'], 2)}, {lm['products']} HVPs, "
        f"{lm['seconds']:.2f} s) | - | {fmt(py['top_lm'])} ({py['top_products']} HVPs, "
        f"{py['top_seconds']:.2f} s with set-up) |",
        f"| trace | {fmt(ex and ex['trace'])} | {fmt(en['trace'])} ± {fmt(en['trace_stderr'], 2)}"
        f" ({en['trace_probes']} probes, {en['trace_seconds']:.2f} s) "
        f"| {fmt(gcf['trace'])} ± {fmt(gcf['trace_stderr'], 2)} "
        f"| {fmt(py['trace'])} ± {fmt(py['trace_stderr'], 2)} ({py['trace_probes']} probes, "
        f"{py['trace_seconds']:.2f} s) |",
        f"| seconds: top-1 + trace | {fmt(ex and ex['seconds'], 3)} (full Hessian) "
        f"| {la['seconds'] + en['trace_seconds']:.2f} (LA) "
        f"| {gcf['seconds']:.2f} (whole process, {gcf['products']} HVPs) "
        f"| {py['top_seconds'] + py['trace_seconds']:.2f} |",
    ]
    if not ex:
        return lines
    for who, value in (("engine LA", la["value"]), ("engine LM", lm["value"])):
        target = ex["lambda_max"] if who.endswith("LA") else ex["top_lm"]
        lines.append(f"{who}: {abs(value - target) / abs(target):.1e} from the exact value")
    lines.append(
        f"PyHessian LM: {abs(py['top_lm'] - ex['top_lm']) / abs(ex['top_lm']):.1e} from it"
    )
    lines.append(
        f"gradcli hessian LA: {abs(gcf['top_la'] - ex['lambda_max']) / abs(ex['lambda_max']):.1e}"
        " from the exact value"
    )
    for who, got in (("engine", en), ("gradcli hessian", gcf), ("PyHessian", py)):
        z = (got["trace"] - ex["trace"]) / got["trace_stderr"]
        lines.append(f"{who} trace: {z:+.2f} standard errors from the exact trace")
    # the engine's residual is that of the float32 operator it saw: allow its rounding too
    slack = 1e-6 * abs(ex["lambda_max"])
    lines.append(
        "engine LA within its residual (+ float32 rounding) of the exact value: "
        f"{abs(la['value'] - ex['lambda_max']) <= la['residual'] + slack}; "
        f"exact lambda_min {ex['lambda_min']:.6g}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS)
    )
    parser.add_argument("--probes", type=int, default=100, help="engine Hutchinson probes (100)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT / "bench"))
    python = venv_python()
    names = [m for m in args.models.split(",") if m]
    results = {}
    for name in names:
        made = prepare(name)
        x, y = made["arrays"]
        ex = None if name == "bench-cnn" else exact(name, made["keras"], x, y)
        en = engine_side(made["keras"], x, y, args.probes)
        en["params"] = sum(int(np.prod(v.shape)) for v in made["keras"].trainable_variables)
        gc = gradcli_side(made["model"], made["x"], made["y"])
        proc = subprocess.run(
            [str(python), str(ROOT / "bench" / "pyhessian_twin.py"), str(made["dir"])],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        py = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = {
            "exact": ex,
            "engine": en,
            "gradcli": gc and gradcli_figures(gc),
            "pyhessian": py,
        }
        print("\n".join(report(name, ex, en, gc, py)) + "\n", flush=True)
    (OUT / "compare.json").write_text(json.dumps(results, indent=2))
    print(f"figures: {OUT / 'compare.json'}; PyTorch {py['torch']} in {VENV}")
    shutil.rmtree(OUT / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
