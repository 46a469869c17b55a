"""Hessian-vector products in TensorFlow: forward-over-backward against double-backward.

Run with `.venv/bin/python bench/hvp_modes.py [--repeats R] [--batch B] [--check-only]`.
Plain TensorFlow and Keras, no gradcli import: this measures which HVP the engine should use
(issue 26 asks for both to be measured). Models are bench/bench.py's CNN and MLP (random
weights, seed 0), objective the mean sparse categorical cross-entropy of the logits over one
batch of B rows (default 128), derivatives w.r.t. every trainable weight, models in inference
mode, every function a `tf.function` traced once before timing.

- gradient: one `GradientTape` gradient (what `wrt-weights` computes per batch);
- forward-over-backward: `tf.autodiff.ForwardAccumulator(weights, v)` around that tape,
  `acc.jvp(gradient)`;
- double-backward: a second tape around the first, the gradient of <gradient, v>.

- gradcli gradient / gradcli HVP: the engine's own steps (engine/hvp.py, what `gradcli
  hessian` runs: the compiled-tape core, sums in float64 over the batch), the HVP in the
  command's default mode; the goal line compares these two (issue 26: <= 2.5x).

Each round times every computation once, in a rotating order (interleaved), each timing the
median of a few calls; an HVP's cost relative to its gradient is taken within each round. The table
gives medians with [min-max] over rounds. The machine may be shared: the load average is
printed before and after; compare ratios, not absolute times.

Before timing, both modes are checked against the exact Hessian (float64, a small tanh MLP
with a few hundred weights: `tape.jacobian` of the gradient, times v); the script stops if
either disagrees beyond float64 rounding. tests/test_hvp_modes.py runs the same check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
MODES = ("gradient", "forward-over-backward", "double-backward")


def tf_variables(model) -> list:
    """The tf.Variables under a Keras 3 model's trainable weights."""
    import keras

    return [v.value if isinstance(v, keras.Variable) else v for v in model.trainable_variables]


def objective(model, loss_fn) -> Callable:
    def mean_loss(x, y):
        return loss_fn(y, model(x, training=False))

    return mean_loss


def hvp_functions(model, loss_fn, *, compile: bool = True) -> dict[str, Callable]:
    """gradient(x, y) -> grads; the two HVP modes (x, y, vs) -> H v, one array per weight."""
    import tensorflow as tf

    variables = tf_variables(model)
    loss = objective(model, loss_fn)

    def gradient(x, y):
        with tf.GradientTape() as tape:
            value = loss(x, y)
        return tape.gradient(value, variables)

    def forward_over_backward(x, y, vs):
        with tf.autodiff.ForwardAccumulator(variables, vs) as acc:
            grads = gradient(x, y)
        return acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def double_backward(x, y, vs):
        with tf.GradientTape() as outer:
            grads = gradient(x, y)
            inner = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vs, strict=True)])
        return outer.gradient(inner, variables, unconnected_gradients="zero")

    fns = dict(zip(MODES, (gradient, forward_over_backward, double_backward), strict=True))
    return {k: tf.function(f) for k, f in fns.items()} if compile else fns


def exact_hessian(model, loss_fn, x, y, chunk: int = 128) -> np.ndarray:
    """The full Hessian of the objective w.r.t. the trainable weights (P x P, C order per
    weight, weights in model order): `tape.jacobian` of the flattened gradient, `chunk` rows
    at a time (a jacobian vectorised over all P rows at once holds P copies of the backward
    pass: gigabytes for a CNN of a few thousand weights)."""
    import tensorflow as tf

    variables = tf_variables(model)
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = objective(model, loss_fn)(x, y)
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(value, variables)], 0)
        parts = [flat[i : i + chunk] for i in range(0, int(flat.shape[0]), chunk)]
    rows = []
    for part in parts:
        blocks = outer.jacobian(part, variables)
        rows.append(np.concatenate([b.numpy().reshape(part.shape[0], -1) for b in blocks], 1))
    del outer
    return np.concatenate(rows, axis=0)


