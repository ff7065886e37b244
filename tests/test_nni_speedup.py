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
    assert "not exact" in stats.groups[0].note and "BatchNormalization" in stats.groups[0].note


def test_residual_stream_channels_go_when_every_reader_ignores_them():
    """A channel of resnet_small's residual stream is dead only when every layer that reads
    the stream ignores it; then the whole stream (producers, shortcut, readers) narrows."""
    model = oc.inspect(str(RESNET))
    conv1 = "/layer1/conv1/Conv"
    from onnx_compress import ir, layers
    from onnx_compress.schemes.pruning import depgraph

    analysis = layers.analyze(ir.load(str(RESNET)))
    group = depgraph.build_group(analysis.find(conv1), analysis.graph, analysis.shapes)
    readers = group.in_layers()
    assert len(readers) >= 2 and model is not None
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
