"""A transformer's hidden size as one channel group: the residual stream from the embedding
Gathers through every LayerNorm (the LayerNormalization op and the ReduceMean/Sub/Pow/...
form older exporters write), the residual Adds, the projections that read it (Q/K/V, FFN
in, lm_head) and the ones that write it (attention output, FFN out). Pruned on the small
trained GPT-2 of tests/test_heads_gpt.py (both exports), on hand-written graphs without a
LayerNorm (exact on zeroed channels) and with one (inexact, and said so); locked where the
stream is a graph output (BERT's last_hidden_state)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
import onnx_compress as oc
from nets import zero_removed_inputs
from onnx_compress import ir, layers
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.schemes.pruning import depgraph
from onnx_compress.schemes.pruning import units as prune_units
from test_heads_gpt import DIMS, E, GPTS, cross_entropy, text

CORPUS = Path(__file__).resolve().parent / "corpus"


def _analysis(model, dims=DIMS):
    return layers.analyze(ir.load(model), dims)


def _stream(analysis):
    """The group of the first layer (the first block's QKV projection reads the stream)."""
    return depgraph.build_group(analysis.layers[0], analysis.graph, analysis.shapes)


def _kinds(group, kind: str, op: str | None = None) -> list[str]:
    return [ir.node_name(a.node) for a in group.actions if a.kind == kind and (op is None or a.node.op == op)]


# ------------------------------------------------------------------------------ GPT-2
@pytest.mark.parametrize("name", GPTS)
def test_the_stream_group_spans_embeddings_norms_readers_and_writers(name):
    analysis = _analysis(str(CORPUS / name))
    group = _stream(analysis)
    assert group.size == E and not group.locked.any() and group.unit_of is None, group.describe()
    readers, writers = group.in_layers(), group.out_layers()
    names = [l.name for l in analysis.layers if l.weight is not None and not l.reason]
    # 2 x (QKV, FFN in) and the lm_head read it; 2 x (attention out, FFN out) write it
    assert readers == [names[i] for i in (0, 2, 4, 6, 8)] and writers == [names[i] for i in (1, 3, 5, 7)]
    assert len(_kinds(group, "param", "Gather")) == 2  # token and position embedding tables
    if "dynamo" in name:  # five LayerNormalization ops, each losing scale and bias entries
        assert len(_kinds(group, "param", "LayerNormalization")) == 10
    else:  # opset 14: the decomposed form's Mul (scale) and Add (bias)
        assert len(_kinds(group, "param", "Mul")) == 5 and len(_kinds(group, "param", "Add")) == 5
    assert len(group.inexact) == 5 and all(n.startswith("LayerNorm over fewer channels") for n in group.inexact)
    other = depgraph.build_group(analysis.find(readers[-1]), analysis.graph, analysis.shapes)
    assert sorted(other.in_layers()) == sorted(readers)  # any reader's group is the same stream


def _independent_macs(model: onnx.ModelProto, tokens: int) -> int:
    """Every constant-weight Gemm/MatMul of the GPT-2 is applied once per token: tokens x K x N."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return tokens * sum(math.prod(shapes[n.input[1]]) for n in model.graph.node
                        if n.op_type in ("Gemm", "MatMul") and n.input[1] in shapes)


@pytest.mark.parametrize("name", GPTS)
def test_pruning_the_hidden_size_runs_with_dynamic_axes_and_its_macs_fall_as_counted(name):
    model = onnx.load(str(CORPUS / name))
    evaluation, calib = text()
    root = _analysis(model).layers[0].name
    runs = {refit: oc.compress(model, "channel_pruning", {root: 0.75}, data={"input_ids": calib},
                               input_shape=DIMS, reconstruct=refit) for refit in (True, False)}
    out, stats = runs[True]
    (layer,) = stats.layers
    assert (layer.rank, layer.full_rank) == (48, E)
    assert "inexact: LayerNorm over fewer channels (5 norms)" in layer.note
    assert stats.channel_groups["inexact"] == 5  # the stream's five readers, one group each
    for ids in (evaluation[:2, :16], evaluation[:3, :9], evaluation[3:4]):
        assert b.run(out, {"input_ids": ids})[0].shape == (*ids.shape, 128)
    dims = [[d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] for m in (model, out)]
    assert dims[0] == dims[1] and all(isinstance(d, str) for d in dims[0])
    tokens = math.prod(DIMS["input_ids"])
    assert stats.mac_before == _independent_macs(model, tokens)
    assert stats.mac_after == _independent_macs(out, tokens) == stats.mac_before * 3 // 4
    shapes = {t.name: tuple(t.dims) for t in out.graph.initializer}
    tables = sorted(shapes[n.input[0]] for n in out.graph.node if n.op_type == "Gather" and n.input[0] in shapes)
    assert tables == [(64, 48), (128, 48)]  # the position and token embeddings lost columns
    before, after, plain = (cross_entropy(m, evaluation) for m in (model, out, runs[False][0]))
    # measured on both exports: 1.425 -> 2.079 nats with the refit, 3.383 without
    assert after < before + 0.9 and after < plain - 0.5


def test_auto_mode_scores_the_stream_beside_heads_and_ffn_units():
    model = onnx.load(str(CORPUS / GPTS[0]))
    evaluation, calib = text()
    probe = {"input_ids": evaluation[:16]}

    def log_likelihood(session, iterations=None, use_cuda=False) -> float:
        return -cross_entropy_of(session.run(None, probe)[0], probe["input_ids"])

    out, stats = oc.compress_auto(model, "channel_pruning", 0.8, log_likelihood, data={"input_ids": calib},
                                  candidates=4, input_shape=DIMS)
    names = [l.name for l in _analysis(model).layers if l.weight is not None and not l.reason]
    scores = stats.selection["scores"]
    assert set(scores) == {names[i] for i in (0, 1, 3, 5, 7)}  # the stream, 2 x heads, 2 x FFN
    assert all(s < stats.selection["baseline"] for s in scores[names[0]].values())
    assert stats.mac_after <= 0.8 * stats.mac_before
    assert b.run(out, {"input_ids": evaluation[:3, :9]})[0].shape == (3, 9, 128)


def cross_entropy_of(logits: np.ndarray, ids: np.ndarray) -> float:
    logits = logits[:, :-1].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, ids[:, 1:, None], -1).mean())


@pytest.mark.parametrize("name", ["bert_ts_op14_dyn.onnx", "bert_dynamo_op18_dyn.onnx"])
def test_a_stream_that_is_a_graph_output_stays_locked_with_the_reason(name):
    dims = {"input_ids": (2, 16), "attention_mask": (2, 16)}
    analysis = _analysis(str(CORPUS / name), dims)
    group = _stream(analysis)
    assert group.all_locked and "tensor 'last_hidden_state' is a graph output" in group.lock_summary()
    assert len(group.in_layers()) == 9  # 2 x (Q, K, V, FFN in) and the pooler


# ------------------------------------------------------------------ hand-written graphs
V, C, O = 20, 8, 6


def stream_model(norm: str | None = None, tied: bool = False, seed: int = 0) -> onnx.ModelProto:
    """input_ids -> Gather(table) -> [norm] -> fc1 -> residual Add onto the embeddings -> fc2
    (MatMul, [B, S, O]) or, `tied`, a Gemm reading the table itself (transB=1, [B*S, V])."""
    rng = np.random.default_rng(seed)
    inits, nodes = {}, []

    def const(name, value):
        inits[name] = np.asarray(value)
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    table = const("table", rng.normal(size=(V, C)).astype(np.float32))
    x = emb = node("Gather", [table, "input_ids"], "emb")
    scale, bias = const("ln.s", rng.uniform(0.5, 1.5, C).astype(np.float32)), const("ln.b", rng.normal(0, 0.1, C).astype(np.float32))
    if norm == "op":
        x = node("LayerNormalization", [emb, scale, bias], "ln", axis=-1)
    elif norm == "decomposed":
        axes = const("axes", np.array([-1], np.int64))
        d = node("Sub", [emb, node("ReduceMean", [emb, axes], "mean")], "centred")
        var = node("ReduceMean", [node("Pow", [d, const("two", np.float32(2))], "sq"), axes], "var")
        std = node("Sqrt", [node("Add", [var, const("eps", np.float32(1e-5))], "var_eps")], "std")
        x = node("Add", [node("Mul", [node("Div", [d, std], "normed"), scale], "scaled"), bias], "ln")
    h = node("Add", [node("MatMul", [x, const("fc1.w", rng.normal(size=(C, C)).astype(np.float32) / C ** 0.5)], "fc1"),
                     const("fc1.b", rng.normal(0, 0.1, C).astype(np.float32))], "fc1_bias")
    r = node("Add", [emb, h], "residual")
    if tied:
        flat = node("Reshape", [r, const("flat.shape", np.array([-1, C], np.int64))], "flat")
        out = node("Gemm", [flat, table], "fc2", transB=1)
        out_shape = ["n", V]
    else:
        out = node("MatMul", [r, const("fc2.w", rng.normal(size=(C, O)).astype(np.float32))], "fc2")
        out_shape = ["batch", "seq", O]
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = b._make_model(graph, opset=18)
    onnx.checker.check_model(model)
    return model


def _ids(seed: int, shape=(4, 5)) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int64)}


def _zeroed(model: onnx.ModelProto, roots, root: str = "fc2") -> onnx.ModelProto:
    """`model` with the readers' input rows of stream channels `roots` zeroed."""
    analysis = layers.analyze(model, {"input_ids": (4, 5)})
    group = depgraph.build_group(analysis.find(root), analysis.graph, analysis.shapes)
    zero_removed_inputs(group, np.asarray(roots), analysis.graph)
    return ir.export(analysis.graph, model)


@pytest.mark.parametrize("tied", [False, True], ids=["matmul", "tied"])
def test_zeroed_stream_channels_go_exactly_without_a_layernorm(tied):
    model = stream_model(tied=tied)
    analysis = layers.analyze(model, {"input_ids": (4, 5)})
    group = depgraph.build_group(analysis.find("fc2"), analysis.graph, analysis.shapes)
    assert group.exact and not group.locked.any() and sorted(group.in_layers()) == ["fc1", "fc2"], group.describe()
    assert group.out_layers() == ["fc1"] and _kinds(group, "param", "Gather") == ["emb"]
    zeroed = _zeroed(model, [1, 4, 6])
    out, stats = oc.compress(zeroed, "channel_pruning", {"fc2": 5 / 8}, data=[_ids(s) for s in range(4)],
                             reconstruct=False, input_shape={"input_ids": (4, 5)})
    assert stats.layers[0].rank == 5 and "inexact" not in stats.layers[0].note
    for seed, shape in ((7, (4, 5)), (8, (2, 9)), (9, (1, 1))):  # batch and sequence stay dynamic
        want, got = b.run(zeroed, _ids(seed, shape))[0], b.run(out, _ids(seed, shape))[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    kept = [0, 2, 3, 5, 7]
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "table"))
    readers = [n for n in out.graph.node if n.op_type in ("Gather", "Gemm")]
    for n in readers:  # a tied table loses the same columns in both its uses
        np.testing.assert_array_equal(weights[n.input[0] if n.op_type == "Gather" else n.input[1]], table[:, kept])


