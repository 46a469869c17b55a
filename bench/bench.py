"""gradcli benchmark: whole-process speed and memory against hand-written TensorFlow code.

Run with `make bench` (or `.venv/bin/python bench/bench.py [--quick] [--skip-memory]`).
Everything it writes goes to bench-out/ (gitignored); the big memory-test files are deleted
at the end. The goals are the README's (its "Benchmarks" table); this is a benchmark, not a
test: it always exits 0 unless something fails to run, and prints PASS/MISS per goal.

What is measured (the rows and goals of the README's "Benchmarks" table)
- wrt-input vanilla on 16,384 CNN images, whole process (Python + TensorFlow start-up, model
  load, reading the .npy, computing, writing the .npz): `gradcli` versus bench-out/reference.py,
  a hand-written `tf.function` batched GradientTape (batch 256) over the np.load'ed array,
  np.savez'd (goal: <= 0.95x).
- a small job (MLP, N=1), whole process: gradcli versus the same script (goal: <= +0.15 s).
- ResNet50 (keras.applications, random weights, 224x224x3, N=64; built once and cached in
  bench-out/) with wrt-input, and a Transformer encoder (token ids -> Embedding -> 2 blocks
  of self-attention + FFN + LayerNorm -> pooled head) with wrt-layer on the embedding output:
  each against the script at its own best batch size, found by a sweep in this process
  (goal: <= 1.00x).
- gradxinput, SmoothGrad and Integrated Gradients: cost per gradient relative to vanilla's,
  in this process through `gradcli.wrt_input` (the command's code; each job minus the same
  method's 1-sample job, per tape row), interleaved rounds (goal: <= 1.05x).
- wrt-layer and wrt-weights on the CNN, whole process, versus hand-written references (goal:
  within 10%); the per-sample eager loop of the usual examples (goal: gradcli >= 20x faster).
- peak RSS of `gradcli wrt-input` on a 1 GiB input (ru_maxrss of the largest process of the
  tree, taken by /usr/bin/time; and the summed RSS of the tree, sampled every 50 ms).
- `gradcli --help` wall time; a usage error (a misspelled flag, a bad value) against
  `gradcli wrt-input --help` (goal: at most 0.10 s more: no worker is started for it);
  the device TensorFlow computes on.

Ratios are medians of interleaved pairs (gradcli, then the script), printed with their
[min-max] spread.

Other processes may share the machine: before each timed run the benchmark waits (bounded)
for them to calm down, and records the CPU the rest of the machine used during the run
("other load", in cores, from /proc/stat minus our own CPU time). Whole-process times still
vary by about +-10% from run to run, so comparisons are interleaved (5 for wrt-input, 9 rounds
for the methods, 3 for the slower ones, 2 for ResNet50), the goal is judged on the median
ratio, and the CPU-time ratio is in the note column. The methods take 9 rounds because their
goal is 5% and a round's ratio spreads 0.86-1.33 on this machine: the same 16,384-row job took
5.9-7.4 s of CPU from one run to the next, so a median of 5 missed or passed by chance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
MIB = 1 << 20
IMAGE_SHAPE = (32, 32, 3)
RESNET_SHAPE = (224, 224, 3)
TOKENS, VOCAB, EMBED = 64, 2000, "embed"
CLASS = 3
LAYER = "conv2"
MLP_FEATURES = 1024

REFERENCE = r'''"""Hand-written reference (from bench/bench.py): what a user would write by hand.

