"""AIMET's TensorFlow compression code examples (the four functions of its tf_code_examples),
run on an ONNX model exported by tf2onnx with onnx_compress.aimet_tensorflow.

What changes against AIMET's examples, and only that:
- imports: AIMET's names from onnx_compress.aimet (aimet_common.defs) and
  onnx_compress.aimet_tensorflow (aimet_tensorflow.defs, aimet_tensorflow.compress);
- model: models/keras_digits_small.onnx (a small Keras CNN with VGG16's layer names, exported
  by tf2onnx: tools/export_keras_small.py) instead of a tf.Session holding VGG16, so `sess` is
  the ONNX model and an op is named by its TF op name (tf2onnx names the Conv after it);
  input shapes are 32x32 instead of 224x224;
- data: the bundled digits calibration images as channels-last RGB-like batches (the model
  is trained on them) instead of random images in a tf.data.Dataset;
- eval callback: top-1 accuracy on the bundled digits test set (500 images) instead of a
  stub returning .5; it gets an onnxruntime.InferenceSession of the candidate.
The functions also return their results, and take the working_dir the doc hard-codes ('./').

Run it: python examples/aimet_tensorflow/code_examples.py
"""
from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import onnx

# Compression-related imports
from onnx_compress import evaluators
from onnx_compress.aimet import GreedySelectionParameters
from onnx_compress.aimet import CostMetric, CompressionScheme
from onnx_compress.aimet_tensorflow import SpatialSvdParameters, ChannelPruningParameters, ModuleCompRatioPair
from onnx_compress.aimet_tensorflow import ModelCompressor

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = MODELS / "keras_digits_small.onnx"


