"""Provenance in every JSON record and every .npz: hashes checked against hashlib (files,
a directory model, stdin), the parameters actually used, versions, device and oneDNN."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import numpy as np
import pytest

from conftest import npz

EPOCH = "1767225600"  # 2026-01-01T00:00:00Z


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored(path) -> dict:
    """The provenance entry of an .npz, read without pickles."""
    with np.load(path, allow_pickle=False) as data:
        entry = data["__gradcli__"]
    assert entry.shape == () and entry.dtype.kind == "U"
    return json.loads(str(entry))


def run_json(cli, *args):
    r = cli(*args, "--json")
    assert r.code in (0, 1), r.err
    return json.loads(r.out)


@pytest.fixture(autouse=True)
def _pinned_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def test_wrt_input_json_and_npz_carry_the_same_provenance(cli, models, tmp_path, tf, keras):
    out = tmp_path / "g.npz"
    x = models["dir"] / "x5.npy"
    rec = run_json(cli, "wrt-input", models["linear"], x, "-o", out, "-b", "3")
    prov = rec["provenance"]
    assert list(rec)[-1] == "provenance"
    assert prov == stored(out)
    assert prov["schema"] == "gradcli-provenance/1"
    assert prov["written"] == "2026-01-01T00:00:00Z"
    assert prov["versions"]["tensorflow"] == tf.__version__
    assert prov["versions"]["keras"] == keras.__version__
    assert prov["versions"]["numpy"] == np.__version__
    assert prov["model"] == {
        "path": str(models["linear"]),
        "format": "keras",
        "sha256": sha(models["linear"]),
    }
    assert prov["input"] == {"path": str(x), "sha256": sha(x)}
    assert prov["target"] is None
    assert prov["command"] == "wrt-input"
    assert prov["method"] == {"name": "vanilla"}
    assert prov["objective"]["described"] == rec["objective"]
    assert prov["batch_size"] == 3 and prov["training"] is False
    assert prov["device"]["cpu"] and prov["device"]["gpu"] == []
    assert set(prov["onednn"]) == {"TF_ENABLE_ONEDNN_OPTS", "enabled"}
    assert sorted(npz(out)) == ["x"]  # the entry is not a tensor


def test_target_and_objective_parameters_of_wrt_weights(cli, models, tmp_path):
    out = tmp_path / "w.npz"
    y = models["dir"] / "y3.npy"
    rec = run_json(
        cli,
        "wrt-weights",
        models["linear"],
        models["dir"] / "x5.npy",
        "-t",
        y,
        "--loss",
        "mae",
        "-o",
        out,
        "--training",
    )
    prov = stored(out)
    assert prov == rec["provenance"]
    assert prov["target"] == {"path": str(y), "sha256": sha(y)}
    assert prov["objective"] == {
        "described": rec["objective"],
        "output": None,
        "class": None,
        "loss": "mae",
        "from_logits": False,
        "logits": False,
    }
    assert prov["training"] is True and prov["method"] is None


def test_smoothgrad_records_the_seed_it_drew(cli, models, tmp_path):
    """The drawn seed reproduces the result exactly; IG records its baseline's hash."""
    x = models["dir"] / "x5.npy"
    first, again = tmp_path / "a.npz", tmp_path / "b.npz"
    rec = run_json(
        cli, "wrt-input", models["seqni"], x, "-m", "smoothgrad", "--samples", "4", "-o", first
    )
    method = rec["provenance"]["method"]
    assert set(method) == {"name", "samples", "noise", "seed"} and method["samples"] == 4
    assert isinstance(method["seed"], int) and method["seed"] == rec["seed"]
    run_json(
        cli,
        "wrt-input",
        models["seqni"],
        x,
        "-m",
        "smoothgrad",
        "--samples",
        "4",
        "--seed",
        str(method["seed"]),
        "-o",
        again,
    )
    (a,), (b,) = npz(first).values(), npz(again).values()
    np.testing.assert_array_equal(a, b)

    base = tmp_path / "base.npy"
    np.save(base, np.full((5,), 0.5, np.float32))
    rec = run_json(
        cli,
        "wrt-input",
        models["linear"],
        x,
        "-m",
        "integrated",
        "--steps",
        "8",
        "--baseline",
        base,
    )
    assert rec["provenance"]["method"] == {
        "name": "integrated",
        "steps": 8,
        "baseline": {"path": str(base), "sha256": sha(base)},
    }