@pytest.mark.parametrize("norm", ["op", "decomposed"])
def test_a_layernorm_in_the_stream_makes_the_group_inexact_and_the_stats_say_so(norm):
    model = stream_model(norm)
    analysis = layers.analyze(model, {"input_ids": (4, 5)})
    group = depgraph.build_group(analysis.find("fc2"), analysis.graph, analysis.shapes)
    assert not group.locked.any() and not group.exact
    (note,) = group.inexact
    assert note.startswith("LayerNorm over fewer channels") and ("ReduceMean 'mean'" if norm == "decomposed" else "'ln'") in note
    assert "inexact: LayerNorm over fewer channels" in group.describe()
    zeroed = _zeroed(model, [1, 4, 6])
    out, stats = oc.compress(zeroed, "channel_pruning", {"fc2": 5 / 8}, data=[_ids(s) for s in range(4)],
                             reconstruct=False, input_shape={"input_ids": (4, 5)})
    assert "inexact: LayerNorm over fewer channels (1 norm)" in stats.layers[0].note
    assert stats.channel_groups["inexact"] == 2  # fc1's group and fc2's: the same stream
    scale = next(n for n in ir.import_graph(out).nodes if n.name in ("ln", "scaled"))
    assert ir.constant_value(scale.inputs[1]).shape == (5,)
    want, got = b.run(zeroed, _ids(7))[0], b.run(out, _ids(7))[0]
    assert got.shape == want.shape and 1e-4 < np.abs(got - want).max()  # statistics over 5 of 8 channels


