"""AIMET's TensorFlow compression API on tf2onnx models (onnx_compress.aimet_tensorflow)."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_compress as oc
from onnx_compress import aimet_tensorflow as at
from onnx_compress.aimet import CompressionScheme, CostMetric, GreedySelectionParameters
from onnx_compress.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "keras_digits_small.onnx"  # tools/export_keras_small.py
CORPUS = ROOT / "tests" / "corpus" / "keras_conv2d_tf2onnx_op13_dyn.onnx"  # tf2onnx, BN folded, residual
STATIC = ROOT / "tests" / "corpus" / "keras_conv2d_tf2onnx_op10.onnx"  # the same net, static batch 1
CONV1, CONV2 = "vgg_digits_1/block1_conv1_1/BiasAdd", "vgg_digits_1/block1_conv2_1/BiasAdd"
B2C1, B2C2 = "vgg_digits_1/block2_conv1_1/BiasAdd", "vgg_digits_1/block2_conv2_1/BiasAdd"
SPATIAL, CHANNEL = CompressionScheme.spatial_svd, CompressionScheme.channel_pruning


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 32, 32, 3)).astype(np.float32)


def spatial(pairs, inputs=("input_1",), outputs=("predictions/Softmax",)):
    manual = at.SpatialSvdParameters.ManualModeParams([at.ModuleCompRatioPair(m, r) for m, r in pairs])
    return at.SpatialSvdParameters(list(inputs), list(outputs), at.SpatialSvdParameters.Mode.manual, manual)


def run(params, model=MODEL, working_dir=None, input_shape=None, scheme=SPATIAL, eval_callback=None):
    return at.ModelCompressor.compress_model(model, working_dir, eval_callback, None, input_shape, scheme,
                                             CostMetric.mac, params)


def graph(model=MODEL):
    return at._Graph(onnx.load(str(model)))


# --------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["input_1", "input_1:0"])
def test_input_names_with_or_without_colon0(name):
    assert graph().input_name(name) == "input_1"


@pytest.mark.parametrize("name", ["predictions", "predictions:0", "predictions/Softmax",
                                  "predictions_1/Softmax", "vgg_digits_1/predictions_1/Softmax"])
def test_output_names_as_tensor_or_producing_op(name):
    assert graph().output_name(name) == "predictions"


def test_unknown_input_and_output_names_list_the_graphs():
    with pytest.raises(ParameterError, match=r"'input_image' is not an input.*its inputs: 'input_1'"):
        run(spatial([("block1_conv1/Conv2D", 0.5)], inputs=["input_image"]))
    with pytest.raises(ParameterError, match=r"'logits' is not an output.*'predictions' \(from "
                                             r"vgg_digits_1/predictions_1/Softmax\)"):
        run(spatial([("block1_conv1/Conv2D", 0.5)], outputs=["logits"]))


def test_the_same_model_whatever_the_io_spelling():
    a, _ = run(spatial([("block1_conv1/Conv2D", 0.5)], ["input_1"], ["predictions/Softmax"]))
    b, _ = run(spatial([("block1_conv1/Conv2D", 0.5)], ["input_1:0"], ["predictions:0"]))
    assert a.SerializeToString() == b.SerializeToString()


def test_a_graph_whose_input_keeps_the_colon0(tmp_path):
    """tf2onnx from a TF1 graph names the ONNX input 'input_1:0': 'input_1' names it too, in
    input_op_names, input_shape and the data_set's feed dicts."""
    proto = onnx.load(str(MODEL))
    proto.graph.input[0].name = "input_1:0"
    for node in proto.graph.node:
        node.input[:] = ["input_1:0" if i == "input_1" else i for i in node.input]
    x = images(16, seed=7)
    pairs = [at.ModuleCompRatioPair("block2_conv2", 0.5)]
    params = at.ChannelPruningParameters(["input_1"], ["predictions:0"], [{"input_1": x}], 8, 50, False,
                                         at.ChannelPruningParameters.Mode.manual,
                                         at.ChannelPruningParameters.ManualModeParams(pairs))
    model, stats = run(params, model=proto, input_shape={"input_1": (8, 32, 32, 3)}, scheme=CHANNEL)
    assert [s.name for s in stats.layers] == [B2C2] and stats.input_dims == {"input_1:0": (8, 32, 32, 3)}
    assert [i.name for i in model.graph.input] == ["input_1:0"]


