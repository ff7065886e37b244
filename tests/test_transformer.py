"""Transformer-shaped graphs: int64 token inputs with dynamic batch and sequence, 3-D MatMul
inputs, position ids sliced by a Shape-derived bound (which ONNX shape inference cannot
resolve), activation x activation MatMuls, and a 2-D Gemm head."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import builders as b
import onnx_compress as oc
from onnx_compress import layers, runtime
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.schemes.svd.moments import input_moments

V, P, H, F, C = 30, 16, 8, 24, 5  # vocabulary, positions, hidden, feed-forward, head outputs
DENSE = ["q", "k", "v", "o", "ffn1", "ffn2"]


def tiny_encoder(seed: int = 0) -> onnx.ModelProto:
    """One post-norm encoder block in the layout torch.onnx gives BERT, then mean pooling and a Gemm."""
    rng = np.random.default_rng(seed)
    inits = {
        "word": rng.normal(size=(V, H)), "pos": rng.normal(size=(P, H)),
        "ln_s": 1 + 0.1 * rng.normal(size=H), "ln_b": 0.1 * rng.normal(size=H),
        "head": rng.normal(size=(C, H)) / np.sqrt(H), "head_b": rng.normal(size=C),
    }
    for name in DENSE:
        k, n = (H, F) if name == "ffn1" else (F, H) if name == "ffn2" else (H, H)
        inits[f"W_{name}"] = rng.normal(size=(k, n)) / np.sqrt(k)
        inits[f"b_{name}"] = 0.1 * rng.normal(size=n)
    tensors = [b._init(k, v.astype(np.float32)) for k, v in inits.items()]
    tensors += [b._init("pos_ids", np.arange(P, dtype=np.int64)[None]), b._init("zero", np.array([0], np.int64)),
                b._init("one", np.array([1], np.int64)), b._init("axis0", np.array([0], np.int64)),
                b._init("scale", np.array(1 / np.sqrt(H), np.float32))]

    def node(op, ins, outs, name, **attrs):
        return helper.make_node(op, ins, outs, name=name, **attrs)

    nodes = [
        node("Gather", ["word", "input_ids"], ["tok"], "word_emb"),
        node("Shape", ["input_ids"], ["shape"], "shape"),
        node("Gather", ["shape", "one"], ["seq"], "seq_len"),
        node("Slice", ["pos_ids", "zero", "seq", "one"], ["pids"], "slice_pos"),  # [1, seq]: unknown to ONNX inference
        node("Gather", ["pos", "pids"], ["pe"], "pos_emb"),
        node("Add", ["tok", "pe"], ["emb"], "add_emb"),
        node("LayerNormalization", ["emb", "ln_s", "ln_b"], ["x"], "ln", axis=-1),
    ]
    for name in ("q", "k", "v"):
        nodes += [node("MatMul", ["x", f"W_{name}"], [f"{name}_mm"], name),
                  node("Add", [f"{name}_mm", f"b_{name}"], [name + "_out"], f"{name}_bias")]
    nodes += [
        node("Transpose", ["k_out"], ["kt"], "kt", perm=[0, 2, 1]),
        node("MatMul", ["q_out", "kt"], ["scores"], "scores"),  # two activations: not a layer
        node("Mul", ["scores", "scale"], ["scaled"], "scaled"),
        node("Softmax", ["scaled"], ["probs"], "softmax", axis=-1),
        node("MatMul", ["probs", "v_out"], ["ctx"], "context"),
        node("MatMul", ["ctx", "W_o"], ["o_mm"], "o"),
        node("Add", ["o_mm", "b_o"], ["o_out"], "o_bias"),
        node("Add", ["x", "o_out"], ["h"], "residual"),
        node("MatMul", ["h", "W_ffn1"], ["f1_mm"], "ffn1"),
        node("Add", ["f1_mm", "b_ffn1"], ["f1"], "ffn1_bias"),
        node("Relu", ["f1"], ["f1r"], "relu"),
        node("MatMul", ["f1r", "W_ffn2"], ["f2_mm"], "ffn2"),
        node("Add", ["f2_mm", "b_ffn2"], ["f2"], "ffn2_bias"),
        node("Add", ["h", "f2"], ["h2"], "residual2"),
        node("ReduceMean", ["h2", "one"], ["pooled3"], "pool", keepdims=0),
        node("Gemm", ["pooled3", "head", "head_b"], ["out"], "head_gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", C])], tensors)
    model = b._make_model(graph, opset=18)
    onnx.checker.check_model(model)
    return model


def token_batches(seed: int, lengths=(5, 9, 12, 7), batch: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, V, size=(batch, s)).astype(np.int64)} for s in lengths]


def test_layers_of_a_transformer_have_shapes_and_macs_with_fixed_input_dims():
    # batch 1: ONNX shape inference cannot tell how [1, S, H] + [?, ?, H] broadcasts, so every
    # tensor after the position embedding loses its shape (what torch.onnx's BERT export shows)
    analysis = layers.analyze(tiny_encoder(), {"input_ids": (1, 10)})
    by_name = {layer.name: layer for layer in analysis.layers}
    for name in DENSE:
        layer = by_name[name]
        k, n = layer.matrix_shape()
        assert layer.reason is None and layer.in_shape == (1, 10, k) and layer.mac == 10 * k * n
    assert by_name["head_gemm"].mac == H * C
    assert by_name["scores"].reason == "weight is not constant" and by_name["context"].mac is None
    assert analysis.total("mac") == 10 * (4 * H * H + 2 * H * F) + H * C


def test_data_aware_weight_svd_on_token_batches_of_varying_length():
    model = tiny_encoder()
    calib, held = token_batches(1), token_batches(2, lengths=(6, 11))
    ref = [runtime.session(model).run(None, f)[0] for f in held]
    errors, ratios = {}, {}
    for aware in (True, False):
        # no input_shape: the dynamic sequence length comes from the first calibration batch
        out, stats = oc.compress(model, "weight_svd", {name: 0.5 for name in DENSE}, data=calib, data_aware=aware)
        assert {layer.name for layer in stats.layers} == set(DENSE)
        sess = runtime.session(out)
        errors[aware] = sum(np.linalg.norm(sess.run(None, f)[0] - r) for f, r in zip(held, ref))
        ratios[aware] = stats.mac_ratio
    assert errors[True] < errors[False]
    assert ratios[True] == ratios[False] and ratios[True] < 0.6


def test_moments_of_3d_inputs_are_the_token_row_statistics():
    model = tiny_encoder()
    calib = {"input_ids": np.random.default_rng(3).integers(0, V, size=(8, 6)).astype(np.int64)}  # dict of arrays
    analysis = layers.analyze(model, None, {"input_ids": (1, 6)})
    x = runtime.session(model, extra_outputs=["h"]).run(["h"], calib)[0].reshape(-1, H).astype(np.float64)
    mom = input_moments(model, [analysis.find("ffn1")], "weight_svd", Activations(Settings(data=calib)), samples=50000)["ffn1"]
    np.testing.assert_allclose(mom, x.T @ x / len(x), rtol=0.1, atol=0.05 * np.abs(mom).max())


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_compressed_transformer_keeps_dynamic_axes(ratio):
    out, _ = oc.compress(tiny_encoder(), "weight_svd", ratio, input_shape={"input_ids": (1, 8)})
    sess = runtime.session(out)
    for feed in token_batches(4, lengths=(3, 15), batch=2):
        assert sess.run(None, feed)[0].shape == (2, C)
