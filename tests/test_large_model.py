"""Models over 2 GiB: load, compress and save with external data, in bounded memory.

Such models are *file-backed* (onnx_compress.ir): their external weights stay on disk,
are read through memory maps, and are copied into the output's data file in chunks.

- The slow test builds a 2.4 GB model on disk (patterned weights written block by block,
  never held whole in memory), compresses one small layer through the Python API (with an
  evaluation callback, so ONNX Runtime sessions of the >2 GB model are built too) and
  through the command line, and checks the outputs, the untouched weights (bit-exact),
  the input files (unchanged) and the peak memory of the round trip.
- The fast tests run the same file-backed path on a small model (the size limit lowered).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
import onnx_compress as oc
from onnx_compress import ir, layers, progress, runtime
from onnx_compress.errors import ModelLoadError, ParameterError

GiB = 2**30
#: Peak-memory allowance on top of twice the model's size: the interpreter with numpy,
#: onnx, onnxruntime and scipy imported (~0.2 GB), ONNX Runtime's arenas and prepacked
#: weights beyond the raw weights, and allocator slack. The measured peak is far lower
#: (file-backed weights are not loaded): see the test's printout.
ALLOWANCE = 1 * GiB


# --------------------------------------------------------------------------- builders
def _external(name: str, dims: list[int], location: str, offset: int, length: int) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _pattern_rows(k: int, cols: int, scale: float) -> np.ndarray:
    """The 7 distinct rows of W_k[i, j] = scale * ((3 i + 5 j + k) % 7 + 1); row i is rows[3 i % 7]."""
    t = np.arange(7)[:, None]
    j = np.arange(cols)[None, :]
    return (((t + 5 * j + k) % 7 + 1) * scale).astype(np.float32)


def _pattern_matvec(x: np.ndarray, k: int, cols: int, scale: float) -> np.ndarray:
    """x @ W_k in float64, exactly, from the pattern (O(7 n), not O(n cols))."""
    x = np.asarray(x, dtype=np.float64).ravel()
    i = np.arange(x.size)
    c = np.array([x @ (((3 * i + r) % 7) + 1) for r in range(7)])
    return scale * c[(5 * np.arange(cols) + k) % 7][None, :]


def write_big_model(folder: Path, n: int = 16384, m: int = 4096, r: int = 256, block: int = 1024) -> dict:
    """big1 (n x n) -> big2 (n x n) -> big3 (n x m) MatMuls with patterned weights in
    `weights.bin` (2.25 GiB at the defaults), then Gemm `tail` (m -> r, rank-8 weight,
    inline). Returns the paths, the weights' sha256 by name, an input and its exact output."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, n)).astype(np.float32)
    y = x.astype(np.float64)
    inits, digests = [], {}
    data = folder / "weights.bin"
    with open(data, "wb") as f:
        for name, rows, cols, k in (("W1", n, n, 1), ("W2", n, n, 2), ("W3", n, m, 3)):
            f.write(b"\0" * (-f.tell() % 4096))
            offset, h = f.tell(), hashlib.sha256()
            scale = 1.0 / (4 * rows)
            pattern = _pattern_rows(k, cols, scale)
            for i0 in range(0, rows, block):
                chunk = pattern[(3 * np.arange(i0, min(rows, i0 + block))) % 7]
                f.write(chunk.data)
                h.update(chunk.data)
            digests[name] = h.hexdigest()
            inits.append(_external(name, [rows, cols], data.name, offset, rows * cols * 4))
            y = _pattern_matvec(y, k, cols, scale)
    wt = (rng.standard_normal((m, 8)) @ rng.standard_normal((8, r)) / np.sqrt(m)).astype(np.float32)
    bias = rng.standard_normal(r).astype(np.float32)
    inits += [numpy_helper.from_array(wt, "Wt"), numpy_helper.from_array(bias, "bt")]
    y = y @ wt.astype(np.float64) + bias
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="big1"),
             helper.make_node("MatMul", ["h1", "W2"], ["h2"], name="big2"),
             helper.make_node("MatMul", ["h2", "W3"], ["h3"], name="big3"),
             helper.make_node("Gemm", ["h3", "Wt", "bt"], ["y"], name="tail")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, r])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "big.onnx"
    onnx.save_model(model, str(path))
    np.savez(folder / "io.npz", x=x, y=y.astype(np.float32))
    return {"path": path, "data": data, "digests": digests, "x": x, "y": y}


