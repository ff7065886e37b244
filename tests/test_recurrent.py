"""LSTM and GRU hidden-size pruning as channel-pruning groups (ops_recurrent).

The channel group of a layer that reads an LSTM/GRU output Y (through Squeeze, or the
Transpose + Reshape that merges a bidirectional Y's directions) reaches the recurrent op
on Y's hidden axis and ties Y_h/Y_c; winnow removes hidden unit j from every gate's rows of
W and R, from B, R's columns, P and the initial states, in every direction.

Exactness: when a hidden unit's W rows, R rows and B entries (all gates, all directions)
and its initial state are zero, it stays zero for ever: an LSTM has c_t = f*c_{t-1} + i*tanh(0)
= 0.5*c_{t-1} = 0 and h_t = o*tanh(c_t) = 0; a GRU has h~ = tanh(0 + r*0) = 0 (either
linear_before_reset) and h_t = (1-z)*h~ + z*h_{t-1} = 0.5*h_{t-1} = 0. The kept units read it
only through R's column j, times 0, so removing it is exact; the consumer's weights for it
need not be zero (they are only made small, so that magnitude selection picks those units).
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
from onnx_compress import ir, layers
from onnx_compress.errors import LayerError
from onnx_compress.schemes.pruning import depgraph, prune

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = {e["file"]: e for e in json.loads((CORPUS / "manifest.json").read_text())}
GATES = {"LSTM": 4, "GRU": 3}
SEQ, BATCH, INP, OUT = 6, 3, 5, 4


# ------------------------------------------------------------------------ builders
def make_params(op: str, dirs: int, hidden: int, seed: int = 0, peephole: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    g = GATES[op]

    def r(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    p = {"W": r(dirs, g * hidden, INP), "R": r(dirs, g * hidden, hidden), "B": r(dirs, 2 * g * hidden),
         "h0": r(dirs, BATCH, hidden), "c0": r(dirs, BATCH, hidden),
         "C": r(dirs * hidden, OUT), "Cb": r(OUT), "E": r(dirs * hidden, OUT)}
    if peephole:
        p["P"] = r(dirs, 3 * hidden)
    return p


def zero_units(p: dict, op: str, drop, hidden: int) -> dict:
    """The removed units' W/R rows and B entries (every gate, direction) and initial states
    zeroed; the consumers' weights for them made small (magnitude selection drops them)."""
    p = {k: v.copy() for k, v in p.items()}
    g, drop = GATES[op], np.asarray(drop)
    rows = (np.arange(g)[:, None] * hidden + drop).reshape(-1)
    p["W"][:, rows] = 0
    p["R"][:, rows] = 0
    p["B"][:, (np.arange(2 * g)[:, None] * hidden + drop).reshape(-1)] = 0
    p["h0"][:, :, drop] = 0
    p["c0"][:, :, drop] = 0
    dirs = p["W"].shape[0]
    chans = (np.arange(dirs)[:, None] * hidden + drop).reshape(-1)
    p["C"][chans] *= 0.01
    p["E"][chans] *= 0.01
    return p


