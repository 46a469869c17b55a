"""gradcli benchmark: the cost of `wrt-weights --per-sample` relative to plain `wrt-weights`.

Run with `python bench/persample.py [--quick] [--repeat R] [--no-process]` (`make bench` runs
it after bench/bench.py). Goal (README "Benchmarks"): per-sample norms at most 3x plain
wrt-weights on the bench CNN and MLP (bench/bench.py's `build_cnn` / `build_mlp`, same shapes).

What is measured
- compute, in this process: one pass over N samples as the command does it (batches read,
  one compiled tape call per batch, gradient sums; for --per-sample also the per-sample
  squared norms), after a warm-up pass so tracing is excluded. Three variants, interleaved
  round by round: plain wrt-weights (GradientEngine, its default batch size), --per-sample
  (PerSampleEngine: the fast path where it applies, at its own default batch size), and the
  general fallback (the fast path switched off, so every variable goes through the
  vectorized per-sample Jacobian). Median of R rounds, with min-max.
- whole process (unless --no-process): `gradcli wrt-weights` with and without --per-sample,
  interleaved, median of R runs: what a user waits for, TensorFlow start-up included.

The machine may be busy (other processes share the cores): the load average before and
after is printed; interleaving keeps the ratios fair, absolute times are what they are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import IMAGE_SHAPE, MLP_FEATURES, build_cnn, build_mlp  # noqa: E402

GOAL = 3.0


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}, "
        f"{len(values)} runs)"
    )


def passes(model: Path, x: np.ndarray):
    """The three variants as callables doing one pass over x, each warmed up once."""
    from gradcli.engine import persample
    from gradcli.engine.batched import GradientEngine
    from gradcli.engine.batching import default_batch_size
    from gradcli.engine.objective import build_objective
    from gradcli.engine.sparse import GradientSum
    from gradcli.jobs.wrt_weights import per_sample_rows
    from gradcli.load.loaders import load_model
    from gradcli.present.gradient_noise import PerSampleNorms

    handle = load_model(model)
    objective = build_objective(handle)
    n = len(x)
    plain = GradientEngine(handle, objective, wrt_weights=True, sparse_weights=True)
    default = default_batch_size(handle)

    def run_plain() -> None:
        sums = [GradientSum(tuple(v.shape)) for v in plain.variables]
        for start in range(0, n, default):
            result = plain.gradients([x[start : start + default]])
            for s, g in zip(sums, result.weights, strict=True):
                s.add(g)

    def per_sample_pass(engine) -> tuple:
        rows = per_sample_rows(engine, None, default)

        def run() -> None:
            sums = [GradientSum(tuple(v.shape)) for v in engine.variables]
            norms = PerSampleNorms(n, len(engine.variables))
            for start in range(0, n, rows):
                step = engine.gradients([x[start : start + rows]])
                for s, g in zip(sums, step.weights, strict=True):
                    s.add(g)
                norms.add(start, step.squares, step.objective)

        return run, rows

    fast, fast_rows = per_sample_pass(persample.PerSampleEngine(handle, objective))
    general, general_rows = per_sample_pass(
        persample.PerSampleEngine(handle, objective, general_only=True)
    )
    variants = {
        f"plain wrt-weights (batch {default})": run_plain,
        f"--per-sample, fast path (batch {fast_rows})": fast,
        f"--per-sample, general fallback (batch {general_rows})": general,
    }
    for fn in variants.values():
        fn()  # trace
    return variants


def bench_compute(name: str, model: Path, x: np.ndarray, repeats: int) -> list[str]:
    variants = passes(model, x)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for label, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(times.values())))
    lines = [f"{name}: N={len(x)}, compute only (warm, traced), median of interleaved rounds"]
    for label, values in times.items():
        ratio = statistics.median(values) / base
        goal = ""
        if "fast path" in label:
            goal = f"  goal <= {GOAL:g}x: {'PASS' if ratio <= GOAL else 'MISS'}"
        lines.append(f"  {label:<46} {spread(values)}  x{ratio:.2f}{goal}")
    return lines


def bench_process(name: str, model: Path, x_path: Path, repeats: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRADCLI_INPROCESS", None)
    variants = {"plain wrt-weights": [], "--per-sample": ["--per-sample"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for label, extra in variants.items():
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "gradcli", "wrt-weights", str(model), str(x_path), "-q"]
                + ["--json", *extra],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            times[label].append(time.perf_counter() - t0)
    base = statistics.median(times["plain wrt-weights"])
    lines = [f"{name}: whole process (start-up, load, compute), median of interleaved runs"]
    for label, values in times.items():
        lines.append(f"  {label:<46} {spread(values)}  x{statistics.median(values) / base:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, one round (smoke run)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 5, quick 1)")
    parser.add_argument("--no-process", action="store_true", help="skip whole-process runs")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args(argv)
    repeats = args.repeat or (1 if args.quick else 5)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rng = np.random.default_rng(0)
    jobs = [
        ("bench CNN", work / "ps_cnn.keras", build_cnn, 256 if args.quick else 2048, IMAGE_SHAPE),
        (
            "bench MLP",
            work / "ps_mlp.keras",
            build_mlp,
            512 if args.quick else 8192,
            (MLP_FEATURES,),
        ),
    ]
    report = [
        f"per-sample gradients benchmark, {os.cpu_count()} cores, load average {loadavg()} "
        "at start (other processes may share the machine)"
    ]
    for name, model, build, n, shape in jobs:
        if not model.exists():
            build(model)
        x = rng.random((n, *shape), dtype=np.float32)
        x_path = work / f"{model.stem}_x.npy"
        np.save(x_path, x)
        lines = bench_compute(name, model, x, repeats)
        print("\n".join(lines), flush=True)
        report += lines
        if not args.no_process:
            lines = bench_process(name, model, x_path, max(1, min(repeats, 3)))
            print("\n".join(lines), flush=True)
            report += lines
    report.append(f"load average at the end {loadavg()}")
    print("\n==== summary\n" + "\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
