"""Data-aware (activation-whitened) SVD: exact at full rank, better outputs on data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import builders as b
import onnx_compress as oc
from onnx_compress import ir, layers, runtime
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.schemes.svd.moments import input_moments
from onnx_compress.schemes.svd import factor as svd

MODELS = Path(__file__).resolve().parents[1] / "models"
CALIB = MODELS / "digits32_calib.npz"


def test_whitened_svd_is_exact_at_full_rank_and_plain_for_white_inputs():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 7))
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))
    cov = x.T @ x / len(x)
    a, b_ = svd.whitened_svd(w, cov, 7)
    np.testing.assert_allclose(a @ b_, w, atol=1e-8)
    a1, b1 = svd.whitened_svd(w, np.eye(12), 3)
    a2, b2 = svd.truncated_svd(w, 3)
    np.testing.assert_allclose(a1 @ b1, a2 @ b2, atol=1e-8)


def test_whitened_svd_minimises_output_error_on_the_data():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 10))
    x = rng.normal(size=(2000, 16)) * np.linspace(0.05, 3, 16)  # anisotropic inputs
    cov = x.T @ x / len(x)
    plain = np.linalg.norm(x @ (w - np.matmul(*svd.truncated_svd(w, 4))))
    aware = np.linalg.norm(x @ (w - np.matmul(*svd.whitened_svd(w, cov, 4))))
    assert aware < 0.9 * plain  # Eckart-Young in the whitened space: never worse, here clearly better


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd"])
def test_data_aware_split_has_lower_layer_error_on_held_out_data(scheme):
    proto = ir.load(MODELS / "vgg_small.onnx")
    name = "/features/features.4/features.4.0/Conv"
    tensor = next(n.output[0] for n in proto.graph.node if n.name == name)
    held = {"input": np.load(MODELS / "digits32_test.npz")["input"][:128]}
    ref = runtime.session(proto, extra_outputs=[tensor]).run([tensor], held)[0]
    errs = {}
    for aware in (True, False):
        out, _ = oc.compress(proto, scheme, {name: 0.4}, data=str(CALIB), data_aware=aware)
        got = runtime.session(out, extra_outputs=[tensor]).run([tensor], held)[0]
        errs[aware] = np.linalg.norm(got - ref)
    assert errs[True] < errs[False]


def test_moments_match_the_layer_input_statistics():
    model = b.gemm_model(k=6, n=3, m=50)
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    analysis = layers.analyze(model)
    mom = input_moments(model, [analysis.find("gemm")], "weight_svd", Activations(Settings(data={"x": x})), samples=20000)
    np.testing.assert_allclose(mom["gemm"], x.T.astype(np.float64) @ x / 50, rtol=0.15, atol=0.05)


def test_data_aware_and_plain_dictionaries_are_not_mixed(tmp_path):
    path = tmp_path / "s.json"
    proto = ir.load(MODELS / "vgg_small.onnx")
    from onnx_compress.evaluators import fidelity

    ev = fidelity({"input": np.load(CALIB)["input"][:32]})
    oc.compress_auto(proto, "weight_svd", 0.7, ev, candidates=4, data=str(CALIB), num_reconstruction_samples=300,
                     scores_out=path)
    with pytest.raises(oc.ParameterError, match="scheme"):
        oc.compress_auto(proto, "weight_svd", 0.7, ev, candidates=4, saved_eval_scores_dict=path)