def rnn_model(op: str, p: dict, *, consumer: str = "MatMul", init: str = "none", lbr: int = 0,
              state_out: bool = False, seq_lens: bool = False, layout: int = 0, w_input: bool = False,
              y_output: bool = False) -> onnx.ModelProto:
    """x -> LSTM/GRU -> (Squeeze, or Transpose + Reshape merging directions) -> `consumer`
    ("MatMul" on [seq, batch, dirs*H], or "Gemm" after a Reshape to [-1, dirs*H]) -> y;
    with `state_out`, Y_h (and Y_c, added) -> Transpose + Reshape -> MatMul -> yh."""
    dirs, hidden = p["W"].shape[0], p["R"].shape[-1]
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    batch = "batch" if init == "computed" else BATCH  # a dynamic batch: the zeros are not folded on load
    xshape = [batch, SEQ, INP] if layout else [SEQ, batch, INP]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)]
    if w_input:
        graph_inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(p["W"].shape)))
    ins = ["x", "W" if w_input else const("W", p["W"]), const("R", p["R"]), const("B", p["B"]),
           const("lens", np.array([SEQ, SEQ - 2, SEQ - 1], np.int32)) if seq_lens else ""]
    n_states = 2 if op == "LSTM" else 1
    if init == "const":
        ins += [const("h0", p["h0"]), const("c0", p["c0"])][:n_states]
    elif init == "computed":  # zeros of shape [dirs, batch, H] from x's shape, as torch.onnx exports
        nodes += [helper.make_node("Shape", ["x"], ["xs"]),
                  helper.make_node("Gather", ["xs", const("one", np.array([1], np.int64))], ["nb"], axis=0),
                  helper.make_node("Concat", [const("nd", np.array([dirs], np.int64)), "nb",
                                              const("nh", np.array([hidden], np.int64))], ["zs"], axis=0),
                  helper.make_node("ConstantOfShape", ["zs"], ["zeros"],
                                   value=numpy_helper.from_array(np.zeros(1, np.float32)))]
        ins += ["zeros"] * n_states
    elif init == "input":
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, BATCH, hidden]))
        ins += ["h0"] + ([const("c0", p["c0"])] if op == "LSTM" else [])
    if "P" in p:
        ins += [""] * (7 - len(ins)) + [const("P", p["P"])]
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if dirs == 2 else "forward"}
    if layout:
        attrs["layout"] = 1
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    outs = ["Y", "Y_h", "Y_c"][:n_states + 1]
    nodes.append(helper.make_node(op, ins, outs, name="rnn", **attrs))
    if dirs == 1:
        nodes.append(helper.make_node("Squeeze", ["Y", const("ax", np.array([2 if layout else 1], np.int64))],
                                      ["feat"]))
    else:
        nodes.append(helper.make_node("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]))
        target = [-1, 2 * hidden] if consumer == "Gemm" else [0, 0, -1]
        nodes.append(helper.make_node("Reshape", ["Yt", const("merge", np.array(target, np.int64))], ["feat"]))
    if consumer == "Gemm":
        if dirs == 1:
            nodes.append(helper.make_node("Reshape", ["feat", const("flat", np.array([-1, hidden], np.int64))],
                                          ["feat2"]))
        src = "feat2" if dirs == 1 else "feat"
        nodes.append(helper.make_node("Gemm", [src, const("Ct", p["C"].T.copy()), const("Cb", p["Cb"])], ["y"],
                                      name="head", transB=1))
        yshape = [SEQ * BATCH, OUT]
    else:
        nodes.append(helper.make_node("MatMul", ["feat", const("C", p["C"])], ["y"], name="head"))
        yshape = [BATCH, SEQ, OUT] if layout else [SEQ, BATCH, OUT]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)]
    if state_out:
        merge = const("smerge", np.array([0, -1], np.int64))
        for t in outs[1:]:
            nodes += [helper.make_node("Transpose", [t], [f"{t}t"], perm=[1, 0, 2]),
                      helper.make_node("Reshape", [f"{t}t", merge], [f"{t}m"])]
        last = "Y_hm"
        if op == "LSTM":
            nodes.append(helper.make_node("Add", ["Y_hm", "Y_cm"], ["Y_s"]))
            last = "Y_s"
        nodes.append(helper.make_node("MatMul", [last, const("E", p["E"])], ["yh"], name="state_head"))
        outputs.append(helper.make_tensor_value_info("yh", TensorProto.FLOAT, [BATCH, OUT]))
    if y_output:
        outputs.append(helper.make_tensor_value_info("Y", TensorProto.FLOAT, [SEQ, dirs, BATCH, hidden]))
    graph = helper.make_graph(nodes, "rnn", graph_inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds_for(model, seed: int = 0, n: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        feed = {}
        for inp in model.graph.input:
            shape = [d.dim_value or BATCH for d in inp.type.tensor_type.shape.dim]
            feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(feed)
    return out


def rnn_node(model):
    return next(n for n in model.graph.node if n.op_type in GATES)


def rnn_params(model) -> dict:
    """hidden_size and the shapes of the recurrent op's constant inputs."""
    node = rnn_node(model)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    shapes = {names[i]: inits[t] for i, t in enumerate(node.input) if t in inits}
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
    return {"hidden_size": hidden, **shapes}


def group_of(model, layer: str, dims=None):
    analysis = layers.analyze(ir.load(model), dims)
    return depgraph.build_group(analysis.find(layer), analysis.graph, analysis.shapes)


# ----------------------------------------------------------------------- exactness
CASES = {
    "lstm-forward-matmul-const-state-peephole": ("LSTM", 1, dict(consumer="MatMul", init="const"), True),
    "lstm-bidir-gemm-computed-state-Yh-Yc": ("LSTM", 2, dict(consumer="Gemm", init="computed", state_out=True), False),
    "lstm-bidir-matmul": ("LSTM", 2, dict(consumer="MatMul"), False),
    "gru-forward-lbr0-const-state-seqlens": ("GRU", 1, dict(consumer="MatMul", init="const", seq_lens=True), False),
    "gru-bidir-lbr1-gemm-computed-Yh": ("GRU", 2, dict(consumer="Gemm", init="computed", lbr=1, state_out=True),
                                        False),
    "gru-forward-lbr1-matmul": ("GRU", 1, dict(consumer="MatMul", lbr=1), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_zeroed_hidden_units_are_pruned_exactly(case):
    """Channel pruning of the consumer (magnitude, no refit) removes exactly the zeroed
    hidden units from the recurrent op: the outputs equal the zeroed model's to 1e-5, the op
    and its consumers shrink, and the same pruning of the un-zeroed model is not exact."""
    op, dirs, cfg, peephole = CASES[case]
    hidden, drop = 8, [1, 4, 6]
    base = make_params(op, dirs, hidden, seed=1, peephole=peephole)
    zeroed = rnn_model(op, zero_units(base, op, drop, hidden), **cfg)
    data = feeds_for(zeroed, seed=2)
    ratio = Fraction(hidden - len(drop), hidden)
    out, stats = oc.compress(zeroed, "channel_pruning", {"head": float(ratio)}, data=data,
                             selection="magnitude", reconstruct=False)
    want = b.run(zeroed, data[0])
    got = b.run(out, data[0])
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    k, g = hidden - len(drop), GATES[op]
    shapes = rnn_params(out)
    assert shapes["hidden_size"] == k
    assert shapes["W"] == (dirs, g * k, INP) and shapes["R"] == (dirs, g * k, k) and shapes["B"] == (dirs, 2 * g * k)
    if peephole:
        assert shapes["P"] == (dirs, 3 * k)
    if cfg.get("init") == "const":
        assert shapes["initial_h"] == (dirs, BATCH, k)
    if cfg.get("init") == "computed":  # the computed zeros are read through one Gather of the kept units
        gathers = [n for n in out.graph.node if n.op_type == "Gather" and n.input[0] == "zeros"]
        assert len(gathers) == 1 and set(rnn_node(out).input[5:7]) == {gathers[0].output[0]}
    widths = {l.name: l.matrix_shape()[0] for l in oc.inspect(out).compressible}
    assert widths["head"] == dirs * k
    if cfg.get("state_out"):
        assert widths["state_head"] == dirs * k  # Y_h (and Y_c) are tied to Y's hidden units
    assert stats.mac_after < stats.mac_before
    # control: the same cut of the un-zeroed units is not exact
    small = zero_units(base, op, drop, hidden)
    plain = rnn_model(op, base | {"C": small["C"], "E": small["E"]}, **cfg)
    cut, _ = oc.compress(plain, "channel_pruning", {"head": float(ratio)}, data=data, selection="magnitude",
                         reconstruct=False)
    assert np.abs(b.run(cut, data[0])[0] - b.run(plain, data[0])[0]).max() > 1e-3


def test_bidirectional_merge_maps_onto_the_hidden_axis():
    """Through Transpose [seq, batch, dirs, H] + Reshape [seq, batch, dirs*H], merged channel
    d*H + j is hidden unit j: the group has H units, unit j = channels {j, H + j}, and Y's
    position is its hidden axis 3 (not the direction axis, as attention heads would be)."""
    hidden = 8
    model = rnn_model("LSTM", make_params("LSTM", 2, hidden), consumer="MatMul", state_out=True)
    group = group_of(model, "head")
    assert group.size == hidden and not group.locked.any()
    np.testing.assert_array_equal(group.unit_of, np.tile(np.arange(hidden), 2))
    y = group.positions["Y"]
    assert y.axis == 3 and y.width == hidden
    np.testing.assert_array_equal(y.index[:, 0], np.arange(hidden))
    assert {group.positions[t].axis for t in ("Y_h", "Y_c")} == {2}
    assert sorted(group.in_layers()) == ["head", "state_head"]
    assert [a.kind for a in group.actions if a.node.op == "LSTM"] == ["rnn_hidden"]


def test_recurrent_op_reading_a_pruned_tensor_loses_w_columns():
    """A group that reaches X's feature axis makes the op a reader: a MatMul writes the
    tensor that both the LSTM and the root layer read; pruning the root removes those
    features from the writer's columns and from W's input columns, exactly when the
    writer's columns for them are zero."""
    rng = np.random.default_rng(3)
    hidden, feat, drop = 6, 8, [0, 5]
    a = (rng.standard_normal((INP, feat)) * 0.5).astype(np.float32)
    a[:, drop] = 0
    c = (rng.standard_normal((feat, OUT)) * 0.5).astype(np.float32)
    c[drop] *= 0.01
    p = make_params("LSTM", 1, hidden, seed=4)
    w = (rng.standard_normal((1, 4 * hidden, feat)) * 0.4).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in
             (("A", a), ("C", c), ("W", w), ("R", p["R"]), ("B", p["B"]), ("D", p["C"][:hidden]))]
    nodes = [helper.make_node("MatMul", ["x", "A"], ["t"], name="writer"),
             helper.make_node("MatMul", ["t", "C"], ["side"], name="root"),
             helper.make_node("LSTM", ["t", "W", "R", "B"], ["Y"], name="rnn", hidden_size=hidden),
             helper.make_node("Squeeze", ["Y", "ax"], ["h"]),
             helper.make_node("MatMul", ["h", "D"], ["y"], name="head")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    graph = helper.make_graph(nodes, "reader", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, INP])],
                              [helper.make_tensor_value_info("side", TensorProto.FLOAT, [SEQ, BATCH, OUT]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [SEQ, BATCH, OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    group = group_of(model, "root")
    assert [a.kind for a in group.actions if a.node.op == "LSTM"] == ["rnn_in"]
    data = feeds_for(model, seed=5)
    out, _ = oc.compress(model, "channel_pruning", {"root": 0.75}, data=data, selection="magnitude",
                         reconstruct=False)
    for want, got in zip(b.run(model, data[0]), b.run(out, data[0])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    shapes = rnn_params(out)
    assert shapes["W"] == (1, 4 * hidden, feat - len(drop)) and shapes["hidden_size"] == hidden
    assert {l.name: l.matrix_shape() for l in oc.inspect(out).compressible}["writer"] == (INP, feat - len(drop))


# --------------------------------------------------------------------------- locks
def test_state_input_locks_with_its_reason():
    """An initial_h that is a graph input (a state input of the model) locks the group: its
    hidden size is part of the model's interface; compressing the consumer says so."""
    model = rnn_model("GRU", make_params("GRU", 1, 8), consumer="MatMul", init="input")
    group = group_of(model, "head")
    assert group.all_locked
    assert group.lock_summary() == ("GRU 'rnn' takes its initial_h from the model's state input 'h0': pruning "
                                    "its hidden size would change the model's interface (8 channels)")
    with pytest.raises(LayerError, match=r"'head': no channel can be removed: GRU 'rnn' takes its initial_h from "
                                         r"the model's state input 'h0'"):
        oc.compress(model, "channel_pruning", {"head": 0.5}, data=feeds_for(model))


@pytest.mark.parametrize("cfg,reason", [
    (dict(layout=1), "LSTM 'rnn' has layout=1 (batch-first tensors)"),
    (dict(w_input=True), "LSTM 'rnn' has a non-constant W"),
    (dict(y_output=True), "tensor 'Y' is a graph output"),
], ids=["layout1", "non-constant-W", "Y-graph-output"])
def test_unhandled_recurrent_ops_lock_with_a_reason(cfg, reason):
    model = rnn_model("LSTM", make_params("LSTM", 1, 8), consumer="MatMul", **cfg)
    group = group_of(model, "head")
    assert group.all_locked
    assert reason in group.reasons, group.reasons


# ----------------------------------------------------------------------- with refit
def test_half_hidden_size_with_refit_lowers_macs():
    """Ratio 0.5 with the default refit: the LSTM keeps half its units in both directions,
    the Gemm half its inputs, the MACs fall, and the refit beats no refit on the data."""
    hidden = 8
    model = rnn_model("LSTM", make_params("LSTM", 2, hidden, seed=6), consumer="Gemm")
    data = feeds_for(model, seed=7, n=2)
    out, stats = oc.compress(model, "channel_pruning", {"head": 0.5}, data=data)
    bare, _ = oc.compress(model, "channel_pruning", {"head": 0.5}, data=data, reconstruct=False)
    assert rnn_params(out) == {"hidden_size": 4, "W": (2, 16, INP), "R": (2, 16, 4), "B": (2, 32)}
    assert {l.name: l.weight.shape for l in oc.inspect(out).compressible}["head"] == (OUT, 8)
    assert stats.mac_after < stats.mac_before
    want = np.concatenate([b.run(model, d)[0] for d in data])
    fit = np.concatenate([b.run(out, d)[0] for d in data])
    raw = np.concatenate([b.run(bare, d)[0] for d in data])
    assert np.isfinite(fit).all()
    assert np.linalg.norm(fit - want) < np.linalg.norm(raw - want)


def test_auto_mode_prunes_the_hidden_size():
    """Auto mode takes the LSTM's consumer as a unit: the target (of the layers' MACs) is met
    and the LSTM shrinks with it."""
    from onnx_compress import evaluators

    model = rnn_model("LSTM", make_params("LSTM", 2, 8, seed=8), consumer="Gemm", init="computed")
    data, held = feeds_for(model, seed=9, n=2), feeds_for(model, seed=10)[0]
    out, stats = oc.compress_auto(model, "channel_pruning", 0.8, evaluators.fidelity(held), data=data, candidates=4)
    assert stats.mac_after / stats.mac_before <= 0.8
    assert rnn_params(out)["hidden_size"] < 8
    assert np.isfinite(b.run(out, held)[0]).all()


# -------------------------------------------------------------------------- corpus
def corpus_analysis(name: str):
    dims = {k: tuple(v["shape"]) for k, v in MANIFEST[name]["inputs"].items()}
    return layers.analyze(ir.load(CORPUS / name), dims), dims


#: file -> {layer whose group reaches the recurrent op: (units, locked units, lock reason or None)}
REACH = {
    "crnn_dynamo_op18_dyn.onnx": {"node_linear": (32, 0, None)},
    "keras_lstm_tf2onnx_op14_dyn.onnx": {"functional_3_1/dense_2_1/Tensordot/MatMul": (24, 0, None)},
    "gru_state_ts_op13_dyn.onnx": {"/out/MatMul": (32, 32, "GRU '/gru/GRU' takes its initial_h from the model's "
                                                           "state input 'h0': pruning its hidden size would "
                                                           "change the model's interface")},
    # its Gemm reaches the LSTM through a computed Reshape target with a constant channel entry
    "crnn_ts_op11_dyn.onnx": {"/fc/Gemm": (32, 0, None)},
}


@pytest.mark.parametrize("name", list(REACH))
def test_corpus_groups_reach_the_recurrent_ops(name):
    """No group of the corpus' recurrent models is locked by the LSTM/GRU as an unknown op;
    the consumers of Y reach it on the hidden axis (units: one per hidden unit, both
    directions together), except where a state input of the model locks it."""
    analysis, _ = corpus_analysis(name)
    reached = {}
    for layer in analysis.compressible:
        if prune.check_layer(layer) is not None:
            continue
        group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
        assert not any("does not propagate" in why for why in group.reasons), (layer.name, group.reasons)
        if any(a.node.op in GATES for a in group.actions) or any(op in why for why in group.reasons for op in GATES):
            reached[layer.name] = (group.size, int(group.locked.sum()), group.lock_summary().rsplit(" (", 1)[0] or None)
    assert reached == REACH[name]


@pytest.mark.parametrize("name,layer,hidden", [
    ("crnn_dynamo_op18_dyn.onnx", "node_linear", 32),
    ("crnn_ts_op11_dyn.onnx", "/fc/Gemm", 32),
    ("keras_lstm_tf2onnx_op14_dyn.onnx", "functional_3_1/dense_2_1/Tensordot/MatMul", 24),
])
def test_corpus_lstm_consumer_prunes_end_to_end(name, layer, hidden):
    """Channel pruning of the consumer of a real exported LSTM at 0.5 (with the refit):
    ONNX Runtime runs the result, the outputs are finite, the MACs fall and the LSTM keeps
    half its hidden units."""
    _, dims = corpus_analysis(name)
    model = onnx.load(str(CORPUS / name))
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in dims.items()}
    out, stats = oc.compress(model, "channel_pruning", {layer: 0.5}, data=feeds, input_shape=dims)
    got, want = b.run(out, feeds)[0], b.run(model, feeds)[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert stats.mac_after < stats.mac_before
    shapes = rnn_params(out)
    dirs = shapes["W"][0]
    assert shapes["hidden_size"] == hidden // 2
    assert shapes["R"] == (dirs, 4 * hidden // 2, hidden // 2) and shapes["B"] == (dirs, 8 * hidden // 2)
