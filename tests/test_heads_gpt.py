"""Attention heads of a decoder-only transformer as channel-pruning units: a small GPT-2
(transformers' GPT2LMHeadModel, 2 layers, 4 heads of 16, trained on CPython's
documentation prose by tools/export_gpt_small.py) through torch.onnx's TorchScript and
dynamo exporters. Its Conv1D linears are Reshape -> Gemm -> Reshape (the last Reshape's
computed target states the channel count), Q, K and V come from one fused projection cut
by a Split, and the scores take a causal mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as b
import onnx_compress as oc
from onnx_compress import ir, layers
from onnx_compress.schemes.pruning import depgraph

CORPUS = Path(__file__).resolve().parent / "corpus"
GPTS = ["gpt_ts_op14_dyn.onnx", "gpt_dynamo_op18_dyn.onnx"]  # torch.onnx TorchScript / dynamo
DIMS = {"input_ids": (2, 16)}
HEADS, D, E = 4, 16, 64


def text() -> tuple[np.ndarray, np.ndarray]:
    """(evaluation rows, calibration rows) of held-out bytes, [64, 32] each, disjoint."""
    ids = np.load(CORPUS / "gpt_text.npz")["input_ids"]
    return ids[:64], ids[64:]


def _analysis(model):
    return layers.analyze(ir.load(model), DIMS)


def _group(analysis, name: str):
    return depgraph.build_group(analysis.find(name), analysis.graph, analysis.shapes)


def _out_projections(analysis) -> list[tuple[str, str]]:
    """(output projection, fused QKV projection) of each attention block: the layers whose
    channel group is one unit per head and reaches one layer of three times the width."""
    out = []
    for layer in analysis.layers:
        if layer.reason or layer.weight is None:
            continue
        group = _group(analysis, layer.name)
        if group.unit_of is not None and group.size == HEADS:
            (qkv,) = group.out_layers()
            out.append((layer.name, qkv))
    return out


def _weight(model, name: str) -> np.ndarray:
    """A Gemm/MatMul layer's weight as [in, out], whatever transB says."""
    analysis = _analysis(model)
    node = analysis.find(name).node
    w = ir.constant_value(node.inputs[1])
    return w.T if int(node.attrs.get("transB", 0)) else w


def _zero_heads(model, name: str, heads, block: int = D) -> onnx.ModelProto:
    """`model` with the input rows of layer `name` of the blocks `heads` zeroed (weight
    layout: Gemm's transB read)."""
    analysis = _analysis(model)
    node = analysis.find(name).node
    trans = int(node.attrs.get("transB", 0))
    w = ir.constant_value(node.inputs[1]).copy()
    for h in heads:
        if trans:
            w[:, h * block:(h + 1) * block] = 0
        else:
            w[h * block:(h + 1) * block] = 0
    ir.set_input(node, 1, w, ir.unique_name("zeroed", ir.all_names(analysis.graph)))
    return ir.export(analysis.graph, analysis.proto)


def cross_entropy(model, ids: np.ndarray) -> float:
    """Mean next-token cross-entropy (nats) of `model` on `ids`, from its logits."""
    logits = b.run(model, {"input_ids": ids})[0][:, :-1].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, ids[:, 1:, None], -1).mean())


@pytest.mark.parametrize("name", GPTS)
def test_every_attention_block_is_one_unit_per_head(name):
    analysis = _analysis(str(CORPUS / name))
    blocks = _out_projections(analysis)
    assert len(blocks) == 2  # two layers
    for proj, qkv in blocks:
        group = _group(analysis, proj)
        assert group.size == HEADS and len(group.unit_of) == E and not group.locked.any(), group.describe()
        assert analysis.find(qkv).weight.size == E * 3 * E
        kinds = [a.kind for a in group.actions]
        assert kinds.count("split") == 1 and kinds.count("out") == 1 and kinds.count("in") == 1


