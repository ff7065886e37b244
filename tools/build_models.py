#!/usr/bin/env python3
"""Build the small test/benchmark models for ``onnx_compress``.

Trains three small CNN classifiers (VGG-, ResNet- and MobileNetV3-style) on
scikit-learn's ``digits`` data set upsampled to 1x32x32, exports them to ONNX
and writes the calibration / test data next to them in ``models/``.

    python tools/build_models.py            # writes models/*

Tools-only dependencies (see ``tools/requirements.txt``): torch==2.13.0 (CPU
wheel is enough), scikit-learn, plus onnx, onnxruntime and numpy.  onnxscript
is *not* needed: the script uses the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), which maps ``nn.Flatten`` +
``nn.Linear`` to ``Flatten`` + ``Gemm`` and can keep ``BatchNormalization``
nodes (``training=TrainingMode.PRESERVE`` on a model in ``eval()`` mode
disables the exporter's Conv+BN fusion while exporting inference-mode BN).

Preprocessing (identical for every split):
    1. x = digits.images / 16.0            -> float, range [0, 1], shape N x 8 x 8
    2. x = bilinear upsample to 32 x 32    (torch.nn.functional.interpolate,
                                            mode="bilinear", align_corners=False)
    3. x = (x - MEAN) / STD                with MEAN/STD the pixel mean/std of the
                                            upsampled training split, rounded to
                                            4 decimals (printed, written to README)
Split (fixed seed): 500 test images (stratified, never trained on), the
remaining 1297 images are the training split; the calibration set is a
stratified 256-image subset of the training split.

The script is deterministic (all seeds fixed, deterministic algorithms,
``torch.set_num_threads(2)``); it runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
OPSET = 17
IMG = 32
N_TEST = 500
N_CALIB = 256
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models"


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data
def load_data():
    """Return (x_train, y_train, x_calib, y_calib, x_test, y_test, mean, std)."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # [0, 1], N x 8 x 8
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=N_TEST, stratify=labels, random_state=SEED
    )
    calib_idx, _ = train_test_split(
        train_idx, train_size=N_CALIB, stratify=labels[train_idx], random_state=SEED
    )
    up = F.interpolate(
        torch.from_numpy(images)[:, None], size=(IMG, IMG), mode="bilinear",
        align_corners=False,
    ).numpy()
    mean = round(float(up[train_idx].mean()), 4)
    std = round(float(up[train_idx].std()), 4)
    x = ((up - mean) / std).astype(np.float32)
    return (x[train_idx], labels[train_idx], x[calib_idx], labels[calib_idx],
            x[test_idx], labels[test_idx], mean, std)


