#!/usr/bin/env python3
"""Build models/keras_digits_small.onnx: a small Keras CNN exported by tf2onnx, for the
AIMET TensorFlow face (onnx_compress.aimet_tensorflow, examples/aimet_tensorflow/).

Its layers carry VGG16's Keras names (input_1, block1_conv1, block1_conv2, block1_pool,
block2_conv1, block2_conv2, block2_pool, flatten, fc1, predictions) so that AIMET's TF
code examples run with their own op names ('block1_conv1/Conv2D', 'predictions/Softmax').
Input: NHWC (batch, 32, 32, 3) float32 named 'input_1' (dynamic batch), output: 10 class
probabilities. The grey digits are fed as three equal channels. Trained briefly on models/digits32_calib.npz (256 images, a subset of the
training split; the bundled test set, models/digits32_test.npz, is never trained on), so
that compression visibly costs accuracy.

Needs tensorflow-cpu and tf2onnx, whose pins conflict with the project's venv: run it from
a separate venv:

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf2onnx
    /tmp/tfvenv/bin/python tools/export_keras_small.py [--out models/keras_digits_small.onnx]

Deterministic on one machine (seeds fixed, one thread); runs in under a minute on 2 cores.
Built with tensorflow-cpu 2.21.0, Keras 3.15.1, tf2onnx 1.17.0 (opset 13).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPSET = 13


def nhwc(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits data (N, 1, 32, 32) as channels-last RGB-like (N, 32, 32, 3): the grey
    channel three times (with one channel tf2onnx would turn the NHWC->NCHW Transpose into a
    Reshape; three keep the Transpose every tf2onnx image model starts with)."""
    data = np.load(path)
    return np.ascontiguousarray(np.repeat(data["input"], 3, axis=1).transpose(0, 2, 3, 1)), data["labels"]


def build(tf):
    L = tf.keras.layers
    inp = tf.keras.Input((32, 32, 3), name="input_1")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = L.MaxPooling2D(2, name="block1_pool")(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv1")(x)
    x = L.Conv2D(24, 3, padding="same", activation="relu", name="block2_conv2")(x)
    x = L.MaxPooling2D(2, name="block2_pool")(x)
    x = L.Conv2D(24, 3, padding="same", activation="relu", name="block3_conv1")(x)
    x = L.MaxPooling2D(2, name="block3_pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(32, activation="relu", name="fc1")(x)
    out = L.Dense(10, activation="softmax", name="predictions")(x)
    return tf.keras.Model(inp, out, name="vgg_digits")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "keras_digits_small.onnx")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)

    import onnx
    import tensorflow as tf
    import tf2onnx

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(0)
    x_train, y_train = nhwc(ROOT / "models" / "digits32_calib.npz")
    x_test, y_test = nhwc(ROOT / "models" / "digits32_test.npz")
    model = build(tf)
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=0, shuffle=True)
    keras_acc = float(model.evaluate(x_test, y_test, verbose=0)[1])
    spec = (tf.TensorSpec([None, 32, 32, 3], tf.float32, name="input_1"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    onnx.checker.check_model(proto)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, args.out)
    line = f"{args.out}: {args.out.stat().st_size} bytes; Keras test accuracy {keras_acc:.3f}"
    try:  # onnxruntime is optional in the TF venv
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
        probs = sess.run(None, {sess.get_inputs()[0].name: x_test})[0]
        line += f", ONNX {float((probs.argmax(1) == y_test).mean()):.3f}"
    print(f"{line}; tf {tf.__version__}, tf2onnx {tf2onnx.__version__}, opset {OPSET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
