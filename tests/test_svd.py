"""Weight SVD and spatial SVD rewrites, checked through ONNX Runtime.

At full rank a split must reproduce the layer's outputs to ~1e-5 relative; at rank r the
effective weight must be the truncated SVD (Eckart-Young error), and the output error must
be exactly the conv/matmul of the residual weight.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as b
from onnx_compress import ir, layers
from onnx_compress.schemes import SCHEMES
from onnx_compress.schemes.svd import RankPlan
from onnx_compress.schemes.svd import apply_plans as apply
from onnx_compress.schemes.svd import factor as svd


def split(model: onnx.ModelProto, scheme: str, name: str, rank=None):
    """Split layer `name` at `rank` (None: full rank); return (new model, rank, layer)."""
    analysis = layers.analyze(model)
    layer = analysis.find(name)
    rc = SCHEMES[scheme].rank_cost(layer, "memory")
    rank = rc.full_rank if rank is None else rank
    apply(analysis, SCHEMES[scheme], [RankPlan(layer, Fraction(1), rank)])
    return ir.export(analysis.graph, model), rank, layer


def rel_err(a, b_):
    return float(np.abs(a - b_).max() / max(np.abs(b_).max(), 1e-12))


def factors(model: onnx.ModelProto, prefix: str) -> list[np.ndarray]:
    """Constant weights of the split nodes prefix.0, prefix.1 in order."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for i in range(2):
        node = next(n for n in model.graph.node if n.name == f"{prefix}.{i}")
        out.append(inits[node.input[1]])
    return out


CONV_CASES = [
    dict(),
    dict(strides=(2, 2)),
    dict(dilations=(2, 2), in_spatial=(11, 12)),
    dict(pads=(0, 1, 2, 0)),
    dict(pads=(1, 1, 1, 1), strides=(2, 1), bias=False),
    dict(kernel=(3, 5), pads=(1, 2, 0, 1), strides=(1, 2), dilations=(2, 1), in_spatial=(12, 13)),
    dict(auto_pad="SAME_UPPER", strides=(2, 2)),
    dict(auto_pad="SAME_LOWER", strides=(2, 2), in_spatial=(9, 9)),
    dict(auto_pad="VALID"),
    dict(n_in=9, n_out=3),  # full rank limited by n_out*kw
]
CONV1D_CASES = [
    dict(kernel=(3,), in_spatial=(15,)),
    dict(kernel=(5,), in_spatial=(20,), strides=(2,), pads=(2, 1), bias=False),
    dict(kernel=(3,), in_spatial=(20,), dilations=(3,), pads=(0, 2)),
]


@pytest.mark.parametrize("kw", CONV_CASES + CONV1D_CASES, ids=str)
def test_weight_svd_conv_full_rank_is_exact(kw):
    model = b.conv_model(**kw)
    out, _, _ = split(model, "weight_svd", "conv")
    x = b.random_input(model)
    assert rel_err(b.run(out, x)[0], b.run(model, x)[0]) < 1e-5
    assert [n.op_type for n in out.graph.node] == ["Conv", "Conv"]


@pytest.mark.parametrize("kw", CONV_CASES, ids=str)
def test_spatial_svd_conv_full_rank_is_exact(kw):
    model = b.conv_model(**kw)
    out, _, _ = split(model, "spatial_svd", "conv")
    x = b.random_input(model)
    assert rel_err(b.run(out, x)[0], b.run(model, x)[0]) < 1e-5
    kernels = [list(a.ints) for n in out.graph.node for a in n.attribute if a.name == "kernel_shape"]
    assert kernels == [[3 if "kernel" not in kw else kw["kernel"][0], 1], [1, kw.get("kernel", (3, 3))[1]]]


GEMM_CASES = [dict(trans_b=0), dict(trans_b=1), dict(trans_a=1), dict(trans_a=1, trans_b=1),
              dict(alpha=0.5, beta=2.0), dict(bias=False),
              dict(opset=9, trans_b=1, alpha=1.5, beta=0.5)]


@pytest.mark.parametrize("kw", GEMM_CASES, ids=str)
def test_weight_svd_gemm_full_rank_is_exact(kw):
    model = b.gemm_model(**kw)
    out, _, _ = split(model, "weight_svd", "gemm")
    x = b.random_input(model)
    assert rel_err(b.run(out, x)[0], b.run(model, x)[0]) < 1e-5