def digits_nhwc(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits (N, 1, 32, 32) as the model takes them: (N, 32, 32, 3), grey x 3."""
    data = np.load(MODELS / name)
    return np.ascontiguousarray(np.repeat(data["input"], 3, axis=1).transpose(0, 2, 3, 1)), data["labels"]


_TEST_IMAGES, _TEST_LABELS = digits_nhwc("digits32_test.npz")
_ACCURACY = evaluators.accuracy({"input_1": _TEST_IMAGES, "labels": _TEST_LABELS}, batch_size=50)


def evaluate_model(sess, eval_iterations: int, use_cuda: bool) -> float:
    """
    The user-defined model evaluation function, with AIMET's signature: here top-1 accuracy
    on the digits test set, `eval_iterations` batches of 50 images (None: all 500).

    :param sess: onnxruntime.InferenceSession of the candidate model
    :param eval_iterations: Number of iterations to use for evaluation. None for entire epoch.
    :param use_cuda: If true, evaluate using gpu acceleration
    :return: single float number (accuracy) representing model's performance
    """
    return _ACCURACY(sess, eval_iterations, use_cuda)


def spatial_svd_auto_mode(working_dir=str('./')):

    sess = onnx.load(str(MODEL))

    # ignore first Conv2D op
    conv2d = 'block1_conv1/Conv2D'
    modules_to_ignore = [conv2d]

    greedy_params = GreedySelectionParameters(target_comp_ratio=Decimal(0.8),
                                              num_comp_ratio_candidates=10,
                                              use_monotonic_fit=True,
                                              saved_eval_scores_dict=None)

    auto_params = SpatialSvdParameters.AutoModeParams(greedy_select_params=greedy_params,
                                                      modules_to_ignore=modules_to_ignore)

    params = SpatialSvdParameters(input_op_names=['input_1'], output_op_names=['predictions/Softmax'],
                                  mode=SpatialSvdParameters.Mode.auto, params=auto_params, multiplicity=8)
    input_shape = (1, 3, 32, 32)  # as AIMET's example: NCHW, accepted with a warning for this NHWC input

    # Single call to compress the model
    compr_model_sess, stats = ModelCompressor.compress_model(sess=sess,
                                                             working_dir=working_dir,
                                                             eval_callback=evaluate_model,
                                                             eval_iterations=10,
                                                             input_shape=input_shape,
                                                             compress_scheme=CompressionScheme.spatial_svd,
                                                             cost_metric=CostMetric.mac,
                                                             parameters=params,
                                                             trainer=None)

    print(stats)    # Stats object can be pretty-printed easily
    return compr_model_sess, stats


def spatial_svd_manual_mode(working_dir=str('./')):

    sess = onnx.load(str(MODEL))

    # Pick two convs to compress as examples
    conv2d = 'block1_conv1/Conv2D'
    conv2d_1 = 'block1_conv2/Conv2D'

    # Specify the necessary parameters
    manual_params = SpatialSvdParameters.ManualModeParams([ModuleCompRatioPair(module=conv2d, comp_ratio=0.5),
                                                           ModuleCompRatioPair(module=conv2d_1, comp_ratio=0.4)])

    params = SpatialSvdParameters(input_op_names=['input_1'], output_op_names=['predictions/Softmax'],
                                  mode=SpatialSvdParameters.Mode.manual, params=manual_params)

    input_shape = (1, 3, 32, 32)

    # Single call to compress the model
    compr_model_sess, stats = ModelCompressor.compress_model(sess=sess,
                                                             working_dir=working_dir,
                                                             eval_callback=evaluate_model,
                                                             eval_iterations=10,
                                                             input_shape=input_shape,
                                                             compress_scheme=CompressionScheme.spatial_svd,
                                                             cost_metric=CostMetric.mac,
                                                             parameters=params,
                                                             trainer=None)

    print(stats)    # Stats object can be pretty-printed easily
    return compr_model_sess, stats


def channel_pruning_auto_mode():

    sess = onnx.load(str(MODEL))

    # ignore first Conv2D op
    conv2d = 'block1_conv1/Conv2D'
    modules_to_ignore = [conv2d]

    greedy_params = GreedySelectionParameters(target_comp_ratio=Decimal(0.8),
                                              num_comp_ratio_candidates=2,
                                              use_monotonic_fit=True,
                                              saved_eval_scores_dict=None)

    auto_params = ChannelPruningParameters.AutoModeParams(greedy_select_params=greedy_params,
                                                          modules_to_ignore=modules_to_ignore)

    # Calibration dataset: the digits calibration images in batches of 1
    batch_size = 1
    input_data, _ = digits_nhwc("digits32_calib.npz")
    dataset = [input_data[i:i + batch_size] for i in range(0, len(input_data), batch_size)]

    params = ChannelPruningParameters(input_op_names=['input_1'],
                                      output_op_names=['predictions/Softmax'],
                                      data_set=dataset,
                                      batch_size=32,
                                      num_reconstruction_samples=50,
                                      allow_custom_downsample_ops=False,
                                      mode=ChannelPruningParameters.Mode.auto,
                                      params=auto_params,
                                      multiplicity=8)

    # Single call to compress the model
    results = ModelCompressor.compress_model(sess,
                                             working_dir=None,
                                             eval_callback=evaluate_model,
                                             eval_iterations=10,
                                             input_shape=(32, 32, 32, 3),
                                             compress_scheme=CompressionScheme.channel_pruning,
                                             cost_metric=CostMetric.mac,
                                             parameters=params)

    compressed_model, stats = results
    print(compressed_model.graph.name, len(compressed_model.graph.node), "nodes")
    print(stats)     # Stats object can be pretty-printed easily
    return results


def channel_pruning_manual_mode():

    sess = onnx.load(str(MODEL))

    # Calibration dataset: the digits calibration images in batches of 1
    batch_size = 1
    input_data, _ = digits_nhwc("digits32_calib.npz")
    dataset = [input_data[i:i + batch_size] for i in range(0, len(input_data), batch_size)]

    #  Pick two convs to compress as examples
    block1_conv2_op = 'block1_conv2/Conv2D'
    block2_conv2_op = 'block2_conv2/Conv2D'

    list_of_module_comp_ratio_pairs = [ModuleCompRatioPair(block1_conv2_op, 0.5),
                                       ModuleCompRatioPair(block2_conv2_op, 0.5)]

    manual_params = ChannelPruningParameters.ManualModeParams(list_of_module_comp_ratio_pairs=
                                                              list_of_module_comp_ratio_pairs)

    params = ChannelPruningParameters(input_op_names=['input_1'],
                                      output_op_names=['predictions/Softmax'],
                                      data_set=dataset,
                                      batch_size=32,
                                      num_reconstruction_samples=50,
                                      allow_custom_downsample_ops=False,
                                      mode=ChannelPruningParameters.Mode.
                                      manual,
                                      params=manual_params,
                                      multiplicity=8)

    # Single call to compress the model
    results = ModelCompressor.compress_model(sess,
                                             working_dir=None,
                                             eval_callback=evaluate_model,
                                             eval_iterations=10,
                                             input_shape=(32, 32, 32, 3),
                                             compress_scheme=CompressionScheme.channel_pruning,
                                             cost_metric=CostMetric.mac,
                                             parameters=params)

    compressed_model, stats = results
    print(compressed_model.graph.name, len(compressed_model.graph.node), "nodes")
    print(stats)     # Stats object can be pretty-printed easily
    return results


def main(working_dir=str('./')) -> dict[str, dict]:
    """Run the four examples; per example the MAC ratio and the test accuracy before / after."""
    figures = {}
    for name, run in (("spatial_svd_auto_mode", lambda: spatial_svd_auto_mode(working_dir)),
                      ("spatial_svd_manual_mode", lambda: spatial_svd_manual_mode(working_dir)),
                      ("channel_pruning_auto_mode", channel_pruning_auto_mode),
                      ("channel_pruning_manual_mode", channel_pruning_manual_mode)):
        _, stats = run()
        figures[name] = {"mac_ratio": stats.mac_ratio, "accuracy_before": stats.baseline_score,
                         "accuracy_after": stats.final_score, "layers": [s.name for s in stats.layers]}
    return figures


if __name__ == '__main__':
    for example, row in main().items():
        print(f"{example}: MACs x{row['mac_ratio']:.3f}, accuracy {row['accuracy_before']:.3f} -> "
              f"{row['accuracy_after']:.3f}", file=sys.stderr)
