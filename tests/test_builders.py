"""Sanity tests for the tiny ONNX model builders in tests/builders.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

try:  # run from repo root with `tests` importable as a package/namespace
    from tests import builders as B
except ImportError:  # pytest "prepend" import mode puts tests/ itself on sys.path
    import builders as B  # type: ignore[no-redef]


# ---------------------------------------------------------------- references


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers of the main graph as numpy arrays."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def ref_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    group: int,
) -> np.ndarray:
    """N-D grouped convolution via explicit loops over kernel offsets on the padded input."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    kshape = w.shape[2:]
    out_sp = [
        (xp.shape[2 + i] - dilations[i] * (kshape[i] - 1) - 1) // strides[i] + 1 for i in range(nd)
    ]
    cig, cog = c_in // group, c_out // group
    y = np.zeros((n, c_out, *out_sp))
    for g in range(group):
        xg = xp[:, g * cig:(g + 1) * cig]
        wg = w[g * cog:(g + 1) * cog]
        for kidx in np.ndindex(*kshape):
            sl = tuple(
                slice(kidx[i] * dilations[i], kidx[i] * dilations[i] + strides[i] * (out_sp[i] - 1) + 1, strides[i])
                for i in range(nd)
            )
            patch = xg[(slice(None), slice(None), *sl)]  # (n, cig, *out_sp)
            y[:, g * cog:(g + 1) * cog] += np.einsum("nc...,oc->no...", patch, wg[(slice(None), slice(None), *kidx)])
    if b is not None:
        y += b.astype(np.float64).reshape((1, -1) + (1,) * nd)
    return y


def ref_gemm(a, bmat, c, alpha, beta, trans_a, trans_b) -> np.ndarray:
    """Gemm reference: alpha * A' @ B' + beta * C."""
    a = a.T if trans_a else a
    bmat = bmat.T if trans_b else bmat
    y = alpha * (a.astype(np.float64) @ bmat.astype(np.float64))
    if c is not None:
        y = y + beta * c.astype(np.float64)
    return y


def _check_and_run(model: onnx.ModelProto, batch: int = 2, seed: int = 0):
    """check_model(full_check) + run with random inputs; returns (feeds, outputs)."""
    onnx.checker.check_model(model, full_check=True)
    feeds = B.random_input(model, seed=seed, batch=batch)
    outs = B.run(model, feeds)
    return feeds, outs


# ---------------------------------------------------------------- conv


CONV_CASES = {
    "default": dict(),
    "stride2": dict(strides=(2, 2), pads=(1, 1, 1, 1)),
    "dilation2": dict(dilations=(2, 2), pads=(2, 2, 2, 2)),
    "asym_pads": dict(pads=(0, 1, 2, 0)),
    "no_bias": dict(bias=False),
    "grouped": dict(n_in=4, n_out=6, group=2, strides=(1, 2)),
    "depthwise": dict(n_in=4, n_out=4, group=4, pads=(1, 1, 1, 1)),
    "rect_kernel": dict(kernel=(1, 3), pads=(0, 1, 0, 1)),
    "conv1d": dict(kernel=(3,), in_spatial=(11,), strides=(2,), pads=(1, 0), dilations=(1,)),
    "conv1d_dil": dict(kernel=(3,), in_spatial=(11,), dilations=(2,), bias=False),
}