@pytest.mark.parametrize("name", GPTS)
def test_removing_heads_that_contribute_nothing_is_exact(name):
    model = onnx.load(str(CORPUS / name))
    evaluation, calib = text()
    proj, qkv = _out_projections(_analysis(model))[0]
    zeroed = _zero_heads(model, proj, [1, 3])
    out, stats = oc.compress(zeroed, "channel_pruning", {proj: 0.5}, data={"input_ids": calib[:8, :16]},
                             selection="magnitude", reconstruct=False, input_shape=DIMS)
    assert (stats.layers[0].rank, stats.layers[0].full_rank) == (2, 4)
    for ids in (evaluation[:2, :16], evaluation[:3, :9], evaluation[3:4]):  # batch and sequence stay dynamic
        want, got = b.run(zeroed, {"input_ids": ids})[0], b.run(out, {"input_ids": ids})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    keep = np.concatenate([np.arange(h * D, (h + 1) * D) + part * E for part in range(3) for h in (0, 2)])
    np.testing.assert_array_equal(_weight(out, qkv), _weight(model, qkv)[:, keep])  # Q, K, V of heads 0, 2
    np.testing.assert_array_equal(_weight(out, proj), _weight(zeroed, proj)[keep[:2 * D]])
    assert stats.mac_after < stats.mac_before
    dims = [[d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] for m in (model, out)]
    assert dims[0] == dims[1] and all(isinstance(d, str) for d in dims[0])


@pytest.mark.parametrize("name", GPTS)
def test_feed_forward_dims_are_units_through_the_conv1d_reshapes(name):
    """The FFN intermediate dims: c_fc's output Reshape (computed target [B, S, 128]) is
    rewritten in its Concat; zeroed dims go exactly."""
    model = onnx.load(str(CORPUS / name))
    analysis = _analysis(model)
    ffn = [(l.name, _group(analysis, l.name)) for l in analysis.layers if l.weight is not None and not l.reason]
    ffn = [(n, g) for n, g in ffn if g.size == 2 * E and not g.locked.any()]
    assert len(ffn) == 2, [g.describe() for _, g in ffn]
    proj, group = ffn[0]
    (fc,) = group.out_layers()
    zeroed = _zero_heads(model, proj, range(0, 2 * E, 2), block=1)  # every other dim
    evaluation, calib = text()
    out, stats = oc.compress(zeroed, "channel_pruning", {proj: 0.5}, data={"input_ids": calib[:8, :16]},
                             selection="magnitude", reconstruct=False, input_shape=DIMS)
    assert (stats.layers[0].rank, stats.layers[0].full_rank) == (E, 2 * E)
    for ids in (evaluation[:2, :16], evaluation[:3, :9]):
        want, got = b.run(zeroed, {"input_ids": ids})[0], b.run(out, {"input_ids": ids})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(_weight(out, fc), _weight(model, fc)[:, 1::2])


#: ratio: bound on the rise of the held-out cross-entropy (nats) with the default pruning and
#: refit (measured on both exports: 1.425 -> 1.717 at 0.75, -> 2.675 at 0.5; without the
#: refit 1.899 and 3.661)
BOUNDS = {0.75: 0.4, 0.5: 1.5}
CASES = [(n, r) for n in GPTS for r in BOUNDS]


@pytest.mark.parametrize("name,ratio", CASES, ids=[f"{n[:-5]}-{r}" for n, r in CASES])
def test_pruning_every_blocks_heads_keeps_the_language_model(name, ratio):
    model = onnx.load(str(CORPUS / name))
    evaluation, calib = text()
    projs = [p for p, _ in _out_projections(_analysis(model))]
    runs = {refit: oc.compress(model, "channel_pruning", {p: ratio for p in projs}, data={"input_ids": calib},
                               input_shape=DIMS, reconstruct=refit) for refit in (True, False)}
    out, stats = runs[True]
    before, after = cross_entropy(model, evaluation), cross_entropy(out, evaluation)
    plain = cross_entropy(runs[False][0], evaluation)
    print(f"{name} ratio {ratio}: cross-entropy {before:.4f} -> {after:.4f} nats (no refit {plain:.4f}), "
          f"perplexity {np.exp(before):.3f} -> {np.exp(after):.3f}, MACs {stats.mac_after / stats.mac_before:.4f}")
    removed = round(HEADS * (1 - ratio))
    assert [l.rank for l in stats.layers] == [HEADS - removed] * 2
    tokens = DIMS["input_ids"][0] * DIMS["input_ids"][1]  # a head: 3 D x E of QKV and D x E of the projection
    assert stats.mac_before - stats.mac_after == 2 * removed * 4 * D * E * tokens
    assert b.run(out, {"input_ids": evaluation[:3, :9]})[0].shape == (3, 9, 128)
    assert before < 1.5  # the model learned the text (a uniform guess: ln 128 = 4.85)
    assert after - before < BOUNDS[ratio]
    assert after < plain - 0.1  # the refit recovers part of the loss
