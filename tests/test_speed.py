"""Speed machinery that must never change results: rows per tape call chosen from the model,
reads and writes overlapping the tape, and the worker started before parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT, npz
from gradcli.engine import batching
from gradcli.io import overlap as pipeline
from gradcli.io.npzfile import NpzStreamWriter
from gradcli.process import supervisor


@pytest.fixture(scope="session")
def speed_models(tmp_path_factory, keras):
    """A small CNN (ReLU, max-pool: a real cache-bound shape), its SavedModel export, a model
    with big activations, and inputs whose N is not a multiple of any batch size."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    d = tmp_path_factory.mktemp("speed")
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="tanh", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(8, 3, activation="tanh", name="conv2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    cnn = keras.Model(inp, keras.layers.Dense(4, name="logits")(h), name="speed_cnn")
    cnn.save(d / "cnn.keras")
    cnn.export(str(d / "cnn_export"), verbose=False)
    big_in = keras.Input((64, 64, 4), name="x")
    big = keras.Model(
        big_in, keras.layers.Conv2D(256, 3, padding="same", name="wide")(big_in), name="big"
    )
    big.save(d / "big.keras")
    np.save(d / "x.npy", rng.uniform(size=(37, 16, 16, 3)).astype(np.float32))
    return {"dir": d, "cnn": d / "cnn.keras", "export": d / "cnn_export", "big": d / "big.keras"}


def _handle(path: Path):
    from gradcli.load.loaders import load_model

    return load_model(path)


# ------------------------------------------------------------------ batch size


def test_rows_per_call_follow_activations_and_stay_bounded():
    budget = 32 << 20
    # the bench CNN (32x32x3, 32/64 channels): 0.21 MiB of activations a sample -> 128 rows,
    # where the tape measured fastest, not the 1,024 of the input-only rule; the bench
    # Transformer (0.27 MiB a sample) -> 128 rows too
    assert batching.rows_for(3072, 218_536, budget) == 128
    assert batching.rows_for(64, 279_048, budget) == 128
    assert batching.rows_for(3072, 0, budget) == 1024  # nothing known: the input rule
    assert batching.rows_for(3072, 218_536, budget, gpu=True) == 1024
    # tiny activations: capped by MAX_ROWS; huge ones: floored at MIN_ROWS
    assert batching.rows_for(8, 100, budget) == batching.MAX_ROWS
    assert batching.rows_for(150_528, 400 << 20, budget) == batching.MIN_ROWS
    # never more input values a call than the input rule allows
    assert batching.rows_for(1 << 21, 4, budget) == 2
    assert batching.rows_for(1 << 23, 4, budget) == 1
    # a deep net of many small layers: at least OP_BYTES of each layer's output a call (the
    # fixed cost of hundreds of operations amortized), past the cache; measured fastest at
    # 16-32 rows (DenseNet121 at 64x64: 15.6 MiB over 428 layers; the cache rule said 4),
    # 32-64 (EfficientNetV2B0 at 64x64: 5.2 MiB over 272 layers; it said 8)
    assert batching.rows_for(12288, 16_336_000, budget, layers=428) == 32
    assert batching.rows_for(12288, 5_437_000, budget, layers=272) == 64
    assert batching.rows_for(12288, 16_336_000, budget) == batching.MIN_ROWS
    # ... never past ACTIVATION_MEMORY a call, and no change where the cache rule gives more
    # (the bench CNN's 7 layers) or the activations are large (ResNet50 at 224: 176 layers)
    big = batching.ACTIVATION_MEMORY // 16
    assert batching.rows_for(12288, big, budget, layers=10_000) == 16
    assert batching.rows_for(3072, 218_536, budget, layers=7) == 128
    assert batching.rows_for(150_528, 148_480_000, budget, layers=176) == batching.MIN_ROWS
    assert batching.rows_for(3072, 218_536, budget, gpu=True, layers=7) == 1024
    previous = batching.MAX_ROWS
    for act in (1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 26):
        rows = batching.rows_for(100, act, budget)
        assert rows & (rows - 1) == 0 and batching.MIN_ROWS <= rows <= previous
        previous = rows


def test_default_batch_size_is_deterministic_and_reads_the_model(speed_models):
    cnn = _handle(speed_models["cnn"])
    export = _handle(speed_models["export"])
    big = _handle(speed_models["big"])
    # activations from the layers' output shapes: input 768 + conv1 1,568 + pool1 392 +
    # conv2 200 + flatten 200 + logits 4 values, float32
    assert batching.activation_bytes(cnn) == 4 * (768 + 14 * 14 * 8 + 7 * 7 * 8 + 5 * 5 * 8 * 2 + 4)
    # the export has no layers: its serving graph's operations give the same order of size
    ratio = batching.activation_bytes(export) / batching.activation_bytes(cnn)
    assert 0.5 < ratio < 2.0, ratio
    assert batching.activation_bytes(big) == 4 * 64 * 64 * (4 + 256)
    # the layers producing them: conv1, pool1, conv2, flatten, logits; the export's graph
    # counts its operations in pairs, the same order
    assert batching.activation_profile(cnn)[1] == 5
    assert 2 <= batching.activation_profile(export)[1] <= 20
    sizes = [batching.default_batch_size(h) for h in (cnn, export, big)]
    assert sizes == [batching.default_batch_size(h) for h in (cnn, export, big)]
    for rows in sizes:
        assert rows & (rows - 1) == 0 and 1 <= rows <= batching.MAX_ROWS
    assert sizes[2] < sizes[0]  # more activations a sample, fewer rows a call
    budget = batching.activation_budget()
    assert 4 << 20 <= budget <= 64 << 20


def test_per_sample_rows_count_the_fast_path_rules_memory(speed_models, keras):
    """--per-sample takes plain wrt-weights' rows a call unless the fast path's rules (conv
    input windows, Gram matrices) or the materialized g_i would pass their budgets; a model
    whose layer shapes are unknown before tracing keeps the 256-row cap."""
    from gradcli.api import _handle as wrap
    from gradcli.engine import ghostnorm
    from gradcli.engine.objective import build_objective
    from gradcli.engine.persample import PerSampleEngine
    from gradcli.jobs import wrt_weights

    def wrap_model(model):
        return wrap(model, False)

    def engine(handle, arrays=False):
        return PerSampleEngine(handle, build_objective(handle), arrays=arrays)

    cnn, big = _handle(speed_models["cnn"]), _handle(speed_models["big"])
    # conv1: 9 offsets x 14x14 positions x 3 channels of windows + 27 x 8 blocks; conv2:
    # 9 x 5x5 x 8 + 72 x 8; the largest layer counts
    assert engine(cnn).fast_path_size() == 9 * 14 * 14 * 3 + 27 * 8
    # the wide conv: 64x64 positions x 9 x 4 windows; its kernel (36 x 256) is materialized
    wide = 9 * 64 * 64 * 4 + 36 * 256
    assert engine(big).fast_path_size() == wide
    assert wrt_weights.per_sample_rows(engine(big), None, 4096) == (
        wrt_weights.FAST_PATH_BUDGET // wide
    )
    assert wrt_weights.per_sample_rows(engine(cnn), None, 128) == 128
    arrays = engine(cnn, arrays=True)
    assert wrt_weights.per_sample_rows(arrays, None, 4096) == (
        wrt_weights.PER_SAMPLE_BUDGET // arrays.per_sample_size()  # 2,601 rows
    )
    keras.utils.set_random_seed(2)
    ids = keras.Input((6,), dtype="int32")
    h = keras.layers.Flatten()(keras.layers.Embedding(50, 4)(ids))
    dense = wrap_model(keras.Model(ids, keras.layers.Dense(3)(keras.layers.Dense(8)(h))))
    assert engine(dense).fast_path_size() == 0  # nothing beyond the activations
    assert wrt_weights.per_sample_rows(engine(dense), None, 1024) == 1024

    # a layer outside any functional graph (as in a subclassed model): shapes unknown
    conv = keras.layers.Conv2D(2, 3)
    conv.build((None, 8, 8, 1))
    assert ghostnorm.row_values(ghostnorm.Slot(SimpleNamespace(layer=conv), "conv", {})) is None
    unknown = engine(cnn)
    unknown.slots.append(ghostnorm.Slot(SimpleNamespace(layer=conv), "conv", {}))
    assert unknown.fast_path_size() is None
    assert wrt_weights.per_sample_rows(unknown, None, 1024) == wrt_weights.PER_SAMPLE_ROWS


def test_methods_prepare_their_rows_off_the_tape_with_the_same_result(speed_models, tf):
    """SmoothGrad's noisy copies and IG's path points are made by Method.prepare (in the
    reader thread when run by a command); made there or inside `attribute`, the result is
    the same, and it matches a plain tape."""
    from gradcli.engine.batched import Batch, GradientEngine
    from gradcli.engine.objective import build_objective
    from gradcli.methods import METHODS, attribute
    from gradcli.methods.common import MethodOptions
    from gradcli.methods.noise_tunnel import smoothgrad_noise

    handle = _handle(speed_models["cnn"])
    engine = GradientEngine(handle, build_objective(handle, class_index=1), wrt_inputs=True)
    x = np.load(speed_models["dir"] / "x.npy")[:3]

    def tape(rows):
        rows = tf.constant(rows)
        with tf.GradientTape() as t:
            t.watch(rows)
            total = tf.reduce_sum(handle.model(rows, training=False)[:, 1])
        return t.gradient(total, rows).numpy().astype(np.float64)

    for name in ("smoothgrad", "integrated"):
        options = MethodOptions(name, samples=4, noise=0.2, seed=3, steps=5)
        plain = Batch(10, 13, [x], [])
        made = Batch(10, 13, [x], [], prepared=METHODS[name].prepare_function()(plain, options))
        got = attribute(engine, made, options, 8).values[0]
        np.testing.assert_array_equal(got, attribute(engine, plain, options, 8).values[0])
        if name == "smoothgrad":
            want = [
                tape(x[i] + smoothgrad_noise(x[i], 10 + i, 0, options)).mean(axis=0)
                for i in range(3)
            ]
        else:
            alphas = (np.arange(5) + 0.5) / 5
            want = [
                x[i] * tape((alphas[:, None, None, None] * x[i]).astype(np.float32)).mean(0)
                for i in range(3)
            ]
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-7)


