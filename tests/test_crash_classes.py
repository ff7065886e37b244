"""Crash classes that used to end in a non-CompressionError exception ("internal error").

4: data-aware weight SVD (and its refit) of a Gemm with transA=1; 5: channel pruning
wiping the declared shape of a graph input/output in a Concat/Split group; 6: a narrow
Concat segment's producer pruned to 0 channels; 7: auto-mode channel pruning of a Concat
re-cut by a Split; 9: NaN/Inf weights.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
import nets
import onnx_compress as oc
from onnx_compress.errors import CompressionError, LayerError
from onnx_compress.evaluators import fidelity


def _dims(info) -> list:
    return [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim]


def _model(n: nets.Net, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(n.nodes, "net", inputs, outputs, n.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# ------------------------------------------------------------------ 4: Gemm transA=1
def _low_rank_gemm(trans_b: int, alpha: float, beta: float, rank: int = 2, k: int = 12, n: int = 10, m: int = 5):
    model = b.gemm_model(k=k, n=n, m=m, trans_a=1, trans_b=trans_b, alpha=alpha, beta=beta)
    rng = np.random.default_rng(7)
    w = (rng.normal(size=(k, rank)) @ rng.normal(size=(rank, n))).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.T.copy() if trans_b else w, "B"))
    return model


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.7, 1.3)])
def test_data_aware_weight_svd_of_gemm_with_trans_a(trans_b, alpha, beta):
    model = _low_rank_gemm(trans_b, alpha, beta)
    rng = np.random.default_rng(1)
    data = {"x": rng.normal(size=(12, 5)).astype(np.float32)}
    x = {"x": rng.normal(size=(12, 5)).astype(np.float32)}
    # memory ratio 0.4 of a 12x10 weight: rank 2, the weight's own rank: exact
    out, stats = oc.compress(model, "weight_svd", {"gemm": 0.4}, cost_metric="memory", data=data)
    assert stats.layers[0].rank == 2
    y0, y1 = b.run(model, x)[0], b.run(out, x)[0]
    assert np.abs(y1 - y0).max() <= 1e-5 * max(1.0, np.abs(y0).max())
    low, stats = oc.compress(model, "weight_svd", {"gemm": 0.2}, cost_metric="memory", data=data)
    assert stats.layers[0].rank == 1
    onnx.checker.check_model(low, full_check=True)
    assert b.run(low, x)[0].shape == y0.shape


def test_svd_refit_of_gemm_with_trans_a():
    """MatMul -> Transpose -> Gemm(transA=1): the Gemm's second factor is refit on A^T's rows."""
    n = nets.Net(0)
    w0 = n.rng.normal(size=(8, 12)).astype(np.float32)
    h = n.node("MatMul", ["x", n.const(w0, "mm.w")], name="mm")
    t = n.node("Transpose", [h], perm=[1, 0])
    w1 = n.rng.normal(size=(12, 10)).astype(np.float32)
    c = n.rng.normal(size=10).astype(np.float32)
    y = n.node("Gemm", [t, n.const(w1, "g.w"), n.const(c, "g.b")], name="g", transA=1, alpha=0.5)
    model = _model(n, [_vi("x", [6, 8])], [_vi(y, [6, 10])])
    data = {"x": np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)}
    out, stats = oc.compress(model, "weight_svd", 0.6, cost_metric="memory", data=data, svd_refit=True,
                             num_reconstruction_samples=50)
    onnx.checker.check_model(out, full_check=True)
    notes = {s.name: s.note for s in stats.layers}
    assert "refit" in notes["g"]
    assert b.run(out, data)[0].shape == (6, 10)


# ------------------------------------------- 5: graph inputs/outputs in a Concat group
def _concat_split_net(extra_output: str | None = None, side_input: bool = False):
    """a(4) [+ b(4) | + graph input 'side'(2)] -> Concat -> Split -> convs c, d -> Add -> head."""
    n = nets.Net(0)
    x = n.node("Relu", [n.conv("x", 3, 8, name="stem")])
    a = n.conv(x, 8, 4, name="a")
    other = "side" if side_input else n.conv(x, 8, 4, name="b")
    width = 6 if side_input else 8
    cat = n.node("Concat", [a, other], axis=1)
    cut = (2, 4) if side_input else (3, 5)
    s1, s2 = cat + "_s1", cat + "_s2"
    n.nodes.append(helper.make_node("Split", [cat, n.const(np.array(cut, np.int64), "sp")], [s1, s2],
                                    name="split", axis=1))
    c = n.node("Relu", [n.conv(s2, cut[1], 6, name="c")])
    d = n.node("Relu", [n.conv(s1, cut[0], 6, name="d")])
    y = n.head(n.node("Add", [c, d]), 6)
    inputs = [_vi("x", ["N", 3, 16, 16])] + ([_vi("side", ["N", 2, 16, 16])] if side_input else [])
    outputs = [_vi(y, ["N", 10])]
    if extra_output is not None:
        tensor = {"a": a, "cat": cat, "s1": s1, "s2": s2}[extra_output]
        channels = {"a": 4, "cat": width, "s1": cut[0], "s2": cut[1]}[extra_output]
        outputs.append(_vi(tensor, ["N", channels, 16, 16]))
    return _model(n, inputs, outputs)


@pytest.mark.parametrize("extra", ["a", "cat", "s1", "s2"])
def test_pruning_keeps_graph_output_shapes_in_a_concat_group(extra):
    model = _concat_split_net(extra)
    out, stats = oc.compress(model, "channel_pruning", 0.5, data=nets.calib(model), num_reconstruction_samples=200)
    assert stats.layers
    onnx.checker.check_model(out, full_check=True)
    assert [_dims(o) for o in out.graph.output] == [_dims(o) for o in model.graph.output]
    x = nets.calib(model, 2, seed=1)
    assert [y.shape for y in b.run(out, x)] == [y.shape for y in b.run(model, x)]


def test_pruning_keeps_graph_input_shapes_in_a_concat_group():
    model = _concat_split_net(side_input=True)
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(16, 3, 16, 16)).astype(np.float32),
            "side": rng.normal(size=(16, 2, 16, 16)).astype(np.float32)}
    out, stats = oc.compress(model, "channel_pruning", 0.5, data=data, num_reconstruction_samples=200)
    assert "c" in {s.name for s in stats.layers}
    onnx.checker.check_model(out, full_check=True)
    assert [_dims(i) for i in out.graph.input] == [_dims(i) for i in model.graph.input]
    feeds = {k: v[:2] for k, v in data.items()}
    assert b.run(out, feeds)[0].shape == (2, 10)


# ---------------------------------------------- 6: a narrow Concat segment keeps a channel
def _narrow_concat_net(narrow: int, wide: int = 15):
    n = nets.Net(0)
    x = n.node("Relu", [n.conv("x", 3, 8, name="stem")])
    a = n.node("Relu", [n.conv(x, 8, narrow, name="narrow")])
    w = n.node("Relu", [n.conv(x, 8, wide, name="wide")])
    cat = n.node("Concat", [a, w], axis=1)
    y = n.node("Relu", [n.conv(cat, narrow + wide, 8, name="mix")])
    return n.model(n.head(y, 8))


@pytest.mark.parametrize("narrow,ratio,selection", [(1, 0.1, "magnitude"), (2, 0.07, "magnitude"),
                                                     (1, 0.2, "greedy"), (2, 0.07, "greedy")])
def test_every_concat_producer_keeps_a_channel(narrow, ratio, selection):
    model = _narrow_concat_net(narrow)
    out, stats = oc.compress(model, "channel_pruning", {"mix": ratio}, data=nets.calib(model),
                             selection=selection, num_reconstruction_samples=200)
    shapes = {l.name: l.weight.shape for l in oc.inspect(out).compressible}
    assert shapes["narrow"][0] >= 1 and shapes["wide"][0] >= 1
    assert shapes["mix"][1] == shapes["narrow"][0] + shapes["wide"][0] < narrow + 15
    onnx.checker.check_model(out, full_check=True)
    assert b.run(out, nets.calib(model, 2, seed=1))[0].shape == (2, 10)


def test_concat_producer_floor_in_auto_mode():
    model = _narrow_concat_net(1)
    ev = fidelity(nets.calib(model, 8))
    out, stats = oc.compress_auto(model, "channel_pruning", 0.5, ev, candidates=10, data=nets.calib(model),
                                  num_reconstruction_samples=200)
    shapes = {l.name: l.weight.shape for l in oc.inspect(out).compressible}
    assert shapes["narrow"][0] >= 1
    assert b.run(out, nets.calib(model, 2, seed=1))[0].shape == (2, 10)


# ------------------------------------------ 7: auto mode, a Concat re-cut by a Split
def _recut_net(cut):
    n = nets.Net(0)
    x = n.node("Relu", [n.conv("x", 3, 8, name="stem")])
    a = n.node("Relu", [n.conv(x, 8, 8, name="a")])
    w = n.node("Relu", [n.conv(x, 8, 8, name="b")])
    cat = n.node("Concat", [a, w], axis=1)
    s1, s2 = cat + "_s1", cat + "_s2"
    n.nodes.append(helper.make_node("Split", [cat, n.const(np.array(cut, np.int64), "sp")], [s1, s2],
                                    name="split", axis=1))
    c = n.node("Relu", [n.conv(s1, cut[0], 8, name="c")])
    d = n.node("Relu", [n.conv(s2, cut[1], 8, name="d")])
    return n.model(n.head(n.node("Add", [c, d]), 8))


@pytest.mark.parametrize("cut", [(4, 12), (6, 10)])
def test_auto_channel_pruning_of_a_concat_recut_by_a_split(cut):
    model = _recut_net(cut)
    ev = fidelity(nets.calib(model, 16))
    out, stats = oc.compress_auto(model, "channel_pruning", 0.6, ev, candidates=5, data=nets.calib(model),
                                  num_reconstruction_samples=200)
    onnx.checker.check_model(out, full_check=True)
    assert stats.layers and stats.mac_ratio <= 0.6
    assert b.run(out, nets.calib(model, 2, seed=1))[0].shape == (2, 10)


# ----------------------------------------------------------------- 9: NaN/Inf weights
def _nan_net(where: str = "aux.w", value=np.nan):
    """c1 -> c2 -> c3 -> head, and a side conv 'aux' on c1's output to a second graph output
    (NaN there does not reach the head's output, which the evaluator scores)."""
    n = nets.Net(0)
    x = n.node("Relu", [n.conv("x", 3, 8, name="c1")])
    aux = n.conv(x, 8, 4, name="aux")
    y = n.node("Relu", [n.conv(x, 8, 12, name="c2")])
    y = n.node("Relu", [n.conv(y, 12, 16, name="c3")])
    out = n.head(y, 16)
    for t in n.inits:
        if t.name == where:
            a = numpy_helper.to_array(t).copy()
            a.flat[3] = value
            t.CopyFrom(numpy_helper.from_array(a, where))
    return _model(n, [_vi("x", ["N", 3, 16, 16])], [_vi(out, ["N", 10]), _vi(aux, ["N", 4, 16, 16])])


def _head_score(model):
    x = nets.calib(model, 8, seed=3)

    def evaluate(session, iterations=None, use_cuda=False):
        return float(-np.abs(session.run(["fc_out"], x)[0]).mean())

    return evaluate


@pytest.mark.parametrize("scheme", ["weight_svd", "channel_pruning"])
@pytest.mark.parametrize("where,reason", [("aux.w", "weight holds NaN or Inf values"),
                                          ("aux.b", "bias holds NaN or Inf values")])
def test_nan_weights_skip_the_layer_manual(scheme, where, reason):
    model = _nan_net(where)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, stats = oc.compress(model, scheme, 0.5, data=nets.calib(model), num_reconstruction_samples=200)
    assert not caught, [str(w.message) for w in caught]
    assert {s.name: s.reason for s in stats.skipped}["aux"] == reason
    assert stats.layers and "aux" not in {s.name for s in stats.layers}
    onnx.checker.check_model(out, full_check=True)
    with pytest.raises(LayerError, match=f"layer 'aux'.*{reason}"):
        oc.compress(model, scheme, {"aux": 0.5}, data=nets.calib(model))


@pytest.mark.parametrize("scheme", ["weight_svd", "channel_pruning"])
def test_nan_weights_skip_the_layer_auto(scheme):
    model = _nan_net("aux.w", np.inf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, stats = oc.compress_auto(model, scheme, 0.7, _head_score(model), candidates=4, data=nets.calib(model),
                                      num_reconstruction_samples=200)
    assert not caught, [str(w.message) for w in caught]
    assert {s.name: s.reason for s in stats.skipped}["aux"] == "weight holds NaN or Inf values"
    assert stats.layers and "aux" not in {s.name for s in stats.layers}
    assert stats.mac_ratio <= 0.7
    with pytest.raises(LayerError, match="aux"):
        oc.compress_auto(model, scheme, 0.7, _head_score(model), candidates=4, data=nets.calib(model),
                         config_list=[{"op_names": ["aux"], "ratio": 0.5}])


def test_nan_upstream_of_other_layers_is_not_a_crash():
    """NaN in c2: c3's and fc's inputs are NaN too; SVD falls back to plain factors there,
    pruning does not prune c2's channels from c3's group nor refit on NaN samples."""
    n_model = _nan_net("c2.w")
    data = nets.calib(n_model)
    for scheme in ("weight_svd", "channel_pruning"):
        out, stats = oc.compress(n_model, scheme, 0.5, data=data, num_reconstruction_samples=100)
        assert {s.name: s.reason for s in stats.skipped}["c2"] == "weight holds NaN or Inf values"
        shapes = {l.name: l for l in oc.inspect(out).layers}
        assert shapes["c2"].weight is None  # still NaN, untouched


def test_every_layer_nan_is_a_clear_error():
    model = b.gemm_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "B"))
    data = {"x": np.ones((5, 12), np.float32)}
    for scheme in ("weight_svd", "channel_pruning"):
        with pytest.raises(LayerError, match="no layer of the model can be compressed: 'gemm': weight holds NaN"):
            oc.compress(model, scheme, 0.5, data=data)
        with pytest.raises(CompressionError, match="weight holds NaN"):
            oc.compress_auto(model, scheme, 0.5, lambda s, i, c: 1.0, data=data)


