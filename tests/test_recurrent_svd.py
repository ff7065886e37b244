"""Weight SVD of the input projection of LSTM and GRU layers (schemes/svd/recurrent).

The op's input weight W (dirs, gates*hidden, input) of every direction, stacked, is factored
in x-form M = Wcat^T ~ A B; the op becomes MatMul(X, A) then the op with W = B^T reshaped to
(dirs, gates*hidden, r). R, B, sequence_lens, the initial states and the attributes stay, so
at full rank (and at rank k when W has rank k) the outputs Y, Y_h, Y_c are the original's.
The layer's cost counts W and R at every step: MACs seq*batch*dirs*gates*hidden*(input +
hidden); the split costs seq*batch*(input*r + dirs*gates*hidden*(r + hidden)).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
import onnx_compress as oc
from onnx_compress import api, evaluators, ir, layers
from onnx_compress.errors import LayerError, ParameterError
from onnx_compress.schemes import variants
from onnx_compress.schemes.base import Context
from onnx_compress.schemes.svd import WEIGHT_SVD, RankPlan, apply_plans

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = {e["file"]: e for e in json.loads((CORPUS / "manifest.json").read_text())}
GATES = {"LSTM": 4, "GRU": 3}
SEQ, BATCH, INP, HID, PRE = 5, 3, 12, 4, 7


def rnn_model(op: str, direction: str = "forward", *, bias: bool = True, init: str | None = None,
              seq_lens: bool = False, w_rank: int | None = None, const_node: bool = False,
              pre: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x [SEQ, BATCH, INP] (or [.., PRE] -> MatMul `pre` -> INP) -> LSTM/GRU 'rnn' -> Y, Y_h (, Y_c).

    init: None, "const" (initial_h/initial_c constants) or "input" (initial_h a graph input);
    w_rank: W of that exact rank; const_node: W from a Constant node (older exporters)."""
    rng = np.random.default_rng(seed)
    dirs, g = (2 if direction == "bidirectional" else 1), GATES[op]

    def r(*shape):
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    w = r(dirs, g * HID, INP)
    if w_rank is not None:
        w = (r(dirs * g * HID, w_rank) @ r(w_rank, INP)).reshape(w.shape).astype(np.float32)
    inits, nodes = [numpy_helper.from_array(r(dirs, g * HID, HID), "R")], []
    if const_node:
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "Wc")))
    else:
        inits.append(numpy_helper.from_array(w, "W"))
    ins = ["x", "W", "R"]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, PRE if pre else INP])]
    if pre:
        inits.append(numpy_helper.from_array(r(PRE, INP), "P"))
        nodes.append(helper.make_node("MatMul", ["x", "P"], ["xp"], name="pre"))
        ins[0] = "xp"
    if bias:
        inits.append(numpy_helper.from_array(r(dirs, 2 * g * HID), "B"))
    ins.append("B" if bias else "")
    if seq_lens:
        inits.append(numpy_helper.from_array(np.array([SEQ, SEQ - 2, 1][:BATCH], np.int32), "lens"))
    ins.append("lens" if seq_lens else "")
    if init == "const":
        states = ["h0", "c0"][:1 + (op == "LSTM")]
        inits += [numpy_helper.from_array(r(dirs, BATCH, HID), n) for n in states]
        ins += states
    elif init == "input":
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, BATCH, HID]))
        ins.append("h0")
    outs = ["Y", "Y_h", "Y_c"][:2 + (op == "LSTM")]
    nodes.append(helper.make_node(op, ins, outs, name="rnn", hidden_size=HID, direction=direction))
    shapes = {"Y": [SEQ, dirs, BATCH, HID], "Y_h": [dirs, BATCH, HID], "Y_c": [dirs, BATCH, HID]}
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs]
    model = helper.make_model(helper.make_graph(nodes, "rnn", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feed(model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def assert_same_outputs(got_model, want_model, data, atol=1e-5):
    want, got = b.run(want_model, data), b.run(got_model, data)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)


def split_at(model, rank: int, cov=None) -> onnx.ModelProto:
    """The model with layer 'rnn' split at `rank` (any rank, full rank included)."""
    analysis = layers.analyze(ir.load(model))
    plan = RankPlan(analysis.find("rnn"), Fraction(1), rank)
    apply_plans(analysis, WEIGHT_SVD, [plan], None if cov is None else {"rnn": cov})
    return ir.export(analysis.graph, analysis.proto)


def rnn_node(model) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type in GATES)


def macs(op: str, dirs: int, rank: int | None = None) -> int:
    """Independent count of the op's MACs (W and R per step); split at `rank` when given."""
    rows, steps = dirs * GATES[op] * HID, SEQ * BATCH
    if rank is None:
        return steps * rows * (INP + HID)
    return steps * (INP * rank + rows * rank + rows * HID)


CASES = [("LSTM", "forward", dict(bias=True, init="const")),
         ("LSTM", "bidirectional", dict(bias=False)),
         ("LSTM", "reverse", dict(seq_lens=True, init="input")),
         ("LSTM", "bidirectional", dict(bias=True, seq_lens=True, init="const")),
         ("GRU", "forward", dict(bias=False, seq_lens=True)),
         ("GRU", "bidirectional", dict(bias=True, init="input")),
         ("GRU", "forward", dict(bias=True, init="const"))]
IDS = [f"{op}-{d}-" + "-".join(f"{k}={v}" for k, v in cfg.items()) for op, d, cfg in CASES]


@pytest.mark.parametrize("op,direction,cfg", CASES, ids=IDS)
def test_full_rank_split_reproduces_every_output(op, direction, cfg):
    model = rnn_model(op, direction, **cfg)
    out = split_at(model, INP)
    assert [n.op_type for n in out.graph.node] == ["MatMul", op]
    node = rnn_node(out)
    dirs = 2 if direction == "bidirectional" else 1
    w = {t.name: t for t in out.graph.initializer}[node.input[1]]
    assert tuple(w.dims) == (dirs, GATES[op] * HID, INP)
    assert list(node.input[2:]) == list(rnn_node(model).input[2:])  # R, B, lens, states as they were
    assert_same_outputs(out, model, feed(model))


@pytest.mark.parametrize("op,direction,cfg", CASES[:2] + CASES[4:6], ids=IDS[:2] + IDS[4:6])
def test_rank_k_weight_splits_exactly_at_k_and_the_macs_are_counted(op, direction, cfg):
    """W of exact rank 3 split at 3 (manual ratio between ranks 3 and 4): exact; the layer's
    figures and the model's measured totals equal an independent count."""
    dirs, k = 2 if direction == "bidirectional" else 1, 3
    model = rnn_model(op, direction, w_rank=k, **cfg)
    layer = oc.inspect(model).find("rnn")
    assert layer.mac == macs(op, dirs) and layer.matrix_shape() == (INP, dirs * GATES[op] * HID)
    assert layer.memory == dirs * GATES[op] * HID * (INP + HID)
    ratio = (macs(op, dirs, k) + macs(op, dirs, k + 1)) / 2 / macs(op, dirs)
    out, stats = oc.compress(model, "weight_svd", {"rnn": ratio})
    (st,) = stats.layers
    assert (st.rank, st.full_rank) == (k, INP)
    assert (st.mac_before, st.mac_after) == (macs(op, dirs), macs(op, dirs, k))
    assert st.achieved_ratio == pytest.approx(macs(op, dirs, k) / macs(op, dirs), abs=1e-12)
    assert (stats.mac_before, stats.mac_after) == (macs(op, dirs), macs(op, dirs, k))
    rows = dirs * GATES[op] * HID
    assert (st.memory_before, st.memory_after) == (rows * (INP + HID), k * (INP + rows) + rows * HID)
    assert_same_outputs(out, model, feed(model))


def test_break_even_and_unreachable_ratios():
    """The split saves only below rank rows*input/(input + rows); the recurrence R stays,
    so a ratio under its share is refused (named) or skipped (one ratio for all)."""
    model = rnn_model("LSTM")
    rc = WEIGHT_SVD.rank_cost(oc.inspect(model).find("rnn"), "mac")
    rows = GATES["LSTM"] * HID
    assert rc.max_rank == (rows * INP - 1) // (INP + rows) == 6
    share = Fraction(HID, INP + HID)  # R's part of the layer's MACs
    with pytest.raises(ParameterError, match="below the smallest achievable"):
        oc.compress(model, "weight_svd", {"rnn": float(share)})
    _, stats = oc.compress(rnn_model("LSTM", pre=True), "weight_svd", float(share))
    assert [s.name for s in stats.layers] == ["pre"]
    assert [s.name for s in stats.skipped] == ["rnn"] and "below rank 1" in stats.skipped[0].reason


def test_one_ratio_for_all_takes_the_lstm_and_inspect_lists_it():
    model = rnn_model("LSTM", "bidirectional", pre=True)
    analysis = oc.inspect(model)
    assert [(l.name, l.op) for l in analysis.layers] == [("pre", "MatMul"), ("rnn", "LSTM")]
    assert analysis.total("mac") == SEQ * BATCH * PRE * INP + macs("LSTM", 2)
    elig = api.eligibility(analysis.find("rnn"), analysis)
    assert elig["weight_svd"] is None
    assert "not a convolution" in elig["spatial_svd"]
    assert "pruned through its hidden size" in elig["channel_pruning"]
    out, stats = oc.compress(model, "weight_svd", 0.8)
    assert [s.name for s in stats.layers] == ["pre", "rnn"]
    assert stats.layers[1].new_nodes == ("rnn.0", "rnn.1")
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul", "MatMul", "LSTM"]
    assert stats.mac_after <= 0.8 * stats.mac_before
    with pytest.raises(LayerError, match="pruned through its hidden size"):
        oc.compress(model, "channel_pruning", {"rnn": 0.5}, data=[feed(model)])


def test_constant_node_weight():
    model = rnn_model("GRU", "bidirectional", w_rank=2, const_node=True, init="const")
    out, stats = oc.compress(model, "weight_svd", {"rnn": 0.7})
    assert stats.layers[0].rank >= 2
    assert_same_outputs(out, model, feed(model))


def test_data_aware_split_is_the_best_projection_on_the_data():
    """With data, the split minimises the input projection's error on X's rows (whitened by
    their second moment): lower than plain SVD's on anisotropic inputs; and it stays exact
    for a rank-k W."""
    model = rnn_model("LSTM", "bidirectional", init="const")
    rng = np.random.default_rng(3)
    scale = np.geomspace(3.0, 0.01, INP).astype(np.float32)
    data = [{"x": (rng.standard_normal((SEQ, BATCH, INP)) * scale).astype(np.float32)} for _ in range(4)]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    x = np.concatenate([d["x"].reshape(-1, INP) for d in data]).astype(np.float64)
    errors = []
    for kw in ({}, {"data": data}):
        out, _ = oc.compress(model, "weight_svd", {"rnn": 0.75}, **kw)
        inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        a = inits[out.graph.node[0].input[1]]
        bt = inits[rnn_node(out).input[1]]
        approx = x @ a @ bt.reshape(-1, a.shape[1]).T
        errors.append(np.linalg.norm(approx - x @ w.reshape(-1, INP).T))
    assert errors[1] < 0.8 * errors[0]
    exact = rnn_model("LSTM", "bidirectional", w_rank=3, init="const")
    rc = WEIGHT_SVD.rank_cost(oc.inspect(exact).find("rnn"), "mac")
    out, stats = oc.compress(exact, "weight_svd", {"rnn": float((rc.ratio(3) + rc.ratio(4)) / 2)}, data=data)
    assert stats.layers[0].rank == 3
    assert_same_outputs(out, exact, data[0])


def test_refit_corrects_the_split_after_an_upstream_split():
    """--svd-refit refits the op's W (the split's second factor, with A) on X from the model
    whose MatMul 'pre' is split too: the projection error falls, and the outputs' with it."""
    model = rnn_model("GRU", "forward", pre=True, init="const")
    data = [feed(model, s) for s in range(20)]
    errors = []
    for refit in (False, True):
        out, stats = oc.compress(model, "weight_svd", 0.7, data=data, svd_refit=refit)
        errors.append(sum(np.linalg.norm(b.run(out, d)[0] - b.run(model, d)[0]) for d in data))
    gain = float(stats.layers[1].note.rsplit("x", 1)[1])
    assert stats.layers[1].name == "rnn" and gain < 1
    assert errors[1] < errors[0]


def test_auto_mode_preview_and_latency_variants():
    """Auto mode's unit: a full-size preview is the model's own W; a candidate's preview has
    W's shape and computes what the split at that rank computes; the latency variants run."""
    model = rnn_model("LSTM", "bidirectional", seq_lens=True, init="input")
    analysis = layers.analyze(ir.load(model))
    ctx = Context("mac", 1, analysis.input_dims)
    units, skipped = WEIGHT_SVD.units(analysis.proto, analysis, ["rnn"], [0.7, 0.9, 1.0], ctx)
    assert not skipped and [u.name for u in units] == ["rnn"]
    (unit,) = units
    w = analysis.find("rnn").weight
    for cand in unit.candidates:
        (name, new), = unit.preview(cand).items()
        assert name == "W" and new.shape == w.shape
        swapped = onnx.ModelProto()
        swapped.CopyFrom(model)
        next(t for t in swapped.graph.initializer if t.name == "W").CopyFrom(numpy_helper.from_array(new, "W"))
        assert_same_outputs(swapped, split_at(model, cand.size), feed(model), atol=1e-4)
    (layer_name, ref, by_key), = WEIGHT_SVD.variants(analysis, unit, 17)
    for v in [ref, *by_key.values()]:
        m = variants.variant_model(v)
        x = np.random.default_rng(0).standard_normal(v.input_shape).astype(np.float32)
        assert np.isfinite(b.run(m, {"x": x})[0]).all()


def corpus(name: str):
    dims = {k: tuple(v["shape"]) for k, v in MANIFEST[name]["inputs"].items()}
    model = onnx.load(str(CORPUS / name))
    rng = np.random.default_rng(0)
    data = [{k: rng.standard_normal(v).astype(np.float32) for k, v in dims.items()} for _ in range(2)]
    return model, dims, data


@pytest.mark.parametrize("name,lstm", [("crnn_ts_op11_dyn.onnx", "/rnn/LSTM"),
                                       ("crnn_dynamo_op18_dyn.onnx", "node_lstm__2"),
                                       ("keras_lstm_tf2onnx_op14_dyn.onnx", "LSTM__267"),
                                       ("gru_state_ts_op13_dyn.onnx", "/gru/GRU")])
def test_corpus_recurrent_layers_split_and_still_run(name, lstm):
    model, dims, data = corpus(name)
    layer = oc.inspect(model, dims).find(lstm)
    rc = WEIGHT_SVD.rank_cost(layer, "mac")
    rank = rc.max_rank // 2
    ratio = float((rc.ratio(rank) + rc.ratio(rank + 1)) / 2)
    out, stats = oc.compress(model, "weight_svd", {lstm: ratio}, input_shape=dims)
    (st,) = stats.layers
    assert st.rank == rank and st.mac_after == rc.at(rank) < st.mac_before == layer.mac
    assert stats.mac_before - stats.mac_after == layer.mac - st.mac_after  # measured on the written model
    got, want = b.run(out, data[0]), b.run(model, data[0])
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.isfinite(g).all()


def test_auto_mode_on_the_crnn_takes_the_lstm():
    """Auto mode (weight SVD, target 0.6) on the TorchScript CRNN: the LSTM is a unit."""
    model, dims, data = corpus("crnn_ts_op11_dyn.onnx")
    out, stats = oc.compress_auto(model, "weight_svd", 0.6, evaluators.fidelity(data[1]), data=data[:1],
                                  input_shape=dims, candidates=5)
    assert stats.mac_after <= 0.6 * stats.mac_before
    # the LSTM is a unit, scored at the candidates its recurrence (half its MACs) leaves reachable
    assert set(stats.selection["scores"]["/rnn/LSTM"]) == {"0.6", "0.8"}
    assert "/rnn/LSTM" in stats.selection["chosen"]
    assert np.isfinite(b.run(out, data[1])[0]).all()
