"""gradcli benchmark: real architectures (keras.applications) against the hand-written script.

Run with `make bench` (after bench/bench.py) or `.venv/bin/python bench/architectures.py
[--quick] [--repeat R] [--only NAME,...]`. Each architecture is built once with random
weights (weights=None) at a small input into bench-out/ (the cache bench.py keeps ResNet50
in), then `gradcli wrt-input --class 0` on N random images is timed against bench.py's
hand-written script (a `tf.function` batched GradientTape, np.load / np.savez) at the
script's own best batch size, found by an in-process sweep. Whole processes, interleaved
pairs (gradcli, then the script); the goal is the median ratio, printed with its [min-max]
spread (goal: <= 1.00 each), and the results must agree (max|diff|/max|ref| <= 1e-4).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402 - bench/ is on the path now

# name, input side (px), images: small inputs keep a whole process within seconds;
# InceptionV3 needs 75 px at least; ConvNeXtTiny's 7x7 depthwise convolutions make its
# gradients about 20x slower a sample than the others' on this CPU (script and gradcli alike)
ARCHITECTURES = [
    ("DenseNet121", 64, 64),
    ("EfficientNetV2B0", 64, 64),
    ("MobileNetV3Small", 64, 64),
    ("ConvNeXtTiny", 64, 16),
    ("InceptionV3", 75, 64),
    ("ResNet50V2", 64, 64),
]
SWEEP = [4, 8, 16, 32, 64]  # the script's batch sizes tried (on the N images)


def build(name: str, side: int, path: Path) -> None:
    """keras.applications.<name>, random weights (seed 0), side x side x 3, logits out (a
    softmax over random weights saturates: its gradients are about 1e-17) (cached)."""
    if path.exists():
        return
    import keras

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(side, side, 3), classifier_activation=None
    )
    model.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small architecture, one pair")
    parser.add_argument("--repeat", type=int, default=None, help="pairs (default 5, quick 1)")
    parser.add_argument("--only", default=None, help="comma-separated architecture names")
    parser.add_argument("--work", type=Path, default=bench.WORK, help="work directory")
    parser.add_argument(
        "--wait-quiet", type=float, default=None, metavar="S", help="as in bench.py"
    )
    args = parser.parse_args(argv)
    bench.WORK = args.work.resolve()
    bench.WORK.mkdir(parents=True, exist_ok=True)
    if not bench.GRADCLI.exists():
        bench.GRADCLI = ROOT / ".venv" / "bin" / "gradcli"
    os.environ.pop("GRADCLI_INPROCESS", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    bench.QUIET["per_run"] = (
        args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 15)
    )
    bench.QUIET["budget"] = 180.0
    chosen = ARCHITECTURES
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [a for a in ARCHITECTURES if a[0] in wanted]
    elif args.quick:
        chosen = [("MobileNetV3Small", 32, 8)]
    repeats = args.repeat or (1 if args.quick else 5)
    import keras
    import tensorflow as tf

    (bench.WORK / "reference.py").write_text(bench.REFERENCE)
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    res = bench.Results()
    for name, side, n in chosen:
        model = bench.WORK / f"{name.lower()}_{side}_logits.keras"
        x = bench.WORK / f"{name.lower()}_{side}_x.npy"
        build(name, side, model)
        bench.write_random(x, n, (side, side, 3))
        bench.bench_architecture(
            res,
            f"{name} wrt-input {side}x{side}x3",
            model,
            x,
            n,
            ["wrt-input", model, x, "--class", 0],
            "input",
            "0",
            [b for b in SWEEP if b <= n],
            n,
            repeats,
        )
    header = bench.machine_lines(tf.__version__, keras.__version__)
    header.append(
        f"run time:  {time.perf_counter() - t_start:.0f} s; "
        + ", ".join(f"{a} {s}x{s} N={n}" for a, s, n in chosen)
        + f"; {repeats} interleaved pairs each"
    )
    text = bench.summary(res, header, args.quick, (load0, os.getloadavg()[0]))
    (bench.WORK / "summary_architectures.txt").write_text(text + "\n")
    bench.log("\n" + "=" * 100 + "\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
