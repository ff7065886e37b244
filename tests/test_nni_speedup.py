"""NNI's ModelSpeedup on ONNX models (onnx_compress.nni.speedup): channels that masks zero
whole are winnowed, and the result is channel pruning of those channels without refit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import builders as b
import onnx_compress as oc
import onnx_compress.nni as nni
from onnx_compress.nni import weights as wmod

ROOT = Path(__file__).resolve().parents[1]
VGG = ROOT / "models" / "vgg_small.onnx"
RESNET = ROOT / "models" / "resnet_small.onnx"
CALIB = ROOT / "models" / "digits32_calib.npz"
CONV1 = "/features/features.0/features.0.0/Conv"
CONV2 = "/features/features.1/features.1.0/Conv"


def _images(n: int = 64) -> dict[str, np.ndarray]:
    with np.load(ROOT / "models" / "digits32_test.npz") as f:
        return {"input": f["input"][:n]}


class ZeroChannels(nni.Pruner):
    """Zero whole input channels ('inputs') or output filters ('filters') of a layer."""

    keys = ("sparsity", "inputs", "filters")

    def calc_mask(self, weight, config, **kwargs):
        mask = np.ones_like(weight, dtype=bool)
        axis = wmod.input_axis(kwargs["op_type"], kwargs["op"])
        if "inputs" in config:
            idx = [slice(None)] * weight.ndim
            idx[axis] = config["inputs"]
            mask[tuple(idx)] = False
        if "filters" in config:
            idx = [slice(None)] * weight.ndim
            idx[1 - axis if weight.ndim == 2 else 0] = config["filters"]
            mask[tuple(idx)] = False
        return mask


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {layer.name: layer.weight.shape for layer in oc.inspect(model).compressible}


def test_zeroed_input_channels_are_removed_exactly_and_match_channel_pruning():
    drop = [1, 4, 6]
    masked = ZeroChannels([{"inputs": drop, "op_names": [CONV2]}])(VGG)
    fast, stats = nni.speedup(masked)
    x = _images()
    np.testing.assert_allclose(b.run(fast, x)[0], b.run(masked, x)[0], rtol=1e-5, atol=1e-5)
    shapes = _shapes(fast)
    assert shapes[CONV2][1] == 5 and shapes[CONV1][0] == 5  # the producer really lost its filters
    pruned, cp = oc.compress(masked, "channel_pruning", {CONV2: 5 / 8}, data=str(CALIB), selection="magnitude",
                             reconstruct=False)
    np.testing.assert_allclose(b.run(fast, x)[0], b.run(pruned, x)[0], rtol=1e-5, atol=1e-5)
    assert stats.mac_after == cp.mac_after and stats.mac_before == cp.mac_before
    assert stats.mac_after < stats.mac_before
    (group,) = stats.groups
    assert (group.layer, group.channels, group.removed, group.kept_dead) == (CONV2, 8, 3, 0)


def test_zeroed_filters_are_removed_like_channel_pruning_of_those_channels():
    filters = [0, 3]
    masked = ZeroChannels([{"filters": filters, "op_names": [CONV1]}])(VGG)
    fast, stats = nni.speedup(masked)
    assert _shapes(fast)[CONV1][0] == 6 and _shapes(fast)[CONV2][1] == 6

    def those_channels(weight, patches):  # channel pruning told to drop exactly these
        return np.where(np.isin(np.arange(weight.shape[1]), filters), 0.0, 1.0)

    pruned, cp = oc.compress(masked, "channel_pruning", {CONV2: 6 / 8}, data=str(CALIB),
                             selection=those_channels, reconstruct=False)
    x = _images()
    np.testing.assert_allclose(b.run(fast, x)[0], b.run(pruned, x)[0], rtol=1e-5, atol=1e-5)
    assert stats.mac_after == cp.mac_after
    assert "not exact" in stats.groups[0].note and "shift of /features/features.0/features.0.1/Batch" in \
        stats.groups[0].note


def test_residual_stream_channels_go_when_every_reader_ignores_them():
    """A channel of resnet_small's residual stream is dead only when every layer that reads
    the stream ignores it; then the whole stream (producers, shortcut, readers) narrows."""
    conv1 = "/layer1/conv1/Conv"
    from onnx_compress import ir, layers
    from onnx_compress.schemes.pruning import depgraph

    analysis = layers.analyze(ir.load(str(RESNET)))
    group = depgraph.build_group(analysis.find(conv1), analysis.graph, analysis.shapes)
    readers = group.in_layers()
    assert len(readers) >= 2
    only_one = ZeroChannels([{"inputs": [2, 5], "op_names": [conv1]}])(RESNET)
    _, stats = nni.speedup(only_one)
    assert stats.mac_after == stats.mac_before  # another reader still uses channels 2 and 5
    every = ZeroChannels([{"inputs": [2, 5], "op_names": readers}])(RESNET)
    fast, stats = nni.speedup(every)
    x = _images()
    np.testing.assert_allclose(b.run(fast, x)[0], b.run(every, x)[0], rtol=1e-5, atol=1e-5)
    assert stats.mac_after < stats.mac_before
    assert all(_shapes(fast)[r][1] == _shapes(RESNET)[r][1] - 2 for r in readers)


def test_model_speedup_with_a_masks_file_equals_the_masked_route(tmp_path):
    pruner = ZeroChannels([{"inputs": [0, 7], "op_names": [CONV2]}])
    masked = pruner(VGG)
    pruner.export_model(tmp_path / "m.onnx", tmp_path / "masks.npz")
    speed = nni.ModelSpeedup(str(VGG), None, str(tmp_path / "masks.npz"))
    fast = speed.speedup_model()
    x = _images(16)
    np.testing.assert_allclose(b.run(fast, x)[0], b.run(nni.speedup(masked)[0], x)[0], rtol=1e-6, atol=1e-6)
    assert speed.stats.mac_ratio < 1 and "speedup: MACs" in str(speed.stats)


def test_a_group_keeps_one_channel_and_nothing_dead_changes_nothing():
    every = ZeroChannels([{"inputs": list(range(8)), "op_names": [CONV2]}])(VGG)
    fast, stats = nni.speedup(every)
    group = stats.groups[0]  # (conv2's zero filters then free the next group too)
    assert (group.layer, group.removed, group.kept_dead) == (CONV2, 7, 1) and _shapes(fast)[CONV2][1] == 1
    level = nni.LevelPruner([{"sparsity": 0.3, "op_types": "default"}])(VGG)  # no whole channel
    same, stats = nni.speedup(level)
    assert stats.groups == () and stats.mac_ratio == 1.0 and same.SerializeToString() == level.SerializeToString()


def test_bad_masks_are_refused_with_the_layer(tmp_path):
    with pytest.raises(oc.ParameterError, match="'nope'"):
        nni.speedup(VGG, {"nope": np.ones(3)})
    with pytest.raises(oc.ParameterError, match=f"layer '{CONV2}'.*shape"):
        nni.speedup(VGG, {CONV2: np.ones(3)})
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(oc.ParameterError, match="bad.npz"):
        nni.speedup(VGG, tmp_path / "bad.npz")


def test_readers_behind_a_depthwise_conv_are_reached():
    """mobilenet_small: a block's depthwise conv is not a root of its own (its channels go
    with its consumers' group), so zeroing input channels of every reader of that group
    removes them, exactly, and the depthwise conv narrows with them."""
    from onnx_compress import ir, layers
    from onnx_compress.schemes.pruning import depgraph, prune

    mobilenet = ROOT / "models" / "mobilenet_small.onnx"
    analysis = layers.analyze(ir.load(str(mobilenet)))
    root = next(l for l in analysis.layers if prune.check_layer(l) is None and any(
        a.kind == "depthwise" for a in depgraph.build_group(l, analysis.graph, analysis.shapes).actions))
    group = depgraph.build_group(root, analysis.graph, analysis.shapes)
    free = np.flatnonzero(~group.locked)[:2]
    masks = {}
    for a in group.actions:
        if a.kind == "in":
            w = ir.constant_value(a.node.inputs[1])
            m = np.ones(w.shape, bool)
            m[:, group.positions[a.tensor].removed(free)] = False
            masks[ir.node_name(a.node)] = m
    masked = nni.apply_masks(ir.load(str(mobilenet)), masks)
    fast, stats = nni.speedup(masked)
    x = _images(16)
    np.testing.assert_allclose(b.run(fast, x)[0], b.run(masked, x)[0], rtol=1e-5, atol=1e-5)
    assert stats.mac_after < stats.mac_before and any(g.removed == len(free) for g in stats.groups)


def test_zeroed_filters_before_an_op_that_maps_zero_elsewhere_are_flagged():
    """Conv -> Sigmoid -> Conv: a zeroed filter's channel is 0.5 after the Sigmoid, so
    removing it is not exact, and the stats say why; a zeroed filter before Relu is exact."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    w1[[0, 4]] = 0
    w2 = rng.normal(size=(4, 6, 3, 3)).astype(np.float32)
    results = {}
    for act in ("Sigmoid", "Relu"):
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["h"], ["a"], name="act"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        fast, stats = nni.speedup(model)
        x = {"x": rng.normal(size=(2, 3, 8, 8)).astype(np.float32)}
        results[act] = (stats.groups[0].note, float(np.abs(b.run(fast, x)[0] - b.run(model, x)[0]).max()))
        assert stats.groups[0].removed == 2
    assert "Sigmoid act" in results["Sigmoid"][0] and results["Sigmoid"][1] > 1e-3
    assert results["Relu"][0] == "" and results["Relu"][1] < 1e-5