@pytest.mark.parametrize("module, node", [
    ("block1_conv1/Conv2D", CONV1),                          # AIMET's op name, Keras 3 '_1' scope
    ("block1_conv1", CONV1),                                 # the Keras layer name
    ("block1_conv1_1/BiasAdd", CONV1),                       # the TF op as traced: '/'-suffix
    (CONV2, CONV2),                                          # the exact ONNX node name
    ("fc1/MatMul", "vgg_digits_1/fc1_1/MatMul"),
    (SimpleNamespace(name="block2_conv2/Conv2D"), B2C2),     # a tf.Operation-like object
])
def test_layer_names(module, node):
    assert graph().layer_name(module, "ModuleCompRatioPair") == node


def test_layer_names_in_a_graph_without_keras3_suffixes():
    g = graph(CORPUS)  # tf2onnx names a BN-folded Conv 'Conv__44'; its weight keeps the TF scope
    assert g.layer_name("conv2d_1/Conv2D", "x") == "Conv__44"
    assert g.layer_name("conv2d_2_1/BiasAdd", "x") == "functional_1/conv2d_2_1/BiasAdd"
    assert g.layer_name("separable_conv2d_1/BiasAdd", "x") == "functional_1/separable_conv2d_1/BiasAdd"
    node = next(n for n in onnx.load(str(CORPUS)).graph.node if n.name == "Conv__50")
    assert g.layer_name(node, "x") == "Conv__50"


def test_ambiguous_and_unknown_layer_names_list_candidates():
    with pytest.raises(ParameterError, match=r"'separable_conv2d_1' is ambiguous.*separable_conv2d/depthwise"
                                             r".*separable_conv2d_1/BiasAdd"):
        graph(CORPUS).layer_name("separable_conv2d_1", "x")
    with pytest.raises(ParameterError, match=r"ModuleCompRatioPair: 'BiasAdd' is ambiguous.*"
                                             + CONV1 + ".*" + CONV2):
        run(spatial([("BiasAdd", 0.5)]))  # every Conv with a bias
    with pytest.raises(ParameterError, match=r"'block1_conv/Conv2D' names no layer"):
        run(spatial([("block1_conv/Conv2D", 0.5)]))  # not a prefix of block1_conv1
    with pytest.raises(ParameterError, match=r"'block9_conv1/Conv2D' names no layer.*block3_conv1_1/BiasAdd' "
                                             r"\(Conv\).*fc1_1/MatMul' \(MatMul\)"):
        run(spatial([("block9_conv1/Conv2D", 0.5)]))
    auto = at.SpatialSvdParameters.AutoModeParams(GreedySelectionParameters(0.8), modules_to_ignore=["nope"])
    params = at.SpatialSvdParameters(["input_1"], ["predictions"], at.SpatialSvdParameters.Mode.auto, auto)
    with pytest.raises(ParameterError, match="modules_to_ignore: 'nope' names no layer"):
        run(params, eval_callback=lambda s, i, c: 1.0)


