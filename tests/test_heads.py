"""Attention heads as channel-pruning units: the channel group of an attention block's
output projection reaches Q, K and V through the head split/merge Reshapes, the
Transposes and the two activation x activation MatMuls, one unit per head."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
import onnx_compress as oc
from onnx_compress import ir, layers
from onnx_compress.schemes.pruning import depgraph

CORPUS = Path(__file__).resolve().parent / "corpus"
BERTS = ["bert_ts_op14_dyn.onnx", "bert_dynamo_op18_dyn.onnx"]  # torch.onnx TorchScript / dynamo
DIMS = {"input_ids": (2, 16), "attention_mask": (2, 16)}


def bert_feeds(model, n: int = 4, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), np.int64)
    mask[0, seq // 2:] = 0  # a padded row: the mask path stays in play
    return {"input_ids": ids, "attention_mask": mask}


def _analysis(model, dims=DIMS):
    return layers.analyze(ir.load(model), dims)


def _out_projections(analysis) -> list[str]:
    """The attention output projections: layers whose channel group reaches three others."""
    out = []
    for layer in analysis.layers:
        if layer.reason:
            continue
        group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
        if len(group.out_layers()) == 3 and not group.locked.any():
            out.append(layer.name)
    return out


def _zero_heads(model, layer_name: str, heads, n_heads: int, dims=DIMS) -> onnx.ModelProto:
    """`model` with the output projection's input rows of `heads` zeroed."""
    analysis = _analysis(model, dims)
    layer = analysis.find(layer_name)
    w = layer.weight.copy()
    d = w.shape[0] // n_heads
    for h in heads:
        w[h * d:(h + 1) * d] = 0
    ir.set_input(layer.node, 1, w, ir.unique_name("zeroed", ir.all_names(analysis.graph)))
    return ir.export(analysis.graph, analysis.proto)


@pytest.mark.parametrize("name", BERTS)
def test_every_attention_block_is_one_unit_per_head(name):
    analysis = _analysis(str(CORPUS / name))
    outs = _out_projections(analysis)
    assert len(outs) == 2  # the corpus BERT has two layers
    for o in outs:
        group = depgraph.build_group(analysis.find(o), analysis.graph, analysis.shapes)
        assert group.size == 4 and len(group.unit_of) == 32  # 4 heads of 8 channels
        kinds = [a.kind for a in group.actions]
        assert kinds.count("reshape") == 4 and kinds.count("out") == 3 and kinds.count("in") == 1