def test_results_are_the_same_for_every_batch_size(cli, speed_models, tf, tmp_path):
    """wrt-input (vanilla, IG), wrt-layer and wrt-weights at 1, 5, 37 rows and the default all
    match one plain tape over all 37 samples."""
    from conftest import load

    model = load(speed_models["cnn"])
    x = np.load(speed_models["dir"] / "x.npy")
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        y = model(xt, training=False)
        total = tf.reduce_sum(y[:, 2])
    want_input = tape.gradient(total, xt).numpy()
    want_weights = [g.numpy() / len(x) for g in tape.gradient(total, model.trainable_variables)]
    results = {}
    for size in ("1", "5", "37", None):
        b = ["-b", size] if size else []
        tag = size or "default"
        for cmd, extra in (
            ("wrt-input", []),
            ("wrt-input", ["-m", "integrated", "--steps", "8"]),
            ("wrt-layer", ["--layer", "conv2"]),
            ("wrt-weights", []),
        ):
            out = tmp_path / f"{cmd}{len(extra)}-{tag}.npz"
            r = cli(cmd, speed_models["cnn"], speed_models["dir"] / "x.npy", "--class", "2",
                    *extra, *b, "-o", out, "-q")  # fmt: skip
            assert r.code == 0, r.err
            results[(cmd, len(extra), tag)] = npz(out)
    for (cmd, n_extra, tag), arrays in results.items():
        first = results[(cmd, n_extra, "1")]
        for key, value in arrays.items():
            np.testing.assert_allclose(value, first[key], rtol=1e-5, atol=1e-6, err_msg=tag)
        if cmd == "wrt-input" and n_extra == 0:
            np.testing.assert_allclose(arrays["image"], want_input, rtol=1e-5, atol=1e-6)
        if cmd == "wrt-weights":
            for v, want in zip(model.trainable_variables, want_weights, strict=True):
                np.testing.assert_allclose(arrays[v.path], want, rtol=1e-4, atol=1e-6)