def test_refuses_sessions_and_torch_shaped_parameters(tmp_path):
    with pytest.raises(ParameterError, match="ONNX path or onnx.ModelProto.*tf2onnx"):
        run(spatial([("block1_conv1", 0.5)]), model=SimpleNamespace(graph=None))
    with pytest.raises(ParameterError, match="a folder.*tf2onnx"):
        run(spatial([("block1_conv1", 0.5)]), model=tmp_path)
    torch_shaped = oc.aimet.SpatialSvdParameters(oc.aimet.SpatialSvdParameters.Mode.manual,
                                                 oc.aimet.SpatialSvdParameters.ManualModeParams([]))
    with pytest.raises(ParameterError, match="onnx_compress.aimet.ModelCompressor"):
        run(torch_shaped)
    with pytest.raises(ParameterError, match="batch_size must be a positive integer"):
        at.ChannelPruningParameters(["input_1"], ["predictions"], [], 0, 10, False,
                                    at.ChannelPruningParameters.Mode.manual, None)


# --------------------------------------------------------------------------- input_shape
def test_channels_last_input_shape_and_its_nchw_form(caplog):
    params = spatial([("block1_conv1", 0.5), ("block1_conv2", 0.4)])
    with caplog.at_level(logging.WARNING, logger="onnx_compress.aimet_tensorflow"):
        nhwc_model, nhwc = run(params, input_shape=(1, 32, 32, 3))
        assert not caplog.records
        nchw_model, nchw = run(params, input_shape=(1, 3, 32, 32))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "(1, 3, 32, 32)" in message and "('?', 32, 32, 3)" in message and "using (1, 32, 32, 3)" in message
    assert nchw.input_dims == nhwc.input_dims == {"input_1": (1, 32, 32, 3)}
    assert nchw_model.SerializeToString() == nhwc_model.SerializeToString()


@pytest.mark.parametrize("shape, error", [
    ((1, 32, 32, 4), r"\(1, 32, 32, 4\) does not fit input 'input_1'.*\('\?', 32, 32, 3\)"),
    ((1, 4, 32, 32), r"\(1, 4, 32, 32\) does not fit input 'input_1'"),
    ((32, 32, 3), r"\(32, 32, 3\) does not fit input 'input_1'"),
    ({"input_9": (1, 32, 32, 3)}, r"input_shape names 'input_9'.*its inputs: 'input_1'"),
    ([(1, 32, 32, 3), (1, 32, 32, 3)], r"2 shapes for the 1 inputs"),
])
def test_mismatched_input_shapes_are_refused(shape, error):
    with pytest.raises(ParameterError, match=error):
        run(spatial([("block1_conv1", 0.5)]), input_shape=shape)


def test_a_batch_other_than_the_models_scales_macs_not_ratios():
    params = spatial([("conv2d_6_1/BiasAdd", 0.5)], ["input_image:0"], ["probs"])
    one, s1 = run(params, model=STATIC, input_shape=(1, 32, 32, 3))
    many, s32 = run(params, model=STATIC, input_shape={"input_image:0": (32, 32, 32, 3)})
    assert s32.mac_before == 32 * s1.mac_before and s32.mac_after == 32 * s1.mac_after
    assert one.SerializeToString() == many.SerializeToString()


# --------------------------------------------------------------------------- working_dir
def test_working_dir_receives_the_model_and_the_input_stays(tmp_path):
    before = MODEL.read_bytes()
    proto = onnx.load(str(MODEL))
    proto_bytes = proto.SerializeToString()
    model, _ = run(spatial([("block1_conv1", 0.5)]), model=proto, working_dir=tmp_path)
    assert sorted(os.listdir(tmp_path)) == [at.OUTPUT_NAME]
    assert onnx.load(str(tmp_path / at.OUTPUT_NAME)).SerializeToString() == model.SerializeToString()
    assert proto.SerializeToString() == proto_bytes and MODEL.read_bytes() == before
    (tmp_path / at.OUTPUT_NAME).write_bytes(b"old")  # replaced
    run(spatial([("block1_conv1", 0.5)]), working_dir=str(tmp_path))
    assert onnx.load(str(tmp_path / at.OUTPUT_NAME)).SerializeToString() == model.SerializeToString()