def _sha256(path: Path, offset: int = 0, length: int | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(64 * 2**20)
    with open(path, "rb") as f:
        f.seek(offset)
        left = length if length is not None else Path(path).stat().st_size - offset
        while left:
            k = f.readinto(memoryview(buf)[:min(left, len(buf))])
            assert k, f"{path} ended early"
            h.update(memoryview(buf)[:k])
            left -= k
    return h.hexdigest()


def _external_digests(path: Path, names) -> dict[str, str]:
    """sha256 of each named tensor's bytes in the data file written beside `path`."""
    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in proto.graph.initializer:
        if t.name in names:
            info = {e.key: e.value for e in t.external_data}
            assert t.data_location == TensorProto.EXTERNAL and info["location"] == path.name + ".data"
            out[t.name] = _sha256(path.parent / info["location"], int(info.get("offset", 0)), int(info["length"]))
    return out


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ------------------------------------------------------------------------ slow: 2.4 GB
ROUND_TRIP = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import onnx_compress as oc
    from onnx_compress import ir

    src, out, io = sys.argv[1:4]
    feeds = np.load(io)
    calls = []

    def max_error(session, iterations, use_cuda):  # an evaluator: ORT on the >2 GB model
        calls.append(1)
        y = session.run(None, {"x": feeds["x"]})[0]
        return -float(np.abs(y - feeds["y"]).max())

    start = time.monotonic()
    model, stats = oc.compress(src, "weight_svd", {"tail": 0.5}, eval_callback=max_error)
    compressed = time.monotonic()
    ir.save(model, out)  # automatic: external data (the model is file-backed)
    print(json.dumps({
        "compress_s": compressed - start, "save_s": time.monotonic() - compressed,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        "baseline": stats.baseline_score, "final": stats.final_score, "evaluations": len(calls),
        "layers": [(s.name, s.rank, s.full_rank) for s in stats.layers],
    }))
""")


#: Runs the command in argv[1:] and prints its peak RSS in bytes as the last line.
PEAK_OF = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, flush=True); sys.exit(rc)")


@pytest.fixture()
def big_dir(tmp_path):
    """A folder for the >2 GB files, deleted afterwards even when the test fails
    (pytest would otherwise keep it with its last three runs' temporary folders)."""
    folder = tmp_path / "big"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_over_2gib_model_round_trip_in_bounded_memory(big_dir, capsys):
    free = shutil.disk_usage(big_dir).free
    # At most two copies at a time: the input and an output (or the evaluation's temporary copy).
    assert free > 6 * 10**9, f"needs ~6 GB of free disk in {big_dir}; has {free / 1e9:.1f} GB"
    t0 = time.monotonic()
    model = write_big_model(big_dir)
    src, data = model["path"], model["data"]
    size = src.stat().st_size + data.stat().st_size
    assert size > 2 * GiB
    src_digest, data_digest = _sha256(src), _sha256(data)
    built = time.monotonic()

    # Python API, in a child process so its peak memory can be read on its own.
    out_dir = big_dir / "api"
    out_dir.mkdir()
    out = out_dir / "out.onnx"
    script = big_dir / "round_trip.py"
    script.write_text(ROUND_TRIP)
    r = subprocess.run([sys.executable, str(script), str(src), str(out), str(big_dir / "io.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    peak = result["peak_rss"]
    bound = 2 * size + ALLOWANCE
    assert peak <= bound, f"peak RSS {_gib(peak)} over 2 x {_gib(size)} + {_gib(ALLOWANCE)}"
    assert result["layers"] == [["tail", 120, 256]]
    assert result["evaluations"] == 2
    assert -result["baseline"] < 1e-4 and -result["final"] < 1e-4, result  # |y - y_expected| on ~3.3
    round_trip = time.monotonic()

    # The output: model + one data file, untouched weights bit-exact, the split exact.
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert out.stat().st_size < 2**20  # weights all in the data file
    assert _external_digests(out, model["digests"]) == model["digests"]
    written = onnx.load(str(out), load_external_data=False)
    assert "tail" not in {n.name for n in written.graph.node}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": model["x"]})[0]
    del sess
    np.testing.assert_allclose(y, model["y"], rtol=1e-4, atol=1e-4)
    shutil.rmtree(out_dir)  # disk: at most input + one output at a time
    checked = time.monotonic()

    # Command line: same layer, external data written, weights bit-exact.
    cli_dir = big_dir / "cli"
    cli_dir.mkdir()
    exe = shutil.which("onnx-compress")
    cmd = [exe] if exe else [sys.executable, "-m", "onnx_compress.cli"]
    r = subprocess.run([sys.executable, "-c", PEAK_OF] + cmd + [
        "compress", str(src), "-o", str(cli_dir / "out.onnx"), "--scheme", "weight_svd", "--ratios", "tail=0.5"],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    cli_peak = int(r.stdout.strip().splitlines()[-1])
    assert cli_peak <= bound, f"CLI peak RSS {_gib(cli_peak)} over {_gib(bound)}"
    assert sorted(p.name for p in cli_dir.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert _external_digests(cli_dir / "out.onnx", model["digests"]) == model["digests"]
    cli_done = time.monotonic()

    # The input files are unchanged.
    assert _sha256(src) == src_digest and _sha256(data) == data_digest
    with capsys.disabled():
        print(f"\n[large model] {_gib(size)} ({size / 1e9:.2f} GB) model; API round trip peak RSS {_gib(peak)} "
              f"= {peak / size:.2f} x model (bound {_gib(bound)}); compress {result['compress_s']:.1f}s incl. 2 "
              f"ORT evaluations, save {result['save_s']:.1f}s; CLI (no evaluation) peak RSS {_gib(cli_peak)}; "
              f"build {built - t0:.0f}s, round trip {round_trip - built:.0f}s, output checks "
              f"{checked - round_trip:.0f}s, CLI {cli_done - checked:.0f}s, total {time.monotonic() - t0:.0f}s")


# ----------------------------------------------------------------- fast: small model
def _small_external(folder: Path) -> Path:
    """x (1, 512) -> MatMul big (512 x 512, 1 MiB: memory-mapped) -> Gemm tail (512 -> 16,
    rank 2), every weight in `w.bin`."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((512, 512)).astype(np.float32) / 16
    wt = (rng.standard_normal((512, 2)) @ rng.standard_normal((2, 16))).astype(np.float32)  # rank 2: split exactly
    bias = rng.standard_normal(16).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="big"),
         helper.make_node("Gemm", ["h", "Wt", "bt"], ["y"], name="tail")],
        "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(wt, "Wt"), numpy_helper.from_array(bias, "bt")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "small.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def _run(path_or_proto, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    arg = str(path_or_proto) if isinstance(path_or_proto, Path) else path_or_proto.SerializeToString()
    return ort.InferenceSession(arg, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_file_backed_load_compress_save(tmp_path, monkeypatch):
    src = _small_external(tmp_path)
    digests = {p.name: _sha256(p) for p in tmp_path.iterdir()}
    x = np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32)
    expected = _run(src, x)
    monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", 1)
    monkeypatch.setattr(ir.model, "COPY_CHUNK", 64 * 1024)

    proto = ir.load(src)
    assert ir.is_file_backed(proto)
    for t in proto.graph.initializer:  # nothing loaded: absolute references to the input's file
        assert not t.HasField("raw_data") and ir.file_source(t)[0] == str((tmp_path / "w.bin").resolve())
    big = layers.analyze(proto).find("big")
    assert isinstance(big.weight.base, np.memmap)  # memory-mapped, not read
    np.testing.assert_array_equal(big.weight, numpy_helper.to_array(onnx.load(str(src)).graph.initializer[0]))
    assert abs(runtime.evaluate(proto, lambda s, i, c: s.run(None, {"x": x})[0][0, 0], None, False)
               - expected[0, 0]) < 1e-6  # ONNX Runtime sessions of file-backed models

    model, stats = oc.compress(src, "weight_svd", {"tail": 0.5})
    assert ir.is_file_backed(model) and [s.name for s in stats.layers] == ["tail"]
    before = model.SerializeToString()
    reports = []
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    with progress.listen(lambda stage, done, total: reports.append((stage, done, total))):
        ir.save(model, out)  # automatic: external data
    assert model.SerializeToString() == before  # saving does not modify the model
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert len(reports) > 1 and {r[0] for r in reports} == {"writing weights (MiB)"}
    assert reports[-1][1] == reports[-1][2] == 2  # W (1 MiB) and the bias, ceil to MiB

    monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", ir.PROTO_LIMIT)  # the same, loaded in memory
    in_memory, _ = oc.compress(src, "weight_svd", {"tail": 0.5})
    assert not ir.is_file_backed(in_memory)
    np.testing.assert_array_equal(_run(out, x), _run(in_memory, x))
    np.testing.assert_allclose(_run(out, x), expected, rtol=1e-4, atol=1e-4)
    written = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    original = {t.name: t for t in onnx.load(str(src)).graph.initializer}
    assert written["W"].raw_data == original["W"].raw_data  # copied bit-exactly
    assert {p.name: _sha256(p) for p in src.parent.iterdir() if p.is_file()} == digests  # input unchanged


def test_file_backed_auto_mode_matches_in_memory(tmp_path, monkeypatch):
    """Auto mode's weight-swapping sessions and data-aware sampling on file-backed models."""
    src = _small_external(tmp_path)
    x = np.random.default_rng(3).standard_normal((1, 512)).astype(np.float32)

    def score(session, iterations, use_cuda):
        return -float(np.abs(session.run(None, {"x": x})[0]).mean())

    results = []
    for limit in (ir.PROTO_LIMIT, 1):
        monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", limit)
        model, stats = oc.compress_auto(src, "weight_svd", 0.8, score, candidates=2, data={"x": x})
        assert ir.is_file_backed(model) == (limit == 1)
        results.append(([(s.name, s.rank) for s in stats.layers], stats.final_score, stats.selection["scores"]))
    assert results[0] == results[1]


def test_file_backed_load_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", 1)
    src = _small_external(tmp_path)
    data = tmp_path / "w.bin"
    content = data.read_bytes()
    data.write_bytes(content[:1000])
    with pytest.raises(ModelLoadError, match="runs past the end of w.bin"):
        ir.load(src)
    data.unlink()
    with pytest.raises(ModelLoadError, match="w.bin .* is missing"):
        ir.load(src)
    proto = onnx.load(str(src), load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../w.bin"
    onnx.save_model(proto, str(src))
    with pytest.raises(ModelLoadError, match="invalid external data location"):
        ir.load(src)


def test_file_backed_model_is_not_saved_over_its_own_data(tmp_path, monkeypatch):
    monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", 1)
    folder = tmp_path / "m"
    folder.mkdir()
    src = _small_external(folder)
    proto = onnx.load(str(src), load_external_data=False)
    for t in proto.graph.initializer:  # data file named as save would name it
        for e in t.external_data:
            if e.key == "location":
                e.value = "small.onnx.data"
    onnx.save_model(proto, str(src))
    (folder / "w.bin").rename(folder / "small.onnx.data")
    model = ir.load(src)
    digest = _sha256(folder / "small.onnx.data")
    with pytest.raises(ParameterError, match="save it under another name"):
        ir.save(model, src)
    assert _sha256(folder / "small.onnx.data") == digest
    ir.save(model, folder / "other.onnx")
    x = np.ones((1, 512), np.float32)
    np.testing.assert_array_equal(_run(folder / "other.onnx", x), _run(src, x))


def test_save_does_not_modify_an_in_memory_model(tmp_path, monkeypatch):
    model = b.cnn_model()
    before = model.SerializeToString()
    ir.save(model, tmp_path / "a.onnx", external=True)
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.onnx.data"]
    monkeypatch.setattr(ir.tensors, "PROTO_LIMIT", 1024)  # "over 2 GiB": external data automatically, checked by path
    assert ir.too_big(model)
    ir.save(model, tmp_path / "b.onnx")
    assert (tmp_path / "b.onnx.data").is_file() and model.SerializeToString() == before
    x = b.random_input(model)
    np.testing.assert_array_equal(b.run(onnx.load(str(tmp_path / "b.onnx")), x)[0], b.run(model, x)[0])
