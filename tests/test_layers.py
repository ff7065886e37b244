"""onnx_compress.layers on its own: layer discovery, shapes, MACs, refusals, input dims."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
from onnx_compress import layers
from onnx_compress.errors import LayerError, ParameterError, ShapeError


def _single(op_nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(op_nodes, "g", inputs, outputs, inits)
    return b._make_model(graph)


def _vi(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _identity_model(inputs: dict) -> onnx.ModelProto:
    """One Identity per input (declared dims as given; None: rank unknown)."""
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"], name=f"id_{n}") for n in inputs]
    return _single(nodes, [_vi(n, d) for n, d in inputs.items()],
                   [_vi(f"{n}_out", None) for n in inputs], [])


# ----------------------------------------------------------------------------- MACs
@pytest.mark.parametrize("kwargs,out_shape,macs", [
    # out (2,6,7,8); each output sums 4 channels x 3x3
    ({}, (2, 6, 7, 8), 2 * 6 * 7 * 8 * 4 * 9),
    # group 2, stride 2, pads 1: out spatial (9+2-3)//2+1 = 5, (10+2-3)//2+1 = 5; 2 channels per group
    ({"group": 2, "strides": (2, 2), "pads": (1, 1, 1, 1)}, (2, 6, 5, 5), 2 * 6 * 5 * 5 * 2 * 9),
    # 1-D conv, dilation 2: out 20 - 2*2 = 16
    ({"kernel": (3,), "in_spatial": (20,), "dilations": (2,)}, (2, 6, 16), 2 * 6 * 16 * 4 * 3),
])
def test_conv_macs_and_memory_match_hand_counts(kwargs, out_shape, macs):
    model = b.conv_model(n_in=4, n_out=6, **kwargs)
    analysis = layers.analyze(model)
    (layer,) = analysis.layers
    assert layer.name == "conv" and layer.op == "Conv" and layer.reason is None
    assert layer.out_shape == out_shape
    assert layer.in_shape == (2, 4, *kwargs.get("in_spatial", (9, 10)))
    assert layer.mac == macs
    group = kwargs.get("group", 1)
    kernel = kwargs.get("kernel", (3, 3))
    assert layer.memory == 6 * (4 // group) * int(np.prod(kernel))
    assert layer.group == group and layer.kernel == kernel
    assert analysis.total("mac") == macs and analysis.total("memory") == layer.memory


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_macs_and_matrix_shape_for_every_transpose(trans_a, trans_b):
    model = b.gemm_model(k=12, n=7, m=5, trans_a=trans_a, trans_b=trans_b)
    (layer,) = layers.analyze(model).layers
    assert layer.out_shape == (5, 7)
    assert layer.mac == 5 * 7 * 12
    assert layer.memory == 12 * 7
    assert layer.matrix_shape() == (12, 7)  # (K, N) whatever the stored layout
    assert layer.describe() == ("Gemm 7x12" if trans_b else "Gemm 12x7")
    assert layer.kernel == ()


def test_matmul_macs_count_every_leading_dim():
    (layer,) = layers.analyze(b.matmul_model(k=12, n=7, lead=(2, 3))).layers
    assert layer.out_shape == (2, 3, 7) and layer.in_shape == (2, 3, 12)
    assert layer.mac == 2 * 3 * 7 * 12
    assert layer.matrix_shape() == (12, 7) and layer.describe() == "MatMul 12x7"


def test_cnn_totals_match_a_hand_count_at_batch_one_and_scale_with_input_shape():
    # conv1 1->8 3x3 @12x12, conv2 8->16 3x3 s2 @6x6, conv3 1x1 16->16, dw 3x3 group 16, fc 16->10
    per_layer = {"conv1": 8 * 144 * 9, "conv2": 16 * 36 * 72, "conv3": 16 * 36 * 16, "dw": 16 * 36 * 9, "fc": 160}
    analysis = layers.analyze(b.cnn_model())
    assert analysis.input_dims == {"x": (1, 1, 12, 12)}  # the symbolic batch is costed at 1
    assert {l.name: l.mac for l in analysis.layers} == per_layer
    assert analysis.total("mac") == sum(per_layer.values()) == 66400
    assert analysis.total("memory") == 72 + 1152 + 256 + 144 + 160
    assert analysis.find("dw").group == 16 and analysis.find("dw").describe() == "Conv 16x1x3x3"
    assert analysis.find("fc").attrs["transB"] == 1
    batch4 = layers.analyze(b.cnn_model(), (4, 1, 12, 12))
    assert {l.name: l.mac for l in batch4.layers} == {k: 4 * v for k, v in per_layer.items()}
    assert batch4.shapes["c2"] == (4, 16, 6, 6)


def test_weights_in_constant_nodes_and_subgraphs_are_layers():
    analysis = layers.analyze(b.constant_node_weights_model())
    assert [l.name for l in analysis.compressible] == ["conv1", "conv2", "fc"]
    assert analysis.find("conv1").weight.shape == (8, 3, 3, 3)
    assert analysis.find("fc").mac == 10 * 16
    sub = layers.analyze(b.if_branch_model())
    for name in ("then_conv", "else_conv"):
        layer = sub.find(name)
        assert layer.in_subgraph and layer.graph is not sub.graph
        assert layer.out_shape == (1, 8, 8, 8) and layer.mac == 8 * 64 * 27
    assert sub.total("mac") == 2 * 8 * 64 * 27


def test_empty_node_names_are_named_by_their_first_output():
    analysis = layers.analyze(b.empty_names_model())
    assert [l.name for l in analysis.layers] == ["c1", "c2", "y"]
    assert analysis.find("c2").mac == 16 * 16 * 72


# -------------------------------------------------------------------------- refusals
def _refusal_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    nan_w, nan_b = w.copy(), np.zeros(4, np.float32)
    nan_w[1, 2] = np.nan
    nan_b[3] = np.inf
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w", w), ("w_nan", nan_w), ("b_inf", nan_b), ("w3d", np.ones((2, 4, 4), np.float32)),
        ("w_int", np.ones((4, 4), np.int32)), ("a_const", w)]]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["ok"], name="ok"),
        helper.make_node("MatMul", ["x", "x2"], ["dyn"], name="dynamic"),
        helper.make_node("MatMul", ["a_const", "x"], ["left"], name="left"),
        helper.make_node("Gemm", ["a_const", "x"], ["gemm_a"], name="gemm_a"),
        helper.make_node("MatMul", ["x", "w3d"], ["batched"], name="batched"),
        helper.make_node("MatMul", ["xi", "w_int"], ["ints"], name="ints"),
        helper.make_node("MatMul", ["x", "w_nan"], ["nan"], name="nan"),
        helper.make_node("Gemm", ["x", "w", "b_inf"], ["inf_bias"], name="inf_bias"),
    ]
    outs = ["ok", "dyn", "left", "gemm_a", "batched", "ints", "nan", "inf_bias"]
    return _single(nodes, [_vi("x", [4, 4]), _vi("x2", [4, 4]), _vi("xi", [4, 4], TensorProto.INT32)],
                   [_vi(o, None, TensorProto.INT32 if o == "ints" else TensorProto.FLOAT) for o in outs], inits)


def test_non_constant_and_unusable_weights_are_listed_with_their_reason():
    analysis = layers.analyze(_refusal_model())
    reasons = {l.name: l.reason for l in analysis.layers}
    assert reasons == {
        "ok": None,
        "dynamic": "weight is not constant",
        "left": "constant is the left operand",
        "gemm_a": "constant is input A, not B",
        "batched": "weight is 3-D (batched MatMul), expected 2-D",
        "ints": "weight dtype int32 is not floating point",
        "nan": layers.NOT_FINITE,
        "inf_bias": "bias holds NaN or Inf values",
    }
    assert [l.name for l in analysis.compressible] == ["ok"]
    refused = [l for l in analysis.layers if l.reason]
    assert all(l.memory == 0 and l.mac is None for l in refused)
    assert analysis.total("mac") == 4 * 4 * 4 and analysis.total("memory") == 16
    with pytest.raises(LayerError, match="layer 'dynamic' cannot be compressed: weight is not constant"):
        analysis.find("dynamic")


def test_find_suggests_close_names_and_duplicate_names_are_refused():
    analysis = layers.analyze(b.cnn_model())
    with pytest.raises(LayerError, match=r"unknown layer 'conv_2'; did you mean 'conv2'"):
        analysis.find("conv_2")
    with pytest.raises(LayerError, match="unknown layer 'zzz' \\(`onnx-compress inspect"):
        analysis.find("zzz")
    model = b.cnn_model()
    model.graph.node[2].name = "conv1"
    with pytest.raises(LayerError, match="two layers are both named 'conv1'"):
        layers.analyze(model)


# ------------------------------------------------------------------------------ cost_of
def test_cost_of_each_metric_and_unknown_macs():
    known = layers.analyze(b.cnn_model()).find("conv2")
    assert layers.cost_of(known, "mac") == known.mac == 41472
    assert layers.cost_of(known, "memory") == known.memory == 1152
    dynamic = _single([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                      [_vi("x", ["N", "T", 12])], [_vi("y", ["N", "T", 7])],
                      [numpy_helper.from_array(np.ones((12, 7), np.float32), "W")])
    analysis = layers.analyze(dynamic)
    layer = analysis.find("mm")
    assert layer.mac is None and layer.out_shape is None and "'x'" in layer.shape_note
    assert layers.cost_of(layer, "memory") == 84
    with pytest.raises(ShapeError, match="layer 'mm'.*MACs cannot be counted.*'x' have dynamic dimensions"):
        layers.cost_of(layer, "mac")
    with pytest.raises(ShapeError):
        analysis.total("mac")
    assert analysis.total("memory") == 84
    # the data's sequence length fixes the dynamic dim; its batch is still costed at 1
    fixed = layers.analyze(dynamic, data_shapes={"x": (32, 5, 12)}).find("mm")
    assert fixed.in_shape == (1, 5, 12) and fixed.mac == 5 * 7 * 12 and fixed.shape_note is None


# ------------------------------------------------------------------- resolve_input_dims
def test_resolve_input_dims_static_dynamic_and_given():
    model = _identity_model({"x": ["N", 3, 8], "z": [2, 5]})
    assert layers.resolve_input_dims(model) == {"x": (1, 3, 8), "z": (2, 5)}
    assert layers.resolve_input_dims(model, [(4, 3, 8), (2, 5)]) == {"x": (4, 3, 8), "z": (2, 5)}
    assert layers.resolve_input_dims(model, (6, 3, 8)) == {"x": (6, 3, 8), "z": (2, 5)}  # only the dynamic one
    assert layers.resolve_input_dims(model, {"z": (2, 5), "x": [7, 3, 8]}) == {"x": (7, 3, 8), "z": (2, 5)}


def test_resolve_input_dims_takes_data_dims_but_never_the_batch_or_static_dims():
    model = _identity_model({"t": ["B", "T", 4], "s": [2, "B", 16], "u": None})
    # s's batch is on axis 1 (the name B it shares with t); T unknown, u of unknown rank: left out
    assert layers.resolve_input_dims(model) == {"s": (2, 1, 16)}
    data = {"t": (32, 9, 4), "s": (2, 32, 16), "u": (32, 5)}
    assert layers.resolve_input_dims(model, data_shapes=data) == {"t": (1, 9, 4), "s": (2, 1, 16), "u": (1, 5)}
    static = _identity_model({"x": [2, 3]})
    assert layers.resolve_input_dims(static, data_shapes={"x": (8, 3)}) == {"x": (2, 3)}
    # given shapes win over the data
    assert layers.resolve_input_dims(model, {"t": (3, 4, 4)}, data)["t"] == (3, 4, 4)


@pytest.mark.parametrize("given,match", [
    ([(1, 3, 8), (2, 5), (1,)], r"input_shape gives 3 shape\(s\) but the model has 2 input\(s\)"),
    ({"nope": (1, 3, 8)}, r"unknown input\(s\) \['nope'\]"),
    ({"x": (1, 3)}, "input_shape for 'x' has rank 2, the model expects rank 3"),
    ((1, 3), "input_shape for 'x' has rank 2"),
])
def test_resolve_input_dims_refuses_bad_input_shapes(given, match):
    model = _identity_model({"x": ["N", 3, 8], "z": [2, 5]})
    with pytest.raises(ParameterError, match=match):
        layers.resolve_input_dims(model, given)
