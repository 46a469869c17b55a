"""Untrusted model and input files: nothing read, written or run, memory bounded; no false refusal.

Every hostile file here is built for real (TensorFlow, tf_keras, Keras, h5py, zipfile) the way
an attacker would, small, once per session. Each attack checks: the marker file is never
created, no local (secret) content reaches any output, exit 3 with a message naming the op,
dataset or size, and, where it matters, the peak memory of the real process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, npz

SECRET = "TOPSECRET-4242"
GiB = 1 << 30


def run_measured(*args: str, timeout: int = 180) -> tuple[int, str, str, int]:
    """`python -m gradcli ARGS` as a real process; also its peak RSS (bytes, worker included)."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps([p.returncode, p.stdout, p.stderr, peak]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRADCLI_INPROCESS"}
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "gradcli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    code, out, err, peak = json.loads(proc.stdout)
    return code, out, err, peak


def assert_refused(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 3, err
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in line, line
    assert SECRET not in out and SECRET not in err


# ------------------------------------------------------------------ hostile SavedModels


def _module_savedmodel(tf, path: Path, side=None, extra=None) -> None:
    """A tf.Module y = tanh(x @ w + b) * side(x), 3 -> 2, with `side` holding the attack."""

    class Model(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2), name="w")
            self.b = tf.Variable(np.array([0.1, -0.2], np.float32), name="b")
            if extra is not None:
                extra(self)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            y = tf.tanh(tf.matmul(x, self.w) + self.b)
            out = None if side is None else side(self, x)
            return y if out is None else y * tf.cast(out, tf.float32)

    model = Model()
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})


def _families(tf, secret: Path, marker: str) -> dict:
    """One real attack per refused op family: (side, extra, the op the message must name)."""

    def table(self):
        self.t = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                str(secret),
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            -1,
        )

    def read_bytes(path):
        raw = tf.io.decode_raw(tf.io.read_file(path), tf.uint8)
        return tf.reduce_sum(tf.cast(raw, tf.float32))

    return {
        "write_file": (
            lambda s, x: (tf.io.write_file(marker, "pwned"), None)[1],
            None,
            "WriteFile",
        ),
        "read_file": (lambda s, x: read_bytes(str(secret)), None, "ReadFile"),
        "matching_files": (
            lambda s, x: tf.size(tf.io.matching_files("/etc/*")),
            None,
            "MatchingFiles",
        ),
        "file_reader": (
            lambda s, x: (tf.raw_ops.WholeFileReaderV2(), None)[1],
            None,
            "WholeFileReaderV2",
        ),
        "dataset_reader": (
            lambda s, x: tf.data.TextLineDataset(str(secret)).reduce(
                tf.constant(0, tf.int64), lambda a, _: a + 1
            ),
            None,
            "TextLineDataset",
        ),
        "file_table": (
            lambda s, x: s.t.lookup(tf.constant(SECRET)) + 2,
            table,
            "InitializeTableFromTextFileV2",
        ),
        "py_function": (
            lambda s, x: tf.py_function(lambda: 1.0, [], tf.float32),
            None,
            "EagerPyFunc",
        ),
        "collective": (
            lambda s, x: tf.reduce_sum(
                tf.raw_ops.CollectiveReduceV2(
                    input=x,
                    group_size=1,
                    group_key=1,
                    instance_key=1,
                    ordering_token=[],
                    merge_op="Add",
                    final_op="Id",
                )
            ),
            None,
            "CollectiveReduceV2",
        ),
        "summary_writer": (
            lambda s, x: (
                tf.raw_ops.WriteScalarSummary(
                    writer=tf.raw_ops.SummaryWriter(),
                    step=tf.constant(0, tf.int64),
                    tag="t",
                    value=tf.reduce_sum(x),
                ),
                None,
            )[1],
            None,
            "SummaryWriter",
        ),
        "debug_writer": (
            lambda s, x: tf.reduce_sum(
                tf.raw_ops.DebugIdentityV2(input=x, debug_urls=["file://" + marker])
            ),
            None,
            "DebugIdentityV2",
        ),
        "save_v2": (
            lambda s, x: (
                tf.raw_ops.SaveV2(
                    prefix=marker, tensor_names=["x"], shape_and_slices=[""], tensors=[x]
                ),
                None,
            )[1],
            None,
            "SaveV2",
        ),
        "immutable_const": (
            lambda s, x: tf.reduce_sum(
                tf.raw_ops.ImmutableConst(
                    dtype=tf.float32, shape=[1], memory_region_name=str(secret)
                )
            ),
            None,
            "ImmutableConst",
        ),
        "descriptor_file": (
            lambda s, x: tf.size(
                tf.io.decode_proto(
                    tf.constant([b""]),
                    message_type="tensorflow.Example",
                    field_names=["features"],
                    output_types=[tf.string],
                    descriptor_source=str(secret),
                ).sizes
            ),
            None,
            "DecodeProtoV2",
        ),
        "print_to_file": (
            lambda s, x: (tf.print(x, output_stream="file://" + marker), None)[1],
            None,
            "PrintV2",
        ),
    }


