"""AIMET's PyTorch compression code examples (aimet Docs/torch_code_examples/code_examples.py),
ported to onnx_compress by changing only the imports, the model (an ONNX file; modules named
by ONNX node name), the data and the eval callback.

The model is the bundled VGG-style digits classifier (models/vgg_small.onnx, 1x1x32x32
input); `conv1`/`conv2` below are its first two Conv nodes, as AIMET's MNIST example names
model.conv1 and model.conv2. Each function returns (compressed model, stats) and prints the
stats in AIMET's layout.

Run it: python examples/aimet_torch/code_examples.py
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np

# Compression-related imports (aimet_common.defs, aimet_torch.defs, aimet_torch.compress)
from onnx_compress import CostMetric, CompressionScheme, GreedySelectionParameters, RankSelectScheme
from onnx_compress import WeightSvdParameters, SpatialSvdParameters, ChannelPruningParameters, \
    ModuleCompRatioPair
from onnx_compress import ModelCompressor
from onnx_compress import evaluators

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = str(MODELS / "vgg_small.onnx")
conv1 = "/features/features.0/features.0.0/Conv"
conv2 = "/features/features.1/features.1.0/Conv"
conv3 = "/features/features.3/features.3.0/Conv"  # weight SVD of conv1 (1 input channel) never saves MACs
_accuracy = evaluators.accuracy(MODELS / "digits32_test.npz")


def evaluate_model(model, eval_iterations: int, use_cuda: bool = False) -> float:
    """The user's eval callback: `model` is an onnxruntime.InferenceSession of the candidate;
    returns top-1 accuracy on the bundled test split."""
    return _accuracy(model, eval_iterations, use_cuda)


def train_loader(batch_size: int = 50):
    """What a torch DataLoader yields: (images, labels) batches."""
    d = np.load(MODELS / "digits32_calib.npz")
    x, y = d["input"], d["labels"]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


class Trainer:
    """ Example trainer class (AIMET's): fine-tunes in place and returns None. An ONNX model
    cannot be fine-tuned in place, so onnx_compress takes the model as unchanged; return a
    fine-tuned ModelProto instead to replace it."""

    def __init__(self):
        self._layer_db = []

    def train_model(self, model, layer, train_flag=True):
        self._layer_db.append(layer)


def spatial_svd_manual_mode():
    manual_params = SpatialSvdParameters.ManualModeParams([ModuleCompRatioPair(conv1, 0.5),
                                                           ModuleCompRatioPair(conv2, 0.4)])
    params = SpatialSvdParameters(mode=SpatialSvdParameters.Mode.manual, params=manual_params)
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.spatial_svd,
                                             cost_metric=CostMetric.mac, parameters=params)
    compressed_model, stats = results
    print(stats)
    return results


def spatial_svd_auto_mode():
    greedy_params = GreedySelectionParameters(target_comp_ratio=Decimal(0.8), num_comp_ratio_candidates=10)
    auto_params = SpatialSvdParameters.AutoModeParams(greedy_params, modules_to_ignore=[conv1])
    params = SpatialSvdParameters(mode=SpatialSvdParameters.Mode.auto, params=auto_params, multiplicity=8)
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.spatial_svd,
                                             cost_metric=CostMetric.mac, parameters=params)
    compressed_model, stats = results
    print(stats)
    return results


def spatial_svd_auto_mode_with_layerwise_finetuning():
    greedy_params = GreedySelectionParameters(target_comp_ratio=Decimal(0.8), num_comp_ratio_candidates=10)
    auto_params = SpatialSvdParameters.AutoModeParams(greedy_params, modules_to_ignore=[conv1])
    params = SpatialSvdParameters(mode=SpatialSvdParameters.Mode.auto, params=auto_params)
    trainer = Trainer()
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.spatial_svd,
                                             cost_metric=CostMetric.mac, parameters=params, trainer=trainer)
    compressed_model, stats = results
    print(stats)
    print("fine-tuned after:", trainer._layer_db)
    return results


def weight_svd_manual_mode():
    manual_params = WeightSvdParameters.ManualModeParams([ModuleCompRatioPair(conv2, 0.5),
                                                          ModuleCompRatioPair(conv3, 0.4)])
    params = WeightSvdParameters(mode=WeightSvdParameters.Mode.manual, params=manual_params, multiplicity=8)
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.weight_svd,
                                             cost_metric=CostMetric.mac, parameters=params)
    compressed_model, stats = results
    print(stats)
    return results


def weight_svd_auto_mode():
    greedy_params = GreedySelectionParameters(target_comp_ratio=Decimal(0.8), num_comp_ratio_candidates=10)
    rank_select = RankSelectScheme.greedy
    auto_params = WeightSvdParameters.AutoModeParams(rank_select_scheme=rank_select, select_params=greedy_params,
                                                     modules_to_ignore=[conv1])
    params = WeightSvdParameters(mode=WeightSvdParameters.Mode.auto, params=auto_params)
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.weight_svd,
                                             cost_metric=CostMetric.mac, parameters=params)
    compressed_model, stats = results
    print(stats)
    return results


def channel_pruning_auto_mode():
    greedy_params = GreedySelectionParameters(target_comp_ratio=Decimal(0.8), num_comp_ratio_candidates=10)
    auto_params = ChannelPruningParameters.AutoModeParams(greedy_params, modules_to_ignore=[conv1])
    params = ChannelPruningParameters(data_loader=train_loader(), num_reconstruction_samples=500,
                                      allow_custom_downsample_ops=True,
                                      mode=ChannelPruningParameters.Mode.auto, params=auto_params)
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.channel_pruning,
                                             cost_metric=CostMetric.mac, parameters=params)
    compressed_model, stats = results
    print(stats)
    return results


def channel_pruning_manual_mode():
    manual_params = ChannelPruningParameters.ManualModeParams([ModuleCompRatioPair(conv2, 0.4)])
    params = ChannelPruningParameters(data_loader=train_loader(), num_reconstruction_samples=500,
                                      allow_custom_downsample_ops=True,
                                      mode=ChannelPruningParameters.Mode.manual, params=manual_params)
    results = ModelCompressor.compress_model(MODEL, eval_callback=evaluate_model, eval_iterations=1000,
                                             input_shape=(1, 1, 32, 32),
                                             compress_scheme=CompressionScheme.channel_pruning,
                                             cost_metric=CostMetric.mac, parameters=params)
    compressed_model, stats = results
    print(stats)
    return results


EXAMPLES = (spatial_svd_manual_mode, spatial_svd_auto_mode, spatial_svd_auto_mode_with_layerwise_finetuning,
            weight_svd_manual_mode, weight_svd_auto_mode, channel_pruning_manual_mode, channel_pruning_auto_mode)


def main() -> dict[str, tuple[float, float, float]]:
    """Run every example; {name: (accuracy before, after, MAC ratio)}."""
    out = {}
    for example in EXAMPLES:
        _, stats = example()
        out[example.__name__] = (stats.baseline_model_accuracy, stats.compressed_model_accuracy,
                                 stats.mac_compression_ratio)
    for name, (before, after, mac) in out.items():
        print(f"{name:50s} accuracy {before:.3f} -> {after:.3f}  MACs x{mac:.3f}")
    return out


if __name__ == "__main__":
    main()