@pytest.mark.parametrize("name", BERTS)
def test_removing_heads_that_contribute_nothing_is_exact(name):
    model = onnx.load(str(CORPUS / name))
    o = _out_projections(_analysis(model))[0]
    zeroed = _zero_heads(model, o, [1, 3], 4)
    out, stats = oc.compress(zeroed, "channel_pruning", {o: 0.5}, data=bert_feeds(model, 8, seed=1),
                             selection="magnitude", reconstruct=False)
    assert (stats.layers[0].rank, stats.layers[0].full_rank) == (2, 4)
    for feeds in (bert_feeds(model), bert_feeds(model, 3, 9, seed=2)):  # batch and sequence stay dynamic
        for want, got in zip(b.run(zeroed, feeds), b.run(out, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    shapes = {l.name: l.weight.shape for l in oc.inspect(out, DIMS).layers if l.weight is not None}
    group = depgraph.build_group(_analysis(model).find(o), _analysis(model).graph, _analysis(model).shapes)
    for qkv in group.out_layers():
        assert shapes[qkv] == (32, 16)  # two heads of 8 columns left
    assert shapes[o] == (16, 32)
    assert stats.mac_after < stats.mac_before
    assert [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == \
        [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_a_shared_target_concat_is_copied_not_edited():
    """torch.onnx's dynamo export feeds every layer's head-split Reshapes from one Concat:
    pruning the heads of layer 0 must leave layer 1's Reshapes as they were."""
    model = onnx.load(str(CORPUS / "bert_dynamo_op18_dyn.onnx"))
    first, second = _out_projections(_analysis(model))
    out, _ = oc.compress(model, "channel_pruning", {first: 0.5}, data=bert_feeds(model, 8, seed=1))
    shapes = {l.name: l.weight.shape for l in oc.inspect(out, DIMS).layers if l.weight is not None}
    assert shapes[first] == (16, 32) and shapes[second] == (32, 32)
    assert all(np.isfinite(t).all() for t in b.run(out, bert_feeds(model)))


def attention_model(fused: bool, seed: int = 0, e: int = 16, heads: int = 4, target: str = "const") -> onnx.ModelProto:
    """One multi-head self-attention block written with constant Reshape targets [0, 0, H, D]
    and [0, 0, E] (as onnx.helper users and some exporters write it); `fused`: one QKV
    projection split three ways. `target`: "pair" computes the split target as
    Concat(Shape(x)[:2], [H, D]); "int32" as tf2onnx does, an int32 Concat of Cast pieces
    cast to int64."""
    rng = np.random.default_rng(seed)
    d = e // heads
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    split = const("split_shape", np.array([0, 0, heads, d], np.int64))
    if target != "const":
        lead = node("Slice", [node("Shape", ["x"], "shape"), const("s0", np.array([0], np.int64)),
                              const("s2", np.array([2], np.int64))], "lead")
        if target == "pair":
            split = node("Concat", [lead, const("hd", np.array([heads, d], np.int64))], "target", axis=0)
        else:
            lead32 = node("Cast", [lead], "lead32", to=TensorProto.INT32)
            h32 = node("Cast", [const("h64", np.array([heads], np.int64))], "h32", to=TensorProto.INT32)
            cat = node("Concat", [lead32, h32, const("d32", np.array([d], np.int32))], "target32", axis=0)
            split = node("Cast", [cat], "target", to=TensorProto.INT64)
    if fused:
        qkv = node("MatMul", ["x", const("wqkv", rng.normal(size=(e, 3 * e)).astype(np.float32) * 0.3)], "qkv")
        qkv = node("Add", [qkv, const("bqkv", rng.normal(size=3 * e).astype(np.float32) * 0.1)], "qkv_b")
        nodes.append(helper.make_node("Split", [qkv, const("sizes", np.array([e, e, e], np.int64))],
                                      ["q_", "k_", "v_"], name="split", axis=-1))
        proj = {"q": "q_", "k": "k_", "v": "v_"}
    else:
        proj = {}
        for p in "qkv":
            y = node("MatMul", ["x", const(f"w{p}", rng.normal(size=(e, e)).astype(np.float32) * 0.3)], p)
            proj[p] = node("Add", [y, const(f"b{p}", rng.normal(size=e).astype(np.float32) * 0.1)], f"{p}_b")
    hq = node("Transpose", [node("Reshape", [proj["q"], split], "rq")], "tq", perm=[0, 2, 1, 3])
    hk = node("Transpose", [node("Reshape", [proj["k"], split], "rk")], "tk", perm=[0, 2, 3, 1])
    hv = node("Transpose", [node("Reshape", [proj["v"], split], "rv")], "tv", perm=[0, 2, 1, 3])
    s = node("Mul", [node("MatMul", [hq, hk], "qk"), const("scale", np.array(d ** -0.5, np.float32))], "scaled")
    p = node("Softmax", [node("Add", [s, "mask"], "masked")], "probs", axis=-1)
    ctx = node("Transpose", [node("MatMul", [p, hv], "pv")], "tctx", perm=[0, 2, 1, 3])
    merged = node("Reshape", [ctx, const("merge_shape", np.array([0, 0, e], np.int64))], "merge")
    y = node("MatMul", [merged, const("wo", rng.normal(size=(e, e)).astype(np.float32) * 0.3)], "o")
    y = node("Add", [y, "x"], "residual")
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", e]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, 1, "S"])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["B", "S", e])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("fused", [False, True])
def test_constant_targets_and_a_fused_qkv_projection(fused):
    model = attention_model(fused)
    dims = {"x": (2, 6, 16), "mask": (2, 1, 1, 6)}
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(2, 6, 16)).astype(np.float32), "mask": np.zeros((2, 1, 1, 6), np.float32)}
    feeds["mask"][1, ..., 4:] = -1e4
    analysis = _analysis(model, dims)
    group = depgraph.build_group(analysis.find("o"), analysis.graph, analysis.shapes)
    assert group.size == 4 and not group.locked.any(), group.describe()
    zeroed = _zero_heads(model, "o", [0, 2], 4, dims)
    calib = {"x": rng.normal(size=(8, 6, 16)).astype(np.float32), "mask": np.zeros((8, 1, 1, 6), np.float32)}
    out, stats = oc.compress(zeroed, "channel_pruning", {"o": 0.5}, data=calib, selection="magnitude",
                             reconstruct=False, input_shape=dims)
    np.testing.assert_allclose(b.run(out, feeds)[0], b.run(zeroed, feeds)[0], rtol=1e-5, atol=1e-5)
    targets = {n.name: numpy_helper.to_array(t).tolist() for n in out.graph.node if n.op_type == "Reshape"
               for t in out.graph.initializer if t.name == n.input[1]}
    assert targets["rq"] == [0, 0, 2, 4] and targets["merge"] == [0, 0, 8]
    if fused:
        wqkv = next(l for l in oc.inspect(out, dims).layers if l.name == "qkv").weight
        assert wqkv.shape == (16, 24)  # two heads of Q, K and V each left


def test_pruning_the_heads_with_refit_keeps_more_than_without():
    model = attention_model(False, seed=1)
    dims = {"x": (8, 6, 16), "mask": (8, 1, 1, 6)}
    rng = np.random.default_rng(5)
    calib = {"x": rng.normal(size=(64, 6, 16)).astype(np.float32), "mask": np.zeros((64, 1, 1, 6), np.float32)}
    test = {"x": rng.normal(size=(8, 6, 16)).astype(np.float32), "mask": np.zeros((8, 1, 1, 6), np.float32)}
    ref = b.run(model, test)[0]
    errors = {}
    for refit in (False, True):
        out, _ = oc.compress(model, "channel_pruning", {"o": 0.75}, data=calib, reconstruct=refit,
                             input_shape=dims, num_reconstruction_samples=300)
        errors[refit] = float(np.linalg.norm(b.run(out, test)[0] - ref))
    assert errors[True] < 0.9 * errors[False], errors  # measured 0.86


def test_minus_one_in_the_targets_stays_right_when_heads_go():
    """Targets [0, 0, 4, -1] (head count stated, head size inferred) and [0, 0, -1]: the head
    count is rewritten and the -1 entries infer the right sizes after pruning."""
    model = attention_model(False)
    for init in model.graph.initializer:
        if init.name == "merge_shape":
            init.CopyFrom(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "merge_shape"))
        if init.name == "split_shape":
            init.CopyFrom(numpy_helper.from_array(np.array([0, 0, 4, -1], np.int64), "split_shape"))
    dims = {"x": (2, 6, 16), "mask": (2, 1, 1, 6)}
    analysis = _analysis(model, dims)
    group = depgraph.build_group(analysis.find("o"), analysis.graph, analysis.shapes)
    assert group.size == 4 and not group.locked.any()  # -1 targets stay right when heads go
    zeroed = _zero_heads(model, "o", [3], 4, dims)
    rng = np.random.default_rng(0)
    calib = {"x": rng.normal(size=(4, 6, 16)).astype(np.float32), "mask": np.zeros((4, 1, 1, 6), np.float32)}
    out, _ = oc.compress(zeroed, "channel_pruning", {"o": 0.75}, data=calib, selection="magnitude",
                         reconstruct=False, input_shape=dims)
    np.testing.assert_allclose(b.run(out, calib)[0], b.run(zeroed, calib)[0], rtol=1e-5, atol=1e-5)


def test_auto_mode_spreads_one_target_over_heads_and_ffn_dims():
    model = onnx.load(str(CORPUS / "bert_ts_op14_dyn.onnx"))
    probe = bert_feeds(model, 8, seed=4)
    state: dict = {}

    def cosine(session, iterations=None, use_cuda=False) -> float:
        out = session.run(None, probe)[0].reshape(8, -1).astype(np.float64)
        ref = state.setdefault("ref", out)
        return float(((out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).mean())

    out, stats = oc.compress_auto(model, "channel_pruning", 0.8, cosine, data=bert_feeds(model, 16, seed=1),
                                  candidates=4, input_shape=DIMS)
    units = set(stats.selection["scores"])
    assert {"/layers.0/att/o/MatMul", "/layers.1/att/o/MatMul"} <= units  # heads
    assert {"/layers.0/ff2/MatMul", "/layers.1/ff2/MatMul"} <= units  # FFN intermediate dims
    assert stats.mac_after / stats.mac_before <= 0.8
    assert stats.final_score > 0.99
    assert b.run(out, bert_feeds(model, 2, 5, seed=7))[0].shape == (2, 5, 32)


@pytest.mark.parametrize("target", ["pair", "int32"])
def test_computed_split_targets_are_rewritten_in_place(target):
    """A head count inside a two-element piece of a computed target ([H, D]), and one in an
    int32 Concat (tf2onnx): rewritten, in the Concat's own type; exact at another batch and
    sequence length."""
    model = attention_model(False, target=target)
    dims = {"x": (2, 6, 16), "mask": (2, 1, 1, 6)}
    zeroed = _zero_heads(model, "o", [1], 4, dims)
    rng = np.random.default_rng(2)
    calib = {"x": rng.normal(size=(4, 6, 16)).astype(np.float32), "mask": np.zeros((4, 1, 1, 6), np.float32)}
    out, _ = oc.compress(zeroed, "channel_pruning", {"o": 0.75}, data=calib, selection="magnitude",
                         reconstruct=False, input_shape=dims)
    feeds = {"x": rng.normal(size=(3, 5, 16)).astype(np.float32), "mask": np.zeros((3, 1, 1, 5), np.float32)}
    np.testing.assert_allclose(b.run(out, feeds)[0], b.run(zeroed, feeds)[0], rtol=1e-5, atol=1e-5)
