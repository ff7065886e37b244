"""The onnx-compress command line: happy paths and every bad input the user can cause.

Bad input must give one line on stderr naming the problem, a non-zero exit, no traceback,
no output file left behind, and the input file unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as b
import mac_count
from refs import cli, digest


@pytest.fixture()
def model_path(tmp_path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(b.cnn_model(), str(path))
    return path


def test_inspect_lists_layers_with_reasons(model_path):
    r = cli("inspect", str(model_path))
    assert r.returncode == 0, r.stderr
    assert "conv2" in r.stdout and "depthwise conv, group=16" in r.stdout
    assert "1x1 kernel: spatial SVD does not apply" in r.stdout
    assert "total: 66,400 MACs" in r.stdout
    r = cli("inspect", str(model_path), "--json", "--input-shape", "x=2,1,12,12")
    data = json.loads(r.stdout)
    assert data["total_macs"] == 2 * 66400
    assert {row["name"] for row in data["layers"]} == {"conv1", "conv2", "conv3", "dw", "fc"}
    assert abs(sum(row["mac_share"] for row in data["layers"]) - 1) < 1e-9


def test_compress_writes_model_and_stats(model_path, tmp_path):
    out, stats_path = tmp_path / "out.onnx", tmp_path / "stats.json"
    before = digest(model_path)
    r = cli("compress", str(model_path), "-o", str(out), "--scheme", "weight_svd",
            "--ratios", "conv2=0.5,fc=0.6", "--stats", str(stats_path))
    assert r.returncode == 0, r.stderr
    assert digest(model_path) == before
    stats = json.loads(stats_path.read_text())
    assert [l["name"] for l in stats["layers"]] == ["conv2", "fc"]
    macs, params = mac_count.count(str(out), {"x": (1, 1, 12, 12)})
    assert (stats["mac_after"], stats["memory_after"]) == (macs, params)
    assert f"ratio {macs / 66400:.4f}" in r.stdout
    onnx.checker.check_model(str(out))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnx_compress")] == []


def test_compress_all_layers_with_eval_data(model_path, tmp_path):
    model = b.cnn_model()
    x = b.random_input(model, batch=32)["x"]
    labels = b.run(model, {"x": x})[0].argmax(1)
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    out = tmp_path / "out.onnx"
    r = cli("compress", str(model_path), "-o", str(out), "--scheme", "spatial_svd", "--ratio", "0.6",
            "--eval-data", str(tmp_path / "eval.npz"), "--multiplicity", "2")
    assert r.returncode == 0, r.stderr
    assert "top-1 accuracy" in r.stdout and "1.0000 ->" in r.stdout
    r = cli("eval", str(model_path), "--data", str(tmp_path / "eval.npz"))
    assert r.returncode == 0 and "1.0000" in r.stdout


def test_help_documents_every_flag():
    r = cli("compress", "--help")
    for flag in ("--output", "--scheme", "--ratios", "--ratio", "--multiplicity", "--metric",
                 "--input-shape", "--stats", "--eval-data"):
        assert flag in r.stdout


BAD = {
    "not onnx": (lambda p, t: _write(t / "bad.onnx", b"this is not a model"), [], "not a readable ONNX model"),
    "truncated": (lambda p, t: _write(t / "trunc.onnx", p.read_bytes()[:200]), [], "not a readable ONNX model"),
    "missing": (lambda p, t: t / "missing.onnx", [], "no such model file"),
    "unknown layer": (lambda p, t: p, ["--ratios", "conv9=0.5"], "unknown layer 'conv9'"),
    "ratio above 1": (lambda p, t: p, ["--ratios", "conv2=1.5"], r"ratio must be in (0, 1], got 1.5"),
    "ratio zero": (lambda p, t: p, ["--ratios", "conv2=0"], "ratio must be in (0, 1]"),
    "ratio not a number": (lambda p, t: p, ["--ratios", "conv2=half"], "is not a number"),
    "scheme does not apply": (lambda p, t: p, ["--ratios", "conv3=0.5", "--scheme", "spatial_svd"],
                              "1x1 kernel: spatial SVD does not apply"),
    "depthwise": (lambda p, t: p, ["--ratios", "dw=0.5"], "depthwise conv, group=16"),
    "missing output folder": (lambda p, t: p, ["-o", "{tmp}/no/such/dir/out.onnx"], "does not exist"),
    "output is input": (lambda p, t: p, ["-o", "{model}"], "is the input model"),
    "bad input shape": (lambda p, t: p, ["--input-shape", "x=1,a"], "--input-shape expects"),
    "eval data missing": (lambda p, t: p, ["--eval-data", "{tmp}/none.npz"], "no such data file"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_cleanly(case, model_path, tmp_path):
    make, extra, message = BAD[case]
    src = make(model_path, tmp_path)
    before = digest(src) if src.exists() else None
    out = tmp_path / "out.onnx"
    args = {"-o": str(out), "--scheme": "weight_svd", "--ratios": "conv2=0.5"}
    it = iter(extra)
    for flag in it:
        args[flag] = next(it)
    argv = ["compress", str(src)]
    for flag, value in args.items():
        argv += [flag, value.format(tmp=tmp_path, model=src)]
    r = cli(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-compress: error: "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {model_path.name, src.name} & {p.name for p in tmp_path.iterdir()})
    if before is not None:
        assert digest(src) == before


def test_inspect_bad_file_fails_cleanly(tmp_path):
    bad = _write(tmp_path / "bad.onnx", b"\x08\x07garbage")
    r = cli("inspect", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("onnx-compress: error: ")


def test_missing_required_flags_exit_nonzero(model_path):
    r = cli("compress", str(model_path), "--scheme", "weight_svd", "--ratio", "0.5")
    assert r.returncode == 2 and "--output" in r.stderr


def test_external_data_is_kept(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(b.cnn_model(), str(src), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    out = tmp_path / "res" / "out.onnx"
    out.parent.mkdir()
    r = cli("compress", str(src), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    assert (out.parent / "out.onnx.data").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.onnx", "out.onnx.data"]
    x = b.random_input(b.cnn_model())
    assert b.run(onnx.load(str(out)), x)[0].shape == (2, 10)


@pytest.mark.parametrize("args", [
    ("compress", "MODEL", "-o", "OUT", "--ratio", "0.5"),  # --scheme missing
    ("compress", "MODEL", "-o", "OUT", "--scheme", "weight_svd", "--ratio", "0.5", "--multiplicity", "0"),
    ("compress", "MODEL", "-o", "OUT", "--scheme", "weight_svd", "--ratio", "0.5", "--metric", "speed"),
    ("frobnicate",),
])
def test_argument_errors_are_one_line(model_path, tmp_path, args):
    out = tmp_path / "out.onnx"
    args = [str(model_path) if a == "MODEL" else str(out) if a == "OUT" else a for a in args]
    r = cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-compress") and "error:" in lines[0]
    assert "--help" in lines[0]
    assert not out.exists()
