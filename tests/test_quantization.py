"""Quantization hand-off: ONNX Runtime static QDQ int8 with our calibration data forms."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnx_compress as oc
from onnx_compress import evaluators, ir, runtime
from onnx_compress.errors import DataError, ParameterError
from onnx_compress.runtime.quantize import calibration_feeds, file_size
from refs import CALIB, MODEL, TEST, cli, digest


@pytest.fixture(scope="module")
def quantized():
    return oc.quantize(MODEL, str(CALIB))


def test_quantized_model_is_qdq_int8_and_keeps_accuracy(quantized):
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= ops.count("QuantizeLinear")
    assert "BatchNormalization" not in ops  # folded by pre-processing
    int8 = [t for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8) >= 9  # every conv weight stored as int8
    # per-channel scales: one per output channel of a conv weight
    scales = {t.name: t for t in quantized.graph.initializer}
    dq_conv = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {t.name for t in int8}]
    assert all(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1 for n in dq_conv)
    acc = evaluators.accuracy(str(TEST))
    before = runtime.evaluate(ir.load(MODEL), acc, None, False)
    after = runtime.evaluate(quantized, acc, None, False)
    assert after >= before - 0.02, (before, after)
    size = quantized.ByteSize()
    assert size < 0.7 * MODEL.stat().st_size


def test_quantize_accepts_every_data_form_and_is_deterministic(quantized):
    arrays = dict(np.load(CALIB))
    from_dict = oc.quantize(MODEL, arrays)
    feeds = [{"input": arrays["input"][i:i + 64]} for i in range(0, len(arrays["input"]), 64)]
    from_iter = oc.quantize(MODEL, feeds)
    for other in (from_dict, from_iter):
        a = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
        b = {t.name: onnx.numpy_helper.to_array(t) for t in other.graph.initializer}
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_calibration_data_is_checked_against_the_model():
    proto = ir.load(MODEL)
    with pytest.raises(DataError, match=r"input 'input' has shape \(4, 3, 32, 32\).*expects"):
        calibration_feeds(proto, {"input": np.zeros((4, 3, 32, 32), np.float32)})
    with pytest.raises(DataError, match="no array for model input"):
        calibration_feeds(proto, {"image": np.zeros((4, 1, 32, 32), np.float32)})
    with pytest.raises(DataError, match="expects float32"):
        calibration_feeds(proto, {"input": np.zeros((4, 1, 32, 32), np.int32)})
    feeds = calibration_feeds(proto, {"input": np.zeros((200, 1, 32, 32), np.float64), "labels": np.zeros(200)},
                              max_batches=2)
    assert len(feeds) == 2 and feeds[0]["input"].dtype == np.float32 and "labels" not in feeds[0]
    with pytest.raises(ParameterError, match="calibrate_method"):
        oc.quantize(MODEL, str(CALIB), calibrate_method="kl")
    with pytest.raises(ParameterError, match="max_batches"):
        oc.quantize(MODEL, str(CALIB), max_batches=0)


def test_cli_quantize_reports_size_and_accuracy(tmp_path):
    out = tmp_path / "q.onnx"
    before = digest(MODEL)
    r = cli("quantize", str(MODEL), "-o", str(out), "--data", str(CALIB), "--eval-data", str(TEST),
            "--calibration-batches", "4")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith(("original", "quantized"))}
    assert float(rows["original"][1]) == pytest.approx(0.968, abs=1e-3)
    assert float(rows["quantized"][3]) >= 0.94
    assert int(rows["quantized"][4].replace(",", "")) == file_size(out) < MODEL.stat().st_size
    assert digest(MODEL) == before


def test_cli_quantize_bad_data_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 3, 32, 32), np.float32))
    out = tmp_path / "q.onnx"
    r = cli("quantize", str(MODEL), "-o", str(out), "--data", str(bad))
    assert r.returncode == 2 and "quantization data: input 'input' has shape (4, 3, 32, 32)" in r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == [bad]
    r = cli("compress", str(MODEL), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5", "--quantize", "int8")
    assert r.returncode == 2 and "--quantize calibrates on --data" in r.stderr and not out.exists()


def test_compress_then_quantize_in_one_command(tmp_path):
    out, stats = tmp_path / "cq.onnx", tmp_path / "s.json"
    r = cli("compress", str(MODEL), "-o", str(out), "--scheme", "spatial_svd", "--ratio", "0.7",
            "--data", str(CALIB), "--eval-data", str(TEST), "--quantize", "int8", "--stats", str(stats), "-q")
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    pipeline = json.loads(stats.read_text())["pipeline"]
    assert [p["step"] for p in pipeline] == ["original", "compressed (spatial_svd)", "quantized (int8 QDQ)"]
    assert pipeline[2]["bytes"] == file_size(out) < pipeline[1]["bytes"] < pipeline[0]["bytes"]
    got = runtime.evaluate(model, evaluators.accuracy(str(TEST)), None, False)
    assert got == pytest.approx(pipeline[2]["score"], abs=1e-9)
    assert pipeline[2]["score"] >= pipeline[1]["score"] - 0.03
    assert "quantized (int8 QDQ)" in r.stdout


def test_quantize_prints_nothing_and_leaves_logging_alone(capsys):
    import logging

    handlers = list(logging.getLogger().handlers)
    q = oc.quantize(MODEL, str(CALIB), calibrate_method="percentile", preprocess=False, reduce_range=True,
                    max_batches=2)
    assert capsys.readouterr() == ("", "")
    assert logging.getLogger().handlers == handlers
    # reduce_range: 7-bit weights (symmetric), so every int8 weight lies in [-64, 64]
    int8 = [onnx.numpy_helper.to_array(t) for t in q.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]  # weights, not zero points
    assert int8 and all(w.min() >= -64 and w.max() <= 64 for w in int8)
    assert max(int(abs(w).max()) for w in int8) == 64