def test_auto_channel_pruning_keeps_a_gemm_bias_stored_as_a_row():
    """Gemm C stored as (1, N): the refit bias previewed in the eval-score dictionary must
    keep that shape (ORT: "Replacement tensor's dimensions do not match")."""
    n = nets.Net(0)
    x = n.node("Relu", [n.conv("x", 3, 8, name="c1")])
    x = n.node("Relu", [n.conv(x, 8, 12, name="c2")])
    x = n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1)
    w1 = n.rng.normal(size=(12, 16)).astype(np.float32)
    h = n.node("Relu", [n.node("Gemm", [x, n.const(w1, "g1.w"), n.const(np.zeros((1, 16), np.float32), "g1.b")],
                               name="g1")])
    w2 = n.rng.normal(size=(16, 10)).astype(np.float32)
    y = n.node("Gemm", [h, n.const(w2, "g2.w"), n.const(np.zeros((1, 10), np.float32), "g2.b")], name="g2")
    model = n.model(y)
    out, stats = oc.compress_auto(model, "channel_pruning", 0.6, fidelity(nets.calib(model, 8)), candidates=5,
                                  data=nets.calib(model), num_reconstruction_samples=100)
    onnx.checker.check_model(out, full_check=True)
    assert stats.layers and stats.mac_ratio <= 0.6