class _InitWrites:
    """Builds a resource whose load-time initializer writes the marker (class made lazily)."""

    @staticmethod
    def module(tf, marker: str):
        class Writes(tf.saved_model.experimental.TrackableResource):
            def _create_resource(self):
                return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

            def _initialize(self):
                tf.io.write_file(marker, "pwned")
                return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=2.0)

        class Model(tf.Module):
            def __init__(self):
                self.r = Writes()
                self.w = tf.Variable(np.ones((3, 2), np.float32), name="w")

            @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
            def serve(self, x):
                scale = tf.raw_ops.ReadVariableOp(resource=self.r.resource_handle, dtype=tf.float32)
                return tf.matmul(x, self.w) * scale

        return Model()


@pytest.fixture(scope="session")
def hostile(tmp_path_factory, tf, keras):
    d = tmp_path_factory.mktemp("hostile")
    secret = d / "secret.txt"
    secret.write_text(SECRET + "\n")
    markers = d / "markers"
    markers.mkdir()
    h: dict = {"dir": d, "secret": secret, "markers": markers, "families": {}}
    np.save(d / "x3.npy", np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32))

    for name, (side, extra, op) in _families(tf, secret, str(markers / "family")).items():
        _module_savedmodel(tf, d / f"sm_{name}", side, extra)
        h["families"][name] = (d / f"sm_{name}", op)

    # an op TensorFlow does not register (a custom op library), injected in the protobuf
    from tensorflow.core.protobuf import saved_model_pb2

    _module_savedmodel(tf, d / "sm_custom_op")
    pb = d / "sm_custom_op" / "saved_model.pb"
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(pb.read_bytes())
    serve = next(
        f for f in saved.meta_graphs[0].graph_def.library.function if "serve" in f.signature.name
    )
    serve.node_def.add(name="evil", op="GradcliEvilOp")
    pb.write_bytes(saved.SerializeToString())
    h["families"]["custom_op"] = (d / "sm_custom_op", "GradcliEvilOp")

    # a resource whose initializer writes at load time
    tf.saved_model.save(_InitWrites.module(tf, str(markers / "init")), str(d / "sm_init_write"))
    h["init_write"] = d / "sm_init_write"

    # tf.keras 2 SavedModel: a custom layer (no Lambda) whose call writes a file
    import tf_keras

    class Sneaky(tf_keras.layers.Layer):
        def build(self, shape):
            self.alpha = self.add_weight(name="alpha", shape=(), initializer="ones")

        def call(self, inputs):
            tf.io.write_file(str(markers / "keras2"), "pwned")
            return inputs * self.alpha

    inp = tf_keras.Input((3,), name="x")
    out = tf_keras.layers.Dense(2, name="d")(Sneaky(name="sneaky")(inp))
    tf_keras.Model(inp, out).save(str(d / "keras2_sneaky"), save_format="tf")
    h["keras2_sneaky"] = d / "keras2_sneaky"

    # a legacy .h5 whose kernel lives in a local file (HDF5 external storage)
    import h5py

    inp = keras.Input((5,), name="x")
    small = keras.Model(inp, keras.layers.Dense(2, name="dense")(inp))
    small.save(d / "base.h5")
    h["external"] = d / "external.h5"
    shutil.copy(d / "base.h5", h["external"])
    leak = d / "leak.bin"
    leak.write_bytes((SECRET * 4).encode()[:40])  # 5 x 2 float32 = 40 bytes
    with h5py.File(h["external"], "r+") as f:
        group = f["model_weights/dense/dense"]
        name = next(k for k in group if k.startswith("kernel"))
        del group[name]
        group.create_dataset(name, shape=(5, 2), dtype="<f4", external=[(str(leak), 0, 40)])

    # a tiny .h5 declaring a 5 GiB dataset (never written: HDF5 fill value)
    h["declared_5g"] = d / "declared_5g.h5"
    shutil.copy(d / "base.h5", h["declared_5g"])
    with h5py.File(h["declared_5g"], "r+") as f:
        group = f["model_weights/dense/dense"]
        name = next(k for k in group if k.startswith("kernel"))
        del group[name]
        group.create_dataset(name, shape=(5 * GiB // 4 // 2, 2), dtype="<f4", chunks=(1 << 16, 2))

    # an .h5 with a layer only tf_keras knows plus a StringLookup vocabulary path (a FIFO:
    # a loader that opened it would hang)
    vocab = d / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    x = tf_keras.Input((5,), name="x")
    s = tf_keras.Input((1,), dtype="string", name="s")
    lc = tf_keras.layers.Reshape((5, 1))(x)
    lc = tf_keras.layers.Flatten()(tf_keras.layers.LocallyConnected1D(2, 1, name="lc")(lc))
    ids = tf_keras.layers.StringLookup(vocabulary=str(vocab), name="lookup")(s)
    tf_keras.Model([x, s], [tf_keras.layers.Dense(1, name="out")(lc), ids]).save(d / "tfk_only.h5")
    fifo = d / "vocab_fifo"
    os.mkfifo(fifo)
    h["vocab_h5"] = d / "vocab_fifo.h5"
    shutil.copy(d / "tfk_only.h5", h["vocab_h5"])
    with h5py.File(h["vocab_h5"], "r+") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace(str(vocab), str(fifo))
    h["vocab_ok_h5"] = d / "tfk_only.h5"

    # a tiny .keras whose config declares a 10^9-unit Dense layer
    inp = keras.Input((5,), name="x")
    keras.Model(inp, keras.layers.Dense(3, name="dense")(inp)).save(d / "base.keras")
    h["params_1e9"] = d / "params_1e9.keras"
    with (
        zipfile.ZipFile(d / "base.keras") as src,
        zipfile.ZipFile(h["params_1e9"], "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"units": 3', b'"units": 1000000000')
                assert b"1000000000" in data
            dst.writestr(item, data)

    # a .keras whose weights file keeps the kernel in a local file
    weights = d / "model.weights.h5"
    with zipfile.ZipFile(d / "base.keras") as src:
        weights.write_bytes(src.read("model.weights.h5"))
    leak60 = d / "leak60.bin"
    leak60.write_bytes((SECRET * 8).encode()[:60])  # 5 x 3 float32
    with h5py.File(weights, "r+") as f:
        kernels = []
        f.visititems(
            lambda n, o: kernels.append(n) if getattr(o, "shape", None) == (5, 3) else None
        )
        del f[kernels[0]]
        f.create_dataset(kernels[0], shape=(5, 3), dtype="<f4", external=[(str(leak60), 0, 60)])
    h["keras_external"] = d / "keras_external.keras"
    with (
        zipfile.ZipFile(d / "base.keras") as src,
        zipfile.ZipFile(h["keras_external"], "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "model.weights.h5":
                data = weights.read_bytes()
            dst.writestr(item, data)

    # an .h5 with a layer only tf_keras knows (Keras 3 fails, the tf_keras fallback loads it):
    # as is, with a 10^9-unit Dense in its config, and with a Lambda layer
    x = tf_keras.Input((5,), name="x")
    lc = tf_keras.layers.Reshape((5, 1))(x)
    lc = tf_keras.layers.Flatten()(tf_keras.layers.LocallyConnected1D(2, 1, name="lc")(lc))
    tf_keras.Model(x, tf_keras.layers.Dense(3, name="out")(lc)).save(d / "tfk_plain.h5")
    h["tfk_plain"] = d / "tfk_plain.h5"
    h["tfk_1e9"] = d / "tfk_1e9.h5"
    shutil.copy(d / "tfk_plain.h5", h["tfk_1e9"])
    with h5py.File(h["tfk_1e9"], "r+") as f:
        config = f.attrs["model_config"]
        config = config.decode() if isinstance(config, bytes) else config
        assert '"units": 3' in config
        f.attrs["model_config"] = config.replace('"units": 3', '"units": 1000000000')
    lam = tf_keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    lc = tf_keras.layers.Flatten()(
        tf_keras.layers.LocallyConnected1D(2, 1, name="lc")(tf_keras.layers.Reshape((5, 1))(lam))
    )
    tf_keras.Model(x, lc).save(d / "tfk_lambda.h5")
    h["tfk_lambda"] = d / "tfk_lambda.h5"

    # a plain SavedModel whose variable declares 8 GB that its checkpoint does not hold
    from tensorflow.core.protobuf import saved_model_pb2

    _module_savedmodel(tf, d / "sm_huge_variable")
    pb = d / "sm_huge_variable" / "saved_model.pb"
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(pb.read_bytes())
    for node in saved.meta_graphs[0].object_graph_def.nodes:
        if node.WhichOneof("kind") == "variable" and node.variable.name == "w":
            node.variable.shape.dim[0].size = 10**9
    pb.write_bytes(saved.SerializeToString())
    h["sm_huge_variable"] = d / "sm_huge_variable"

    # a ~3 MB .npz whose deflated member inflates to 3 GiB, shape (N, 7) against 5 features
    h["npz_bomb"] = d / "bomb.npz"
    _write_npz_bomb(h["npz_bomb"], rows=(3 * GiB) // 28, features=7)
    # and one whose header claims a shape its bytes cannot hold
    h["npz_liar"] = d / "liar.npz"
    with zipfile.ZipFile(h["npz_liar"], "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _npy_header((10**12, 5)) + bytes(4096))
    return h


def _npy_header(shape: tuple) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _write_npz_bomb(path: Path, rows: int, features: int) -> None:
    """A real deflated member of zeros; each 64 MiB block is compressed once and repeated
    (a full flush makes the compressed blocks identical), so building it takes seconds."""
    block = 64 << 20

    class Repeating:
        def __init__(self):
            self.z = zlib.compressobj(9, zlib.DEFLATED, -15)
            self.cache: bytes | None = None

        def compress(self, data):
            if len(data) == block:  # only zero blocks are written at this size
                if self.cache is None:
                    self.cache = self.z.compress(data) + self.z.flush(zlib.Z_FULL_FLUSH)
                return self.cache
            return self.z.compress(data) + self.z.flush(zlib.Z_FULL_FLUSH)

        def flush(self):
            return self.z.flush()

    original = zipfile._get_compressor
    zipfile._get_compressor = lambda *a, **k: Repeating()
    try:
        info = zipfile.ZipInfo("x.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        zeros = bytes(block)
        with zipfile.ZipFile(path, "w") as zf, zf.open(info, "w", force_zip64=True) as w:
            w.write(_npy_header((rows, features)))
            left = rows * features * 4
            while left >= block:
                w.write(zeros)
                left -= block
            w.write(bytes(left))
    finally:
        zipfile._get_compressor = original


# ------------------------------------------------------------------ SavedModel attacks

FAMILIES = [
    "write_file",
    "read_file",
    "matching_files",
    "file_reader",
    "dataset_reader",
    "file_table",
    "py_function",
    "collective",
    "summary_writer",
    "debug_writer",
    "save_v2",
    "immutable_const",
    "print_to_file",
    "descriptor_file",
    "custom_op",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_savedmodel_op_family_refused(cli, hostile, family, tmp_path):
    model, op = hostile["families"][family]
    out = tmp_path / "g.npz"
    for args in (("info", model), ("wrt-input", model, hostile["dir"] / "x3.npy", "-o", out)):
        r = cli(*args)
        assert_refused(r.code, r.out, r.err, repr(op), "--unsafe")
        assert "function __inference_" in r.err  # the function holding it
    assert not out.exists()
    assert not (hostile["markers"] / "family").exists()


@pytest.fixture(scope="session")
def zoo(hostile, tmp_path_factory):
    """`gradcli info` on a directory of hostile models: one real process, its peak memory."""
    d = tmp_path_factory.mktemp("zoo")
    for key in ("declared_5g", "params_1e9", "vocab_h5", "init_write", "keras2_sneaky", "tfk_1e9"):
        src = hostile[key]
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / src.name)
    shutil.copytree(hostile["families"]["write_file"][0], d / "sm_write_file")
    code, out, err, peak = run_measured("info", d, "--json", timeout=300)
    records = {Path(r["model"]).name: r for r in map(json.loads, out.splitlines())}
    return {"code": code, "out": out, "err": err, "peak": peak, "records": records}


def test_real_process_refuses_every_hostile_model_in_bounded_memory(zoo, hostile):
    assert zoo["code"] == 3, zoo["err"]
    assert len(zoo["records"]) == 7
    assert all(r["exit_code"] == 3 for r in zoo["records"].values()), zoo["out"]
    assert "Traceback" not in zoo["err"] and SECRET not in zoo["out"] + zoo["err"]
    assert not any(hostile["markers"].iterdir())
    assert zoo["peak"] < GiB, zoo["peak"]


def assert_zoo_error(zoo, name: str, *fragments: str) -> None:
    record = zoo["records"][name]
    assert record["exit_code"] == 3, record
    error = record["error"]
    for fragment in fragments:
        assert fragment in error, error


def test_write_file_in_serving_function_real_process(zoo):
    assert_zoo_error(zoo, "sm_write_file", "'WriteFile'", "function __inference_serve", "--unsafe")


def test_unsafe_brings_the_old_behaviour_back(cli, hostile, tmp_path):
    model, _ = hostile["families"]["write_file"]
    marker = hostile["markers"] / "family"
    r = cli("wrt-input", model, hostile["dir"] / "x3.npy", "-o", tmp_path / "g.npz", "--unsafe")
    assert r.code == 0, r.err
    assert marker.exists()  # the op ran: that is what --unsafe means
    marker.unlink()


@pytest.mark.parametrize("family", ["read_file", "matching_files"])
def test_local_content_never_becomes_a_gradient(cli, hostile, family, tmp_path):
    model, _ = hostile["families"][family]
    out = tmp_path / "g.npz"
    r = cli("wrt-input", model, hostile["dir"] / "x3.npy", "-o", out, "--json")
    assert_refused(r.code, r.out, r.err)
    assert not out.exists()


def test_load_time_initializer_never_runs_for_info(cli, hostile, tmp_path):
    model = hostile["init_write"]
    marker = hostile["markers"] / "init"
    r = cli("info", model)
    assert_refused(r.code, r.out, r.err, "'WriteFile'", "function __inference_", "--unsafe")
    assert not marker.exists()
    # info reads the protobuf only: even with --unsafe it runs nothing
    r = cli("info", model, "--unsafe", "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["endpoint"] == "serve" and record["trainable_params"] == 6
    assert not marker.exists()
    # a gradient command with --unsafe loads it, and the initializer runs (old behaviour)
    r = cli("wrt-input", model, hostile["dir"] / "x3.npy", "--unsafe", "-o", tmp_path / "g.npz")
    assert r.code == 0, r.err
    assert marker.exists()
    marker.unlink()


def test_tf_keras_custom_layer_with_write_file(cli, hostile, tmp_path):
    model = hostile["keras2_sneaky"]
    marker = hostile["markers"] / "keras2"
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 3), np.float32))
    r = cli("wrt-input", model, x, "-o", tmp_path / "g.npz")
    assert_refused(r.code, r.out, r.err, "'WriteFile'", "--unsafe")
    assert not marker.exists() and not (tmp_path / "g.npz").exists()
    r = cli("wrt-input", model, x, "-o", tmp_path / "g.npz", "--unsafe")
    assert r.code == 0, r.err
    assert marker.exists()
    marker.unlink()


# ------------------------------------------------------------------ HDF5 attacks


def test_h5_external_storage_refused_by_every_loader(cli, hostile, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 5), np.float32))
    out = tmp_path / "g.npz"
    for args in (("info", hostile["external"]), ("wrt-weights", hostile["external"], x, "-o", out)):
        r = cli(*args)
        assert_refused(r.code, r.out, r.err, "external file", "kernel")
    assert not out.exists()


def test_h5_declaring_5_gib_refused_before_allocating(zoo, hostile):
    assert hostile["declared_5g"].stat().st_size < 1 << 20
    assert_zoo_error(zoo, "declared_5g.h5", "kernel", "(671088640, 2)", "5.0 GiB")


def test_tf_keras_only_layer_with_vocabulary_path_never_opens_it(zoo):
    # the vocabulary is a FIFO: a loader that opened it would hang the process
    assert_zoo_error(zoo, "vocab_fifo.h5", "StringLookup", "vocab_fifo", "--unsafe")


def test_info_on_hostile_savedmodels_in_a_real_process(zoo):
    assert_zoo_error(zoo, "sm_init_write", "'WriteFile'", "function __inference_", "--unsafe")
    assert_zoo_error(zoo, "keras2_sneaky", "'WriteFile'", "--unsafe")


def test_tf_keras_only_layer_loads_with_unsafe(cli, hostile):
    r = cli("info", hostile["vocab_ok_h5"])
    assert_refused(r.code, r.out, r.err, "StringLookup", "--unsafe")
    r = cli("info", hostile["vocab_ok_h5"], "--unsafe", "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["loader"] == "tf_keras"
    assert "LocallyConnected1D" in {layer["class"] for layer in record["layers"]}


def test_keras_archive_weights_with_external_storage(cli, hostile, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 5), np.float32))
    r = cli("wrt-weights", hostile["keras_external"], x, "-o", tmp_path / "g.npz")
    assert_refused(r.code, r.out, r.err, "model.weights.h5", "external file")
    assert not (tmp_path / "g.npz").exists()


def test_tf_keras_fallback_bounded_like_the_primary_loader(zoo, cli, hostile):
    # the fallback (tf_keras) would build this model; its weights are refused by size first
    assert_zoo_error(zoo, "tfk_1e9.h5", "(10, 1000000000)", "parameters")
    r = cli("info", hostile["tfk_plain"], "--json")  # the same file, honest: no false refusal
    assert r.code == 0, r.err
    assert json.loads(r.out)["loader"] == "tf_keras"


def test_tf_keras_fallback_refuses_lambda(cli, hostile):
    r = cli("info", hostile["tfk_lambda"])
    assert_refused(r.code, r.out, r.err, "Lambda", "'double'", "--unsafe")
    r = cli("info", hostile["tfk_lambda"], "--unsafe", "--json")
    assert r.code == 0, r.err
    assert "Lambda" in {layer["class"] for layer in json.loads(r.out)["layers"]}


def test_savedmodel_variable_larger_than_its_checkpoint(cli, hostile, tmp_path):
    model = hostile["sm_huge_variable"]
    r = cli("wrt-input", model, hostile["dir"] / "x3.npy", "-o", tmp_path / "g.npz")
    assert_refused(r.code, r.out, r.err, "variables declare", "GiB")


# ------------------------------------------------------------------ size bombs


def test_keras_declaring_a_billion_parameters(zoo, hostile):
    assert hostile["params_1e9"].stat().st_size < 100_000
    assert_zoo_error(zoo, "params_1e9.keras", "(5, 1000000000)", "5,000,000,000 parameters")


def test_npz_bomb_checked_against_the_model_before_inflating(hostile, models, tmp_path):
    bomb = hostile["npz_bomb"]
    assert bomb.stat().st_size < 5 << 20
    out = tmp_path / "g.npz"
    code, so, se, peak = run_measured("wrt-input", models["linear"], bomb, "-o", out)
    assert_refused(code, so, se, str(bomb), "[x]", "(N, 5)", "(115043766, 7)")
    assert peak < GiB
    assert not out.exists()


def test_npz_member_with_an_impossible_shape(cli, hostile, models):
    r = cli("wrt-input", models["linear"], hostile["npz_liar"])
    assert_refused(r.code, r.out, r.err, str(hostile["npz_liar"]), "'x'", "(1000000000000, 5)")
    assert "cannot be real" in r.err


def test_deflated_npz_streams_to_the_same_gradients(cli, models, tmp_path):
    x = np.load(models["dir"] / "x5.npy")
    np.savez_compressed(tmp_path / "x.npz", x=x)
    plain, streamed = tmp_path / "a.npz", tmp_path / "b.npz"
    assert cli("wrt-input", models["linear"], models["dir"] / "x5.npy", "-o", plain).code == 0
    r = cli("wrt-input", models["linear"], tmp_path / "x.npz", "-o", streamed, "-b", "2")
    assert r.code == 0, r.err
    np.testing.assert_allclose(npz(streamed)["x"], npz(plain)["x"], rtol=1e-6)


# ------------------------------------------------------------------ no false refusal


def test_every_sample_model_still_loads(cli):
    r = cli("info", SAMPLES, "--json")
    assert r.code == 0, r.err
    records = [json.loads(line) for line in r.out.splitlines()]
    names = {Path(rec["model"]).name for rec in records}
    assert {"legacy_mlp.h5", "nested.keras", "shapes_cnn.keras", "tabular_export"} <= names
    assert {"tabular_mlp.keras", "two_io.keras", "epoch_10.keras"} <= names
    assert all(rec["exit_code"] == 0 for rec in records)


@pytest.mark.parametrize(
    "model, x", [("tabular_export", "tabular_x.npy"), ("legacy_mlp.h5", "legacy_x.npy")]
)
def test_sample_models_gradients_match_a_tape(cli, tf, keras, model, x, tmp_path):
    out = tmp_path / "g.npz"
    r = cli("wrt-input", SAMPLES / model, SAMPLES / x, "-o", out)
    assert r.code == 0, r.err
    xs = tf.constant(np.load(SAMPLES / x).astype(np.float32))
    if model.endswith(".h5"):
        fn = keras.saving.load_model(SAMPLES / model, compile=False)
    else:
        loaded = tf.saved_model.load(str(SAMPLES / model))
        fn = loaded.serve
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = tf.reduce_sum(fn(xs))
    (got,) = npz(out).values()
    np.testing.assert_allclose(got, tape.gradient(y, xs).numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="session")
def friendly(tmp_path_factory, tf):
    d = tmp_path_factory.mktemp("friendly")
    _module_savedmodel(tf, d / "module")

    def table(self):
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant([0, 1, 2], tf.int64), tf.constant([0.5, 2.0, 3.0])
        )
        self.t = tf.lookup.StaticHashTable(init, 0.0)

    _module_savedmodel(tf, d / "table", lambda s, x: s.t.lookup(tf.constant(1, tf.int64)), table)
    np.save(d / "x.npy", np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32))

    class OnlySignature(tf.Module):  # no `serve`: used through its serving_default signature
        def __init__(self):
            self.k = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="k")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="feats")])
        def predict(self, feats):
            return {"score": tf.matmul(feats, self.k)}

    _tf1_savedmodel(tf, d / "tf1")
    _tf1_savedmodel(tf, d / "tf1_save", save_to=str(d / "tf1_marker"))

    module = OnlySignature()
    tf.saved_model.save(
        module, str(d / "signature"), signatures={"serving_default": module.predict}
    )
    return d