@pytest.mark.parametrize("kw", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_conv_model_matches_reference(kw):
    m = B.conv_model(**kw)
    feeds, (y,) = _check_and_run(m)
    node = m.graph.node[0]
    assert node.op_type == "Conv" and node.name == "conv"
    nd = len(kw.get("kernel", (3, 3)))
    w = _inits(m)["W"]
    b = _inits(m).get("B")
    assert (b is None) == (kw.get("bias", True) is False)
    ref = ref_conv(
        feeds["x"], w, b,
        strides=tuple(kw.get("strides") or (1,) * nd),
        pads=tuple(kw.get("pads") or (0,) * (2 * nd)),
        dilations=tuple(kw.get("dilations") or (1,) * nd),
        group=kw.get("group", 1),
    )
    assert y.shape == ref.shape
    # declared output shape agrees with the actual one
    declared = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert declared == list(y.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv_model_dynamic_batch_and_auto_pad():
    m = B.conv_model(dynamic_batch=True, auto_pad="SAME_UPPER", strides=(2, 2))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    feeds, (y,) = _check_and_run(m, batch=3)
    assert feeds["x"].shape == (3, 4, 9, 10)
    assert y.shape == (3, 6, 5, 5)
    # SAME_UPPER: total pad = (out - 1) * stride + k - in, odd remainder goes to the end
    # H: 9 -> 5, total 2 -> (1, 1);  W: 10 -> 5, total 1 -> (0, 1);  ONNX layout (h0, w0, h1, w1)
    ref = ref_conv(feeds["x"], _inits(m)["W"], _inits(m)["B"], (2, 2), (1, 0, 1, 1), (1, 1), 1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv_model_seeded_and_opset():
    a, b = B.conv_model(seed=3), B.conv_model(seed=3)
    c = B.conv_model(seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    assert not np.array_equal(_inits(a)["W"], _inits(c)["W"])
    assert a.opset_import[0].version == 17 and a.ir_version == 8
    m = B.conv_model(opset=11)
    assert m.opset_import[0].version == 11
    _check_and_run(m)


def test_conv_model_float16():
    m = B.conv_model(dtype=np.float16)
    feeds, (y,) = _check_and_run(m)
    assert feeds["x"].dtype == np.float16 and y.dtype == np.float16
    ref = ref_conv(feeds["x"], _inits(m)["W"], _inits(m)["B"], (1, 1), (0, 0, 0, 0), (1, 1), 1)
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=2e-2, atol=2e-2)


def test_conv_model_bad_spatial_rank():
    with pytest.raises(ValueError):
        B.conv_model(kernel=(3,), in_spatial=(9, 10))


# ---------------------------------------------------------------- gemm / matmul


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(trans_a=1),
        dict(trans_b=1),
        dict(trans_a=1, trans_b=1, alpha=0.5, beta=2.0),
        dict(bias=False, alpha=1.5),
        dict(k=3, n=1, m=1),
    ],
)
def test_gemm_model_matches_reference(kw):
    m = B.gemm_model(**kw)
    feeds, (y,) = _check_and_run(m)
    node = m.graph.node[0]
    assert node.op_type == "Gemm" and node.name == "gemm"
    inits = _inits(m)
    k, n, mm = kw.get("k", 12), kw.get("n", 7), kw.get("m", 5)
    assert inits["B"].shape == ((n, k) if kw.get("trans_b") else (k, n))
    assert feeds["x"].shape == ((k, mm) if kw.get("trans_a") else (mm, k))
    if kw.get("bias", True):
        assert inits["C"].shape == (n,)
    ref = ref_gemm(
        feeds["x"], inits["B"], inits.get("C"),
        kw.get("alpha", 1.0), kw.get("beta", 1.0), kw.get("trans_a", 0), kw.get("trans_b", 0),
    )
    assert y.shape == (mm, n)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(lead=()), dict(lead=(4,), k=5, n=9)])
def test_matmul_model_matches_reference(kw):
    m = B.matmul_model(**kw)
    feeds, (y,) = _check_and_run(m)
    assert m.graph.node[0].op_type == "MatMul" and m.graph.node[0].name == "matmul"
    w = _inits(m)["W"]
    assert w.shape == (kw.get("k", 12), kw.get("n", 7))
    ref = feeds["x"].astype(np.float64) @ w.astype(np.float64)
    assert y.shape == (*kw.get("lead", (2, 3)), kw.get("n", 7))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- composite models


