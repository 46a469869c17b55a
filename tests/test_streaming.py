"""Streaming: memory-mapped inputs in batches, .npz written entry by entry and atomically."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from conftest import load, npz
from gradcli.io.npzfile import NpzStreamWriter


def test_large_memory_mapped_input_equals_in_memory(cli, models, tmp_path):
    import gradcli

    rng = np.random.default_rng(1)
    big = np.lib.format.open_memmap(
        tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(5000, 5)
    )
    big[:] = rng.normal(size=(5000, 5)).astype(np.float32)
    big.flush()
    in_memory = np.array(big)
    del big
    out = tmp_path / "g.npz"
    r = cli(
        "wrt-input", models["seqni"], tmp_path / "big.npy", "--class", "1", "-b", "333", "-o", out
    )
    assert r.code == 0, r.err
    ref = gradcli.wrt_input(load(models["seqni"]), in_memory, class_index=1, batch_size=5000)
    got = npz(out)
    (key,) = got
    np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_inputs_stored_and_compressed(cli, models, tmp_path, compressed):
    xs = npz(models["dir"] / "two_x.npz")
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "x.npz", **xs)
    out_a, out_b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert cli("wrt-input", models["two_io"], tmp_path / "x.npz", "-o", out_a).code == 0
    assert cli("wrt-input", models["two_io"], models["dir"] / "two_x.npz", "-o", out_b).code == 0
    for k in ("a", "b"):
        np.testing.assert_array_equal(npz(out_a)[k], npz(out_b)[k])


def test_stream_writer_entries_and_atomicity(tmp_path):
    path = tmp_path / "out.npz"
    specs = {"first": ((5, 2), "<f4"), "nested/name": ((5, 3), "<f8"), "scalar": ((), "<f4")}
    with NpzStreamWriter(path, specs) as w:
        for start in (0, 2, 4):
            stop = min(5, start + 2)
            w.write("first", np.full((stop - start, 2), start, np.float32))
            w.write("nested/name", np.full((stop - start, 3), -start, np.float64))
        w.write("scalar", np.float32(7))
        assert not path.exists()  # nothing at PATH before commit
        w.commit()
    data = npz(path)
    assert data["first"][:, 0].tolist() == [0, 0, 2, 2, 4]
    assert data["nested/name"].dtype == np.float64 and data["nested/name"][4, 0] == -4
    assert float(data["scalar"]) == 7
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]


def test_syncing_as_rows_come_writes_the_same_file(tmp_path, monkeypatch):
    """The writer flushes to disk every SYNC_BYTES of rows (so commit's fsync has little left
    to wait for); the file is byte for byte the one written without those syncs."""
    import os

    from gradcli.io import npzfile as writers

    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(writers.os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    specs = {"first": ((6, 4), "<f4"), "second": ((6, 2), "<f8")}
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 2))
    files = []
    for sync_bytes in (1 << 40, 1):
        monkeypatch.setattr(writers, "SYNC_BYTES", sync_bytes)
        path = tmp_path / f"out{sync_bytes}.npz"
        with NpzStreamWriter(path, specs) as w:
            for start in range(0, 6, 2):
                w.write("first", a[start : start + 2])
                w.write("second", b[start : start + 2])
            w.commit()
        files.append(path.read_bytes())
        assert len(synced) == (0 if sync_bytes > 1 else 6 * 2)  # 6 writes, 2 open files each
    assert files[0] == files[1]
    np.testing.assert_array_equal(npz(tmp_path / "out1.npz")["first"], a)


def test_failed_write_leaves_previous_file_untouched(tmp_path):
    path = tmp_path / "out.npz"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        with NpzStreamWriter(path, {"a": ((4, 2), "<f4"), "b": ((4,), "<f4")}) as w:
            w.write("a", np.zeros((2, 2), np.float32))
            w.write("b", np.zeros((2,), np.float32))
            raise RuntimeError("boom")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]
    w = NpzStreamWriter(path, {"a": ((4, 2), "<f4")})
    w.write("a", np.zeros((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="2 of 4 rows"):
        w.commit()
    assert path.read_bytes() == b"previous"


def test_gradient_error_leaves_no_output(cli, models, tmp_path):
    out = tmp_path / "g.npz"
    out.write_bytes(b"old")
    r = cli(
        "wrt-input",
        models["two_io"],
        models["dir"] / "two_x.npz",
        "--target",
        models["dir"] / "two_y.npz",
        "--loss",
        "no_such_loss",
        "-o",
        out,
    )
    assert r.code == 2
    assert out.read_bytes() == b"old"
    # a missing directory is made when the run commits (as --png's), never by a failed run
    missing = tmp_path / "missing_dir" / "deeper" / "g.npz"
    args = ["wrt-input", models["linear"], models["dir"] / "x5.npy", "-o", missing]
    r = cli(*args, "--loss", "no_such_loss", "--target", models["dir"] / "y3.npy")
    assert r.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]
    r = cli(*args)
    assert r.code == 0 and sorted(npz(missing)) == ["x"]