def test_directory_model_hash_is_sha256sum_over_sorted_files(cli, models):
    export = models["linear_export"]
    lines = sorted(
        (p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()),
        key=str.encode,
    )
    text = "".join(f"{sha(export / rel)}  {rel}\n" for rel in lines)
    expected = hashlib.sha256(text.encode()).hexdigest()
    rec = run_json(cli, "info", export)
    assert rec["provenance"]["model"]["sha256"] == expected
    # the shell pipeline the README documents gives the same digest
    shell = subprocess.run(
        "find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum",
        shell=True,
        cwd=export,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split()[0] == expected
    assert rec["provenance"]["command"] == "info" and "input" not in rec["provenance"]


@pytest.mark.parametrize(
    ("command", "extra", "params"),
    [
        ("wrt-layer", ("--layer", "d2"), {"layers": ["d2"], "activations": False}),
        (
            "wrt-weights",
            ("--top", "2"),
            {"per_sample": True, "per_sample_arrays": False, "top": 2},
        ),
        ("jacobian", (), {"max_elements": 1e8}),
        (
            "check",
            ("--directions", "2"),
            {"wrt": "input", "directions": 2, "eps": None, "rtol": None, "seed": 0},
        ),
    ],
)
def test_each_command_records_its_parameters(cli, models, tmp_path, command, extra, params):
    out = tmp_path / "r.npz"
    args = [command, models["seqni"], models["dir"] / "x5.npy", *extra]
    if command != "check":
        args += ["-o", out]
    rec = run_json(cli, *args)
    assert rec["provenance"]["command"] == command
    assert rec["provenance"]["parameters"] == params
    if command != "check":
        assert stored(out) == rec["provenance"]


def test_directory_run_gives_each_model_its_own_provenance(cli, models, tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    for name in ("linear", "nested"):
        (d / f"{name}.keras").write_bytes(models[name].read_bytes())
    out = tmp_path / "outs"
    r = cli("wrt-input", d, models["dir"] / "x5.npy", "-o", out, "--json")
    assert r.code == 0, r.err
    for line in r.out.splitlines():
        rec = json.loads(line)
        model = d / rec["model"].rsplit("/", 1)[1]
        assert rec["provenance"]["model"]["sha256"] == sha(model)
        assert stored(out / (model.stem + ".npz"))["model"]["sha256"] == sha(model)


def test_stdin_input_and_onednn_off_through_the_worker(models, tmp_path):
    import os
    import sys

    data = (models["dir"] / "x5.npy").read_bytes()
    import calendar
    import time

    drop = ("GRADCLI_INPROCESS", "SOURCE_DATE_EPOCH")  # the real clock this time
    env = {k: v for k, v in os.environ.items() if k not in drop}
    started = time.time()
    args = ["wrt-input", str(models["linear"]), "-", "--json", "--onednn", "off"]
    proc = subprocess.run(
        [sys.executable, "-m", "gradcli", *args],
        input=data,
        capture_output=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    prov = json.loads(proc.stdout)["provenance"]
    assert prov["input"] == {"path": "-", "sha256": hashlib.sha256(data).hexdigest()}
    assert prov["onednn"] == {"TF_ENABLE_ONEDNN_OPTS": "0", "enabled": False}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["written"])
    written = calendar.timegm(time.strptime(prov["written"], "%Y-%m-%dT%H:%M:%SZ"))
    assert started - 1 <= written <= time.time() + 1


def test_a_result_npz_is_still_an_input(cli, models, tmp_path):
    """An .npz gradcli wrote (with its provenance entry) reads back as an input."""
    out = tmp_path / "g.npz"
    run_json(cli, "wrt-input", models["linear"], models["dir"] / "x5.npy", "-o", out)
    rec = run_json(cli, "wrt-input", models["linear"], out)
    assert rec["n"] == 7
    assert rec["provenance"]["input"]["sha256"] == sha(out)


def test_records_keep_their_keys(cli, models):
    """Provenance is added last; the keys that existed are all still there."""
    rec = run_json(cli, "wrt-weights", models["linear"], models["dir"] / "x5.npy")
    keys = list(rec)
    assert keys[:5] == ["version", "command", "model", "format", "loader"]
    for key in ("n", "objective", "method", "tensors", "gates", "exit_code", "out"):
        assert key in keys
    assert keys[-1] == "provenance"


def test_hashing_speed_is_reported(tmp_path):
    """Not a timing test: the figure the README quotes comes from this (printed with -s)."""
    import time

    from gradcli.io.hashes import sha256_file

    f = tmp_path / "big.bin"
    f.write_bytes(np.random.default_rng(0).bytes(64 << 20))
    start = time.perf_counter()
    digest = sha256_file(f)
    rate = 64 / (time.perf_counter() - start)
    assert digest == sha(f)
    print(f"sha256: {rate:.0f} MB/s")


def test_a_tensor_named_like_the_provenance_entry_is_refused(cli, keras, tmp_path):
    inp = keras.Input((3,), name="__gradcli__")
    model = keras.Model(inp, keras.layers.Dense(1, name="d")(inp))
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    out = tmp_path / "g.npz"
    r = cli("wrt-input", tmp_path / "m.keras", tmp_path / "x.npy", "-o", out)
    assert r.code == 3
    assert r.err == (
        f"error: {out}: a tensor is named '__gradcli__', the key gradcli keeps for provenance\n"
    )
    assert not out.exists()


def test_prehashed_digests_are_used_only_for_the_same_bytes(tmp_path):
    """The worker hashes the job's files while TensorFlow imports (hashes.prehash); a run
    takes that digest only while the file keeps the stamp it had then: rewritten in place
    (same size, mtime set back), it is hashed again."""
    import os
    import time

    from gradcli.io.hashes import Hashes, prehash

    f = tmp_path / "m.bin"
    f.write_bytes(b"a" * 5000)
    st = os.stat(f)
    prehash([str(f), str(tmp_path), str(tmp_path / "missing")])  # a directory and a missing
    got = Hashes.start({"model": str(f)}).result()
    assert got == {"model": hashlib.sha256(b"a" * 5000).hexdigest()}
    time.sleep(0.05)  # file times tick in milliseconds
    f.write_bytes(b"b" * 5000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back: ctime still moves
    got = Hashes.start({"model": str(f)}).result()
    assert got == {"model": hashlib.sha256(b"b" * 5000).hexdigest()}
