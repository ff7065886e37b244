"""The CUDA execution provider: used where a GPU is present, a clear warning and the CPU otherwise.

The GPU tests skip with the reason on machines without onnxruntime-gpu and a working GPU;
the fallback tests skip where a GPU is present.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import onnx_compress as oc
from onnx_compress.runtime.activations import Activations
from onnx_compress.options import Settings
from onnx_compress import evaluators, ir, runtime
from onnx_compress.schemes.pruning import prune as pruning
from refs import CALIB, MODEL, TEST


def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        sess = ort.InferenceSession(str(MODEL), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in sess.get_providers()


CUDA = _cuda_works()
needs_gpu = pytest.mark.skipif(not CUDA, reason="no CUDA GPU here (needs onnxruntime-gpu and a GPU)")
without_gpu = pytest.mark.skipif(CUDA, reason="a CUDA GPU is present: the fallback does not apply")


@without_gpu
def test_use_cuda_without_a_gpu_warns_once_and_runs_on_the_cpu(caplog):
    runtime._warned.clear()
    acc = evaluators.accuracy(str(TEST))
    with caplog.at_level(logging.WARNING, logger="onnx_compress"):
        on_cpu = runtime.evaluate(ir.load(MODEL), acc, None, False)
        asked = runtime.evaluate(ir.load(MODEL), acc, None, True)
        runtime.evaluate(ir.load(MODEL), acc, None, True)
    warnings = [r for r in caplog.records if "CUDAExecutionProvider" in r.getMessage()]
    assert len(warnings) == 1 and "using the CPU" in warnings[0].getMessage()
    assert asked == on_cpu
    assert runtime.session(ir.load(MODEL), use_cuda=True).get_providers() == ["CPUExecutionProvider"]


@without_gpu
def test_cli_cuda_flag_without_a_gpu_warns_and_succeeds(tmp_path):
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-m", "onnx_compress.cli", "compress", str(MODEL), "-o", str(out),
                        "--scheme", "weight_svd", "--ratio", "0.5", "--eval-data", str(TEST), "--cuda"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("CUDAExecutionProvider") == 1 and "Traceback" not in r.stderr
    assert out.is_file()


@needs_gpu
def test_sessions_run_on_cuda_and_match_the_cpu():
    model = ir.load(MODEL)
    sess = runtime.session(model, use_cuda=True)
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    acc = evaluators.accuracy(str(TEST))
    assert runtime.evaluate(model, acc, None, True) == pytest.approx(runtime.evaluate(model, acc, None, False), abs=0.004)


@needs_gpu
def test_reconstruction_sampling_on_cuda_matches_the_cpu():
    model = ir.load(MODEL)
    name = next(n.input[0] for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/layer2"))
    tensors = {}
    for use_cuda in (False, True):
        settings = Settings(data=str(CALIB), num_reconstruction_samples=100, use_cuda=use_cuda)
        sampler = Activations(settings).sampler(model)
        tensors[use_cuda] = np.concatenate(sampler.original_tensor(name))
    np.testing.assert_allclose(tensors[True], tensors[False], rtol=1e-3, atol=1e-3)


@needs_gpu
def test_auto_mode_and_quantization_on_cuda(tmp_path):
    acc = evaluators.accuracy(str(TEST))
    _, gpu = oc.compress_auto(MODEL, "channel_pruning", 0.5, acc, 2, data=str(CALIB),
                              num_reconstruction_samples=200, use_cuda=True)
    _, cpu = oc.compress_auto(MODEL, "channel_pruning", 0.5, acc, 2, data=str(CALIB),
                              num_reconstruction_samples=200, use_cuda=False)
    assert gpu.mac_ratio <= 0.5 and abs(gpu.final_score - cpu.final_score) <= 0.05
    q = oc.quantize(MODEL, str(CALIB), use_cuda=True, max_batches=2)
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
