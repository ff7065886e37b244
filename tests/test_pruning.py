"""Channel pruning end to end: selection, winnowing, reconstruction, API and errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as b
import mac_count
import nets
from onnx_compress.errors import LayerError
import onnx_compress as oc
from onnx_compress.runtime.activations import Activations
from onnx_compress.options import Settings
from onnx_compress import runtime
from onnx_compress.evaluators import accuracy

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CALIB = MODELS / "digits32_calib.npz"
TEST = MODELS / "digits32_test.npz"


def layer_output(model, tensor, feeds):
    sess = runtime.session(model, extra_outputs=[tensor])
    return sess.run([tensor], feeds)[0]


@pytest.mark.parametrize("make", [nets.concat_net, nets.resize_net, nets.silu_se_net, nets.grouped_net],
                         ids=lambda f: f.__name__)
def test_every_eligible_layer_prunes_and_the_model_runs(make, tmp_path):
    model = make()
    data = nets.calib(model)
    out, stats = oc.compress(model, "channel_pruning", 0.5, data=data, num_reconstruction_samples=300)
    assert stats.layers, stats
    assert stats.mac_after < stats.mac_before
    x = nets.calib(model, 4, seed=1)
    assert b.run(out, x)[0].shape == b.run(model, x)[0].shape
    path = tmp_path / "out.onnx"
    oc.save(out, path)
    assert mac_count.count(str(path), stats.input_dims) == (stats.mac_after, stats.memory_after)


def test_concat_segments_are_winnowed_upstream():
    model = nets.concat_net()
    out, stats = oc.compress(model, "channel_pruning", {"mix": 0.5}, data=nets.calib(model))
    # mix reads concat(branch_a 6, branch_b 4): both branches lose output channels
    shapes = {l.name: l.weight.shape for l in oc.inspect(out).compressible}
    assert shapes["mix"][1] == 5 and shapes["branch_a"][0] + shapes["branch_b"][0] == 5


def test_grouped_conv_is_skipped_with_reason():
    model = nets.grouped_net()
    out, stats = oc.compress(model, "channel_pruning", 0.5, data=nets.calib(model))
    reasons = {s.name: s.reason for s in stats.skipped}
    assert reasons["grouped"] == "grouped conv, group=2"
    assert "grouped conv 'grouped', group=2" in reasons["c3"]  # its producer cannot lose channels


def test_unknown_op_skips_its_group_with_reason():
    model = b.cnn_model()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "LRN"
    relu.attribute.add().CopyFrom(onnx.helper.make_attribute("size", 3))
    data = {"x": np.random.default_rng(0).normal(size=(8, 1, 12, 12)).astype(np.float32)}
    out, stats = oc.compress(model, "channel_pruning", 0.5, data=data)
    reason = {s.name: s.reason for s in stats.skipped}["conv2"]
    assert "LRN node" in reason and "does not propagate channels" in reason


def test_residual_stream_shrinks():
    out, stats = oc.compress(MODELS / "resnet_small.onnx", "channel_pruning", {"/layer1/conv1/Conv": 0.5},
                             data=CALIB, num_reconstruction_samples=300)
    shapes = {l.name: l.weight.shape for l in oc.inspect(out).compressible}
    assert shapes["/stem/stem.0/Conv"][0] == 4  # the stream's producers lost channels
    assert shapes["/layer1/conv2/Conv"][0] == 4
    assert shapes["/layer2/shortcut/shortcut.0/Conv"][1] == 4  # and its other consumers too
    assert "same group" in stats.layers[0].note


def test_reconstruction_lowers_layer_error_on_held_back_data():
    model = oc.ir.load(MODELS / "vgg_small.onnx")
    name = "/features/features.4/features.4.0/Conv"
    tensor = next(n.output[0] for n in model.graph.node if n.name == name)
    held_out = {"input": np.load(TEST)["input"][:128]}
    ref = layer_output(model, tensor, held_out)
    errors = {}
    for rec in (True, False):
        out, _ = oc.compress(model, "channel_pruning", {name: 0.5}, data=CALIB, reconstruct=rec,
                             num_reconstruction_samples=2000)
        errors[rec] = np.linalg.norm(layer_output(out, tensor, held_out) - ref)
    assert errors[True] < 0.8 * errors[False]


def test_same_seed_gives_identical_model():
    args = dict(data=CALIB, num_reconstruction_samples=300)
    one, _ = oc.compress(MODELS / "vgg_small.onnx", "channel_pruning", 0.5, seed=3, **args)
    two, _ = oc.compress(MODELS / "vgg_small.onnx", "channel_pruning", 0.5, seed=3, **args)
    assert one.SerializeToString() == two.SerializeToString()


@pytest.mark.parametrize("model", ["vgg_small", "resnet_small", "mobilenet_small"])
def test_reference_models_prune_every_eligible_layer(model):
    out, stats = oc.compress(MODELS / f"{model}.onnx", "channel_pruning", 0.5, data=CALIB,
                             num_reconstruction_samples=300, eval_callback=accuracy(TEST))
    onnx.checker.check_model(out, full_check=True)
    assert stats.mac_ratio < 0.75
    assert all(l.achieved_ratio <= 0.5 for l in stats.layers)
    assert stats.final_score > 0.1


def test_multiplicity_rounds_kept_channels():
    out, stats = oc.compress(MODELS / "vgg_small.onnx", "channel_pruning",
                             {"/features/features.4/features.4.0/Conv": 0.7}, data=CALIB, multiplicity=4,
                             num_reconstruction_samples=200)
    (ls,) = stats.layers
    assert ls.rank == (int(0.7 * ls.full_rank) // 4) * 4 and ls.rank % 4 == 0 and ls.rank > 0


def test_aimet_shaped_channel_pruning_parameters():
    params = oc.ChannelPruningParameters(
        data_loader=str(CALIB), num_reconstruction_samples=300, allow_custom_downsample_ops=False,
        mode=oc.ChannelPruningParameters.Mode.manual,
        params=oc.ChannelPruningParameters.ManualModeParams(
            [oc.ModuleCompRatioPair("/features/features.4/features.4.0/Conv", 0.5)]))
    out, stats = oc.ModelCompressor.compress_model(
        str(MODELS / "vgg_small.onnx"), None, None, (1, 1, 32, 32), oc.CompressionScheme.channel_pruning,
        oc.CostMetric.mac, params)
    native, nstats = oc.compress(MODELS / "vgg_small.onnx", "channel_pruning",
                                 {"/features/features.4/features.4.0/Conv": 0.5}, data=str(CALIB),
                                 num_reconstruction_samples=300)
    assert out.SerializeToString() == native.SerializeToString()
    assert stats.layers[0].rank == stats.layers[0].full_rank // 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(data=None), "needs calibration data"),
    (dict(data={"wrong": np.zeros((2, 1, 32, 32), np.float32)}), r"no array for model input\(s\) \['input'\]"),
    (dict(data={"input": np.zeros((2, 3, 32, 32), np.float32)}), "expects"),
    (dict(ratios={"/features/features.4/features.4.0/Conv": 0.05}), r"would remove every one of its \d+ input"),
    # only a layer whose input is the graph input: nothing can be compressed, said with the reason
    (dict(ratios={"/features/features.0/features.0.0/Conv": 0.5}), "no layer .* 'input' is a graph input"),
    (dict(selection="random"), "channel selection must be one of"),
])
def test_bad_channel_pruning_input(kwargs, match):
    kwargs.setdefault("data", str(CALIB))
    ratios = kwargs.pop("ratios", 0.5)
    with pytest.raises(oc.CompressionError, match=match):
        oc.compress(MODELS / "vgg_small.onnx", "channel_pruning", ratios, **kwargs)


def test_cli_pipeline_spatial_svd_then_channel_pruning(tmp_path):
    out = tmp_path / "pipe.onnx"
    r = subprocess.run([sys.executable, "-m", "onnx_compress.cli", "compress", str(MODELS / "resnet_small.onnx"),
                        "-o", str(out), "--scheme", "spatial_svd,channel_pruning", "--ratio", "0.7",
                        "--data", str(CALIB), "--samples", "300", "--stats", str(tmp_path / "s.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["scheme"] == "spatial_svd+channel_pruning"
    assert {l["scheme"] for l in stats["layers"]} == {"spatial_svd", "channel_pruning"}
    assert stats["mac_ratio"] < 0.5
    onnx.checker.check_model(str(out))


def test_cli_channel_pruning_without_data_fails_cleanly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "onnx_compress.cli", "compress", str(MODELS / "vgg_small.onnx"),
                        "-o", str(tmp_path / "o.onnx"), "--scheme", "channel_pruning", "--ratio", "0.5"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "needs calibration data" in r.stderr and not (tmp_path / "o.onnx").exists()


def test_custom_downsample_gather_only_when_allowed():
    model = nets.grouped_net()
    x = nets.calib(model, 4, seed=1)
    with pytest.raises(LayerError, match="no layer .* grouped conv 'grouped'"):  # nothing else to compress
        oc.compress(model, "channel_pruning", {"c3": 0.5}, data=nets.calib(model))
    out, stats = oc.compress(model, "channel_pruning", {"c3": 0.5}, data=nets.calib(model),
                             allow_custom_downsample_ops=True)
    gathers = [n for n in out.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 1 and "channel Gather" in stats.layers[0].note
    assert {l.name: l.weight.shape for l in oc.inspect(out).compressible}["c3"][1] == 4
    assert {l.name: l.weight.shape for l in oc.inspect(out).compressible}["grouped"][0] == 8  # upstream kept
    assert b.run(out, x)[0].shape == (4, 10)


def test_custom_downsample_is_exact_for_zeroed_channels():
    """Channels whose weights are zero in the layer: the Gather removes them exactly."""
    model = nets.grouped_net()
    w = next(t for t in model.graph.initializer if t.name == "c3.w")
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[:, 4:] = 0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, "c3.w"))
    out, _ = oc.compress(model, "channel_pruning", {"c3": 0.5}, data=nets.calib(model), selection="magnitude",
                         reconstruct=False, allow_custom_downsample_ops=True)
    x = nets.calib(model, 4, seed=1)
    np.testing.assert_allclose(b.run(out, x)[0], b.run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_refit_targets_come_from_the_reference_model_when_it_has_the_tensor():
    original = b.cnn_model(seed=0)
    changed = b.cnn_model(seed=1)  # same graph, other weights
    data = {"x": np.random.default_rng(0).normal(size=(4, 1, 12, 12)).astype(np.float32)}
    settings = Settings(data=data, reference=original)
    sampler = Activations(settings).sampler(changed)
    tensor = next(n.output[0] for n in original.graph.node if n.name == "conv2")
    want = layer_output(original, tensor, data)
    np.testing.assert_array_equal(sampler.target_tensor(tensor)[0], want)
    assert not np.allclose(sampler.original_tensor(tensor)[0], want)  # inputs still come from `changed`


def test_custom_downsample_in_auto_mode_scores_the_gather_units():
    """Auto mode honours allow_custom_downsample_ops: the locked group of c3 (behind a
    grouped conv) becomes a unit whose candidates drop channels through a Gather, its cost
    is the measured one, and the target is met; without it the target cannot be reached."""
    from onnx_compress import evaluators

    model = nets.grouped_net()
    data, held = nets.calib(model), nets.calib(model, 16, seed=3)
    with pytest.raises(oc.ParameterError, match="cannot be reached"):
        oc.compress_auto(model, "channel_pruning", 0.7, evaluators.fidelity(held), data=data, candidates=4)
    out, stats = oc.compress_auto(model, "channel_pruning", 0.7, evaluators.fidelity(held), data=data,
                                  candidates=4, allow_custom_downsample_ops=True)
    assert stats.mac_after / stats.mac_before <= 0.7
    assert [n.op_type for n in out.graph.node].count("Gather") == 1
    c3 = next(l for l in stats.layers if l.name == "c3")
    assert "channel Gather" in c3.note and c3.achieved_ratio < 1
    assert {l.name: l.weight.shape for l in oc.inspect(out).compressible}["grouped"][0] == 8  # upstream kept
    dims = {"x": held["x"].shape}
    assert mac_count.count(out, dims)[0] / mac_count.count(model, dims)[0] == pytest.approx(
        stats.mac_after / stats.mac_before, rel=1e-9)
    assert b.run(out, held)[0].shape == b.run(model, held)[0].shape


def test_aimet_auto_channel_pruning_passes_allow_custom_downsample_ops():
    from onnx_compress import evaluators

    model = nets.grouped_net()
    data, held = nets.calib(model), nets.calib(model, 16, seed=3)
    greedy = oc.GreedySelectionParameters(target_comp_ratio=0.7, num_comp_ratio_candidates=4)
    params = oc.ChannelPruningParameters(data, 200, True, oc.ChannelPruningParameters.Mode.auto,
                                         oc.ChannelPruningParameters.AutoModeParams(greedy))
    out, stats = oc.ModelCompressor.compress_model(model, evaluators.fidelity(held), None, None,
                                                   oc.CompressionScheme.channel_pruning, oc.CostMetric.mac, params)
    assert [n.op_type for n in out.graph.node].count("Gather") == 1
    assert stats.mac_compression_ratio <= 0.7