usage: reference.py input|layer|tail|weights MODEL X.npy OUT.npz [CLASS | LAYER]
Loads the whole array with np.load, runs a tf.function batched GradientTape (batch 256, or
BENCH_BATCH; input_signature with a None batch axis), writes the result with np.savez and
prints one JSON line of phase timings. `layer` splits a chain of layers at LAYER; `tail`
differentiates the model from LAYER's output on (any graph: keras.Model(LAYER.output, out)).
"""
import json
import os
import sys
import time

t0 = time.perf_counter()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH = int(os.environ.get("BENCH_BATCH", "256"))


def main():
    mode, model_path, x_path, out_path = sys.argv[1:5]
    extra = sys.argv[5:]
    t_import = time.perf_counter()
    model = keras.saving.load_model(model_path)
    t_load = time.perf_counter()
    x = np.load(x_path)
    n = len(x)
    spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))
    t_read = time.perf_counter()
    if mode == "input":
        k = int(extra[0]) if extra else None

        @tf.function(input_signature=[spec])
        def step(xb):
            with tf.GradientTape() as tape:
                tape.watch(xb)
                y = model(xb, training=False)
                total = tf.reduce_sum(y[:, k]) if k is not None else tf.reduce_sum(y)
            return tape.gradient(total, xb)

        g = np.empty_like(x)
        for s in range(0, n, BATCH):
            g[s:s + BATCH] = step(x[s:s + BATCH]).numpy()
        arrays = {model.inputs[0].name: g}
    elif mode == "layer":
        layer = model.get_layer(extra[0])
        front = keras.Model(model.inputs, layer.output)  # the model split at the layer
        rest = model.layers[model.layers.index(layer) + 1:]

        @tf.function(input_signature=[spec])
        def step(xb):
            a = front(xb, training=False)
            with tf.GradientTape() as tape:
                tape.watch(a)
                h = a
                for lay in rest:
                    h = lay(h, training=False)
                total = tf.reduce_sum(h)
            return tape.gradient(total, a)

        parts = [step(x[s:s + BATCH]).numpy() for s in range(0, n, BATCH)]
        arrays = {layer.name: np.concatenate(parts)}
    elif mode == "tail":
        layer = model.get_layer(extra[0])
        front = keras.Model(model.inputs, layer.output)
        tail = keras.Model(layer.output, model.outputs)

        @tf.function(input_signature=[spec])
        def step(xb):
            a = front(xb, training=False)
            with tf.GradientTape() as tape:
                tape.watch(a)
                ys = tf.nest.flatten(tail(a, training=False))
                total = tf.add_n([tf.reduce_sum(y) for y in ys])
            return tape.gradient(total, a)

        parts = [step(x[s:s + BATCH]).numpy() for s in range(0, n, BATCH)]
        arrays = {layer.name: np.concatenate(parts)}
    elif mode == "weights":
        variables = [v.value for v in model.trainable_variables]

        @tf.function(input_signature=[spec])
        def step(xb):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(model(xb, training=False))
            return tape.gradient(total, variables)

        sums = [np.zeros(v.shape, np.float64) for v in variables]
        for s in range(0, n, BATCH):
            for acc, g in zip(sums, step(x[s:s + BATCH])):
                acc += g.numpy()
        arrays = {v.path: (acc / n).astype(np.float32)
                  for v, acc in zip(model.trainable_variables, sums)}
    else:
        raise SystemExit(f"unknown mode {mode}")
    t_compute = time.perf_counter()
    np.savez(out_path, **arrays)
    t_save = time.perf_counter()
    print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import,
                      "read_s": t_read - t_load, "compute_s": t_compute - t_read,
                      "save_s": t_save - t_compute}))


main()
'''


# ----------------------------------------------------------------------------- measuring


def _cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return kids


QUIET = {"per_run": 0.0, "budget": 0.0, "waited": 0.0}


def wait_quiet() -> float:
    """Wait (bounded) until the rest of the machine uses under 0.3 cores; return that load."""
    others = 0.0
    limit = min(QUIET["per_run"], QUIET["budget"] - QUIET["waited"])
    t0 = time.perf_counter()
    while limit > 0:
        b0, s0 = _cpu_busy_seconds(), _self_cpu()
        time.sleep(0.5)
        others = max(0.0, (_cpu_busy_seconds() - b0 - (_self_cpu() - s0)) / 0.5)
        if others < 0.3 or time.perf_counter() - t0 >= limit:
            break
    QUIET["waited"] += time.perf_counter() - t0
    return others


class TreeRss:
    """Samples the summed RSS of a process and all its descendants (every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total, todo = 0, [self.pid]
            while todo:
                p = todo.pop()
                total += _rss_kib(p)
                todo += _children(p)
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


@dataclass
class Run:
    cmd: list[str]
    wall: float
    code: int
    cpu: float  # CPU seconds of the process and its waited-for descendants
    maxrss: int  # bytes, largest single process of the tree (kernel)
    other_load: float  # cores used by the rest of the machine meanwhile
    tree_rss: int = 0  # bytes, sampled sum over the tree (when asked)
    stdout: str = ""
    stderr: str = ""


MAXRSS_WRAPPER = """import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run(
    cmd: list[str], *, env: dict | None = None, sample_tree: bool = False, check: bool = True
) -> Run:
    """Run a command; whole-process wall time, CPU, peak RSS (wait4), others' load.

    With `sample_tree`, the command runs under /usr/bin/time (or a tiny Python wrapper):
    Linux starts an exec'ed process's ru_maxrss at the RSS of the process that forked it, so
    the peak must be taken by a small parent, not by this TensorFlow-laden one.
    """
    out_path = WORK / ".stdout"
    err_path = WORK / ".stderr"
    rss_path = WORK / ".maxrss"
    rss_path.unlink(missing_ok=True)
    if sample_tree:
        if Path("/usr/bin/time").exists():
            cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_path, *cmd]
        else:
            wrapper = WORK / "maxrss.py"
            wrapper.write_text(MAXRSS_WRAPPER)
            cmd = [sys.executable, wrapper, rss_path, *cmd]
    wait_quiet()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        busy0 = _cpu_busy_seconds()
        self0 = _self_cpu()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL
        )
        sampler = TreeRss(proc.pid) if sample_tree else None
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        tree = sampler.stop() * 1024 if sampler else 0
        busy = _cpu_busy_seconds() - busy0
        own = _self_cpu() - self0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    maxrss = ru.ru_maxrss
    if sample_tree:
        text = rss_path.read_text().strip().splitlines() if rss_path.exists() else []
        maxrss = int(text[-1]) if text and text[-1].isdigit() else 0
    r = Run(
        [str(c) for c in cmd],
        wall,
        proc.returncode,
        cpu,
        maxrss * 1024,
        max(0.0, (busy - cpu - own) / wall),
        tree,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )
    if check and r.code != 0:
        raise SystemExit(f"command failed (exit {r.code}): {' '.join(r.cmd)}\n{r.stderr[-3000:]}")
    return r


class InProcess:
    """Wall time of a block in this process, with the rest of the machine's load."""

    def __enter__(self) -> InProcess:
        wait_quiet()
        self.busy0 = _cpu_busy_seconds()
        self.self0 = _self_cpu()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        busy = _cpu_busy_seconds() - self.busy0
        self.other_load = max(0.0, (busy - (_self_cpu() - self.self0)) / self.wall)


def log(msg: str) -> None:
    print(msg, flush=True)
    with open(WORK / "bench.log", "a") as f:
        f.write(msg + "\n")


# ----------------------------------------------------------------------------- set-up


def build_cnn(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(IMAGE_SHAPE, name="image")
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(64, 3, activation="relu", name=LAYER)(h)
    h = keras.layers.MaxPooling2D(name="pool2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(128, activation="relu", name="fc1")(h)
    out = keras.layers.Dense(10, name="logits")(h)
    keras.Model(inp, out, name="bench_cnn").save(path)


def build_mlp(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((MLP_FEATURES,), name="features")
    h = keras.layers.Dense(256, activation="relu", name="fc1")(inp)
    out = keras.layers.Dense(10, name="logits")(h)
    keras.Model(inp, out, name="bench_mlp").save(path)


def write_random(path: Path, n: int, shape: tuple[int, ...], chunk_bytes: int = 64 * MIB) -> None:
    """Uniform [0, 1) float32 rows, seed 0, written in chunks through a memory map."""
    rng = np.random.default_rng(0)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *shape))
    rows = max(1, chunk_bytes // (4 * int(np.prod(shape))))
    for s in range(0, n, rows):
        arr[s : s + rows] = rng.random((min(rows, n - s), *shape), dtype=np.float32)
        arr.flush()
    del arr


def npz_member(path: Path, key: str | None = None) -> tuple[str, np.ndarray]:
    """Memory-map one stored member of an .npz (np.load would read it all into memory)."""
    with zipfile.ZipFile(path) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        key = key if key is not None else names[0]
        info = zf.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path) as z:
            return key, z[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        start = (
            info.header_offset
            + 30
            + int.from_bytes(local[26:28], "little")
            + int.from_bytes(local[28:30], "little")
        )
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return key, np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def rel_diff(a: np.ndarray, b: np.ndarray, chunk_rows: int = 8192) -> tuple[float, float]:
    """(max |a - b| / max |b|, cosine similarity), chunked so memory maps stay small."""
    if a.shape != b.shape:
        raise SystemExit(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.ndim == 0:
        a, b = a.reshape(1), b.reshape(1)
    diff = scale = dot = na = nb = 0.0
    for s in range(0, len(a), chunk_rows):
        x = np.asarray(a[s : s + chunk_rows], np.float64)
        y = np.asarray(b[s : s + chunk_rows], np.float64)
        diff = max(diff, float(np.max(np.abs(x - y))) if x.size else 0.0)
        scale = max(scale, float(np.max(np.abs(y))) if y.size else 0.0)
        dot += float(np.vdot(x, y))
        na += float(np.vdot(x, x))
        nb += float(np.vdot(y, y))
    # sqrt of each norm apart: tiny gradients (1e-17) must not underflow the product
    return diff / max(scale, 1e-300), dot / max(np.sqrt(na) * np.sqrt(nb), 1e-300)


def compare_npz(got: Path, want: Path) -> tuple[float, float, list[str]]:
    """Worst relative max-abs difference and cosine over the keys of `want`."""
    with zipfile.ZipFile(want) as zf:
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    with zipfile.ZipFile(got) as zf:
        got_keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    notes = []
    worst, cos = 0.0, 1.0
    for key in keys:
        gk = key if key in got_keys else (got_keys[0] if len(keys) == len(got_keys) == 1 else None)
        if gk is None:
            notes.append(f"key {key!r} missing in {got.name} (has {got_keys})")
            worst = float("inf")
            continue
        if gk != key:
            notes.append(f"key {key!r} is {gk!r} in {got.name}")
        d, c = rel_diff(npz_member(got, gk)[1], npz_member(want, key)[1])
        worst, cos = max(worst, d), min(cos, c)
    return worst, cos, notes


# ----------------------------------------------------------------------------- benchmark


@dataclass
class Row:
    figure: str
    value: str
    goal: str = ""
    verdict: str = ""
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def add(
        self, figure: str, value: str, goal: str = "", ok: bool | None = None, note: str = ""
    ) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append(Row(figure, value, goal, verdict, note))
        extra = f"   goal {goal}: {verdict}" if goal else ""
        log(f"  {figure}: {value}{extra}{'   (' + note + ')' if note else ''}")


def gradcli_cmd(*args: object) -> list[str]:
    return [str(GRADCLI), *[str(a) for a in args]]


def ref_cmd(*args: object) -> list[str]:
    return [sys.executable, str(WORK / "reference.py"), *[str(a) for a in args]]


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.wall)


def cpu_note(g_runs: list[Run], r_runs: list[Run]) -> str:
    """The ratio of median walls, and of CPU seconds (less sensitive to others' load)."""
    median = statistics.median(x.wall for x in g_runs) / statistics.median(x.wall for x in r_runs)
    g, r = min(x.cpu for x in g_runs), min(x.cpu for x in r_runs)
    return f"median-wall ratio {median:.3f}; CPU time ratio {g / r:.3f} ({g:.1f} / {r:.1f} s)"


def load_note(runs: list[Run]) -> str:
    return "other load " + "/".join(f"{r.other_load:.2f}" for r in runs) + " cores"


def bench_help(res: Results, repeats: int, model: Path, x: Path) -> None:
    """--help, and usage errors (a misspelled flag, a bad value) against a command's --help,
    interleaved: a mistake is refused before any worker starts (cli/prescan.py)."""
    log("\n== gradcli --help and usage errors (no TensorFlow import)")
    cases = {
        "--help": gradcli_cmd("--help"),
        "wrt-input --help": gradcli_cmd("wrt-input", "--help"),
        "misspelled flag (--clas 0)": gradcli_cmd("wrt-input", model, x, "--clas", 0),
        "bad value (--class abc)": gradcli_cmd("wrt-input", model, x, "--class", "abc"),
    }
    runs: dict[str, list[Run]] = {k: [] for k in cases}
    for _ in range(max(3, repeats)):
        for label, cmd in cases.items():
            runs[label].append(run(cmd, check=False))
    for label, rs in runs.items():
        want = 0 if label.endswith("--help") else 2
        if any(r.code != want or (want == 2 and len(r.stderr.splitlines()) != 1) for r in rs):
            raise SystemExit(f"{label}: expected exit {want} (one line): {rs[-1].stderr[-500:]}")
    walls = {k: [r.wall for r in rs] for k, rs in runs.items()}
    res.data["help_s"] = walls["--help"]
    res.data["usage_errors_s"] = walls
    wall = statistics.median(walls["--help"])
    res.add(
        "--help wall time (median)",
        f"{wall:.2f} s",
        "< 0.5 s",
        wall < 0.5,
        load_note(runs["--help"]),
    )
    base = walls["wrt-input --help"]
    for label in list(cases)[2:]:
        diffs = [a - b for a, b in zip(walls[label], base, strict=True)]
        med = statistics.median(diffs)
        res.add(
            f"usage error, {label}, minus `wrt-input --help`",
            f"{spread_text(med, min(diffs), max(diffs), '+.2f')} s",
            "<= +0.10 s",
            med <= 0.10,
            f"median {statistics.median(walls[label]):.2f} s; {load_note(runs[label])}",
        )


def bench_startup(
    res: Results, model: Path, one: Path, mlp: Path, mlp_one: Path, repeats: int
) -> tuple[float, float]:
    log("\n== start-up: whole process on 1 sample (Python + TF import, model load, trace)")
    g_runs, r_runs = interleaved(
        gradcli_cmd("wrt-input", mlp, mlp_one, "--class", 0, "-o", WORK / "one_gradcli.npz", "-q"),
        ref_cmd("input", mlp, mlp_one, WORK / "one_ref.npz", 0),
        repeats,
    )
    diffs = [g.wall - r.wall for g, r in zip(g_runs, r_runs, strict=True)]
    extra = statistics.median(diffs)
    res.data["startup_mlp"] = {
        "gradcli": [x.wall for x in g_runs],
        "reference": [x.wall for x in r_runs],
    }
    res.add(
        "small job (MLP, N=1), gradcli (whole process, median)",
        f"{statistics.median(x.wall for x in g_runs):.2f} s",
        note=load_note(g_runs),
    )
    res.add(
        "small job (MLP, N=1), reference (whole process, median)",
        f"{statistics.median(x.wall for x in r_runs):.2f} s",
        note=load_note(r_runs),
    )
    res.add(
        "small job (MLP, N=1), gradcli - reference",
        f"{spread_text(extra, min(diffs), max(diffs), '+.2f')} s",
        "<= +0.15 s",
        extra <= 0.15,
        f"median [min-max] of {repeats} interleaved pairs",
    )
    # the CNN's own start-up (load, trace), subtracted from whole runs to get per-gradient costs
    g_cnn = [
        run(
            gradcli_cmd(
                "wrt-input", model, one, "--class", CLASS, "-o", WORK / "one_gradcli.npz", "-q"
            )
        )
        for _ in range(max(1, min(3, repeats)))
    ]
    g = statistics.median(r.wall for r in g_cnn)
    r = statistics.median(x.wall for x in r_runs)
    res.data["startup"] = {"gradcli": [x.wall for x in g_cnn]}
    res.add(
        "start-up, gradcli wrt-input CNN on 1 sample (median)", f"{g:.2f} s", note=load_note(g_cnn)
    )
    return g, r


def bench_vanilla(
    res: Results, model: Path, x: Path, n: int, repeats: int, startup: tuple[float, float]
) -> float:
    log(f"\n== wrt-input vanilla --class {CLASS}, {n} samples, whole process")
    g_out, r_out = WORK / "vanilla_gradcli.npz", WORK / "vanilla_ref.npz"
    g_runs, r_runs = [], []
    for _ in range(repeats):  # interleaved, so a load spike hits both sides alike
        g_runs.append(run(gradcli_cmd("wrt-input", model, x, "--class", CLASS, "-o", g_out, "-q")))
        r_runs.append(run(ref_cmd("input", model, x, r_out, CLASS)))
    g, r = best(g_runs), best(r_runs)
    phases = json.loads(r.stdout.strip().splitlines()[-1])
    res.data["vanilla_median"] = statistics.median(x.wall for x in g_runs)
    res.data["vanilla"] = {
        "gradcli": [x.wall for x in g_runs],
        "reference": [x.wall for x in r_runs],
        "reference_phases": phases,
    }
    res.add(
        "wrt-input vanilla, gradcli (whole process, best)",
        f"{n / g.wall:,.0f} samples/s ({g.wall:.2f} s)",
        note=load_note(g_runs),
    )
    res.add(
        "wrt-input vanilla, reference (whole process, best)",
        f"{n / r.wall:,.0f} samples/s ({r.wall:.2f} s)",
        note=load_note(r_runs),
    )
    med, lo, hi = pair_ratios(g_runs, r_runs)
    res.add(
        "wrt-input vanilla, time gradcli / reference at batch 256",
        spread_text(med, lo, hi),
        "<= 0.95",
        med <= 0.95,
        f"median [min-max] of {repeats} interleaved pairs; " + cpu_note(g_runs, r_runs),
    )
    gs, rs = g.wall - startup[0], r.wall - startup[1]
    res.data["vanilla"]["steady"] = {"gradcli": gs, "reference": rs}
    if min(gs, rs) > 0.05 * max(g.wall, r.wall):
        res.add(
            "wrt-input vanilla, after start-up (wall - 1-sample wall)",
            f"gradcli {n / gs:,.0f} vs reference {n / rs:,.0f} samples/s, ratio {gs / rs:.3f}",
        )
    else:
        res.add("wrt-input vanilla, after start-up", "n/a (start-up noise exceeds the work)")
    res.add("reference phases (s)", ", ".join(f"{k[:-2]} {v:.2f}" for k, v in phases.items()))
    diff, cos, notes = compare_npz(g_out, r_out)
    res.data["vanilla"]["rel_diff"] = diff
    res.add(
        "wrt-input vanilla, gradcli vs reference max|diff|/max|ref|",
        f"{diff:.1e} (cosine {cos:.8f})",
        "<= 1e-4",
        diff <= 1e-4,
        "; ".join(notes),
    )
    return g.wall


def bench_inprocess(
    res: Results,
    model_path: Path,
    x_path: Path,
    n_fwd: int,
    n_eager: int,
    gradcli_rate: float,
    gradcli_steady_rate: float,
) -> None:
    import keras
    import tensorflow as tf

    log(f"\n== in this process: forward / batched tape on {n_fwd} samples, eager loop on {n_eager}")
    model = keras.saving.load_model(model_path)
    x = np.load(x_path, mmap_mode="r")
    xs = np.ascontiguousarray(x[:n_fwd])
    spec = tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32)

    @tf.function(input_signature=[spec])
    def forward(xb):
        return model(xb, training=False)

    @tf.function(input_signature=[spec])
    def grad(xb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            total = tf.reduce_sum(model(xb, training=False)[:, CLASS])
        return tape.gradient(total, xb)

    def rate(fn) -> tuple[float, float]:
        fn(xs[:256]).numpy()  # trace and warm up
        best_wall, load = float("inf"), 0.0
        for _ in range(2):
            with InProcess() as t:
                for s in range(0, n_fwd, 256):
                    fn(xs[s : s + 256]).numpy()
            if t.wall < best_wall:
                best_wall, load = t.wall, t.other_load
        return n_fwd / best_wall, load

    fwd_rate, fwd_load = rate(forward)
    grad_rate, grad_load = rate(grad)
    res.data["inprocess"] = {"forward": fwd_rate, "grad": grad_rate}
    res.add(
        "forward, tf.function batch 256",
        f"{fwd_rate:,.0f} samples/s",
        note=f"other load {fwd_load:.2f} cores",
    )
    res.add(
        "input gradient, tf.function batched tape batch 256",
        f"{grad_rate:,.0f} samples/s",
        note=f"other load {grad_load:.2f} cores",
    )
    res.add(
        "gradient / forward cost ratio", f"{fwd_rate / grad_rate:.2f}x", note="theory: about 2-3x"
    )

    def eager_one(i: int) -> np.ndarray:
        xi = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            y = model(xi)[0, CLASS]
        return tape.gradient(y, xi).numpy()

    eager_one(0)
    eager_one(1)
    with InProcess() as t:
        for i in range(n_eager):
            eager_one(i)
    eager_rate = n_eager / t.wall
    res.data["eager"] = eager_rate
    res.add(
        f"per-sample eager loop ({n_eager} samples)",
        f"{eager_rate:,.1f} samples/s",
        note=f"other load {t.other_load:.2f} cores",
    )
    speed = gradcli_rate / eager_rate
    res.add(
        "speedup gradcli (whole process) over eager loop", f"{speed:.1f}x", ">= 20x", speed >= 20
    )
    if gradcli_steady_rate > 0:
        res.add(
            "speedup gradcli (after start-up) over eager loop",
            f"{gradcli_steady_rate / eager_rate:.1f}x",
        )


def bench_methods(
    res: Results,
    model: Path,
    x: Path,
    n_full: int,
    sg_samples: int,
    ig_steps: int,
    repeats: int,
) -> None:
    """Cost per gradient of each method relative to vanilla's, in this process: the
    command's own code (`gradcli.wrt_input`, what the CLI's worker runs, the reader thread
    included; the arrays kept in memory instead of written), every method on the same
    number of tape rows as vanilla (n_full): gradxinput on n_full samples, SmoothGrad on
    n_full / copies, IG on n_full / steps. A method's cost = (its job - its 1-sample job) /
    the rows between them, so that tracing (each call compiles its own tape) cancels. Rounds
    interleave vanilla and every method (each round starting with the next one); each
    method is judged against its round's vanilla.
    (Whole-process walls minus a start-up spread these ratios 0.70-1.51 within one run: the
    4-5 s start-up and writing 200 MB are each larger than the difference measured.)"""
    import gradcli

    log(f"\n== methods: cost per gradient relative to vanilla ({n_full} tape rows each)")
    methods = (
        ("vanilla", 1, {}),
        ("gradxinput", 1, {}),
        ("smoothgrad", sg_samples, {"samples": sg_samples, "seed": 0}),
        ("integrated", ig_steps, {"steps": ig_steps}),
    )
    handle = gradcli.load_model(model)
    xs = np.load(x, mmap_mode="r")

    def job(method: str, rows: int, options: dict) -> float:
        gc.collect()  # the previous job's arrays are freed before, not during, this one
        with InProcess() as t:
            gradcli.wrt_input(handle, xs[:rows], class_index=CLASS, method=method, **options)
        return t.wall

    job("vanilla", 1, {})  # the first call pays for what every later one reuses
    costs: dict[str, list[float]] = {m: [] for m, _, _ in methods}
    for r in range(repeats):
        for method, copies, options in methods[r % 4 :] + methods[: r % 4]:  # each goes first
            n_sub = max(1, n_full // copies)
            one = job(method, 1, options)
            full = job(method, n_sub, options)
            costs[method].append((full - one) / ((n_sub - 1) * copies))
    vanilla = costs["vanilla"]
    res.add(
        "vanilla cost per gradient (in process, median)",
        f"{statistics.median(vanilla) * 1e3:.3f} ms",
        note=f"{n_full} gradients; spread {min(vanilla) * 1e3:.3f}-{max(vanilla) * 1e3:.3f} ms",
    )
    for method, copies, _ in methods[1:]:
        n_sub = max(1, n_full // copies)
        ratios = [c / v for c, v in zip(costs[method], vanilla, strict=True)]
        med = statistics.median(ratios)
        res.data[method] = {"costs": costs[method], "ratios": ratios}
        res.add(
            f"{method} cost per gradient (in process, median)",
            f"{statistics.median(costs[method]) * 1e3:.3f} ms",
            note=f"{n_sub}x{copies} gradients",
        )
        res.add(
            f"{method} / vanilla cost per gradient",
            spread_text(med, min(ratios), max(ratios)),
            "<= 1.05",
            med <= 1.05,
            f"median [min-max] of {repeats} rounds, each against its round's vanilla run",
        )


def bench_layer_weights(res: Results, model: Path, x: Path, n: int, repeats: int) -> None:
    for label, args, ref_args, out in (
        (
            f"wrt-layer --layer {LAYER}",
            ["wrt-layer", model, x, "--layer", LAYER],
            ["layer", model, x, WORK / "layer_ref.npz", LAYER],
            WORK / "layer_gradcli.npz",
        ),
        (
            "wrt-weights",
            ["wrt-weights", model, x],
            ["weights", model, x, WORK / "weights_ref.npz"],
            WORK / "weights_gradcli.npz",
        ),
    ):
        log(f"\n== {label}, {n} samples, whole process")
        g_runs, r_runs = [], []
        for _ in range(repeats):
            g_runs.append(run(gradcli_cmd(*args, "-o", out, "-q")))
            r_runs.append(run(ref_cmd(*ref_args)))
        g, r = best(g_runs), best(r_runs)
        med, lo, hi = pair_ratios(g_runs, r_runs)
        key = label.split()[0]
        res.data[key] = {"gradcli": [x.wall for x in g_runs], "reference": [x.wall for x in r_runs]}
        res.add(
            f"{label}, gradcli (whole process, best)",
            f"{n / g.wall:,.0f} samples/s ({g.wall:.2f} s)",
            note=load_note(g_runs),
        )
        res.add(
            f"{label}, reference (whole process, best)",
            f"{n / r.wall:,.0f} samples/s ({r.wall:.2f} s)",
            note=load_note(r_runs),
        )
        res.add(
            f"{label}, time gradcli / reference",
            spread_text(med, lo, hi),
            "<= 1.10",
            med <= 1.10,
            f"median [min-max] of {repeats} interleaved pairs; " + cpu_note(g_runs, r_runs),
        )
        diff, cos, notes = compare_npz(out, Path(ref_args[3]))
        res.add(
            f"{label}, max|diff|/max|ref|",
            f"{diff:.1e} (cosine {cos:.8f})",
            "<= 1e-4",
            diff <= 1e-4,
            "; ".join(notes),
        )


def pair_ratios(g_runs: list[Run], r_runs: list[Run]) -> tuple[float, float, float]:
    """Median, min and max of the ratios of interleaved pairs (gradcli run i / reference run i)."""
    ratios = [g.wall / r.wall for g, r in zip(g_runs, r_runs, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def spread_text(median: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    return f"{median:{fmt}} [{lo:{fmt}}-{hi:{fmt}}]"


def interleaved(
    g_cmd: list[str], r_cmd: list[str], repeats: int, r_env: dict | None = None
) -> tuple[list[Run], list[Run]]:
    """gradcli and the reference alternating, so a load spike hits both sides alike."""
    g_runs, r_runs = [], []
    for _ in range(repeats):
        g_runs.append(run(g_cmd))
        r_runs.append(run(r_cmd, env=None if r_env is None else {**os.environ, **r_env}))
    return g_runs, r_runs


def build_resnet(path: Path) -> None:
    """keras.applications.ResNet50, random weights, 224x224x3 (built once, cached)."""
    if path.exists():
        return
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=RESNET_SHAPE)
    model.save(path)


def build_transformer(path: Path) -> None:
    """Token ids -> Embedding -> 2 encoder blocks (self-attention + FFN, residual, LayerNorm)
    -> mean pool -> 2 logits."""
    if path.exists():
        return
    import keras

    keras.utils.set_random_seed(0)
    d, heads, ffn = 64, 4, 128
    ids = keras.Input((TOKENS,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, d, name=EMBED)(ids)
    for i in range(2):
        a = keras.layers.MultiHeadAttention(heads, d // heads, name=f"mha{i}")(x, x)
        x = keras.layers.LayerNormalization(name=f"ln{i}a")(keras.layers.Add()([x, a]))
        f = keras.layers.Dense(ffn, activation="gelu", name=f"ffn{i}a")(x)
        f = keras.layers.Dense(d, name=f"ffn{i}b")(f)
        x = keras.layers.LayerNormalization(name=f"ln{i}b")(keras.layers.Add()([x, f]))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    out = keras.layers.Dense(2, name="head")(x)
    keras.Model(ids, out, name="bench_transformer").save(path)


def hand_step(model, mode: str, spec, extra: str | None):
    """The reference script's tape, in this process (for the batch-size sweep)."""
    import keras
    import tensorflow as tf

    if mode == "input":
        k = int(extra)

        @tf.function(input_signature=[spec])
        def step(xb):
            with tf.GradientTape() as tape:
                tape.watch(xb)
                total = tf.reduce_sum(model(xb, training=False)[:, k])
            return tape.gradient(total, xb)

        return step
    layer = model.get_layer(extra)
    front = keras.Model(model.inputs, layer.output)
    tail = keras.Model(layer.output, model.outputs)

    @tf.function(input_signature=[spec])
    def tail_step(xb):
        a = front(xb, training=False)
        with tf.GradientTape() as tape:
            tape.watch(a)
            total = tf.add_n([tf.reduce_sum(y) for y in tf.nest.flatten(tail(a, training=False))])
        return tape.gradient(total, a)

    return tail_step


def sweep_batch(
    model_path: Path, x_path: Path, mode: str, extra: str, sizes: list[int], rows: int
) -> tuple[int, dict[int, float]]:
    """The hand-written tape's fastest batch size on the first `rows` samples (in this
    process, after a warm-up call per size; best of 2 interleaved rounds)."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path)
    x = np.ascontiguousarray(np.load(x_path, mmap_mode="r")[:rows])
    spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))
    step = hand_step(model, mode, spec, extra)
    for b in sizes:
        step(x[:b]).numpy()
    times: dict[int, float] = {b: float("inf") for b in sizes}
    for _ in range(2):
        for b in sizes:
            with InProcess() as t:
                for s in range(0, rows, b):
                    step(x[s : s + b]).numpy()
            times[b] = min(times[b], t.wall)
    del model, step
    keras.backend.clear_session()
    return min(times, key=times.get), times


def bench_architecture(
    res: Results,
    label: str,
    model: Path,
    x: Path,
    n: int,
    gradcli_args: list,
    ref_mode: str,
    ref_extra: str,
    sizes: list[int],
    sweep_rows: int,
    repeats: int,
) -> None:
    """A real architecture: the hand-written script at its best batch size (a sweep) against
    gradcli at its default, whole process, interleaved."""
    log(f"\n== {label}, {n} samples, whole process; reference at its best batch size")
    best_b, times = sweep_batch(model, x, ref_mode, ref_extra, sizes, sweep_rows)
    sweep = ", ".join(f"{b}: {t:.2f} s" for b, t in times.items())
    key = label.split()[0].lower()
    g_out, r_out = WORK / f"{key}_gradcli.npz", WORK / f"{key}_ref.npz"
    g_runs, r_runs = interleaved(
        gradcli_cmd(*gradcli_args, "-o", g_out, "-q"),
        ref_cmd(ref_mode, model, x, r_out, ref_extra),
        repeats,
        r_env={"BENCH_BATCH": str(best_b)},
    )
    med, lo, hi = pair_ratios(g_runs, r_runs)
    res.data[key] = {
        "gradcli": [r.wall for r in g_runs],
        "reference": [r.wall for r in r_runs],
        "reference_batch": best_b,
        "sweep": times,
    }
    res.add(
        f"{label}: hand-written sweep ({sweep_rows} samples)",
        f"best batch {best_b}",
        note=sweep,
    )
    res.add(
        f"{label}, gradcli (whole process, median)",
        f"{statistics.median(r.wall for r in g_runs):.2f} s",
        note=load_note(g_runs),
    )
    res.add(
        f"{label}, reference at batch {best_b} (whole process, median)",
        f"{statistics.median(r.wall for r in r_runs):.2f} s",
        note=load_note(r_runs),
    )
    res.add(
        f"{label}, time gradcli / reference at its best batch",
        spread_text(med, lo, hi),
        "<= 1.00",
        med <= 1.00,
        f"median [min-max] of {repeats} interleaved pairs; " + cpu_note(g_runs, r_runs),
    )
    diff, cos, notes = compare_npz(g_out, r_out)
    res.add(
        f"{label}, max|diff|/max|ref|",
        f"{diff:.1e} (cosine {cos:.8f})",
        "<= 1e-4",
        diff <= 1e-4,
        "; ".join(notes),
    )


def bench_memory(res: Results, rows: int) -> None:
    size = rows * MLP_FEATURES * 4
    log(
        f"\n== memory: wrt-input on a {size / GIB:.3g} GiB input ({rows} x {MLP_FEATURES} "
        f"float32), MLP"
    )
    mlp, big = WORK / "mlp.keras", WORK / "big.npy"
    g_out, r_out = WORK / "big_out.npz", WORK / "big_ref.npz"
    build_mlp(mlp)
    t0 = time.perf_counter()
    write_random(big, rows, (MLP_FEATURES,))
    log(f"  (input written in {time.perf_counter() - t0:.1f} s)")
    try:
        g = run(gradcli_cmd("wrt-input", mlp, big, "-o", g_out, "-q"), sample_tree=True)
        limit = 1.25 * GIB
        res.data["memory"] = {
            "input_bytes": size,
            "gradcli_maxrss": g.maxrss,
            "gradcli_tree_rss": g.tree_rss,
            "gradcli_wall": g.wall,
        }
        goal = "< 1.25 GiB" if size >= GIB else "(goal is for 1 GiB)"
        res.add(
            "peak RSS, gradcli wrt-input (largest process, wait4)",
            f"{g.maxrss / GIB:.3f} GiB",
            goal,
            g.maxrss < limit if size >= GIB else None,
            f"{rows / g.wall:,.0f} samples/s, {g.wall:.1f} s",
        )
        res.add(
            "peak RSS, gradcli process tree (sampled sum, 50 ms)",
            f"{g.tree_rss / GIB:.3f} GiB",
            goal,
            g.tree_rss < limit if size >= GIB else None,
            "parent CLI + worker",
        )
        r = run(ref_cmd("input", mlp, big, r_out), sample_tree=True)
        res.data["memory"].update(reference_maxrss=r.maxrss, reference_wall=r.wall)
        res.add(
            "peak RSS, reference (np.load whole array, np.savez)",
            f"{r.maxrss / GIB:.3f} GiB",
            note=f"{rows / r.wall:,.0f} samples/s, {r.wall:.1f} s",
        )
        # spot-check the big result: first, middle and last rows
        _, a = npz_member(g_out)
        _, b = npz_member(r_out)
        k = min(4096, rows)
        idx = [slice(0, k), slice(rows // 2, rows // 2 + k), slice(rows - k, rows)]
        worst = max(rel_diff(a[s], b[s])[0] for s in idx)
        del a, b
        res.add(
            f"{size / GIB:.3g} GiB result, gradcli vs reference (3 x 4096 rows)",
            f"{worst:.1e}",
            "<= 1e-4",
            worst <= 1e-4,
        )
    finally:
        for p in (big, g_out, r_out):
            p.unlink(missing_ok=True)
        for p in WORK.glob(".big_out.npz.*"):
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- report


def machine_lines(tf_version: str, keras_version: str) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = (
            next(
                int(line.split()[1])
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
            * 1024
            / GIB
        )
    except (OSError, StopIteration):
        mem = float("nan")
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "gradcli"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit += " (gradcli/ modified)" if dirty else ""
    except OSError:
        commit = "?"
    version = subprocess.run(
        gradcli_cmd("--version"), capture_output=True, text=True
    ).stdout.strip()
    return [
        f"date:      {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine:   {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{mem:.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"software:  Python {platform.python_version()}, TensorFlow {tf_version}, "
        f"Keras {keras_version}, {version}, commit {commit}",
        f"oneDNN:    TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}",
        f"device:    {device_line()}",
    ]


def device_line() -> str:
    """Where TensorFlow computes: a GPU when one is visible (used with no flag), else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            try:
                names.append(
                    tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
                )
            except (ValueError, RuntimeError):
                names.append(gpu.name)
        return "GPU: " + ", ".join(names) + " (TensorFlow uses it by default)"
    return f"CPU only ({len(os.sched_getaffinity(0))} cores usable), no GPU visible"


def summary(res: Results, header: list[str], quick: bool, load: tuple) -> str:
    w1 = max(len(r.figure) for r in res.rows)
    w2 = max(len(r.value) for r in res.rows)
    w3 = max(len(r.goal) for r in res.rows)
    w4 = 6
    lines = [
        "gradcli benchmark"
        + (" (--quick: smoke sizes, figures not representative)" if quick else ""),
        *header,
        f"load avg:  start {load[0]:.2f}, end {load[1]:.2f} (1 min); each timed run "
        f"waited up to {QUIET['per_run']:.0f} s for the rest of the machine to use < 0.3 "
        f"cores (waited {QUIET['waited']:.0f} s in all); 'other load' = cores the rest "
        f"of the machine used during a run",
        "",
    ]
    lines.append(f"{'figure':<{w1}}  {'value':<{w2}}  {'goal':<{w3}}  {'result':<{w4}}  note")
    lines.append(f"{'-' * w1}  {'-' * w2}  {'-' * w3}  {'-' * w4}  ----")
    for r in res.rows:
        lines.append(
            f"{r.figure:<{w1}}  {r.value:<{w2}}  {r.goal:<{w3}}  {r.verdict:<{w4}}  "
            f"{r.note}".rstrip()
        )
    missed = [r.figure for r in res.rows if r.verdict == "MISS"]
    passed = sum(r.verdict == "PASS" for r in res.rows)
    lines += [
        "",
        f"goals: {passed} PASS, {len(missed)} MISS" + (": " + "; ".join(missed) if missed else ""),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

WORK = ROOT / "bench-out"
GRADCLI = Path(sys.executable).parent / "gradcli"


def main(argv: list[str] | None = None) -> int:
    global WORK, GRADCLI
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a fast smoke run (figures not representative)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1 GiB memory test")
    parser.add_argument(
        "--skip-architectures", action="store_true", help="skip the ResNet50 and Transformer runs"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per whole-process comparison (default 5, 3 for the slower ones; quick 1)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="S",
        help="before each timed run wait up to S seconds for other processes "
        "to calm down (default 15, quick 0; at most 180 s in all)",
    )
    parser.add_argument("--work", type=Path, default=WORK, help="work directory (bench-out/)")
    args = parser.parse_args(argv)

    WORK = args.work.resolve()
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "bench.log").unlink(missing_ok=True)
    if not GRADCLI.exists():
        GRADCLI = ROOT / ".venv" / "bin" / "gradcli"
    if not GRADCLI.exists():
        found = shutil.which("gradcli")
        if not found:
            raise SystemExit("gradcli executable not found (make install)")
        GRADCLI = Path(found)
    os.environ.pop("GRADCLI_INPROCESS", None)  # the benchmark is of the real CLI

    quick = args.quick
    n = 2048 if quick else 16384
    n_eager = 64 if quick else 256
    n_fwd = 1024 if quick else 4096
    n_resnet = 8 if quick else 64
    n_tokens = 256 if quick else 4096
    big_rows = (64 * MIB if quick else GIB) // (MLP_FEATURES * 4)
    repeats = args.repeat or (1 if quick else 5)
    few = args.repeat or (1 if quick else 3)  # the slower comparisons
    rounds = args.repeat or (1 if quick else 9)  # the method costs (see the docstring)
    sg_samples, ig_steps = 32, 64

    QUIET["per_run"] = args.wait_quiet if args.wait_quiet is not None else (0 if quick else 15)
    QUIET["budget"] = 180.0
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    log(f"gradcli benchmark: {GRADCLI}, work dir {WORK}, load avg {load0:.2f}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as gradcli sets it for itself
    import keras
    import tensorflow as tf

    (WORK / "reference.py").write_text(REFERENCE)
    model, x = WORK / "cnn.keras", WORK / "x.npy"
    one = WORK / "x1.npy"
    mlp, mlp_one = WORK / "mlp.keras", WORK / "mlp1.npy"
    build_cnn(model)
    build_mlp(mlp)
    write_random(x, n, IMAGE_SHAPE)
    write_random(mlp_one, 1, (MLP_FEATURES,))
    xm = np.load(x, mmap_mode="r")
    np.save(one, np.ascontiguousarray(xm[:1]))
    del xm
    log(f"model {model.name} (seed 0), input {x.name} {(n, *IMAGE_SHAPE)} float32")

    res = Results()
    bench_help(res, repeats, model, one)
    startup = bench_startup(res, model, one, mlp, mlp_one, repeats)
    vanilla_wall = bench_vanilla(res, model, x, n, repeats, startup)
    work = vanilla_wall - startup[0]
    steady = n / work if work > 0.05 * vanilla_wall else 0.0
    bench_inprocess(res, model, x, n_fwd, n_eager, n / vanilla_wall, steady)
    bench_methods(res, model, x, n, sg_samples, ig_steps, rounds)
    bench_layer_weights(res, model, x, n, few)
    if args.skip_architectures:
        res.add("ResNet50 and Transformer", "skipped (--skip-architectures)")
    else:
        resnet, rx = WORK / "resnet50.keras", WORK / "resnet_x.npy"
        build_resnet(resnet)  # cached: about 100 MB, built once
        write_random(rx, n_resnet, RESNET_SHAPE)
        bench_architecture(
            res,
            "ResNet50 wrt-input 224x224x3",
            resnet,
            rx,
            n_resnet,
            ["wrt-input", resnet, rx, "--class", CLASS],
            "input",
            str(CLASS),
            [1, 4, 16] if not quick else [1, 4],
            16 if not quick else 8,
            max(1, few - 1),
        )
        tr, tx = WORK / "transformer.keras", WORK / "tokens.npy"
        build_transformer(tr)
        np.save(tx, np.random.default_rng(0).integers(0, VOCAB, (n_tokens, TOKENS), np.int32))
        bench_architecture(
            res,
            f"Transformer wrt-layer --layer {EMBED}",
            tr,
            tx,
            n_tokens,
            ["wrt-layer", tr, tx, "--layer", EMBED],
            "tail",
            EMBED,
            [32, 128, 512],
            min(n_tokens, 1024),
            few,
        )
    if args.skip_memory:
        res.add("memory test", "skipped (--skip-memory)")
    else:
        bench_memory(res, big_rows)

    load1 = os.getloadavg()[0]
    header = machine_lines(tf.__version__, keras.__version__)
    header.append(
        f"run time:  {time.perf_counter() - t_start:.0f} s; sizes: {n} images "
        f"32x32x3 (CNN), eager subset {n_eager}, ResNet50 {n_resnet} images, Transformer "
        f"{n_tokens} x {TOKENS} tokens; ratios are medians [min-max] of interleaved runs "
        f"({repeats} for wrt-input and the methods, {few} for the others)"
    )
    text = summary(res, header, quick, (load0, load1))
    (WORK / "summary.txt").write_text(text + "\n")
    (WORK / "results.json").write_text(
        json.dumps(
            {"quick": quick, "rows": [r.__dict__ for r in res.rows], "data": res.data},
            indent=1,
            default=float,
        )
    )
    log("\n" + "=" * 100 + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