def test_a_tied_table_is_previewed_zeroed_not_refit_in_auto_mode():
    """Auto mode swaps previews in by initializer name: the lm_head's refit weight would also
    replace the embedding table it shares, so that reader is previewed zeroed only."""
    model = ir.load(stream_model(tied=True))
    analysis = layers.analyze(model, {"input_ids": (4, 5)})
    settings = Settings(data=[_ids(s) for s in range(4)], num_reconstruction_samples=64)
    units, _ = prune_units.group_units(model, analysis, ["fc1", "fc2"], [0.5], settings, "mac", 1,
                                       Activations(settings))
    (unit,) = units
    preview = unit.preview(unit.candidates[0])
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "table"))
    kept = np.abs(preview["table"]).sum(0) > 0
    assert kept.sum() == 4
    np.testing.assert_array_equal(preview["table"][:, kept], table[:, kept])  # zeroed, not refit
    assert not np.array_equal(preview["fc1.w"][kept], numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "fc1.w"))[kept])  # the other reader is refit
    for refit in (False, True):  # manual mode: both uses of the table lose the same columns
        out, _ = oc.compress(model, "channel_pruning", {"fc2": 0.5}, data=settings.data, reconstruct=refit,
                             input_shape={"input_ids": (4, 5)})
        weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        emb = weights[next(n.input[0] for n in out.graph.node if n.op_type == "Gather")]
        head = weights[next(n.input[1] for n in out.graph.node if n.op_type == "Gemm")]
        kept = [j for j in range(C) if (table[:, [j]] == emb).all(0).any()]
        np.testing.assert_array_equal(emb, table[:, kept])
        assert len(kept) == 4 and head.shape == (V, 4)
        assert np.array_equal(head, emb) != refit  # refit: the lm_head gets its own copy