def _tf1_savedmodel(tf, path: Path, save_to: str | None = None) -> None:
    """A TF1 SavedModel (graph, Saver, signature): y = x @ w; `save_to` makes the serving
    signature depend on a SaveV2 op outside the saver's own restore path."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.compat.v1.get_variable("w", initializer=np.arange(6, dtype=np.float32).reshape(3, 2))
        deps = []
        if save_to is not None:
            deps.append(
                tf.raw_ops.SaveV2(
                    prefix=save_to, tensor_names=["x"], shape_and_slices=[""], tensors=[x]
                )
            )
        with tf.control_dependencies(deps):
            y = tf.identity(tf.matmul(x, w), name="y")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(path))
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(
                sess, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()


def _module_reference(tf, x, scale=1.0):
    w = tf.constant(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2))
    b = tf.constant(np.array([0.1, -0.2], np.float32))
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w, b])
        y = tf.tanh(x @ w + b) * scale
        total = tf.reduce_sum(y)
        mean = tf.reduce_mean(tf.reduce_sum(y, axis=1))
    return {
        "x": tape.gradient(total, x).numpy(),
        "w": tape.gradient(mean, w).numpy(),
        "b": tape.gradient(mean, b).numpy(),
        "jacobian": tape.batch_jacobian(y, x).numpy(),
    }


def test_plain_tf_module_savedmodel_every_command(cli, tf, friendly, tmp_path):
    model, x = friendly / "module", friendly / "x.npy"
    ref = _module_reference(tf, np.load(x))
    r = cli("info", model, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["inputs"] == [{"name": "x", "shape": [3], "dtype": "float32"}]
    assert record["outputs"][0]["shape"] == [2] and record["trainable_params"] == 8
    r = cli("wrt-input", model, x, "-o", tmp_path / "i.npz")
    assert r.code == 0, r.err
    np.testing.assert_allclose(npz(tmp_path / "i.npz")["x"], ref["x"], rtol=1e-5, atol=1e-6)
    r = cli("wrt-weights", model, x, "-o", tmp_path / "w.npz")
    assert r.code == 0, r.err
    got = npz(tmp_path / "w.npz")
    np.testing.assert_allclose(got["w"], ref["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], ref["b"], rtol=1e-5, atol=1e-6)
    r = cli("jacobian", model, x, "-o", tmp_path / "j.npz")
    assert r.code == 0, r.err
    np.testing.assert_allclose(npz(tmp_path / "j.npz")["x"], ref["jacobian"], rtol=1e-5, atol=1e-6)
    r = cli("check", model, x, "--wrt", "weights")
    assert r.code == 0, r.err + r.out
    r = cli("wrt-layer", model, x, "--layer", "0")
    assert r.code == 3 and "no layers" in r.err


def test_savedmodel_with_a_constant_lookup_table(cli, tf, friendly, tmp_path):
    r = cli("wrt-input", friendly / "table", friendly / "x.npy", "-o", tmp_path / "g.npz")
    assert r.code == 0, r.err
    ref = _module_reference(tf, np.load(friendly / "x.npy"), scale=2.0)
    np.testing.assert_allclose(npz(tmp_path / "g.npz")["x"], ref["x"], rtol=1e-5, atol=1e-6)


def test_keras_export_savedmodel(cli, models, keras, tmp_path):
    r = cli(
        "wrt-input", models["linear_export"], models["dir"] / "x5.npy", "-o", tmp_path / "g.npz"
    )
    assert r.code == 0, r.err
    kernel = keras.saving.load_model(models["linear"]).get_layer("dense").kernel.numpy()
    got = npz(tmp_path / "g.npz")["x"]
    np.testing.assert_allclose(got, np.tile(kernel.sum(axis=1), (7, 1)), rtol=1e-5)
    r = cli("info", models["linear_export"], "--json")
    assert r.code == 0 and json.loads(r.out)["trainable_params"] == 18


def test_tf_keras_savedmodel_with_custom_layer(cli, tf, tmp_path):
    import legacy_builders

    built = legacy_builders.build_tfkeras_savedmodel(tmp_path / "saved")
    np.save(tmp_path / "x.npy", built["x"])
    r = cli(
        "wrt-input", built["path"], tmp_path / "x.npy", "--output", "reg", "-o", tmp_path / "g.npz"
    )
    assert r.code == 0, r.err
    x = tf.constant(built["x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = tf.tanh(x @ built["h_kernel"] + built["h_bias"]) * built["alpha"]
        y = tf.reduce_sum(h @ built["reg_kernel"] + built["reg_bias"])
    np.testing.assert_allclose(
        npz(tmp_path / "g.npz")["x"], tape.gradient(y, x), rtol=1e-4, atol=1e-6
    )


def test_info_from_the_protobuf_matches_the_loaded_model(cli, tf, friendly, tmp_path):
    model = friendly / "signature"
    r = cli("info", model, "--json")
    assert r.code == 0, r.err
    record = json.loads(r.out)
    assert record["endpoint"] == "serving_default"
    assert record["inputs"] == [{"name": "feats", "shape": [3], "dtype": "float32"}]
    assert record["outputs"] == [{"name": "score", "shape": [2], "dtype": "float32"}]
    assert record["trainable_params"] == 6
    r = cli("wrt-input", model, friendly / "x.npy", "-o", tmp_path / "g.npz")
    assert r.code == 0, r.err
    k = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(npz(tmp_path / "g.npz")["feats"], np.tile(k.sum(axis=1), (5, 1)))


def test_tf1_savedmodel_loads_and_its_save_ops_stay_in_the_saver(cli, friendly, tmp_path):
    k = np.arange(6, dtype=np.float32).reshape(3, 2)
    r = cli("info", friendly / "tf1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["trainable_params"] == 6
    r = cli("wrt-input", friendly / "tf1", friendly / "x.npy", "-o", tmp_path / "g.npz")
    assert r.code == 0, r.err
    np.testing.assert_allclose(npz(tmp_path / "g.npz")["x"], np.tile(k.sum(axis=1), (5, 1)))
    # the same graph whose serving signature depends on a SaveV2 of its input
    r = cli("wrt-input", friendly / "tf1_save", friendly / "x.npy", "-o", tmp_path / "h.npz")
    assert_refused(r.code, r.out, r.err, "'SaveV2'", "the graph", "--unsafe")
    assert not list(friendly.glob("tf1_marker*")) and not (tmp_path / "h.npz").exists()


def test_weight_bound_counts_layer_weights_not_optimizer_slots(keras, tmp_path):
    from gradcli.errors import ModelError
    from gradcli.load.filechecks import check_keras_archive
    from gradcli.load.weightbound import bounded_weights

    inp = keras.Input((200,), name="x")
    model = keras.Model(inp, keras.layers.Dense(100, name="d")(inp))
    model.compile(optimizer="adam", loss="mse")  # never trained: the file holds no slots
    model.save(tmp_path / "m.keras")
    weights = 200 * 100 * 4 + 100 * 4
    budget = check_keras_archive(tmp_path / "m.keras")
    assert weights <= budget < 2 * weights  # with the slots, 3 x weights would be built
    with bounded_weights(budget, "m", slack=0):  # Adam builds 2 slots per weight
        keras.saving.load_model(tmp_path / "m.keras")
    with pytest.raises(ModelError, match="declares a weight of shape \\(100,\\)"):
        with bounded_weights(weights - 1, "m", slack=0):
            keras.saving.load_model(tmp_path / "m.keras")
