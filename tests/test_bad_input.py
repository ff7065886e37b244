"""The bad-input suite: every user error ends cleanly.

CLI cases run `onnx_compress.cli.main(argv)` in-process and must exit 2 with exactly one
stderr line `onnx-compress: error: ...` (no traceback, no "internal error"), leave no new
file anywhere in the test's folder (outputs, `.data`, `.stats`, hidden staging files) and
no file changed (the inputs' sha256). A few run in a fresh interpreter to prove the real
exit status. Library cases assert the CompressionError subclass, a one-line message, and
that it names the layer or file where there is one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
import onnx_compress as oc
from onnx_compress import cli, ir, validate
from onnx_compress.errors import CompressionError, DataError, LayerError, ModelLoadError, ParameterError

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------ helpers
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones, links and folders included) -> what it is."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                seen[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                seen[rel] = "folder"
            else:
                seen[rel] = _sha(p)
    return seen


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def cnn() -> onnx.ModelProto:
    return b.cnn_model()


def calib_arrays(n: int = 32) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, 1, 12, 12)).astype(np.float32)
    return {"x": x}


def labelled(n: int = 32) -> dict[str, np.ndarray]:
    feed = calib_arrays(n)
    feed["labels"] = b.run(cnn(), feed)[0].argmax(1)
    return feed


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def set_input_dims(model: onnx.ModelProto, dims) -> onnx.ModelProto:
    shape = model.graph.input[0].type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, str):
            entry.dim_param = d
        else:
            entry.dim_value = d
    return model


def one_line(message: str) -> None:
    assert message and "\n" not in message.strip(), message


# ---------------------------------------------------------------------- malformed protos
def raw_too_short() -> onnx.ModelProto:
    m = cnn()
    t = init(m, "conv2.weight")
    t.raw_data = t.raw_data[:-8]
    return m


def float_data_count() -> onnx.ModelProto:
    m = cnn()
    t = init(m, "conv2.bias")
    t.ClearField("raw_data")
    t.float_data.extend([0.5] * 15)  # declared 16
    return m


def negative_initializer_dim() -> onnx.ModelProto:
    m = cnn()
    t = init(m, "fc.weight")
    t.dims[0] = -10
    return m


def extra_writer(output: str, name: str, at: int):
    """A builder: the CNN with one more Relu (named `name`, inserted at `at`) writing `output`."""
    def build() -> onnx.ModelProto:
        m = cnn()
        m.graph.node.insert(at, helper.make_node("Relu", ["c1"], [output], name=name))
        return m
    return build


two_writers = extra_writer("c2", "dup_relu", 2)
writes_initializer = extra_writer("conv2.bias", "shadow", 1)
writes_graph_input = extra_writer("x", "overwrite_x", 1)


def cycle() -> onnx.ModelProto:
    m = cnn()
    conv1 = m.graph.node[0]
    conv1.input[0] = "r3"  # conv1 <- relu3 <- conv3 <- relu2 <- conv2 <- relu1 <- conv1
    return m


def undefined_input() -> onnx.ModelProto:
    m = cnn()
    m.graph.node[1].input[0] = "nowhere"
    return m


def newer_opset() -> onnx.ModelProto:
    m = cnn()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    return m


def newer_ir() -> onnx.ModelProto:
    m = cnn()
    m.ir_version = onnx.IR_VERSION + 1
    return m


def if_duplicate_in_branch() -> onnx.ModelProto:
    m = b.if_branch_model()
    branch = m.graph.node[0]
    then = next(a for a in branch.attribute if a.name == "then_branch").g
    then.node.append(helper.make_node("Relu", ["x"], ["then_out"], name="then_dup"))
    return m


def if_reads_nothing() -> onnx.ModelProto:
    m = b.if_branch_model()
    branch = m.graph.node[0]
    other = next(a for a in branch.attribute if a.name == "else_branch").g
    other.node[0].input[0] = "ghost"
    return m


def only_depthwise() -> onnx.ModelProto:
    """No layer any scheme can take: one depthwise conv and a Relu."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw.w"], ["c"], name="dw", group=4, kernel_shape=[3, 3], pads=[1] * 4),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "dw_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "dw.w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def no_layers() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# ---------------------------------------------------------------------- external data