def _node_by_name(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    """The unique node with this name in the main graph."""
    (node,) = [n for n in model.graph.node if n.name == name]
    return node


def test_cnn_model():
    m = B.cnn_model()
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    _, (y,) = _check_and_run(m, batch=3)
    assert y.shape == (3, 10) and np.isfinite(y).all()
    ops = [n.op_type for n in m.graph.node]
    assert ops == ["Conv", "Relu", "Conv", "Relu", "Conv", "Relu", "Conv",
                   "GlobalAveragePool", "Flatten", "Gemm"]
    names = [n.name for n in m.graph.node]
    assert all(names) and len(set(names)) == len(names)
    inits = _inits(m)
    assert inits[_node_by_name(m, "conv1").input[1]].shape == (8, 1, 3, 3)
    assert inits[_node_by_name(m, "conv2").input[1]].shape == (16, 8, 3, 3)
    assert inits[_node_by_name(m, "conv3").input[1]].shape == (16, 16, 1, 1)
    dw = _node_by_name(m, "dw")
    assert inits[dw.input[1]].shape == (16, 1, 3, 3)
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 16
    assert inits[_node_by_name(m, "fc").input[1]].shape == (10, 16)
    # batch independence: each sample's output only depends on that sample
    x = B.random_input(m, batch=2)["x"]
    (y2,) = B.run(m, {"x": x})
    (y1,) = B.run(m, {"x": x[1:]})
    np.testing.assert_allclose(y2[1:], y1, rtol=1e-5, atol=1e-5)


def test_cnn_model_opset13():
    m = B.cnn_model(opset=13)
    assert m.opset_import[0].version == 13 and m.ir_version == 7
    np.testing.assert_allclose(
        B.run(m, B.random_input(m))[0], B.run(B.cnn_model(), B.random_input(m))[0], rtol=1e-5, atol=1e-5
    )


def test_constant_node_weights_model():
    m = B.constant_node_weights_model()
    assert len(m.graph.initializer) == 0
    _, (y,) = _check_and_run(m)
    assert y.shape == (2, 10)
    const_outputs = {n.output[0] for n in m.graph.node if n.op_type == "Constant"}
    for n in m.graph.node:
        if n.op_type == "Constant":
            assert [a.name for a in n.attribute] == ["value"]
        if n.op_type in ("Conv", "Gemm"):
            assert all(i in const_outputs for i in n.input[1:]), n.name
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 2
    assert sum(n.op_type == "Gemm" for n in m.graph.node) == 1


def test_if_branch_model():
    m = B.if_branch_model()
    onnx.checker.check_model(m, full_check=True)
    feeds = B.random_input(m)
    assert feeds["cond"].dtype == np.bool_ and feeds["cond"].shape == () and bool(feeds["cond"])
    assert feeds["x"].shape == (1, 3, 8, 8)
    (y_then,) = B.run(m, feeds)
    (y_else,) = B.run(m, {**feeds, "cond": np.array(False)})
    assert y_then.shape == y_else.shape == (1, 8, 8, 8)

    if_node = _node_by_name(m, "branch")
    attrs = {a.name: a.g for a in if_node.attribute}
    then_g, else_g = attrs["then_branch"], attrs["else_branch"]
    (then_conv,) = then_g.node
    (else_conv,) = else_g.node
    assert then_conv.name == "then_conv" and else_conv.name == "else_conv"
    outer = _inits(m)
    inner = {t.name: numpy_helper.to_array(t) for t in else_g.initializer}
    # then-branch weight is an outer-scope reference, else-branch weight lives in the subgraph
    assert then_conv.input[1] in outer and len(then_g.initializer) == 0
    assert else_conv.input[1] in inner and else_conv.input[1] not in outer

    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    pads = (1, 1, 1, 1)
    ref_then = relu(ref_conv(feeds["x"], outer[then_conv.input[1]], outer[then_conv.input[2]], (1, 1), pads, (1, 1), 1))
    ref_else = relu(ref_conv(feeds["x"], inner[else_conv.input[1]], inner[else_conv.input[2]], (1, 1), pads, (1, 1), 1))
    np.testing.assert_allclose(y_then, ref_then, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_else, ref_else, rtol=1e-5, atol=1e-5)


def test_empty_names_model():
    m = B.empty_names_model()
    assert all(n.name == "" for n in m.graph.node)
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 2
    assert any(n.op_type == "Gemm" for n in m.graph.node)
    _, (y,) = _check_and_run(m)
    assert y.shape == (2, 10)


def test_opset9_model():
    m = B.opset9_model()
    assert m.opset_import[0].version == 9
    graph_inputs = {i.name for i in m.graph.input}
    assert graph_inputs == {"x"}  # IR >= 4: initializers are not listed as inputs
    feeds, (y,) = _check_and_run(m)
    assert feeds["x"].shape == (1, 3, 8, 8) and y.shape == (1, 5)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 3 and "BatchNormalization" in ops and "Sum" in ops
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    assert len(gemm.input) == 3

    # full numpy reference of the graph
    w = _inits(m)
    x = feeds["x"]
    ca = ref_conv(x, w["conv_a.weight"], w["conv_a.bias"], (1, 1), (1, 1, 1, 1), (1, 1), 1)
    sh = (1, -1, 1, 1)
    bn = (ca - w["bn.mean"].reshape(sh)) / np.sqrt(w["bn.var"].reshape(sh) + 1e-5) * w["bn.scale"].reshape(sh) \
        + w["bn.bias"].reshape(sh)
    cb = ref_conv(np.maximum(bn, 0), w["conv_b.weight"], w["conv_b.bias"], (1, 1), (1, 1, 1, 1), (1, 1), 1)
    cc = ref_conv(x, w["conv_c.weight"], w["conv_c.bias"], (1, 1), (0, 0, 0, 0), (1, 1), 1)
    ref = (cb + cc).reshape(1, -1) @ w["fc.weight"].astype(np.float64) + w["fc.bias"]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_opset9_model_ir5():
    m = B.opset9_model(ir_version=5)
    assert m.ir_version == 5
    _check_and_run(m)


# ---------------------------------------------------------------- helpers


def test_random_input_skips_initializers_listed_as_inputs():
    m = B.conv_model(dynamic_batch=True)
    # old-style (IR 3) models list initializers as graph inputs as well
    w = m.graph.initializer[0]
    m.graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    feeds = B.random_input(m, batch=4, seed=1)
    assert set(feeds) == {"x"}
    assert feeds["x"].shape == (4, 4, 9, 10) and feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(feeds["x"], B.random_input(m, batch=4, seed=1)["x"])


@pytest.mark.parametrize(
    "builder",
    [B.conv_model, B.gemm_model, B.matmul_model, B.cnn_model, B.constant_node_weights_model,
     B.if_branch_model, B.empty_names_model, B.opset9_model],
)
def test_every_builder_is_deterministic_and_named_io(builder):
    a, b = builder(seed=0), builder(seed=0)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.graph.input[0].name == "x"
    assert [o.name for o in a.graph.output] == ["y"]
    assert a.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert a.ir_version >= 4