def float64_mlp(seed: int = 0):
    """A small smooth MLP in float64 (tanh, 6 -> 12 -> 8 -> 4: 224 weights) and a batch."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,), dtype="float64")
    h = keras.layers.Dense(12, activation="tanh", dtype="float64", name="d1")(inp)
    h = keras.layers.Dense(8, activation="tanh", dtype="float64", name="d2")(h)
    model = keras.Model(inp, keras.layers.Dense(4, dtype="float64", name="d3")(h))
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(16, 6)), rng.integers(0, 4, size=(16,))


def check_against_exact(seed: int = 0) -> dict[str, float]:
    """Max |HVP - H v| / max |H v| of each mode (float64), over three random v."""
    import keras

    model, x, y = float64_mlp(seed)
    # a Keras loss computes in floatx (float32) unless told otherwise
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    h = exact_hessian(model, loss_fn, x, y)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    fns = hvp_functions(model, loss_fn)
    rng = np.random.default_rng(seed + 1)
    errors = {}
    for mode in MODES[1:]:
        worst = 0.0
        for _ in range(3):
            flat = rng.normal(size=h.shape[0])
            vs, at = [], 0
            for s in shapes:
                vs.append(flat[at : at + int(np.prod(s))].reshape(s))
                at += int(np.prod(s))
            got = np.concatenate([np.ravel(g) for g in fns[mode](x, y, vs)])
            want = h @ flat
            worst = max(worst, float(np.max(abs(got - want)) / np.max(abs(want))))
        errors[mode] = worst
    errors["symmetry"] = float(np.max(abs(h - h.T)) / np.max(abs(h)))
    return errors


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


ENGINE = ("gradcli gradient", "gradcli HVP")  # gradcli's own steps (engine/hvp.py)


def engine_calls(path: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Callable]:
    """gradcli's gradient pass and its Hessian-vector product (the command's default mode) on
    one batch, as `gradcli hessian` runs them: compiled on the engine core, float64 sums."""
    from gradcli.engine.batched import Batch
    from gradcli.engine.hvp import WeightHessian
    from gradcli.engine.objective import build_objective
    from gradcli.load.loaders import load_model

    handle = load_model(path)
    objective = build_objective(
        handle, loss="sparse_categorical_crossentropy", from_logits=True, has_target=True
    )
    engine = WeightHessian(handle, objective)
    batch = [Batch(0, len(x), [x], [y.astype(np.int32)])]
    engine.gradient(lambda: batch)
    vs = [np.random.default_rng(1).normal(size=v.shape) for v in engine.variables]
    return {
        "gradcli gradient": lambda: engine.gradient(lambda: batch),
        "gradcli HVP": lambda: engine.product(lambda: batch, vs),
    }


def measure(name: str, path: Path, shape: tuple, batch: int, repeats: int, calls: int) -> dict:
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(path)
    rng = np.random.default_rng(0)
    xn = rng.normal(size=(batch, *shape)).astype(np.float32)
    yn = rng.integers(0, 10, size=(batch,))
    x, y = tf.constant(xn), tf.constant(yn)
    vs = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in tf_variables(model)]
    fns = hvp_functions(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain = {m: (lambda m=m: fns[m](*((x, y) if m == "gradient" else (x, y, vs)))) for m in MODES}
    work = {**plain, **engine_calls(path, xn, yn)}
    names = list(work)

    def once(mode: str) -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            out = work[mode]()
            if mode in MODES:
                float(tf.reduce_sum(out[0]))  # the result is there
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for mode in names:  # trace and warm up
        once(mode)
    rounds: dict[str, list[float]] = {m: [] for m in names}
    for r in range(repeats):
        shift = r % len(names)
        for mode in names[shift:] + names[:shift]:
            rounds[mode].append(once(mode))
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return {"name": name, "params": params, "rounds": rounds}


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def report(result: dict) -> list[str]:
    rounds = result["rounds"]
    lines = []
    for mode in rounds:
        base = rounds["gradcli gradient" if mode in ENGINE else "gradient"]
        ms = [t * 1e3 for t in rounds[mode]]
        ratio = [t / g for t, g in zip(rounds[mode], base, strict=True)]
        lines.append(
            f"| {result['name']} ({result['params']:,} weights) | {mode} | {spread(ms, '.1f')} "
            f"| {spread(ratio, '.2f')} |"
        )
    return lines


def goal_line(results: list[dict]) -> str:
    parts = []
    for result in results:
        r = result["rounds"]
        ratio = [h / g for h, g in zip(r["gradcli HVP"], r["gradcli gradient"], strict=True)]
        parts.append(f"{result['name']} {spread(ratio, '.2f')}")
    return "gradcli's HVP / its gradient (goal <= 2.5): " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--calls", type=int, default=5, help="calls per timing (median; 5)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--check-only", action="store_true", help="the exactness check only")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "bench"))
    from bench import IMAGE_SHAPE, MLP_FEATURES, build_cnn, build_mlp

    errors = check_against_exact()
    print("exactness (float64 tanh MLP, 224 weights; max |HVP - Hv| / max |Hv|):")
    for mode, err in errors.items():
        print(f"  {mode}: {err:.1e}")
    if max(errors.values()) > 1e-10:
        print("an HVP disagrees with the exact Hessian: not timing it")
        return 1
    if args.check_only:
        return 0

    OUT.mkdir(exist_ok=True)
    models = []
    builds = (("CNN", build_cnn, IMAGE_SHAPE), ("MLP", build_mlp, (MLP_FEATURES,)))
    for name, build, shape in builds:
        path = OUT / f"hvp_{name.lower()}.keras"
        if not path.exists():
            build(path)
        models.append((name, path, shape))
    print(f"\nload average before: {loadavg()}")
    results = [measure(*m, args.batch, args.repeats, args.calls) for m in models]
    print(f"load average after:  {loadavg()}\n")
    print(f"batch {args.batch}, {args.repeats} interleaved rounds, median of {args.calls} calls")
    print("| model | computation | ms per call: median [min-max] | x one gradient |")
    print("|---|---|---|---|")
    for result in results:
        print("\n".join(report(result)))
    print(goal_line(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