@pytest.mark.parametrize("lead", [(2, 3), (), (4,)])
def test_weight_svd_matmul_full_rank_is_exact(lead):
    model = b.matmul_model(lead=lead)
    out, _, _ = split(model, "weight_svd", "matmul")
    x = b.random_input(model)
    assert rel_err(b.run(out, x)[0], b.run(model, x)[0]) < 1e-5
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul"]


def _effective_conv_weight(scheme: str, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    if scheme == "weight_svd":  # w1 (r, i, 1..), w2 (o, r, *k)
        return np.einsum("or...,ri->oi...", w2.astype(np.float64), w1.reshape(w1.shape[:2]).astype(np.float64))
    # spatial: w1 (r, i, kh, 1), w2 (o, r, 1, kw)
    return np.einsum("riy,orx->oiyx", w1[..., 0].astype(np.float64), w2[:, :, 0, :].astype(np.float64))


def _matrix(scheme: str, w: np.ndarray) -> np.ndarray:
    if scheme == "weight_svd":
        return np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])
    return w.transpose(1, 2, 0, 3).reshape(w.shape[1] * w.shape[2], -1)


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd"])
@pytest.mark.parametrize("kw", [dict(n_in=8, n_out=10), dict(n_in=8, n_out=10, strides=(2, 2), pads=(0, 1, 2, 0))],
                         ids=str)
@pytest.mark.parametrize("rank", [1, 3, 5])
def test_truncated_split_error_is_the_svd_tail(scheme, kw, rank):
    model = b.conv_model(**kw)
    out, rank, layer = split(model, scheme, "conv", rank)
    w = layer.weight.astype(np.float64)
    w_eff = _effective_conv_weight(scheme, *factors(out, "conv"))
    s = svd.singular_values(_matrix(scheme, w))
    # Eckart-Young: the residual's Frobenius norm is the tail of the singular values.
    assert np.linalg.norm(w - w_eff) == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), rel=1e-5)
    # Output error = the conv of the residual weight, without bias (measured through ORT).
    residual = onnx.ModelProto()
    residual.CopyFrom(model)
    for t in residual.graph.initializer:
        if t.name == "W":
            t.CopyFrom(numpy_helper.from_array((w - w_eff).astype(np.float32), "W"))
        if t.name == "B":
            t.CopyFrom(numpy_helper.from_array(np.zeros(t.dims, np.float32), "B"))
    x = b.random_input(model)
    diff = b.run(model, x)[0] - b.run(out, x)[0]
    np.testing.assert_allclose(diff, b.run(residual, x)[0], atol=1e-5 * np.abs(b.run(model, x)[0]).max())


@pytest.mark.parametrize("trans_b", [0, 1])
def test_truncated_gemm_error_is_the_svd_tail(trans_b):
    model = b.gemm_model(k=12, n=9, trans_b=trans_b)
    out, rank, layer = split(model, "weight_svd", "gemm", 4)
    w = layer.weight.T if trans_b else layer.weight
    w1, w2 = factors(out, "gemm")
    s = svd.singular_values(w)
    assert np.linalg.norm(w - w1.astype(np.float64) @ w2) == pytest.approx(np.sqrt((s[4:] ** 2).sum()), rel=1e-5)


def test_singular_values_are_split_evenly():
    """Both factors carry sqrt(S): their column/row norms match."""
    model = b.gemm_model(k=16, n=12)
    out, _, _ = split(model, "weight_svd", "gemm", 6)
    w1, w2 = factors(out, "gemm")
    np.testing.assert_allclose(np.linalg.norm(w1, axis=0), np.linalg.norm(w2, axis=1), rtol=1e-4)


def test_float16_weights_keep_their_dtype():
    model = b.conv_model(dtype=np.float16)
    out, _, _ = split(model, "weight_svd", "conv")
    assert {t.data_type for t in out.graph.initializer if t.name != "B"} == {onnx.TensorProto.FLOAT16}
    x = b.random_input(model)
    assert rel_err(b.run(out, x)[0].astype(np.float32), b.run(model, x)[0].astype(np.float32)) < 5e-3


def test_split_nodes_are_named_after_the_layer():
    model = b.conv_model()
    out, _, _ = split(model, "weight_svd", "conv", 2)
    assert [n.name for n in out.graph.node] == ["conv.0", "conv.1"]
    onnx.checker.check_model(out, full_check=True)