def test_no_working_dir_writes_nothing_and_failures_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(spatial([("block1_conv1", 0.5)]))
    assert os.listdir(tmp_path) == []
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(oc.errors.CompressionError):
        run(spatial([("block1_conv1", 1.5)]), working_dir=out)  # refused by the native API
    assert os.listdir(out) == []
    with pytest.raises(ParameterError, match="working_dir .*missing is not an existing folder"):
        run(spatial([("block1_conv1", 0.5)]), working_dir=tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------------------ data_set
def test_data_set_rebatched_from_tuples_arrays_and_feed_dicts():
    specs = graph().specs
    x = images(20).astype(np.float64)
    tuples = [(x[i:i + 3], np.zeros(3)) for i in range(0, 20, 3)]  # (inputs, labels), 3 per batch
    feeds = at._rebatched(tuples, 8, ["input_1"], specs)
    assert [len(f["input_1"]) for f in feeds] == [8, 8, 4]
    assert all(f["input_1"].dtype == np.float32 for f in feeds)
    np.testing.assert_array_equal(np.concatenate([f["input_1"] for f in feeds]), x.astype(np.float32))
    singles = at._rebatched(list(x), 16, ["input_1"], specs)  # one sample each: a batch axis is added
    assert [f["input_1"].shape for f in singles] == [(16, 32, 32, 3), (4, 32, 32, 3)]
    dicts = at._rebatched([{"input_1:0": x[:10]}, {"input_1": x[10:]}], 20, ["input_1"], specs)
    np.testing.assert_array_equal(dicts[0]["input_1"], x.astype(np.float32))

    class Tensor:  # a tf tensor: __array__
        def __array__(self, dtype=None, copy=None):
            return x[:5]
    assert [len(f["input_1"]) for f in at._rebatched(Tensor(), 2, ["input_1"], specs)] == [2, 2, 1]


@pytest.mark.parametrize("data_set, error", [
    ([], "holds no samples"), (None, "needs data"), ([images(2)[:, :, :, 0:1][..., 0, 0]], "has shape"),
    ([{"other": images(2)}], "input_shape names 'other'"), ([object()], "batch 0 is a object"),
])
def test_bad_data_sets_are_refused(data_set, error):
    with pytest.raises(ParameterError, match=error):
        at._rebatched(data_set, 4, ["input_1"], graph().specs)


# --------------------------------------------------------------------------- compression
def test_manual_spatial_svd_is_the_native_compress():
    ours, stats = run(spatial([("block1_conv1/Conv2D", 0.5), ("block1_conv2/Conv2D", 0.4)]),
                      input_shape=(1, 32, 32, 3))
    native, native_stats = oc.compress(MODEL, "spatial_svd", {CONV1: 0.5, CONV2: 0.4}, input_shape=(1, 32, 32, 3))
    assert ours.SerializeToString() == native.SerializeToString()
    assert [s.name for s in stats.layers] == [CONV1, CONV2] and stats.mac_after == native_stats.mac_after
    assert stats.mac_after < 0.8 * stats.mac_before


def _channel(mode, params, data_set, multiplicity=1):
    return at.ChannelPruningParameters(["input_1"], ["predictions/Softmax"], data_set, 8, 50, False, mode, params,
                                       multiplicity)


def test_manual_channel_pruning_on_the_channels_last_graph(tmp_path):
    x = images(40, seed=3)
    data_set = [(x[i:i + 5], np.zeros(5)) for i in range(0, 40, 5)]  # 5 per batch, rebatched to 8
    pairs = [at.ModuleCompRatioPair("block2_conv1/Conv2D", 0.5), at.ModuleCompRatioPair("block2_conv2", 0.5)]
    params = _channel(at.ChannelPruningParameters.Mode.manual,
                      at.ChannelPruningParameters.ManualModeParams(pairs), data_set)
    model, stats = run(params, working_dir=tmp_path, input_shape=(8, 32, 32, 3), scheme=CHANNEL)
    native, _ = oc.compress(MODEL, "channel_pruning", {B2C1: 0.5, B2C2: 0.5}, input_shape=(8, 32, 32, 3),
                            data=[{"input_1": x[i:i + 8]} for i in range(0, 40, 8)], num_reconstruction_samples=50)
    assert model.SerializeToString() == native.SerializeToString()
    assert {s.name for s in stats.layers} == {B2C1, B2C2}
    assert stats.mac_after < 0.75 * stats.mac_before
    assert model.graph.node[0].op_type == "Transpose"  # the NHWC -> NCHW Transpose stays in front
    session = ort.InferenceSession(str(tmp_path / at.OUTPUT_NAME), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"input_1": x[:4]})[0]
    assert probs.shape == (4, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_auto_channel_pruning_ignores_the_named_layer():
    greedy = GreedySelectionParameters(target_comp_ratio=Decimal(0.8), num_comp_ratio_candidates=3)
    auto = at.ChannelPruningParameters.AutoModeParams(greedy, modules_to_ignore=["block1_conv1/Conv2D"])
    x = images(32, seed=5)
    scores = []

    def score(session, iterations, use_cuda):
        out = session.run(None, {"input_1": x})[0]
        scores.append(out)
        return float((out.argmax(1) == scores[0].argmax(1)).mean())

    _, stats = run(_channel(at.ChannelPruningParameters.Mode.auto, auto, [x], multiplicity=4),
                   input_shape=(1, 32, 32, 3), scheme=CHANNEL, eval_callback=score)
    assert CONV1 not in {s.name for s in stats.layers} and stats.layers
    assert any(s.name == CONV1 and "modules_to_ignore" in s.reason for s in stats.skipped)
    assert stats.mac_after <= 0.85 * stats.mac_before and len(scores) > 3


def test_weight_svd_through_this_api():
    manual = at.WeightSvdParameters.ManualModeParams([at.ModuleCompRatioPair("fc1/MatMul", 0.5)])
    params = at.WeightSvdParameters(["input_1"], ["predictions"], at.WeightSvdParameters.Mode.manual, manual)
    ours, _ = run(params, scheme=CompressionScheme.weight_svd)
    native, _ = oc.compress(MODEL, "weight_svd", {"vgg_digits_1/fc1_1/MatMul": 0.5})
    assert ours.SerializeToString() == native.SerializeToString()


# ------------------------------------------------------------------------------ examples
def _examples():
    path = ROOT / "examples" / "aimet_tensorflow" / "code_examples.py"
    spec = importlib.util.spec_from_file_location("aimet_tf_code_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_examples_main(tmp_path):
    figures = _examples().main(working_dir=str(tmp_path))
    assert list(figures) == ["spatial_svd_auto_mode", "spatial_svd_manual_mode", "channel_pruning_auto_mode",
                             "channel_pruning_manual_mode"]
    assert all(row["accuracy_before"] > 0.9 for row in figures.values())
    assert all(row["accuracy_after"] > 0.85 and row["mac_ratio"] < 0.9 for row in figures.values())
    assert figures["spatial_svd_manual_mode"]["layers"] == [CONV1, CONV2]
    assert CONV1 not in figures["spatial_svd_auto_mode"]["layers"]
    assert CONV1 not in figures["channel_pruning_auto_mode"]["layers"]
    assert figures["channel_pruning_manual_mode"]["layers"] == [B2C2]  # block1_conv2's 8 inputs: multiplicity 8
    assert sorted(os.listdir(tmp_path)) == [at.OUTPUT_NAME]


def test_the_examples_run_as_a_script(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "aimet_tensorflow" / "code_examples.py")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "channel_pruning_manual_mode: MACs x" in r.stderr and "spatial_svd_auto_mode: MACs x" in r.stderr
    assert (tmp_path / at.OUTPUT_NAME).is_file()