def external_model(folder: Path) -> Path:
    """cnn.onnx in `folder` with every tensor in cnn.onnx.data beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cnn.onnx"
    onnx.save_model(cnn(), str(path), save_as_external_data=True, location="cnn.onnx.data", size_threshold=0)
    return path


def _relocate(path: Path, location: str) -> None:
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())


def symlinked_outside(tmp: Path) -> Path:
    """model/cnn.onnx whose data model/cnn.onnx.data is a link to outside/secret.data."""
    path = external_model(tmp / "model")
    outside = tmp / "outside"
    outside.mkdir()
    (path.parent / "cnn.onnx.data").rename(outside / "secret.data")
    (path.parent / "cnn.onnx.data").symlink_to(outside / "secret.data")
    return path


def dotdot_outside(tmp: Path) -> Path:
    path = external_model(tmp / "model")
    outside = tmp / "outside"
    outside.mkdir()
    (path.parent / "cnn.onnx.data").rename(outside / "secret.data")
    _relocate(path, "../outside/secret.data")
    return path


def absolute_outside(tmp: Path) -> Path:
    path = external_model(tmp / "model")
    outside = tmp / "outside"
    outside.mkdir()
    (path.parent / "cnn.onnx.data").rename(outside / "secret.data")
    _relocate(path, str(outside / "secret.data"))
    return path


def external_length_mismatch(tmp: Path) -> Path:
    """Declared external length of conv2.weight 4 bytes short of its dims (file long enough)."""
    path = external_model(tmp / "model")
    m = onnx.load(str(path), load_external_data=False)
    t = init(m, "conv2.weight")
    for e in t.external_data:
        if e.key == "length":
            e.value = str(int(e.value) - 4)
    path.write_bytes(m.SerializeToString())
    return path


# ---------------------------------------------------------------------------- CLI cases
@dataclass(frozen=True)
class Case:
    """setup(tmp) writes the inputs and returns argv; message: a part of the error line."""

    id: str
    setup: Callable[[Path], list[str]]
    message: str
    file_backed: bool = False  # load external data file-backed (FILE_BACKED_LIMIT = 1)
    not_root: bool = False  # permissions do not stop root


def _cnn(tmp: Path) -> str:
    return str(save(cnn(), tmp / "cnn.onnx"))


def _npz(tmp: Path, name: str, **arrays) -> str:
    path = tmp / name
    np.savez(path, **arrays)
    return str(path)


def _calib(tmp: Path) -> str:
    return _npz(tmp, "calib.npz", **calib_arrays())


def _eval(tmp: Path) -> str:
    return _npz(tmp, "eval.npz", **labelled())


def _manual(tmp: Path, *extra: str, model: str | None = None) -> list[str]:
    return ["compress", model or _cnn(tmp), "-o", str(tmp / "out.onnx"), "--scheme", "weight_svd",
            "--ratio", "0.5", *extra]


def _auto(tmp: Path, *extra: str, scheme: str = "weight_svd", model: str | None = None) -> list[str]:
    return ["compress", model or _cnn(tmp), "-o", str(tmp / "out.onnx"), "--scheme", scheme, "--target", "0.8",
            "--eval-data", _eval(tmp), *extra]


def _with_model(make: Callable[[], onnx.ModelProto], command: str = "compress") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = str(save(make(), tmp / "bad.onnx"))
        if command == "inspect":
            return ["inspect", path]
        return _manual(tmp, model=path)
    return setup


def _write(name: str, data: bytes):
    def setup(tmp: Path) -> str:
        path = tmp / name
        path.write_bytes(data)
        return str(path)
    return setup


def _stats_json(tmp: Path, **override) -> str:
    payload = {"scheme": "weight_svd", "cost_metric": "mac", "mac_before": 100, "mac_after": 50,
               "memory_before": 10, "memory_after": 5, "mac_ratio": 0.5, "memory_ratio": 0.5,
               "baseline_score": None, "final_score": None, "input_dims": {"x": [1, 1, 12, 12]},
               "selection": None, "skipped": [], "parameters": {},
               "per_layer": [{"name": "conv2", "op": "Conv", "mac_before": 100, "mac_after": 50,
                              "memory_before": 10, "memory_after": 5, "ratio": 0.5, "requested": [0.5],
                              "status": "compressed", "reason": None}]}
    payload.update(override)
    path = tmp / "stats_in.json"
    path.write_text(json.dumps(payload))
    return str(path)


def _report_cmd(**override):
    def setup(tmp: Path) -> list[str]:
        return ["report", _stats_json(tmp, **override), "-o", str(tmp / "r.html")]
    return setup


def _folder(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return str(tmp / name)


def _readonly(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _qdq(tmp: Path) -> str:
    q = oc.quantize(cnn(), calib_arrays(16))
    return str(save(q, tmp / "qdq.onnx"))


CLI_CASES = [
    # ---- what test_cli.test_bad_input_fails_cleanly covers, and more of the same kind
    Case("not-onnx", lambda t: _manual(t, model=_write("bad.onnx", b"this is not a model")(t)),
         "not a readable ONNX model"),
    Case("truncated", lambda t: _manual(t, model=_write("trunc.onnx", cnn().SerializeToString()[:200])(t)),
         "not a readable ONNX model"),
    Case("empty-file", lambda t: _manual(t, model=_write("empty.onnx", b"")(t)), "empty.onnx"),
    Case("missing-model", lambda t: _manual(t, model=str(t / "missing.onnx")), "no such model file"),
    Case("inspect-missing-model", lambda t: ["inspect", str(t / "missing.onnx")], "no such model file"),
    Case("inspect-not-onnx", lambda t: ["inspect", _write("bad.onnx", b"\x08\x07garbage")(t)],
         "not a readable ONNX model"),
    Case("unknown-layer", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "weight_svd",
                                     "--ratios", "conv9=0.5"], "unknown layer 'conv9'"),
    Case("ratios-above-1", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "weight_svd",
                                      "--ratios", "conv2=1.5"], "ratio must be in (0, 1]"),
    Case("ratios-zero", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "weight_svd",
                                   "--ratios", "conv2=0"], "ratio must be in (0, 1]"),
    Case("ratios-not-number", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "weight_svd",
                                         "--ratios", "conv2=half"], "is not a number"),
    Case("ratios-no-equals", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "weight_svd",
                                        "--ratios", "conv2"], "--ratios expects NAME=R"),
    Case("scheme-does-not-apply", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme",
                                             "spatial_svd", "--ratios", "conv3=0.5"], "1x1 kernel"),
    Case("depthwise-layer", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "weight_svd",
                                       "--ratios", "dw=0.5"], "depthwise conv, group=16"),
    Case("argparse-multiplicity-zero", lambda t: _manual(t, "--multiplicity", "0"), "--multiplicity"),
    Case("argparse-unknown-metric", lambda t: _manual(t, "--metric", "speed"), "--metric"),
    Case("argparse-missing-output", lambda t: ["compress", _cnn(t), "--scheme", "weight_svd", "--ratio", "0.5"],
         "--output"),
    Case("argparse-ratio-and-target", lambda t: _manual(t, "--target", "0.5"), "not allowed with"),
    Case("argparse-unknown-command", lambda t: ["frobnicate", _cnn(t)], "frobnicate"),
    Case("seed-negative", lambda t: _manual(t, "--seed", "-1"), "--seed"),
    Case("unknown-scheme", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "tucker",
                                      "--ratio", "0.5"], "unknown scheme 'tucker'"),
    Case("bad-input-shape", lambda t: _manual(t, "--input-shape", "x=1,a"), "--input-shape expects"),
    Case("input-shape-unknown-input", lambda t: _manual(t, "--input-shape", "y=1,1,12,12"), "'y'"),
    Case("eval-data-missing", lambda t: _manual(t, "--eval-data", str(t / "none.npz")), "no such data file"),
    Case("pruning-without-data", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme",
                                            "channel_pruning", "--ratio", "0.5"], "needs calibration data"),
    Case("data-not-npz", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "channel_pruning",
                                    "--ratio", "0.5", "--data", _write("bad.npz", b"not a zip")(t)],
         "not a readable .npz"),
    Case("data-wrong-input-name", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme",
                                             "channel_pruning", "--ratio", "0.5", "--data",
                                             _npz(t, "w.npz", y=calib_arrays()["x"])], "'x'"),
    Case("data-wrong-shape", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme",
                                        "channel_pruning", "--ratio", "0.5", "--data",
                                        _npz(t, "w.npz", x=np.zeros((8, 3, 12, 12), np.float32))], "'x'"),
    Case("data-wrong-dtype", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme",
                                        "channel_pruning", "--ratio", "0.5", "--data",
                                        _npz(t, "w.npz", x=np.zeros((8, 1, 12, 12), np.complex64))], "complex64"),
    Case("data-no-arrays", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme",
                                      "channel_pruning", "--ratio", "0.5", "--data", _npz(t, "empty.npz")],
         "empty.npz"),
    Case("eval-data-no-arrays", lambda t: _manual(t, "--eval-data", _npz(t, "empty.npz")), "empty.npz"),
    Case("accuracy-without-labels", lambda t: _auto(t, "--eval", "accuracy", "--eval-data",
                                                    _npz(t, "nolabels.npz", **calib_arrays())), "labels"),
    Case("config-malformed", lambda t: _auto(t, "--config", _write("c.json", b"[{oops")(t)), "c.json"),
    Case("config-unknown-key", lambda t: _auto(t, "--config", _write("c.json", b'[{"layers": ["conv2"]}]')(t)),
         "unknown key 'layers'"),
    Case("scores-in-other-model", lambda t: _auto(t, "--scores-in", _write("s.json", json.dumps(
        {"format": "onnx_compress eval scores", "model_digest": "0" * 64, "scheme": "weight_svd", "metric": "mac",
         "candidates": [0.1 * i for i in range(1, 10)], "baseline": 1.0, "scores": {}}).encode())(t)), "s.json"),
    Case("scores-in-not-json", lambda t: _auto(t, "--scores-in", _write("s.json", b"{")(t)), "s.json"),
    # ---- 10: malformed protos
    Case("raw-data-too-short", _with_model(raw_too_short), "'conv2.weight'"),
    Case("float-data-count", _with_model(float_data_count), "'conv2.bias'"),
    Case("negative-initializer-dim", _with_model(negative_initializer_dim), "'fc.weight'"),
    Case("external-length-mismatch", lambda t: _manual(t, model=str(external_length_mismatch(t))),
         "'conv2.weight'"),
    Case("external-length-mismatch-file-backed", lambda t: _manual(t, model=str(external_length_mismatch(t))),
         "'conv2.weight'", file_backed=True),
    Case("two-nodes-write-a-tensor", _with_model(two_writers), "'c2'"),
    Case("node-writes-initializer", _with_model(writes_initializer), "'conv2.bias'"),
    Case("node-writes-graph-input", _with_model(writes_graph_input), "'x'"),
    Case("cycle", _with_model(cycle), "cycle"),
    Case("inspect-cycle", _with_model(cycle, "inspect"), "cycle"),
    Case("reads-undefined-tensor", _with_model(undefined_input), "'nowhere'"),
    Case("negative-input-dim", _with_model(lambda: set_input_dims(cnn(), [1, 1, -3, 12])), "negative dim"),
    Case("inspect-negative-batch", _with_model(lambda: set_input_dims(cnn(), [-2, 1, 12, 12]), "inspect"),
         "negative dim"),
    Case("zero-input-dim", _with_model(lambda: set_input_dims(cnn(), [1, 1, 0, 12]), "inspect"), "zero dim"),
    Case("newer-opset", _with_model(newer_opset), f"opset {onnx.defs.onnx_opset_version() + 1}"),
    Case("inspect-newer-opset", _with_model(newer_opset, "inspect"), onnx.__version__),
    Case("newer-ir-version", _with_model(newer_ir), f"IR version {onnx.IR_VERSION + 1}"),
    Case("if-branch-two-writers", _with_model(if_duplicate_in_branch, "inspect"), "'then_out'"),
    Case("if-branch-reads-undefined", _with_model(if_reads_nothing, "inspect"), "'ghost'"),
    # ---- 11: small ones
    Case("scheme-comma-only", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", ",",
                                         "--ratio", "0.5"], "--scheme"),
    Case("scheme-comma-only-auto", lambda t: _auto(t, scheme=" , "), "--scheme"),
    Case("report-wrong-type-per-layer", _report_cmd(per_layer="conv2"), "per_layer"),
    Case("report-wrong-type-mac", _report_cmd(mac_before="lots"), "mac_before"),
    Case("report-wrong-type-layer-field",
         _report_cmd(per_layer=[{"name": "conv2", "op": "Conv", "mac_before": 1, "mac_after": 1,
                                 "memory_before": 1, "memory_after": 1, "ratio": "half", "requested": [],
                                 "status": "compressed", "reason": None}]), "ratio"),
    Case("report-selection-not-dict", _report_cmd(selection=[1, 2]), "selection"),
    Case("report-stats-missing", lambda t: ["report", str(t / "none.json"), "-o", str(t / "r.html")], "none.json"),
    Case("eval-iterations-zero", lambda t: _auto(t, "--eval-iterations", "0"), "--eval-iterations"),
    Case("eval-iterations-negative", lambda t: _auto(t, "--eval-iterations", "-2"), "--eval-iterations"),
    Case("eval-iterations-zero-manual", lambda t: _manual(t, "--eval-data", _eval(t), "--eval-iterations", "0"),
         "--eval-iterations"),
    Case("candidates-one", lambda t: _auto(t, "--candidates", "1"), "--candidates"),
    Case("candidates-zero", lambda t: _auto(t, "--candidates", "0"), "--candidates"),
    Case("samples-zero", lambda t: ["compress", _cnn(t), "-o", str(t / "o.onnx"), "--scheme", "channel_pruning",
                                    "--ratio", "0.5", "--data", _calib(t), "--samples", "0"], "--samples"),
    Case("workers-zero", lambda t: _auto(t, "--workers", "0"), "--workers"),
    Case("latency-batch-zero", lambda t: _auto(t, "--metric", "latency", "--latency-batch", "0"),
         "--latency-batch"),
    Case("target-zero", lambda t: _auto(t)[:-4] + ["--eval-data", _eval(t), "--target", "0"], "--target"),
    Case("target-above-one", lambda t: _auto(t)[:-4] + ["--eval-data", _eval(t), "--target", "1.5"], "--target"),
    Case("target-nan", lambda t: _auto(t)[:-4] + ["--eval-data", _eval(t), "--target", "nan"], "--target"),
    Case("ratio-nan", lambda t: _manual(t)[:-1] + ["nan"], "--ratio"),
    Case("ratio-negative", lambda t: _manual(t)[:-1] + ["-1"], "--ratio"),
    Case("ratio-two", lambda t: _manual(t)[:-1] + ["2"], "--ratio"),
    Case("calibration-batches-zero", lambda t: ["quantize", _cnn(t), "-o", str(t / "q.onnx"), "--data", _calib(t),
                                                "--calibration-batches", "0"], "--calibration-batches"),
    Case("no-measurable-cost", lambda t: _auto(t, model=str(save(set_input_dims(cnn(), ["N", 1, "H", "W"]),
                                                                  t / "dyn.onnx"))), "--input-shape"),
    Case("no-layer-at-all-auto", lambda t: _auto(t, model=str(save(no_layers(), t / "relu.onnx"))), "no layer of"),
    # ---- 12: nothing to compress
    Case("no-compressible-layer", _with_model(only_depthwise), "no layer of"),
    Case("no-layer-at-all", _with_model(no_layers), "no layer of"),
    Case("no-compressible-layer-auto", lambda t: _auto(t, model=str(save(only_depthwise(), t / "dw.onnx"))),
         "no layer of"),
    # ---- 1: external data read from outside the model's folder (the lead's)
    Case("external-symlink-compress", lambda t: _manual(t, model=str(symlinked_outside(t))), "symbolic link"),
    Case("external-symlink-compress-file-backed", lambda t: _manual(t, model=str(symlinked_outside(t))),
         "symbolic link", file_backed=True),
    Case("external-symlink-inspect", lambda t: ["inspect", str(symlinked_outside(t))], "symbolic link"),
    Case("external-symlink-inspect-file-backed", lambda t: ["inspect", str(symlinked_outside(t))],
         "symbolic link", file_backed=True),
    Case("external-dotdot-compress", lambda t: _manual(t, model=str(dotdot_outside(t))), "../outside"),
    Case("external-dotdot-file-backed", lambda t: _manual(t, model=str(dotdot_outside(t))), "../outside",
         file_backed=True),
    Case("external-absolute-inspect", lambda t: ["inspect", str(absolute_outside(t))], "invalid external data"),
    Case("external-absolute-compress-file-backed", lambda t: _manual(t, model=str(absolute_outside(t))),
         "invalid external data", file_backed=True),
    # ---- 2: quantize an already quantized model (the lead's)
    Case("quantize-qdq-model", lambda t: ["quantize", _qdq(t), "-o", str(t / "q2.onnx"), "--data", _calib(t)],
         "already quantized"),
    # ---- 3 and 8: output paths, all checked before any work (the lead's)
    Case("stats-is-folder", lambda t: _manual(t, "--stats", _folder(t, "stats_dir")), "--stats"),
    Case("stats-in-readonly-folder", lambda t: _manual(t, "--stats", str(_readonly(t, "ro") / "s.json")),
         "not writable", not_root=True),
    Case("report-is-folder", lambda t: _manual(t, "--report", _folder(t, "rep_dir")), "is a folder"),
    Case("scores-out-is-folder", lambda t: _auto(t, "--scores-out", _folder(t, "scores_dir")), "is a folder"),
    Case("output-is-folder", lambda t: _manual(t)[:2] + ["-o", _folder(t, "out_dir")] + _manual(t)[4:],
         "is a folder"),
    Case("output-folder-missing", lambda t: _manual(t)[:2] + ["-o", str(t / "no" / "such" / "o.onnx")]
         + _manual(t)[4:], "does not exist"),
    Case("output-is-input", lambda t: _manual(t)[:2] + ["-o", str(t / "cnn.onnx")] + _manual(t)[4:],
         "is the input model"),
    Case("output-is-data", lambda t: ["compress", _cnn(t), "-o", _calib(t), "--scheme", "channel_pruning",
                                      "--ratio", "0.5", "--data", str(t / "calib.npz")], "--data"),
    Case("stats-is-output", lambda t: _manual(t, "--stats", str(t / "out.onnx")), "also the"),
    Case("output-in-readonly-folder", lambda t: _manual(t)[:2] + ["-o", str(_readonly(t, "ro") / "o.onnx")]
         + _manual(t)[4:], "not writable", not_root=True),
    Case("quantize-output-readonly", lambda t: ["quantize", _cnn(t), "-o", str(_readonly(t, "ro") / "q.onnx"),
                                                "--data", _calib(t)], "not writable", not_root=True),
    Case("report-output-is-folder", lambda t: ["report", _stats_json(t), "-o", _folder(t, "r_dir")], "folder"),
]

FAST = ("stats-is-folder", "report-is-folder", "scores-out-is-folder", "output-is-folder",
        "output-folder-missing", "output-is-input", "output-is-data", "stats-is-output",
        "output-in-readonly-folder", "stats-in-readonly-folder", "quantize-output-readonly")


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case: Case, tmp_path, capsys, monkeypatch):
    if case.not_root and ROOT_USER:
        pytest.skip("running as root: folder permissions do not stop writes")
    if case.file_backed:
        monkeypatch.setattr(ir.model, "FILE_BACKED_LIMIT", 1)
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    t0 = time.perf_counter()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors exit from parse_args
        rc = exc.code
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("onnx-compress: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert case.message in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # no new, changed or removed file; inputs' sha256 unchanged
    for folder in tmp_path.rglob("*"):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    if case.id in FAST:  # output paths are refused before the model is even analysed
        assert seconds < 2.0, seconds
    if "outside" in {p.name for p in tmp_path.iterdir()}:  # nothing from outside the model's folder was read
        secret = (tmp_path / "outside" / "secret.data").read_bytes()[:64]
        for p in tmp_path.rglob("*"):
            if p.is_file() and not p.is_symlink() and p.parent.name != "outside":
                assert secret not in p.read_bytes(), p


SUBPROCESS = ["not-onnx", "cycle", "newer-opset", "scheme-comma-only", "no-compressible-layer",
              "external-symlink-compress"]


@pytest.mark.parametrize("case", [c for c in CLI_CASES if c.id in SUBPROCESS], ids=lambda c: c.id)
def test_cli_bad_input_subprocess(case: Case, tmp_path):
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "onnx_compress.cli", *argv], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-compress: error: "), r.stderr
    assert "Traceback" not in r.stderr and case.message in lines[0]
    assert snapshot(tmp_path) == before


def test_inspect_model_without_compressible_layer_succeeds(tmp_path, capsys):
    """12: inspect may list nothing to compress and exit 0; only compress refuses."""
    path = save(only_depthwise(), tmp_path / "dw.onnx")
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "depthwise" in out


def test_paddle_style_batch_minus_one_still_loads(tmp_path):
    """-1 as the batch dim (older paddle2onnx) is dynamic, not refused."""
    m = set_input_dims(cnn(), [-1, 1, 12, 12])
    analysis = oc.inspect(m)
    assert analysis.input_dims["x"] == (1, 1, 12, 12)


# ------------------------------------------------------------------------ library cases
def _score(value):
    return lambda session, iterations, use_cuda: value


def _auto_lib(**kw):
    return oc.compress_auto(cnn(), "weight_svd", kw.pop("target", 0.8), kw.pop("cb", _score(1.0)), **kw)


@dataclass(frozen=True)
class LibCase:
    id: str
    call: Callable[[Path], object]
    error: type
    names: str  # the message must contain this (layer, file, flag or value)


def _monkey_onnx_newer(tmp):  # onnx would know the opset, ONNX Runtime does not
    m = cnn()
    m.opset_import[0].version = 99
    limits = validate._onnx_limits
    validate._onnx_limits = lambda: {**limits(), "": 99, "ai.onnx": 99}
    try:
        return oc.inspect(m)
    finally:
        validate._onnx_limits = limits


def _ratio_true(tmp):
    return oc.compress(cnn(), "weight_svd", True)


LIB_CASES = [
    LibCase("raw-too-short-proto", lambda t: oc.compress(raw_too_short(), "weight_svd", 0.5), ModelLoadError,
            "'conv2.weight'"),
    LibCase("raw-too-short-file", lambda t: oc.inspect(str(save(raw_too_short(), t / "short.onnx"))),
            ModelLoadError, "short.onnx"),
    LibCase("float-data-count", lambda t: oc.inspect(float_data_count()), ModelLoadError, "15 values"),
    LibCase("two-writers", lambda t: oc.inspect(two_writers()), ModelLoadError, "dup_relu"),
    LibCase("cycle-names-nodes", lambda t: oc.inspect(cycle()), ModelLoadError, "'conv1'"),
    LibCase("newer-opset", lambda t: oc.inspect(newer_opset()), ModelLoadError, onnx.__version__),
    LibCase("opset-newer-than-ort", _monkey_onnx_newer, ModelLoadError, "ONNX Runtime"),
    LibCase("if-branch-two-writers", lambda t: oc.inspect(if_duplicate_in_branch()), ModelLoadError, "then_dup"),
    LibCase("ratio-true", _ratio_true, ParameterError, "True"),
    LibCase("ratios-dict-true", lambda t: oc.compress(cnn(), "weight_svd", {"conv2": True}), ParameterError,
            "conv2"),
    LibCase("target-true", lambda t: _auto_lib(target=True), ParameterError, "True"),
    LibCase("target-nan", lambda t: _auto_lib(target=float("nan")), ParameterError, "nan"),
    LibCase("callback-returns-none", lambda t: oc.compress(cnn(), "weight_svd", 0.5, eval_callback=_score(None)),
            ParameterError, "eval_callback"),
    LibCase("callback-returns-str", lambda t: oc.compress(cnn(), "weight_svd", 0.5, eval_callback=_score("0.9")),
            ParameterError, "eval_callback"),
    LibCase("callback-returns-nan", lambda t: _auto_lib(cb=_score(float("nan"))), ParameterError, "nan"),
    LibCase("callback-returns-array", lambda t: _auto_lib(cb=_score(np.array([0.5, 0.6]))), ParameterError,
            "eval_callback"),
    LibCase("callback-returns-bool", lambda t: _auto_lib(cb=_score(True)), ParameterError, "eval_callback"),
    LibCase("eval-iterations-zero", lambda t: oc.compress(cnn(), "weight_svd", 0.5, eval_callback=_score(1.0),
                                                          eval_iterations=0), ParameterError, "eval_iterations"),
    LibCase("candidates-one", lambda t: _auto_lib(candidates=1), ParameterError, "candidates"),
    LibCase("workers-zero", lambda t: _auto_lib(workers=0), ParameterError, "workers"),
    LibCase("samples-zero", lambda t: oc.compress(cnn(), "channel_pruning", 0.5, data=calib_arrays(),
                                                  num_reconstruction_samples=0), ParameterError,
            "num_reconstruction_samples"),
    LibCase("empty-scheme-list", lambda t: oc.compress(cnn(), [], 0.5), ParameterError, "scheme"),
    LibCase("data-dict-empty", lambda t: oc.compress(cnn(), "channel_pruning", 0.5, data={}), DataError, "no array"),
    LibCase("npz-no-arrays", lambda t: oc.compress(cnn(), "channel_pruning", 0.5,
                                                   data=_npz(t, "nothing.npz")), DataError, "nothing.npz"),
    LibCase("no-compressible-layer", lambda t: oc.compress(only_depthwise(), "weight_svd", 0.5), LayerError,
            "depthwise"),
    LibCase("no-compressible-layer-file", lambda t: oc.compress(str(save(only_depthwise(), t / "dw.onnx")),
                                                                "spatial_svd", 0.5), LayerError, "dw.onnx"),
    LibCase("quantize-qdq", lambda t: oc.quantize(oc.quantize(cnn(), calib_arrays(16)), calib_arrays(16)),
            ParameterError, "already quantized"),
    LibCase("external-symlink", lambda t: ir.load(symlinked_outside(t)), ModelLoadError, "cnn.onnx"),
    LibCase("report-wrong-types", lambda t: __import__("onnx_compress.report").report.render(
        {"scheme": "weight_svd", "per_layer": [{"name": "conv2", "status": 3}]}), ParameterError, "per_layer[0]"),
    LibCase("stats-digest-wrong-shape", lambda t: oc.compress(cnn(), "weight_svd", 0.5,
                                                              input_shape={"x": (1, 1, 12)}), ParameterError, "'x'"),
]


@pytest.mark.parametrize("case", LIB_CASES, ids=[c.id for c in LIB_CASES])
def test_library_bad_input(case: LibCase, tmp_path):
    with pytest.raises(CompressionError) as info:
        case.call(tmp_path)
    assert isinstance(info.value, case.error), (type(info.value).__name__, str(info.value))
    message = str(info.value)
    one_line(message)
    assert case.names in message, message


@pytest.mark.parametrize("value", [np.float32(0.75), np.array(0.75), 0.75, 1, np.int64(1)],
                         ids=["numpy-scalar", "0-d-array", "float", "int", "numpy-int"])
def test_callback_numbers_are_accepted(value):
    _, stats = oc.compress(cnn(), "weight_svd", 0.5, eval_callback=_score(value))
    assert math.isclose(stats.baseline_score, float(value))