# ------------------------------------------------------------------------- models
def conv_bn(cin, cout, k=3, stride=1, groups=1, act: type[nn.Module] | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class VGGSmall(nn.Module):
    """conv-bn-relu stacks + MaxPool, Flatten -> Gemm -> Relu -> Gemm."""

    def __init__(self, widths=(8, 16, 24), hidden=32, num_classes=10):
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            conv_bn(1, c1), conv_bn(c1, c1), nn.MaxPool2d(2),      # 16x16
            conv_bn(c1, c2), conv_bn(c2, c2), nn.MaxPool2d(2),     # 8x8
            conv_bn(c2, c3), nn.MaxPool2d(2),                      # 4x4
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(c3 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNetSmall(nn.Module):
    """stem conv, 3 stages of BasicBlocks (stride-2 + 1x1 projection), GAP, Gemm."""

    def __init__(self, widths=(8, 16, 32), num_classes=10):
        super().__init__()
        c1, c2, c3 = widths
        self.stem = conv_bn(1, c1)                      # 32x32
        self.layer1 = BasicBlock(c1, c1, 1)             # 32x32, identity shortcut
        self.layer2 = BasicBlock(c1, c2, 2)             # 16x16, 1x1 projection
        self.layer3 = BasicBlock(c2, c3, 2)             # 8x8,   1x1 projection
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def _make_divisible(v, divisor=8):
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 conv -> Relu -> 1x1 conv -> HardSigmoid -> Mul."""

    def __init__(self, ch):
        super().__init__()
        sq = _make_divisible(ch // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, sq, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(sq, ch, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> SE -> 1x1 project (+ residual Add)."""

    def __init__(self, cin, cexp, cout, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.expand = conv_bn(cin, cexp, 1, act=nn.Hardswish)
        self.dw = conv_bn(cexp, cexp, 3, stride, groups=cexp, act=nn.Hardswish)
        self.se = SqueezeExcite(cexp)
        self.project = conv_bn(cexp, cout, 1, act=None)

    def forward(self, x):
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class MobileNetSmall(nn.Module):
    """MobileNetV3-style: stem, inverted residual blocks with SE, 1x1 conv, GAP, Gemm."""

    # (expand channels, out channels, stride)
    CFG = ((16, 8, 1), (32, 16, 2), (48, 16, 1), (64, 24, 2), (72, 24, 1))

    def __init__(self, stem=8, last=64, num_classes=10):
        super().__init__()
        self.stem = conv_bn(1, stem, 3, 1, act=nn.Hardswish)   # 32x32
        blocks, cin = [], stem
        for cexp, cout, s in self.CFG:
            blocks.append(InvertedResidual(cin, cexp, cout, s))
            cin = cout
        self.blocks = nn.Sequential(*blocks)                   # -> 8x8
        self.last = conv_bn(cin, last, 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.last(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


# name -> (constructor, epochs, peak learning rate).  Widths and the short
# one-cycle schedules were chosen so that each model lands at about 96-97%
# test accuracy (over seeds 0-3 the spread is roughly +-1%): fully trained,
# even these small nets reach ~99% on digits, which would leave compression
# nothing visible to lose.
MODELS = {
    "vgg_small": (lambda: VGGSmall(widths=(8, 16, 24), hidden=32), 5, 1e-3),
    "resnet_small": (lambda: ResNetSmall(widths=(8, 16, 32)), 4, 7e-3),
    "mobilenet_small": (MobileNetSmall, 4, 1e-2),
}


# One-line architecture descriptions for models/README.md.
ARCH = {
    "vgg_small": "VGG-style: [Conv3x3(1->8)+BN+Relu, Conv3x3(8->8)+BN+Relu, MaxPool] "
                 "-> [Conv3x3(8->16)+BN+Relu, Conv3x3(16->16)+BN+Relu, MaxPool] -> "
                 "[Conv3x3(16->24)+BN+Relu, MaxPool] -> Flatten(384) -> Gemm(384->32) "
                 "-> Relu -> Gemm(32->10).",
    "resnet_small": "ResNet-style: stem Conv3x3(1->8)+BN+Relu; BasicBlock(8->8, stride 1, "
                    "identity shortcut); BasicBlock(8->16, stride 2, 1x1 Conv+BN "
                    "projection shortcut); BasicBlock(16->32, stride 2, 1x1 projection); "
                    "GlobalAveragePool -> Flatten -> Gemm(32->10). BasicBlock = "
                    "Conv3x3+BN+Relu, Conv3x3+BN, Add(shortcut), Relu.",
    "mobilenet_small": "MobileNetV3-style: stem Conv3x3(1->8)+BN+HardSwish; 5 inverted "
                       "residual blocks (expand/out/stride: 16/8/1, 32/16/2, 48/16/1, "
                       "64/24/2, 72/24/1), each 1x1 expand Conv+BN+HardSwish -> 3x3 "
                       "depthwise Conv (group = channels)+BN+HardSwish -> squeeze-excite "
                       "(GlobalAveragePool -> 1x1 Conv -> Relu -> 1x1 Conv -> HardSigmoid "
                       "-> Mul) -> 1x1 project Conv+BN, residual Add when stride 1 and "
                       "in == out (blocks 1, 3, 5); 1x1 Conv(24->64)+BN+HardSwish -> "
                       "GlobalAveragePool -> Flatten -> Gemm(64->10).",
}


# ----------------------------------------------------------------------- training
def train(model, x, y, epochs, lr, batch_size=64, seed=SEED):
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), batch_size):
            bi = perm[i:i + batch_size]
            logits = model(xt[bi])
            loss = F.cross_entropy(logits, yt[bi])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(bi)
            loss_sum += loss.item() * len(bi)
            correct += int((logits.argmax(1) == yt[bi]).sum())
        print(f"    epoch {ep + 1}/{epochs}: loss {loss_sum / total:.4f} "
              f"train-acc {correct / total:.4f}")
    model.eval()
    return model


# ------------------------------------------------------------------------- export
def _clean_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace `Identity(initializer)` nodes (created by the exporter when two
    parameters hold identical values) by initializer copies, and make sure
    every node has a unique non-empty name."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            g.initializer.append(numpy_helper.from_array(arr.copy(), node.output[0]))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = set()
    for k, node in enumerate(g.node):
        if not node.name or node.name in used:
            node.name = f"{node.op_type}_{k}"
        used.add(node.name)
    return model


def export_onnx(model, path: Path, meta: dict[str, str]) -> onnx.ModelProto:
    model.eval()
    dummy = torch.zeros(1, 1, IMG, IMG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path),
            dynamo=False,                                   # TorchScript exporter
            opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,      # keep BatchNormalization
            do_constant_folding=False,
            export_params=True, keep_initializers_as_inputs=False,
        )
    m = _clean_graph(onnx.load(str(path)))
    m.producer_name = "onnx_compress/tools/build_models.py"
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return m


# ------------------------------------------------------------------------- stats
def onnx_params(m: onnx.ModelProto) -> int:
    """Number of learnable parameters: initializer elements, excluding the
    BatchNormalization running mean / variance (inputs 3 and 4)."""
    stats = {n.input[i] for n in m.graph.node if n.op_type == "BatchNormalization"
             for i in (3, 4)}
    return sum(int(np.prod(i.dims)) for i in m.graph.initializer if i.name not in stats)


def onnx_macs(m: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates of Conv and Gemm nodes for one 1x1x32x32 input,
    computed from weight shapes and (shape-inferred) output shapes; bias adds,
    BN, activations, pooling, Add/Mul are not counted."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    conv = gemm = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]                          # [Cout, Cin/g, kh, kw]
            out = shapes[n.output[0]]                      # [1, Cout, H, W]
            conv += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            attrs = {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
            w = inits[n.input[1]]
            k = w[1] if attrs.get("transB", 0) else w[0]
            out = shapes[n.output[0]]                      # [1, N]
            gemm += int(np.prod(out)) * k
    return {"conv": conv, "gemm": gemm, "total": conv + gemm}


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean()), logits


def op_summary(m: onnx.ModelProto) -> str:
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


# -------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    seed_everything()

    x_tr, y_tr, x_cal, y_cal, x_te, y_te, mean, std = load_data()
    print(f"data: train {x_tr.shape}, calib {x_cal.shape}, test {x_te.shape}; "
          f"normalisation mean={mean} std={std}")
    np.savez_compressed(out / "digits32_calib.npz", input=x_cal, labels=y_cal)
    np.savez_compressed(out / "digits32_test.npz", input=x_te, labels=y_te)

    preprocessing = (f"x = digits.images / 16; bilinear upsample 8x8 -> 32x32 "
                     f"(align_corners=False); x = (x - {mean}) / {std}")
    rows = []
    for name, (ctor, epochs, lr) in MODELS.items():
        print(f"\n== {name}: {epochs} epochs, lr {lr}")
        seed_everything()
        model = ctor()
        t = time.time()
        train(model, x_tr, y_tr, epochs, lr)
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(x_te)).numpy()
        torch_acc = float((torch_logits.argmax(1) == y_te).mean())
        path = out / f"{name}.onnx"
        m = export_onnx(model, path, {"preprocessing": preprocessing,
                                      "dataset": "sklearn digits upsampled to 32x32"})
        acc, logits = onnx_accuracy(path, x_te, y_te)
        diff = float(np.abs(logits - torch_logits).max())
        n_params = onnx_params(m)
        n_torch = sum(p.numel() for p in model.parameters())
        assert n_params == n_torch, (n_params, n_torch)
        macs = onnx_macs(m)
        size = path.stat().st_size
        n_bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
        print(f"   ops: {op_summary(m)}")
        print(f"   params {n_params}, MACs {macs['total']} (conv {macs['conv']}, "
              f"gemm {macs['gemm']}), file {size / 1024:.1f} KiB, BN nodes {n_bn}")
        print(f"   test accuracy: torch {torch_acc:.4f}, ONNX (onnxruntime) {acc:.4f}, "
              f"max |logit diff| {diff:.2e}, {time.time() - t:.1f}s")
        rows.append(dict(name=name, params=n_params, macs=macs, acc=acc, size=size,
                         epochs=epochs, lr=lr, ops=op_summary(m)))

    write_readme(out, rows, mean, std, len(y_tr), len(y_cal), len(y_te))
    print(f"\nACCURACY (ONNX, onnxruntime CPU, {len(y_te)} test images): " +
          ", ".join(f"{r['name']} {r['acc']:.4f}" for r in rows))
    print(f"total time {time.time() - t0:.1f}s")
    return 0


def write_readme(out: Path, rows, mean, std, n_train, n_calib, n_test) -> None:
    lines = [
        "# Test models",
        "",
        "Generated by `tools/build_models.py` -- do not edit by hand. Rebuild with",
        "",
        "```",
        "pip install -r tools/requirements.txt   # torch==2.13.0, scikit-learn, ...",
        "python tools/build_models.py",
        "```",
        "",
        "Small CNN classifiers trained on scikit-learn's `digits` data set "
        "(1797 8x8 grey images, 10 classes) upsampled to 1x32x32. They are "
        "deliberately small and briefly trained, so that compression visibly "
        "costs accuracy.",
        "",
        "| model | parameters | MACs (Conv+Gemm, 1x1x32x32) | test accuracy (ONNX) | file size |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| `{r['name']}.onnx` | {r['params']:,} | {r['macs']['total']:,} "
                     f"| {r['acc'] * 100:.1f}% | {r['size'] / 1024:.0f} KiB |")
    lines += [
        "",
        "- *parameters*: elements of all initializers except BatchNormalization "
        "running mean/variance (= trainable parameters of the PyTorch model).",
        "- *MACs*: multiply-accumulates of Conv and Gemm nodes for one image "
        "(output elements x Cin/group x kh x kw for Conv, N x K for Gemm), "
        "computed from the weight shapes and inferred output shapes; bias, BN, "
        "activations, pooling, Add and Mul are not counted.",
        "- *test accuracy*: top-1 accuracy of the exported ONNX file on "
        f"`digits32_test.npz` ({n_test} images) with onnxruntime "
        "(CPUExecutionProvider). Exact values may differ slightly on other CPUs.",
        "",
        "## Models",
        "",
    ]
    for r in rows:
        lines.append(f"- `{r['name']}`: {ARCH[r['name']]}")
        lines.append(f"  - training: {r['epochs']} epochs, peak lr {r['lr']}")
        lines.append(f"  - operators: {r['ops']}")
    lines += [
        "",
        "Training (all models): Adam, one-cycle learning-rate schedule, batch 64, "
        "cross-entropy, no augmentation, seed 0, `torch.set_num_threads(2)`, "
        "`torch.use_deterministic_algorithms(True)`. The short schedules are "
        "deliberate: fully trained, even these nets reach ~99% on digits.",
    ]
    lines += [
        "",
        "All models: opset 17, input `input` float32 `[batch, 1, 32, 32]` (dynamic "
        "batch), output `logits` float32 `[batch, 10]`, weights stored as "
        "initializers, BatchNormalization nodes kept (not folded into the convs). "
        "Exported with the TorchScript exporter (`torch.onnx.export(dynamo=False, "
        "training=TrainingMode.PRESERVE, do_constant_folding=False)` on a model "
        "in `eval()` mode).",
        "",
        "## Preprocessing",
        "",
        "Applied to every image (already applied to the data in the `.npz` files):",
        "",
        "1. `x = digits.images / 16.0` (float32, range [0, 1], 8x8)",
        "2. bilinear upsample to 32x32: `torch.nn.functional.interpolate(x, size=(32, 32), "
        "mode=\"bilinear\", align_corners=False)`",
        f"3. normalise: `x = (x - {mean}) / {std}` (pixel mean / std of the upsampled "
        "training split, rounded to 4 decimals)",
        "",
        "## Split",
        "",
        f"- test: {n_test} images, `train_test_split(test_size={n_test}, "
        f"stratify=labels, random_state={SEED})`; never used for training. "
        "Stored in `digits32_test.npz` (`input`: float32 N x 1 x 32 x 32, "
        "`labels`: int64 N).",
        f"- train: the remaining {n_train} images.",
        f"- calibration: {n_calib} images, a stratified subset of the training split "
        f"(`train_test_split(train_idx, train_size={n_calib}, stratify=..., "
        f"random_state={SEED})`). Stored in `digits32_calib.npz` (same keys).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