def test_jit_pads_the_short_last_batch_and_masks_the_copies_out(cli, speed_models, tf, tmp_path):
    """Under --jit a shorter last batch is padded to the longest (no second XLA compile); the
    copies are out of the objective's sum and dropped from the results: input, layer and
    weight gradients and objective values equal a plain tape's over the 37 real rows."""
    import keras

    from conftest import load
    from gradcli.engine.batched import GradientEngine
    from gradcli.engine.objective import build_objective

    model = load(speed_models["cnn"])
    x = np.load(speed_models["dir"] / "x.npy")  # 37 rows: calls of 16, 16 and 5 (+11 copies)
    front = keras.Model(model.inputs, model.get_layer("conv2").output)
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        a = front(xt, training=False)
        y = model.get_layer("logits")(model.get_layer("flatten")(a))
        total = tf.reduce_sum(y[:, 2])
    want_input, want_layer = (g.numpy() for g in tape.gradient(total, [xt, a]))
    want_weights = [g.numpy() for g in tape.gradient(total, model.trainable_variables)]

    handle = _handle(speed_models["cnn"])
    engine = GradientEngine(
        handle,
        build_objective(handle, class_index=2),
        wrt_inputs=True,
        layers=[handle.find_layer("conv2")],
        wrt_weights=True,
        jit=True,
    )
    steps = [engine.gradients([x[s : s + 16]]) for s in range(0, 37, 16)]
    assert engine.padded_rows == 11
    assert [len(r.objective) for r in steps] == [16, 16, 5]
    np.testing.assert_allclose(np.concatenate([r.objective for r in steps]), y.numpy()[:, 2],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    got_input = np.concatenate([r.inputs[0] for r in steps])
    np.testing.assert_allclose(got_input, want_input, rtol=1e-4, atol=1e-6)
    got_layer = np.concatenate([r.layers[0] for r in steps])
    np.testing.assert_allclose(got_layer, want_layer, rtol=1e-4, atol=1e-6)
    for k, want in enumerate(want_weights):
        got = sum(r.weights[k] for r in steps)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    engine.objective_values([x[:16]])  # the forward function pads to its own longest call
    np.testing.assert_allclose(engine.objective_values([x[32:]]), y.numpy()[32:, 2],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert engine.padded_rows == 22
    # in training mode copies would change batch statistics: never padded
    training = GradientEngine(
        handle, build_objective(handle, class_index=2), wrt_inputs=True, training=True, jit=True
    )
    training.gradients([x[:16]])
    assert len(training.gradients([x[32:]]).inputs[0]) == 5 and training.padded_rows == 0
    # the command: wrt-weights --jit in calls of 16 is the mean over the 37 real rows
    out = tmp_path / "w.npz"
    r = cli("wrt-weights", speed_models["cnn"], speed_models["dir"] / "x.npy", "--class", "2",
            "--jit", "-b", "16", "-o", out, "-q")  # fmt: skip
    assert r.code == 0, r.err
    arrays = npz(out)
    for v, want in zip(model.trainable_variables, want_weights, strict=True):
        np.testing.assert_allclose(arrays[v.path], want / len(x), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ overlap


def test_overlap_writes_the_same_bytes_as_the_sequential_path(
    cli, speed_models, tmp_path, monkeypatch
):
    x = speed_models["dir"] / "x.npy"
    files = {}
    for overlap in ("0", "1"):
        monkeypatch.setenv(pipeline.OVERLAP_VAR, overlap)
        for cmd, extra in (("wrt-input", ["-m", "gradxinput"]), ("wrt-layer", ["-l", "pool1"])):
            out = tmp_path / f"{cmd}-{overlap}.npz"
            r = cli(cmd, speed_models["cnn"], x, *extra, "-b", "4", "-o", out, "-q")
            assert r.code == 0, r.err
            files[(cmd, overlap)] = out.read_bytes()
    for cmd in ("wrt-input", "wrt-layer"):
        assert files[(cmd, "0")] == files[(cmd, "1")], cmd
    # the API collects through the same pipeline
    import gradcli

    monkeypatch.setenv(pipeline.OVERLAP_VAR, "1")
    got = gradcli.wrt_input(str(speed_models["cnn"]), np.load(x), batch_size=3)
    want = npz(tmp_path / "wrt-input-1.npz")
    xs = np.load(x)
    monkeypatch.setenv(pipeline.OVERLAP_VAR, "0")
    plain = gradcli.wrt_input(str(speed_models["cnn"]), xs, batch_size=37)
    np.testing.assert_allclose(got["image"], plain["image"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["image"] * xs, want["image"], rtol=1e-5, atol=1e-7)


def test_prefetch_keeps_order_and_raises_in_the_caller():
    assert list(pipeline.prefetch(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        yield 2
        raise ValueError("disk gone")

    got = []
    with pytest.raises(ValueError, match="disk gone"):
        for item in pipeline.prefetch(broken()):
            got.append(item)
    assert got == [1, 2]
    # a loop left early stops the reader thread
    reader = pipeline.Prefetch(iter(range(10**6)))
    assert next(reader) == 0
    reader.close()
    assert not reader._thread.is_alive()


def test_background_sink_writes_in_order_and_fails_or_aborts_cleanly(tmp_path):
    out = tmp_path / "g.npz"
    rows = [np.full((2, 3), i, np.float32) for i in range(5)]
    sink = pipeline.BackgroundSink(NpzStreamWriter(out, {"a": ((10, 3), "<f4")}))
    for r in rows:
        sink.write("a", r)
    assert not rows[0].flags.writeable  # handed over: changing it now would raise
    assert Path(sink.commit()) == out
    np.testing.assert_array_equal(npz(out)["a"], np.concatenate(rows))
    # an error in the writer thread is raised in the caller, and nothing reaches the path
    before = out.read_bytes()
    sink = pipeline.BackgroundSink(NpzStreamWriter(out, {"a": ((10, 3), "<f4")}))
    sink.write("a", np.zeros((2, 4), np.float32))  # wrong feature shape: fails in the thread
    with pytest.raises(ValueError, match="expected"):
        for _ in range(20):
            sink.write("a", np.zeros((2, 3), np.float32))
            time.sleep(0.01)
        sink.commit()
    sink.abort()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]
    # abort drops what is queued and removes the temp files
    sink = pipeline.BackgroundSink(NpzStreamWriter(out, {"a": ((10, 3), "<f4")}))
    sink.write("a", rows[1])
    sink.abort()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]


# ------------------------------------------------------------------ start-up


def test_prestart_only_for_commands_that_run_a_worker():
    wants = supervisor.wants_worker
    assert wants(["wrt-input", "m.keras", "x.npy"])
    assert wants(["info", "m.keras"])
    assert not wants(["wrt-input", "--help"]) and not wants(["wrt-input", "m", "x", "-h"])
    assert not wants(["--version"]) and not wants([]) and not wants(["nonsense"])
    assert not wants(["wrt-input", "m.keras", "-"])  # stdin is spooled first
    assert supervisor._scan_option(["a", "--onednn", "off"], "--onednn") == "off"
    assert supervisor._scan_option(["a", "--onednn=on"], "--onednn") == "on"


def test_prestarted_worker_without_a_job_goes_silently(monkeypatch):
    monkeypatch.delenv("GRADCLI_INPROCESS", raising=False)
    previous = supervisor.handle_sigterm()
    try:
        supervisor.prestart(["wrt-input", "m.keras", "x.npy"])
        worker = supervisor._prestarted
        assert worker is not None and worker.proc.poll() is None
        supervisor.discard_prestarted()
        assert worker.proc.poll() is not None and supervisor._prestarted is None
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def test_a_parse_error_kills_the_early_worker_and_prints_one_line(speed_models):
    """The worker starts before parsing; a mistake only the parse finds (a cross-field rule:
    the scan before it, cli/prescan.py, reads each option alone) ends the run at once, exit 2,
    one line, and no worker is left (it would outlive gradcli as an orphan)."""
    env = {**os.environ}
    env.pop("GRADCLI_INPROCESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradcli",
            "wrt-input",
            str(speed_models["cnn"]),
            str(speed_models["dir"] / "x.npy"),
            "--baseline",
            "b.npy",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    out, err = proc.communicate(timeout=60)
    took = time.perf_counter() - t0
    assert proc.returncode == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--baseline goes with" in err, err
    assert took < 3.0, took  # no waiting for TensorFlow to import
    marker = f"{supervisor.PARENT_VAR}={proc.pid}".encode()
    workers = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                workers.append(entry.name)
        except OSError:
            continue
    assert workers == []


def test_the_early_worker_is_the_one_that_runs_the_job(speed_models, monkeypatch, capsys):
    """One worker per run: the one started before parsing gets the job (its environment,
    --onednn off included, matches what the parsed job wants)."""
    from gradcli.cli import launch
    from gradcli.load.backend import keras, tf

    monkeypatch.delenv("GRADCLI_INPROCESS", raising=False)
    spawned = []
    spawn = supervisor._spawn

    def counting(env, debug):
        spawned.append(env.get(supervisor.ONEDNN_VAR))
        return spawn(env, debug)

    monkeypatch.setattr(supervisor, "_spawn", counting)
    x = speed_models["dir"] / "x.npy"
    argv = ["wrt-input", str(speed_models["cnn"]), str(x), "--onednn", "off", "--json"]
    previous = supervisor.signal.getsignal(supervisor.signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as done:
            launch.main(argv)
    finally:
        supervisor.signal.signal(supervisor.signal.SIGTERM, previous)
    assert done.value.code == 0, capsys.readouterr().err
    assert spawned == ["0"]
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = keras.saving.load_model(speed_models["cnn"])
    xt = tf.constant(np.load(x))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(model(xt, training=False))
    want = float(np.linalg.norm(tape.gradient(total, xt).numpy().astype(np.float64)))
    assert record["tensors"][0]["l2"] == pytest.approx(want, rel=1e-4)
