"""Grad-CAM's cost relative to `wrt-layer` on the same layer (goal: <= 1.1x).

Run with `make bench` or `.venv/bin/python bench/gradcam.py [--n N] [--repeats R]`.
Both go through gradcli's Python API in this process, exactly as the CLI's worker runs them
(a new engine and trace per run, batches of the default size, arrays collected in memory):
`wrt-layer --layer conv2 --class 3` against `wrt-input --method gradcam --layer conv2
--class 3`, same model, same input. A Grad-CAM is the layer gradient plus the activation
from the same tape call, the CAM arithmetic and the resize to the input. Runs are
interleaved (layer, cam, layer, cam, ...) after one warm-up of each, and the ratio is of the
medians, with the spread (min..max) of each and of the pairwise ratios. It writes nothing.
Other processes on the machine move the figures: they are a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# the CNN of bench/bench.py: conv2's output is (N, 13, 13, 64)
from bench import IMAGE_SHAPE, LAYER, build_cnn  # noqa: E402

CLASS = 3
GOAL = 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="images (default 2048)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    args = parser.parse_args()

    from gradcli import api

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.keras"
        build_cnn(path)
        handle = api.load_model(path)
    x = np.random.default_rng(0).random((args.n, *IMAGE_SHAPE), dtype=np.float32)

    def layer() -> None:
        api.wrt_layer(handle, x, LAYER, class_index=CLASS)

    def cam() -> None:
        api.wrt_input(handle, x, method="gradcam", layer=LAYER, class_index=CLASS)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    layer(), cam()  # warm-up: TensorFlow's kernels and caches, the first trace
    t_layer, t_cam = [], []
    for _ in range(args.repeats):
        t_layer.append(timed(layer))
        t_cam.append(timed(cam))
    ratio = statistics.median(t_cam) / statistics.median(t_layer)
    pairs = [c / a for a, c in zip(t_layer, t_cam, strict=True)]
    print(f"gradcam vs wrt-layer on {LAYER}, {args.n} images {IMAGE_SHAPE}, class {CLASS},")
    print(f"in-process, {args.repeats} interleaved runs each (load: {os.getloadavg()[0]:.2f})")
    for name, runs in (("wrt-layer", t_layer), ("gradcam", t_cam)):
        print(
            f"  {name:10s} median {statistics.median(runs):.3f} s "
            f"(min {min(runs):.3f}, max {max(runs):.3f})"
        )
    verdict = "PASS" if ratio <= GOAL else "MISS"
    print(
        f"  ratio of medians {ratio:.3f} (pairwise {min(pairs):.3f}..{max(pairs):.3f}); "
        f"goal <= {GOAL}: {verdict}"
    )


if __name__ == "__main__":
    main()
