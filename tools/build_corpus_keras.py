#!/usr/bin/env python3
"""Keras part of the reach corpus: small Keras models converted by tf2onnx.

Run with a separate venv holding tensorflow-cpu and tf2onnx (their pins conflict with the
project's venv), normally through tools/build_corpus.py, which merges the manifest entries
this writes and checks every file with onnx.checker and ONNX Runtime:

    python -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu tf2onnx
    python tools/build_corpus.py --keras /work/tfvenv/bin/python

Standalone: /work/tfvenv/bin/python tools/build_corpus_keras.py --out tests/corpus --entries E.json

What tf2onnx writes for Keras: NHWC inputs with a Transpose to NCHW in front of the first
Conv, BatchNormalization folded into the Conv or left as Mul/Add, Dense as MatMul + Add,
Conv1D as Unsqueeze -> Conv -> Squeeze between NWC/NCW Transposes, batch dim 'unk__N'.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import onnx  # noqa: E402


def _randomize(model, rng):
    """Trained-looking parameters: BN statistics and biases away from their init values (tf2onnx
    drops an Add of zeros, which a trained model never has)."""
    import tensorflow as tf

    for layer in model.layers:
        for var in layer.weights:
            if var.name.endswith("bias") and not isinstance(layer, tf.keras.layers.BatchNormalization):
                var.assign((rng.standard_normal(var.shape) * 0.1).astype("float32"))
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            n = gamma.shape[0]
            layer.set_weights([(rng.random(n) + 0.5).astype("float32"), (rng.standard_normal(n) * 0.1).astype("float32"),
                               (rng.standard_normal(n) * 0.1).astype("float32"), (rng.random(n) + 0.5).astype("float32")])


def conv2d_net(tf, batch):
    L = tf.keras.layers
    inp = tf.keras.Input((32, 32, 3), batch_size=batch, name="input_image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.Conv2D(8, 1, activation="relu")(y)
    x = L.Add()([x, y])
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.SeparableConv2D(32, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("swish")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(32, activation="relu")(x)
    out = L.Dense(10, activation="softmax", name="probs")(x)
    return tf.keras.Model(inp, out)


def conv1d_net(tf, batch):
    L = tf.keras.layers
    inp = tf.keras.Input((64, 8), batch_size=batch, name="signal")
    x = L.Conv1D(16, 5, padding="same", activation="relu")(inp)
    x = L.Conv1D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(32, 3, padding="causal", dilation_rate=2, activation="relu")(x)
    x = L.SeparableConv1D(32, 3, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    out = L.Dense(4, name="logits")(x)
    return tf.keras.Model(inp, out)


def lstm_net(tf, batch):
    L = tf.keras.layers
    inp = tf.keras.Input((20, 12), batch_size=batch, name="sequence")
    x = L.Conv1D(16, 3, padding="same", activation="relu")(inp)
    x = L.LSTM(24, return_sequences=True)(x)
    x = L.Dense(16, activation="tanh")(x)
    out = L.Dense(3, name="frame_logits")(x)
    return tf.keras.Model(inp, out)


FILES = {
    # file: (builder, opset, batch or None, shape without batch, input name, kind, notes)
    "keras_conv2d_tf2onnx_op13_dyn.onnx": (conv2d_net, 13, None, [32, 32, 3], "input_image", "classifier",
                                           "Keras Conv2D net: NHWC input, one Transpose to NCHW, Conv2D+BN folded "
                                           "into Conv, DepthwiseConv2D, residual Add, MaxPool, SeparableConv2D "
                                           "(depthwise + pointwise Conv), Conv2D+BN left as Mul/Add, swish "
                                           "(Sigmoid, Mul), GlobalAveragePooling2D + Squeeze, Dense as MatMul + "
                                           "Add, Softmax; dynamic batch 'unk__N'"),
    "keras_conv2d_tf2onnx_op10.onnx": (conv2d_net, 10, 1, [32, 32, 3], "input_image", "classifier",
                                       "the same Keras Conv2D net at opset 10 (IR 5): Dense as Gemm; static "
                                       "batch 1"),
    "keras_conv1d_tf2onnx_op15_dyn.onnx": (conv1d_net, 15, None, [64, 8], "signal", "audio",
                                           "Keras Conv1D net: NWC input; tf2onnx lowers each Conv1D to "
                                           "Unsqueeze -> 2-D Conv (kernel 1 x k) -> Squeeze, the bias as a "
                                           "separate Add after the Squeeze; causal padding as Pad, dilation, "
                                           "BN as Mul/Add, SeparableConv1D, GlobalAveragePooling1D, Dense as "
                                           "MatMul + Add; dynamic batch"),
    "keras_lstm_tf2onnx_op14_dyn.onnx": (lstm_net, 14, None, [20, 12], "sequence", "rnn",
                                         "Keras Conv1D -> LSTM(return_sequences; initial state from "
                                         "Shape/Slice/Concat/Expand) -> Dense on 3-D input (Tensordot: "
                                         "Reshape -> MatMul -> Reshape with computed targets, + Add); dynamic batch"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Keras/tf2onnx files of the reach corpus")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--entries", type=Path, required=True, help="write the manifest entries here (JSON list)")
    ap.add_argument("--only", action="append")
    args = ap.parse_args(argv)

    import keras
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    exporter = f"tf2onnx {tf2onnx.__version__} from Keras {keras.__version__} (TensorFlow {tf.__version__})"
    entries = []
    for k, (file, (build, opset, batch, shape, name, kind, notes)) in enumerate(FILES.items()):
        if args.only and file not in args.only:
            continue
        print(f"building {file} ...", flush=True)
        tf.keras.utils.set_random_seed(1000 + k)
        model = build(tf, batch)
        _randomize(model, np.random.default_rng(k))
        spec = (tf.TensorSpec([batch] + shape, tf.float32, name=name),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        path = args.out / file
        onnx.save(proto, str(path))
        onnx.checker.check_model(proto)
        fed_batch = batch or 2
        entries.append({"file": file, "exporter": exporter, "opset": opset, "ir_version": proto.ir_version,
                        "inputs": {proto.graph.input[0].name: {"shape": [fed_batch] + shape, "dtype": "float32",
                                                                "batch_axis": 0}},
                        "kind": kind, "notes": notes})
    args.entries.write_text(json.dumps(entries, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
