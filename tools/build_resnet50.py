#!/usr/bin/env python3
"""Build a ResNet-50-class ONNX model with random weights, and random evaluation data, for
the scale benchmark (tools/bench_scale.py).

The architecture is ResNet-50's (torchvision's v1.5 layout, written out here: torchvision
is not a dependency): a 7x7/2 stem conv, 3x3/2 max pool, bottleneck blocks 3-4-6-3 with
widths 64..512 (outputs 256..2048, stride on the 3x3 conv), global average pool and a
1000-class Linear; 25.6M parameters, 224x224 input, 53 Conv layers + 1 Gemm. Weights are
He-initialised from a fixed seed; BatchNorm statistics are then computed in train mode on
`--bn-images` random images (cumulative average), so the activations are normalised as in
a trained network rather than exploding or vanishing through 50 layers. Exported with
model.eval() by the TorchScript exporter (dynamo=False, opset 17, batch axis dynamic),
which folds every BatchNormalization into its Conv.

Data (deterministic, numpy seed): images that are sums of bilinearly upsampled noise at
several scales (smooth, image-like spatial statistics), standardised per channel; written
as `.npz` files keyed by the model's input name, the format --data / --eval-data accept:

    build/scale/resnet50.onnx
    build/scale/resnet50_eval.npz     input: (N, 3, 224, 224) float32   (--images, default 256)
    build/scale/resnet50_calib.npz    input: (M, 3, 224, 224) float32   (--calib-images, default 64)

    python tools/build_resnet50.py [--images 256] [--calib-images 64] [--out build/scale]

Needs torch (tools/requirements.txt); about a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
INPUT, OUTPUT = "input", "logits"
SEED = 0


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    def __init__(self, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        layers, cin = [], 64
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def images(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Smooth random images: noise at 7, 14, 28, 56 and 224 pixels upsampled and summed,
    standardised per channel over the set (deterministic for `seed`)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, size, size), np.float32)
    for scale, weight in ((7, 1.0), (14, 0.7), (28, 0.5), (56, 0.35), (size, 0.2)):
        noise = torch.from_numpy(rng.standard_normal((n, 3, scale, scale), dtype=np.float32))
        if scale != size:
            noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        out += weight * noise.numpy()
    mean = out.mean(axis=(0, 2, 3), keepdims=True)
    std = out.std(axis=(0, 2, 3), keepdims=True)
    return ((out - mean) / std).astype(np.float32)


def calibrate(model: nn.Module, data: np.ndarray, batch: int = 16) -> None:
    """BatchNorm running statistics as the cumulative average over `data` (train mode), then
    the classifier's bias centred on `data`'s mean pooled feature: random weights otherwise
    send nearly every image to one class (ReLU features share a large common mean), which
    makes top-1 agreement a poor score."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            model(torch.from_numpy(data[i:i + batch]))
    model.eval()
    with torch.no_grad():
        feats = [torch.flatten(F.adaptive_avg_pool2d(model.layers(model.stem(torch.from_numpy(data[i:i + batch]))), 1), 1)
                 for i in range(0, len(data), batch)]
        mean = torch.cat(feats).mean(0)
        model.fc.bias.copy_(-model.fc.weight @ mean)


def export(model: nn.Module, path: Path) -> None:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter, on purpose
    dummy = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=17,
                      do_constant_folding=True, dynamo=False)


def check(path: Path, data: np.ndarray, model: nn.Module) -> None:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = data[:32]
    got = sess.run(None, {INPUT: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    print(f"{path}: {ops.count('Conv')} Conv, {ops.count('Gemm')} Gemm, {ops.count('BatchNormalization')} BN, "
          f"{params / 1e6:.2f}M parameters, {path.stat().st_size / 2**20:.1f} MiB; ORT vs torch max rel err {err:.2e}; "
          f"top-1 classes of 4 images {got.argmax(1)[:4].tolist()}, "
          f"distinct top-1 over {len(x)}: {len(set(got.argmax(1).tolist()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "scale")
    ap.add_argument("--images", type=int, default=256, help="evaluation images (resnet50_eval.npz)")
    ap.add_argument("--calib-images", type=int, default=64, help="calibration images (resnet50_calib.npz)")
    ap.add_argument("--bn-images", type=int, default=64, help="images for the BatchNorm statistics")
    ap.add_argument("--data-only", action="store_true", help="write the data files only")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    evals = images(args.images, seed=1)
    np.savez(args.out / "resnet50_eval.npz", **{INPUT: evals})
    np.savez(args.out / "resnet50_calib.npz", **{INPUT: images(args.calib_images, seed=2)})
    print(f"wrote {args.out}/resnet50_eval.npz ({args.images} images) and resnet50_calib.npz "
          f"({args.calib_images} images)")
    if args.data_only:
        return
    model = ResNet50()
    init_weights(model)
    calibrate(model, images(args.bn_images, seed=3))
    path = args.out / "resnet50.onnx"
    export(model, path)
    check(path, evals, model)
    print(f"done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
