#!/usr/bin/env python3
"""Build the real-world reach corpus: small ONNX graphs as real exporters write them.

Writes ``tests/corpus/*.onnx`` and ``tests/corpus/manifest.json`` (one entry per file:
exporter, opset, IR version, inputs with the concrete shapes to feed, dtype and batch
axis, outputs, kind, notes). Weights are random (seeded); only the graph structure
matters: what the exporters emit for YOLO-, U-Net-, MobileNet-, CRNN-, BERT-, RNN-with-
state-, Conv1D-audio-style networks, control flow, run-time shapes, and hand-built graphs
in the paddle2onnx and Caffe (caffe2onnx) layouts. ``tools/reach_matrix.py`` runs every
file through every scheme and mode.

    python tools/build_corpus.py                         # torch + hand-built files, verify all
    python tools/build_corpus.py --keras /work/tfvenv/bin/python   # also (re)build the Keras files
    python tools/build_corpus.py --only yolo_ts_op13.onnx           # rebuild one file
    python tools/build_corpus.py --verify-only           # check the manifest's files

Tool-only dependencies (tools/requirements.txt): torch==2.13.0 (CPU wheel), onnxscript
(for the dynamo exporter). The Keras files come from tools/build_corpus_keras.py, run
with a separate venv holding tensorflow-cpu and tf2onnx (their pins conflict with the
project's); this script keeps their manifest entries when it is run without --keras.

Every file is checked after writing: onnx.checker.check_model, and one ONNX Runtime run
on random inputs of the manifest's shapes (the output shapes are recorded).
Deterministic: fixed seeds, one thread, TorchScript and dynamo exports are reproducible.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "corpus"
MAX_FILE_BYTES = 500_000

ENTRIES: list[dict] = []  # filled by the builders: manifest entries (file written, not yet verified)
BUILDERS: dict[str, callable] = {}  # file name -> builder(out_dir) -> manifest entry


def builder(name):
    def deco(fn):
        BUILDERS[name] = fn
        return fn
    return deco


# --------------------------------------------------------------------------------------
# manifest helpers


def inp(shape, dtype="float32", batch_axis=0, **extra) -> dict:
    d = {"shape": list(shape), "dtype": dtype, "batch_axis": batch_axis}
    d.update(extra)
    return d


def entry(file, exporter, model_path, inputs, kind, notes) -> dict:
    m = onnx.load(str(model_path), load_external_data=False)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return {"file": file, "exporter": exporter, "opset": opset, "ir_version": m.ir_version,
            "inputs": inputs, "kind": kind, "notes": notes}


def natural_ir(opset: int) -> int:
    """The IR version an exporter of that opset's ONNX release wrote."""
    table = {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8,
             19: 9, 20: 9, 21: 10, 22: 10}
    return table[opset]


def to_ir3(model: onnx.ModelProto) -> onnx.ModelProto:
    """What pre-IR-4 exporters wrote: ir_version 3 and every initializer also a graph input."""
    listed = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    model.ir_version = 3
    return model


# --------------------------------------------------------------------------------------
# torch models (imported lazily so --verify-only and the hand-built part need no torch)


def torch_models():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class ConvBNAct(nn.Module):
        def __init__(self, c1, c2, k=1, s=1, g=1, act="silu"):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = {"silu": nn.SiLU(), "relu": nn.ReLU(), "hswish": nn.Hardswish(),
                        "relu6": nn.ReLU6(), None: nn.Identity()}[act]

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    # ---- YOLOv8-style detector ----
    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True):
            super().__init__()
            self.cv1 = ConvBNAct(c, c, 3)
            self.cv2 = ConvBNAct(c, c, 3)
            self.add = shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=True):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = ConvBNAct(c1, 2 * self.c, 1)
            self.cv2 = ConvBNAct((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c_ = c1 // 2
            self.cv1 = ConvBNAct(c1, c_, 1)
            self.cv2 = ConvBNAct(c_ * 4, c2, 1)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    class Yolo(nn.Module):
        def __init__(self, nc=4):
            super().__init__()
            self.no = nc + 4
            self.b0 = ConvBNAct(3, 8, 3, 2)
            self.b1 = ConvBNAct(8, 16, 3, 2)
            self.b2 = C2f(16, 16, 1)
            self.b3 = ConvBNAct(16, 24, 3, 2)
            self.b4 = C2f(24, 24, 1)
            self.b5 = ConvBNAct(24, 32, 3, 2)
            self.b6 = C2f(32, 32, 1)
            self.sppf = SPPF(32, 32)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.n1 = C2f(32 + 24, 24, 1, shortcut=False)
            self.n2 = C2f(24 + 16, 16, 1, shortcut=False)
            self.d1 = ConvBNAct(16, 16, 3, 2)
            self.n3 = C2f(16 + 24, 24, 1, shortcut=False)
            self.heads = nn.ModuleList(
                nn.Sequential(ConvBNAct(c, 16, 3), nn.Conv2d(16, self.no, 1)) for c in (16, 24, 32))

        def forward(self, x):
            p3 = self.b2(self.b1(self.b0(x)))
            p4 = self.b4(self.b3(p3))
            p5 = self.sppf(self.b6(self.b5(p4)))
            h4 = self.n1(torch.cat([self.up(p5), p4], 1))
            h3 = self.n2(torch.cat([self.up(h4), p3], 1))
            h4 = self.n3(torch.cat([self.d1(h3), h4], 1))
            outs = []
            for head, f in zip(self.heads, (h3, h4, p5)):
                y = head(f)
                outs.append(y.view(y.shape[0], self.no, -1))
            y = torch.cat(outs, 2)
            box, cls = y.split((4, self.no - 4), 1)
            return torch.cat((box, cls.sigmoid()), 1)

    # ---- U-Net ----
    class DoubleConv(nn.Sequential):
        def __init__(self, c1, c2):
            super().__init__(ConvBNAct(c1, c2, 3, act="relu"), ConvBNAct(c2, c2, 3, act="relu"))

    class UNet(nn.Module):
        def __init__(self, cin=3, ncls=2):
            super().__init__()
            self.e1 = DoubleConv(cin, 8)
            self.e2 = DoubleConv(8, 16)
            self.e3 = DoubleConv(16, 32)
            self.pool = nn.MaxPool2d(2)
            self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
            self.d1 = DoubleConv(32, 16)
            self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                     nn.Conv2d(16, 8, 1))
            self.d2 = DoubleConv(16, 8)
            self.head = nn.Conv2d(8, ncls, 1)

        def forward(self, x):
            x1 = self.e1(x)
            x2 = self.e2(self.pool(x1))
            x3 = self.e3(self.pool(x2))
            y = self.d1(torch.cat([self.up1(x3), x2], 1))
            y = self.d2(torch.cat([self.up2(y), x1], 1))
            return self.head(y)

    # ---- MobileNetV2 / EfficientNet-style ----
    class SE(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, max(4, c // r), 1)
            self.fc2 = nn.Conv2d(max(4, c // r), c, 1)

        def forward(self, x):
            s = self.pool(x)
            s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
            return x * s

    class InvertedResidual(nn.Module):
        def __init__(self, c1, c2, s, e, se, act):
            super().__init__()
            ch = c1 * e
            layers = [] if e == 1 else [ConvBNAct(c1, ch, 1, act=act)]
            layers.append(ConvBNAct(ch, ch, 3, s, g=ch, act=act))
            if se:
                layers.append(SE(ch))
            layers.append(ConvBNAct(ch, c2, 1, act=None))
            self.block = nn.Sequential(*layers)
            self.res = s == 1 and c1 == c2

        def forward(self, x):
            y = self.block(x)
            return x + y if self.res else y

    class MobileNet(nn.Module):
        def __init__(self, ncls=10):
            super().__init__()
            self.stem = ConvBNAct(3, 16, 3, 2, act="hswish")
            self.blocks = nn.Sequential(
                InvertedResidual(16, 16, 1, 1, True, "relu6"),
                InvertedResidual(16, 24, 2, 4, False, "relu6"),
                InvertedResidual(24, 24, 1, 3, False, "relu6"),
                InvertedResidual(24, 32, 2, 3, True, "hswish"),
                InvertedResidual(32, 32, 1, 3, True, "hswish"),
            )
            self.last = ConvBNAct(32, 64, 1, act="hswish")
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Hardswish(), nn.Dropout(0.2),
                                    nn.Linear(32, ncls))

        def forward(self, x):
            return self.fc(self.pool(self.last(self.blocks(self.stem(x)))))

    # ---- CRNN (text recognition) ----
    class CRNN(nn.Module):
        def __init__(self, nclass=12, hidden=32):
            super().__init__()
            self.cnn = nn.Sequential(
                ConvBNAct(1, 8, 3, act="relu"), nn.MaxPool2d(2, 2),
                ConvBNAct(8, 16, 3, act="relu"), nn.MaxPool2d(2, 2),
                ConvBNAct(16, 32, 3, act="relu"), nn.MaxPool2d((2, 1), (2, 1)),
                ConvBNAct(32, 32, 3, act="relu"), nn.MaxPool2d((4, 1), (4, 1)),
            )
            self.rnn = nn.LSTM(32, hidden, bidirectional=True)
            self.fc = nn.Linear(2 * hidden, nclass)

        def forward(self, x):
            f = self.cnn(x)  # B, C, 1, W
            b, c, h, w = f.size()
            f = f.view(b, c * h, w).permute(2, 0, 1)  # T, B, C
            y, _ = self.rnn(f)
            t, b2, hh = y.size()
            y = self.fc(y.reshape(t * b2, hh)).view(t, b2, -1)
            return y.log_softmax(2)

    # ---- BERT-style encoder ----
    class Attention(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x, mask_add):
            b, s, d = x.shape
            def split(t):
                return t.view(b, s, self.h, self.dh).transpose(1, 2)
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (self.dh ** 0.5) + mask_add
            ctx = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, s, d)
            return self.o(ctx)

    class Layer(nn.Module):
        def __init__(self, d, heads, ff):
            super().__init__()
            self.att = Attention(d, heads)
            self.ln1 = nn.LayerNorm(d)
            self.ff1 = nn.Linear(d, ff)
            self.ff2 = nn.Linear(ff, d)
            self.ln2 = nn.LayerNorm(d)

        def forward(self, x, mask_add):
            x = self.ln1(x + self.att(x, mask_add))
            return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))

    class Bert(nn.Module):
        def __init__(self, vocab=100, d=32, heads=4, ff=64, layers=2, maxlen=32):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(maxlen, d)
            self.typ = nn.Embedding(2, d)
            self.ln = nn.LayerNorm(d)
            self.layers = nn.ModuleList(Layer(d, heads, ff) for _ in range(layers))
            self.pool = nn.Linear(d, d)

        def forward(self, input_ids, attention_mask):
            s = input_ids.shape[1]
            pos = torch.arange(s, device=input_ids.device).unsqueeze(0)
            x = self.tok(input_ids) + self.pos(pos) + self.typ(torch.zeros_like(input_ids))
            x = self.ln(x)
            mask_add = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for layer in self.layers:
                x = layer(x, mask_add)
            return x, torch.tanh(self.pool(x[:, 0]))

    # ---- GRU with an explicit state input ----
    class GruState(nn.Module):
        def __init__(self, fin=16, hidden=32, fout=8):
            super().__init__()
            self.inp = nn.Linear(fin, hidden)
            self.gru = nn.GRU(hidden, hidden, batch_first=True)
            self.out = nn.Linear(hidden, fout)

        def forward(self, x, h):
            y, h_new = self.gru(torch.relu(self.inp(x)), h)
            return self.out(y), h_new

    # ---- silero-VAD-style: audio chunk, state [2, B, 128], sample-rate scalar ----
    class Vad(nn.Module):
        def __init__(self, hidden=128):
            super().__init__()
            self.stft = nn.Conv1d(1, 32, 32, stride=16, bias=False)
            self.enc = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(),
                                     nn.Conv1d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv1d(16, 16, 3, stride=2, padding=1), nn.ReLU())
            self.cell = nn.LSTMCell(16, hidden)
            self.dec = nn.Conv1d(hidden, 1, 1)

        def forward(self, x, state, sr):
            x = x * (sr.to(x.dtype) / 16000.0)
            s = self.stft(x.unsqueeze(1))
            re, im = s.chunk(2, 1)
            mag = torch.sqrt(re * re + im * im + 1e-6)
            f = self.enc(mag).mean(-1)
            h, c = self.cell(f, (state[0], state[1]))
            out = torch.sigmoid(self.dec(torch.relu(h).unsqueeze(-1))).squeeze(-1)
            return out, torch.stack([h, c])

    # ---- Conv1D audio classifier ----
    class Audio1D(nn.Module):
        def __init__(self, ncls=6):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv1d(1, 8, 16, stride=4, padding=6), nn.BatchNorm1d(8), nn.ReLU(),
                nn.Conv1d(8, 16, 8, stride=2, padding=3), nn.BatchNorm1d(16), nn.ReLU(),
                nn.Conv1d(16, 16, 5, padding=2, groups=16), nn.Conv1d(16, 32, 1), nn.BatchNorm1d(32), nn.ReLU(),
                nn.MaxPool1d(2),
                nn.Conv1d(32, 32, 3, padding=2, dilation=2), nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool1d(1)
            self.fc = nn.Linear(32, ncls)

        def forward(self, x):
            return self.fc(self.pool(self.net(x)).flatten(1))

    # ---- scalar float input used in Mul / Div ----
    class ScaledCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = ConvBNAct(3, 8, 3, act="relu")
            self.c2 = ConvBNAct(8, 16, 3, 2, act="relu")
            self.c3 = nn.Conv2d(16, 4, 1)

        def forward(self, x, gain):
            y = self.c2(self.c1(x * gain))
            return self.c3(y) / gain

    # ---- two inputs: image + metadata vector ----
    class Fusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = nn.Sequential(ConvBNAct(3, 8, 3, 2, act="relu"), ConvBNAct(8, 16, 3, 2, act="relu"),
                                     ConvBNAct(16, 32, 3, 2, act="relu"), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.aux = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5))

        def forward(self, image, meta):
            return self.head(torch.cat([self.cnn(image), self.aux(meta)], 1))

    # ---- Reshape targets computed at run time (Shape/Gather/Concat) ----
    class DynShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = ConvBNAct(3, 16, 3, act="relu")
            self.c2 = ConvBNAct(16, 16, 3, act="relu")
            self.c3 = ConvBNAct(16, 32, 3, 2, act="relu")
            self.c4 = nn.Conv2d(32, 8, 1)

        def forward(self, x):
            y = self.c1(x)
            b, c, h, w = y.shape
            # tokens and back, the way ViT/DETR-style code does: the target comes from Shape
            t = y.reshape(b, c, h * w).transpose(1, 2)
            t = t * torch.softmax(t.mean(-1, keepdim=True), dim=1)
            y = t.transpose(1, 2).reshape(b, c, h, w)
            y = self.c3(self.c2(y))
            b2, c2, h2, w2 = y.shape
            y = y.reshape(b2, c2 // 2, 2, h2, w2).sum(2)  # grouped sum via computed shape
            y = torch.cat([y, y], 1)
            return self.c4(y)

    # ---- control flow (TorchScript scripting -> If / Loop) ----
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 1)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            if bool(y.mean() > 0.25):
                y = torch.relu(self.a(y))
            else:
                y = torch.relu(self.b(y)) * 0.5
            return self.head(y)

    class Loopy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            n = x.shape[2] // 8
            for _ in range(n):
                y = y + torch.relu(self.body(y))
            return self.head(y)

    class CondModel(nn.Module):  # torch.cond -> If (dynamo)
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 1)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.stem(x))

            def true_fn(t):
                return torch.relu(self.a(t))

            def false_fn(t):
                return torch.relu(self.b(t)) * 0.5

            y = torch.cond(y.mean() > 0.25, true_fn, false_fn, (y,))
            return self.head(y)

    return dict(Yolo=Yolo, UNet=UNet, MobileNet=MobileNet, CRNN=CRNN, Bert=Bert, GruState=GruState,
                Vad=Vad, Audio1D=Audio1D, ScaledCNN=ScaledCNN, Fusion=Fusion, DynShape=DynShape,
                Branchy=Branchy, Loopy=Loopy, CondModel=CondModel)


def make_module(cls_name: str, seed: int):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    m = torch_models()[cls_name]()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in m.modules():  # realistic BN statistics (defaults make BN an identity)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return m.eval()


def example_inputs(inputs: dict, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for spec in inputs.values():
        if spec["dtype"] == "int64":
            lo, hi = spec.get("range", [0, 2])
            if "value" in spec:
                out.append(torch.tensor(spec["value"], dtype=torch.int64).reshape(spec["shape"]))
            else:
                out.append(torch.randint(lo, hi, spec["shape"], generator=g))
        else:
            if "value" in spec:
                out.append(torch.tensor(spec["value"], dtype=torch.float32).reshape(spec["shape"]))
            else:
                out.append(torch.randn(spec["shape"], generator=g))
    return tuple(out)


@contextlib.contextmanager
def quiet():
    """Exporters print progress and deprecation warnings; keep the build's output readable."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.level
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
                yield
        except Exception:
            sys.stderr.write(buf_err.getvalue()[-4000:])
            raise
        finally:
            logging.disable(logging.NOTSET)
            logging.root.setLevel(level)


def export_ts(out_dir, file, cls_name, inputs, outputs, opset, kind, notes, *, dynamic=None, seed=0,
              bn="fold", keep_inits=False, ir=None, script=False):
    """torch.onnx.export(dynamo=False): the TorchScript-based exporter."""
    import torch

    m = make_module(cls_name, seed)
    if script:
        m = torch.jit.script(m)
    args = example_inputs(inputs, seed + 7)
    path = Path(out_dir) / file
    training = torch.onnx.TrainingMode.PRESERVE if bn == "keep" else torch.onnx.TrainingMode.EVAL
    with quiet():
        torch.onnx.export(m, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(inputs), output_names=outputs, dynamic_axes=dynamic,
                          training=training, do_constant_folding=True,
                          keep_initializers_as_inputs=keep_inits)
    model = onnx.load(str(path))
    if ir == 3:
        model = to_ir3(model)
    elif ir is not None:
        model.ir_version = ir
    onnx.save(model, str(path))
    ver = torch.__version__.split("+")[0]
    return entry(file, f"torch.onnx (TorchScript) {ver}" + (" scripted" if script else ""), path, inputs, kind,
                 notes)


def export_dynamo(out_dir, file, cls_name, inputs, outputs, opset, kind, notes, *, dynamic_shapes=None, seed=0,
                  ir=None):
    """torch.onnx.export(dynamo=True): torch.export + onnxscript's torchlib."""
    import torch

    m = make_module(cls_name, seed)
    args = example_inputs(inputs, seed + 7)
    path = Path(out_dir) / file
    with quiet():
        prog = torch.onnx.export(m, args, dynamo=True, opset_version=opset, input_names=list(inputs),
                                 output_names=outputs, dynamic_shapes=dynamic_shapes, optimize=True)
        prog.save(str(path), external_data=False)
    if ir is not None:  # what the exporter wrote with the onnx release of that opset
        model = onnx.load(str(path))
        model.ir_version = ir
        onnx.save(model, str(path))
    ver = torch.__version__.split("+")[0]
    return entry(file, f"torch.onnx dynamo {ver}", path, inputs, kind, notes)


def Dim(name, lo=1, hi=1024):
    import torch

    return torch.export.Dim(name, min=lo, max=hi)


# --------------------------------------------------------------------------------------
# TorchScript-exporter files

IMG = [1, 3, 64, 64]


@builder("yolo_ts_op13.onnx")
def _(out):
    return export_ts(out, "yolo_ts_op13.onnx", "Yolo", {"images": inp(IMG)}, ["output0"], 13, "detector",
                     "YOLOv8-style: Conv+BN(folded)+SiLU (Sigmoid, Mul), C2f whose chunk() the exporter "
                     "writes as Slices with bounds computed from Shape/Gather/Div (so shape inference "
                     "leaves most conv shapes unknown), Concat, SPPF MaxPool, nearest Resize, 3-scale head "
                     "reshaped and concatenated, Split+Sigmoid; static batch 1",
                     seed=1)


@builder("yolo_ts_op11_dyn.onnx")
def _(out):
    return export_ts(out, "yolo_ts_op11_dyn.onnx", "Yolo", {"images": inp([2, 3, 64, 64])}, ["output0"], 11,
                     "detector", "YOLOv8-style at opset 11: C2f chunk() as Slices with computed bounds, head "
                     "view() targets from Shape/Gather/Unsqueeze/Concat; dynamic batch",
                     dynamic={"images": {0: "batch"}, "output0": {0: "batch"}}, seed=2)


@builder("yolo_ts_op9_ir3.onnx")
def _(out):
    return export_ts(out, "yolo_ts_op9_ir3.onnx", "Yolo", {"images": inp(IMG)}, ["output0"], 9, "detector",
                     "YOLOv8-style at opset 9 (Upsample op, Split with split attribute), BN kept as "
                     "BatchNormalization; IR 3 with every initializer listed in graph.input "
                     "(keep_initializers_as_inputs=True, ir_version set to 3)",
                     seed=3, bn="keep", keep_inits=True, ir=3)


@builder("unet_ts_op12_dyn.onnx")
def _(out):
    return export_ts(out, "unet_ts_op12_dyn.onnx", "UNet", {"input": inp([2, 3, 32, 32])}, ["mask"], 12, "unet",
                     "U-Net: double conv blocks with BN kept, MaxPool, ConvTranspose 2x2/2 and bilinear "
                     "Resize + 1x1 conv, skip Concat; dynamic batch",
                     dynamic={"input": {0: "N"}, "mask": {0: "N"}}, seed=4, bn="keep")


@builder("unet_ts_op16.onnx")
def _(out):
    return export_ts(out, "unet_ts_op16.onnx", "UNet", {"input": inp([1, 3, 32, 32])}, ["mask"], 16, "unet",
                     "U-Net, BN folded, static batch 1", seed=5)


@builder("mobilenet_ts_op14_dyn.onnx")
def _(out):
    return export_ts(out, "mobilenet_ts_op14_dyn.onnx", "MobileNet", {"input": inp([2, 3, 32, 32])}, ["logits"],
                     14, "classifier",
                     "MobileNetV3-style: depthwise separable inverted residuals, squeeze-excite "
                     "(GlobalAveragePool -> 1x1 convs -> HardSigmoid -> Mul), HardSwish, Flatten+Gemm; "
                     "dynamic batch", dynamic={"input": {0: "batch"}, "logits": {0: "batch"}}, seed=6)


@builder("mobilenet_ts_op8_ir3.onnx")
def _(out):
    return export_ts(out, "mobilenet_ts_op8_ir3.onnx", "MobileNet", {"input": inp([1, 3, 32, 32])}, ["logits"],
                     8, "classifier",
                     "MobileNetV3-style at opset 8: HardSwish lowered to x*HardSigmoid, ReLU6 as Clip "
                     "attributes; IR 3 with initializers as inputs (as exporters of that era wrote)",
                     seed=7, keep_inits=True, ir=3)


@builder("mobilenet_ts_op10.onnx")
def _(out):
    return export_ts(out, "mobilenet_ts_op10.onnx", "MobileNet", {"input": inp([1, 3, 32, 32])}, ["logits"],
                     10, "classifier", "MobileNetV3-style at opset 10 (IR 5), BN kept", seed=8, bn="keep")


@builder("crnn_ts_op11_dyn.onnx")
def _(out):
    return export_ts(out, "crnn_ts_op11_dyn.onnx", "CRNN", {"image": inp([2, 1, 32, 64])}, ["logprobs"], 11,
                     "ocr",
                     "CRNN: conv stack to height 1, view+permute to [T,B,C], bidirectional LSTM, "
                     "Linear (MatMul/Gemm), LogSoftmax; dynamic batch and width",
                     dynamic={"image": {0: "batch", 3: "width"}, "logprobs": {0: "T", 1: "batch"}}, seed=9)


@builder("bert_ts_op14_dyn.onnx")
def _(out):
    ids = inp([2, 16], "int64", 0, range=[0, 100])
    mask = inp([2, 16], "int64", 0, range=[1, 2])
    return export_ts(out, "bert_ts_op14_dyn.onnx", "Bert", {"input_ids": ids, "attention_mask": mask},
                     ["last_hidden_state", "pooler_output"], 14, "transformer",
                     "BERT-style encoder: token/position/type Gather embeddings, LayerNorm, 4-head attention "
                     "(MatMul, Reshape/Transpose), GELU FFN, tanh pooler; int64 input_ids (vocab 100) and "
                     "attention_mask; dynamic batch and sequence",
                     dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                              "last_hidden_state": {0: "batch", 1: "seq"}, "pooler_output": {0: "batch"}},
                     seed=10)


@builder("gru_state_ts_op13_dyn.onnx")
def _(out):
    return export_ts(out, "gru_state_ts_op13_dyn.onnx", "GruState",
                     {"x": inp([2, 10, 16]), "h0": inp([1, 2, 32], batch_axis=1)}, ["y", "hn"], 13, "rnn",
                     "Linear -> GRU (batch_first) -> Linear with an explicit state input h0 [1,B,32] and "
                     "new state output hn; dynamic batch (axis 1 of h0)",
                     dynamic={"x": {0: "batch", 1: "time"}, "h0": {1: "batch"}, "y": {0: "batch", 1: "time"},
                              "hn": {1: "batch"}}, seed=11)


@builder("vad_ts_op16_dyn.onnx")
def _(out):
    return export_ts(out, "vad_ts_op16_dyn.onnx", "Vad",
                     {"input": inp([2, 512]), "state": inp([2, 2, 128], batch_axis=1),
                      "sr": inp([], "int64", None, value=16000)},
                     ["output", "stateN"], 16, "vad",
                     "silero-VAD-style streaming model: audio chunk [B,512], state [2,B,128] (LSTMCell h,c) "
                     "and int64 scalar sample rate sr (Cast, Div, Mul); STFT as strided Conv1d, magnitude, "
                     "Conv1d encoder, LSTMCell, 1x1 Conv1d decoder; returns new state; dynamic batch",
                     dynamic={"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"},
                              "stateN": {1: "batch"}}, seed=12)


@builder("audio1d_ts_op15_dyn.onnx")
def _(out):
    return export_ts(out, "audio1d_ts_op15_dyn.onnx", "Audio1D", {"waveform": inp([2, 1, 1024])}, ["logits"], 15,
                     "audio",
                     "Conv1D audio classifier: strided Conv1d + BatchNormalization (kept), depthwise and "
                     "dilated Conv1d, MaxPool1d, GlobalAveragePool, Gemm; dynamic batch and length",
                     dynamic={"waveform": {0: "batch", 2: "samples"}, "logits": {0: "batch"}}, seed=13, bn="keep")


@builder("scaled_ts_op12.onnx")
def _(out):
    return export_ts(out, "scaled_ts_op12.onnx", "ScaledCNN",
                     {"image": inp([1, 3, 32, 32]), "gain": inp([], "float32", None, value=0.5)}, ["out"], 12,
                     "cnn", "CNN with a float32 scalar input 'gain' (shape []) used in Mul before the first "
                     "conv and Div after the last; static batch 1", seed=14)


@builder("fusion_ts_op17_dyn.onnx")
def _(out):
    return export_ts(out, "fusion_ts_op17_dyn.onnx", "Fusion",
                     {"image": inp([2, 3, 32, 32]), "meta": inp([2, 8])}, ["logits"], 17, "multi-input",
                     "two inputs: image CNN branch (GlobalAveragePool+Flatten) and metadata MLP branch, "
                     "Concat, Gemm head; dynamic batch",
                     dynamic={"image": {0: "batch"}, "meta": {0: "batch"}, "logits": {0: "batch"}}, seed=15)


@builder("dynshape_ts_op13_dyn.onnx")
def _(out):
    return export_ts(out, "dynshape_ts_op13_dyn.onnx", "DynShape", {"input": inp([2, 3, 32, 32])}, ["out"], 13,
                     "runtime-shape",
                     "Reshape targets built at run time from Shape -> Gather -> Unsqueeze -> Concat (and Mul, "
                     "Div on dims): shape inference leaves the spatial dims of the convs after them unknown; "
                     "dynamic batch, height and width",
                     dynamic={"input": {0: "batch", 2: "height", 3: "width"}, "out": {0: "batch", 2: "h", 3: "w"}},
                     seed=16)


@builder("if_ts_op13.onnx")
def _(out):
    return export_ts(out, "if_ts_op13.onnx", "Branchy", {"input": inp([1, 3, 32, 32])}, ["out"], 13,
                     "control-flow",
                     "torch.jit.script'ed data-dependent if: an If node whose two subgraphs hold Conv "
                     "layers (weights are outer-scope initializers); static batch 1", seed=17, script=True)


@builder("loop_ts_op11_dyn.onnx")
def _(out):
    return export_ts(out, "loop_ts_op11_dyn.onnx", "Loopy", {"input": inp([2, 3, 16, 16])}, ["out"], 11,
                     "control-flow",
                     "torch.jit.script'ed for-loop over range(H // 8): a Loop node whose body holds a Conv "
                     "(residual); dynamic batch and size", dynamic={"input": {0: "batch", 2: "h", 3: "w"}},
                     seed=18, script=True)


# --------------------------------------------------------------------------------------
# dynamo-exporter files


@builder("yolo_dynamo_op18.onnx")
def _(out):
    return export_dynamo(out, "yolo_dynamo_op18.onnx", "Yolo", {"images": inp(IMG)}, ["output0"], 18, "detector",
                         "YOLOv8-style through torch.export: BN folded by the exporter's optimizer, C2f "
                         "chunk() as Split with a split input, Resize with scales, constant Reshape targets; "
                         "static batch 1", seed=21)


@builder("yolo_dynamo_op20_dyn.onnx")
def _(out):
    return export_dynamo(out, "yolo_dynamo_op20_dyn.onnx", "Yolo", {"images": inp([2, 3, 64, 64])}, ["output0"],
                         20, "detector", "YOLOv8-style, dynamic batch (symbolic dim 'batch')",
                         dynamic_shapes={"x": {0: Dim("batch")}}, seed=22)


@builder("unet_dynamo_op18_dyn.onnx")
def _(out):
    return export_dynamo(out, "unet_dynamo_op18_dyn.onnx", "UNet", {"input": inp([2, 3, 32, 32])}, ["mask"], 18,
                         "unet", "U-Net through torch.export, dynamic batch",
                         dynamic_shapes={"x": {0: Dim("batch")}}, seed=23)


@builder("mobilenet_dynamo_op21.onnx")
def _(out):
    return export_dynamo(out, "mobilenet_dynamo_op21.onnx", "MobileNet", {"input": inp([1, 3, 32, 32])},
                         ["logits"], 21, "classifier",
                         "MobileNetV3-style at opset 21 (IR 10): BN folded, HardSwish, HardSigmoid, Clip "
                         "(ReLU6), squeeze-excite and head pooling as ReduceMean, Gemm; static batch 1", seed=24)


@builder("crnn_dynamo_op18_dyn.onnx")
def _(out):
    return export_dynamo(out, "crnn_dynamo_op18_dyn.onnx", "CRNN", {"image": inp([2, 1, 32, 64])}, ["logprobs"],
                         18, "ocr", "CRNN through torch.export (bidirectional LSTM op), dynamic batch",
                         dynamic_shapes={"x": {0: Dim("batch")}}, seed=25)


@builder("bert_dynamo_op18_dyn.onnx")
def _(out):
    ids = inp([2, 16], "int64", 0, range=[0, 100])
    mask = inp([2, 16], "int64", 0, range=[1, 2])
    b, s = Dim("batch"), Dim("seq", 2, 32)
    return export_dynamo(out, "bert_dynamo_op18_dyn.onnx", "Bert", {"input_ids": ids, "attention_mask": mask},
                         ["last_hidden_state", "pooler_output"], 18, "transformer",
                         "BERT-style encoder through torch.export: int64 input_ids/attention_mask, "
                         "LayerNormalization op, GELU as Erf, MatMul+Add linears, Gemm pooler; dynamic batch "
                         "and sequence",
                         dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}, seed=26)


@builder("gru_state_dynamo_op19_dyn.onnx")
def _(out):
    b = Dim("batch")
    return export_dynamo(out, "gru_state_dynamo_op19_dyn.onnx", "GruState",
                         {"x": inp([2, 10, 16]), "h0": inp([1, 2, 32], batch_axis=1)}, ["y", "hn"], 19, "rnn",
                         "GRU with explicit state h0 [1,B,32] through torch.export; ir_version set to 9 (the "
                         "IR of opset 19's onnx release); dynamic batch",
                         dynamic_shapes={"x": {0: b}, "h": {1: b}}, seed=27, ir=9)


@builder("vad_dynamo_op18.onnx")
def _(out):
    return export_dynamo(out, "vad_dynamo_op18.onnx", "Vad",
                         {"input": inp([1, 512]), "state": inp([2, 1, 128], batch_axis=1),
                          "sr": inp([], "int64", None, value=16000)},
                         ["output", "stateN"], 18, "vad",
                         "silero-VAD-style model through torch.export: state [2,1,128] and int64 scalar sr "
                         "inputs; static batch 1", seed=28)


@builder("audio1d_dynamo_op20_dyn.onnx")
def _(out):
    return export_dynamo(out, "audio1d_dynamo_op20_dyn.onnx", "Audio1D", {"waveform": inp([2, 1, 1024])},
                         ["logits"], 20, "audio",
                         "Conv1D audio classifier through torch.export (BN folded by its optimizer); ir_version "
                         "set to 9 (opset 20's onnx release); dynamic batch",
                         dynamic_shapes={"x": {0: Dim("batch")}}, seed=29, ir=9)


@builder("scaled_dynamo_op18.onnx")
def _(out):
    return export_dynamo(out, "scaled_dynamo_op18.onnx", "ScaledCNN",
                         {"image": inp([1, 3, 32, 32]), "gain": inp([], "float32", None, value=0.5)}, ["out"], 18,
                         "cnn", "CNN with a float32 scalar input 'gain' through torch.export", seed=30)


@builder("fusion_dynamo_op18_dyn.onnx")
def _(out):
    b = Dim("batch")
    return export_dynamo(out, "fusion_dynamo_op18_dyn.onnx", "Fusion",
                         {"image": inp([2, 3, 32, 32]), "meta": inp([2, 8])}, ["logits"], 18, "multi-input",
                         "image + metadata inputs through torch.export, dynamic batch",
                         dynamic_shapes={"image": {0: b}, "meta": {0: b}}, seed=31)


@builder("cond_dynamo_op18.onnx")
def _(out):
    return export_dynamo(out, "cond_dynamo_op18.onnx", "CondModel", {"input": inp([1, 3, 32, 32])}, ["out"], 18,
                         "control-flow",
                         "torch.cond -> If node whose branches are local functions / subgraphs holding Conv "
                         "layers; static batch 1", seed=32)


# --------------------------------------------------------------------------------------
# hand-built graphs (onnx.helper)


class GraphBuilder:
    """Tiny helper: nodes with unique names, weights as Constant nodes or initializers."""

    def __init__(self, rng, weights="constant", prefix=""):
        self.nodes, self.inits, self.rng, self.weights, self.prefix = [], [], rng, weights, prefix
        self.count: dict[str, int] = {}

    def name(self, base):
        k = self.count.get(base, 0)
        self.count[base] = k + 1
        return f"{self.prefix}{base}_{k}"

    def tensor(self, base, arr):
        arr = np.asarray(arr)
        n = self.name(base)
        if self.weights == "constant":
            self.nodes.append(helper.make_node("Constant", [], [n], name=n + ".const",
                                               value=numpy_helper.from_array(arr, n)))
        else:
            self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def node(self, op, inputs, n_out=1, base=None, **attrs):
        n = self.name(base or op.lower())
        outs = [f"{n}.out{i}" if n_out > 1 else f"{n}.out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=n, **attrs))
        return outs if n_out > 1 else outs[0]

    def weight(self, shape, fan_in):
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _paddle_conv(gb, x, cin, cout, k, s=1, groups=1, act="relu"):
    """paddle2onnx layout: Conv without bias, bias via Reshape(Constant[C], Constant[1,C,1,1]) + Add,
    batch norm folded into per-channel Mul/Add with [1,C,1,1] constants (affine_channel)."""
    w = gb.tensor("conv2d.w", gb.weight((cout, cin // groups, k, k), cin // groups * k * k))
    y = gb.node("Conv", [x, w], base="conv2d", kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4,
                group=groups, dilations=[1, 1])
    b = gb.tensor("conv2d.b", (gb.rng.standard_normal(cout) * 0.1).astype(np.float32))
    shp = gb.tensor("reshape.shape", np.array([1, cout, 1, 1], np.int64))
    y = gb.node("Add", [y, gb.node("Reshape", [b, shp], base="reshape2")], base="elementwise_add")
    scale = gb.tensor("affine_channel.scale", (gb.rng.random((1, cout, 1, 1)) + 0.5).astype(np.float32))
    shift = gb.tensor("affine_channel.bias", (gb.rng.standard_normal((1, cout, 1, 1)) * 0.1).astype(np.float32))
    y = gb.node("Add", [gb.node("Mul", [y, scale], base="affine_mul"), shift], base="affine_add")
    if act == "relu":
        y = gb.node("Relu", [y], base="relu")
    elif act == "hswish":
        y = gb.node("HardSwish", [y], base="hard_swish") if gb.opset >= 14 else gb.node(
            "Mul", [y, gb.node("HardSigmoid", [y], base="hard_sigmoid", alpha=1 / 6, beta=0.5)], base="hs_mul")
    return y


def build_paddle_det(out_dir, file, opset, batch):
    """Small detector in the paddle2onnx layout: every weight a Constant node, no initializers."""
    rng = np.random.default_rng(101 + opset)
    gb = GraphBuilder(rng, "constant")
    gb.opset = opset
    x = "image"
    c1 = _paddle_conv(gb, x, 3, 8, 3, 2)
    c2 = _paddle_conv(gb, c1, 8, 16, 3, 2)
    c2 = _paddle_conv(gb, c2, 16, 16, 3, 1, groups=16, act="hswish")  # depthwise
    c2 = _paddle_conv(gb, c2, 16, 16, 1, 1, act="hswish")
    c3 = _paddle_conv(gb, c2, 16, 32, 3, 2)
    c3 = _paddle_conv(gb, c3, 32, 32, 3, 1)
    # FPN: upsample c3 (Resize with roi/scales constants, paddle's nearest_interp_v2), concat with c2
    roi = gb.tensor("resize.roi", np.array([], np.float32))
    scales = gb.tensor("resize.scales", np.array([1, 1, 2, 2], np.float32))
    up = gb.node("Resize", [c3, roi, scales], base="nearest_interp_v2", mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    f = gb.node("Concat", [up, c2], base="concat", axis=1)
    f = _paddle_conv(gb, f, 48, 16, 1, 1)
    outs = []
    for lvl, feat, ch in (("p2", f, 16), ("p3", c3, 32)):
        h = _paddle_conv(gb, feat, ch, 16, 3, 1)
        cls = _paddle_conv(gb, h, 16, 3, 1, 1, act=None)
        reg = _paddle_conv(gb, h, 16, 4, 1, 1, act=None)
        cls = gb.node("Sigmoid", [cls], base="sigmoid")
        y = gb.node("Concat", [reg, cls], base="concat", axis=1)
        shp = gb.tensor("reshape.shape", np.array([0, 7, -1], np.int64))
        y = gb.node("Reshape", [y, shp], base="reshape2")
        outs.append(y)
    y = gb.node("Concat", outs, base="concat", axis=2)
    y = gb.node("Transpose", [y], base="transpose", perm=[0, 2, 1])
    gb.nodes.append(helper.make_node("Identity", [y], ["save_infer_model/scale_0.tmp_0"], name="scale_0"))
    bdim = batch if isinstance(batch, int) else "p2o.DynamicDimension.0"
    graph = helper.make_graph(
        gb.nodes, "paddle_det",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [bdim, 3, 64, 64])],
        [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_0", TensorProto.FLOAT, [bdim, None, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="PaddlePaddle",
                              ir_version=natural_ir(opset))
    path = Path(out_dir) / file
    onnx.save(model, str(path))
    shape = [batch if isinstance(batch, int) else 2, 3, 64, 64]
    return entry(file, "hand-built paddle2onnx layout", path, {"image": inp(shape)}, "detector",
                 "paddle2onnx layout: no initializers, every weight/shape a Constant node; Conv without bias "
                 "+ Add(Reshape(Constant[C], Constant[1,C,1,1])); batch norm as per-channel Mul/Add "
                 "(affine_channel) with [1,C,1,1] Constants; depthwise conv, HardSwish, Resize(roi, scales), "
                 "Concat, two-level head with Reshape [0,7,-1] + Transpose; "
                 + ("static batch" if isinstance(batch, int) else "dynamic batch 'p2o.DynamicDimension.0'"))


@builder("paddle_det_op11.onnx")
def _(out):
    return build_paddle_det(out, "paddle_det_op11.onnx", 11, 1)


@builder("paddle_det_op13_dyn.onnx")
def _(out):
    return build_paddle_det(out, "paddle_det_op13_dyn.onnx", 13, None)


@builder("paddle_cls_op9.onnx")
def _(out):
    """paddle2onnx classifier at opset 9 (IR 4): Constant weights, fc as MatMul + Add(Constant)."""
    file = "paddle_cls_op9.onnx"
    rng = np.random.default_rng(7)
    gb = GraphBuilder(rng, "constant")
    gb.opset = 9
    y = _paddle_conv(gb, "x", 3, 8, 3, 1)
    y = gb.node("MaxPool", [y], base="pool2d", kernel_shape=[2, 2], strides=[2, 2])
    y = _paddle_conv(gb, y, 8, 16, 3, 1)
    y = _paddle_conv(gb, y, 16, 16, 3, 2)
    y = gb.node("GlobalAveragePool", [y], base="pool2d")
    shp = gb.tensor("reshape.shape", np.array([-1, 16], np.int64))
    y = gb.node("Reshape", [y, shp], base="reshape2")
    w = gb.tensor("fc.w", gb.weight((16, 32), 16))
    y = gb.node("MatMul", [y, w], base="matmul")
    y = gb.node("Add", [y, gb.tensor("fc.b", np.zeros(32, np.float32) + 0.01)], base="elementwise_add")
    y = gb.node("Relu", [y], base="relu")
    w = gb.tensor("fc.w", gb.weight((32, 10), 32))
    y = gb.node("MatMul", [y, w], base="matmul")
    y = gb.node("Add", [y, gb.tensor("fc.b", np.zeros(10, np.float32))], base="elementwise_add")
    gb.nodes.append(helper.make_node("Softmax", [y], ["softmax_0.tmp_0"], name="softmax_0", axis=1))
    graph = helper.make_graph(gb.nodes, "paddle_cls",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 32, 32])],
                              [helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, [-1, 10])])
    # older paddle2onnx wrote -1 as a literal dim_value for the batch
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="PaddlePaddle",
                              ir_version=4)
    path = Path(out) / file
    onnx.save(model, str(path))
    return entry(file, "hand-built paddle2onnx layout", path, {"x": inp([2, 3, 32, 32])}, "classifier",
                 "old paddle2onnx classifier at opset 9 / IR 4: Constant weights, conv bias via "
                 "Reshape+Add, affine_channel Mul/Add, MaxPool, GlobalAveragePool, Reshape [-1,16], fc as "
                 "MatMul + Add(Constant), Softmax; batch dim written as dim_value -1")


def build_caffe(out_dir, file, opset):
    """caffe2onnx layout: Conv/Gemm weights as initializers (also graph inputs, IR 3), Caffe's Scale
    layer as Mul/Add(x, Unsqueeze(b[C], axes=[1,2]))."""
    rng = np.random.default_rng(300 + opset)
    gb = GraphBuilder(rng, "initializer")
    gb.opset = opset

    def unsq(t):
        if opset < 13:
            return gb.node("Unsqueeze", [t], base="unsqueeze", axes=[1, 2])
        return gb.node("Unsqueeze", [t, gb.tensor("unsqueeze.axes", np.array([1, 2], np.int64))], base="unsqueeze")

    def conv(x, cin, cout, k, s=1, scale=True):
        w = gb.tensor("conv.W", gb.weight((cout, cin, k, k), cin * k * k))
        b = gb.tensor("conv.B", (rng.standard_normal(cout) * 0.1).astype(np.float32))
        y = gb.node("Conv", [x, w, b], base="conv", kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
        if scale:
            # BatchNorm (mean/var) + Scale (gamma/beta): caffe2onnx emits per-channel Mul/Add with Unsqueeze
            g = gb.tensor("scale.gamma", (rng.random(cout) + 0.5).astype(np.float32))
            beta = gb.tensor("scale.beta", (rng.standard_normal(cout) * 0.1).astype(np.float32))
            y = gb.node("Mul", [y, unsq(g)], base="scale_mul")
            y = gb.node("Add", [y, unsq(beta)], base="scale_add")
        return gb.node("Relu", [y], base="relu")

    y = conv("data", 3, 8, 3)
    y = gb.node("MaxPool", [y], base="pool", kernel_shape=[2, 2], strides=[2, 2])
    y = conv(y, 8, 16, 3)
    y = conv(y, 16, 16, 1)
    y = gb.node("MaxPool", [y], base="pool", kernel_shape=[2, 2], strides=[2, 2])
    y = conv(y, 16, 32, 3, scale=False)
    y = gb.node("AveragePool", [y], base="pool", kernel_shape=[8, 8], strides=[1, 1])
    y = gb.node("Flatten", [y], base="flatten", axis=1)
    w = gb.tensor("fc.W", gb.weight((10, 32), 32))
    b = gb.tensor("fc.B", np.zeros(10, np.float32))
    y = gb.node("Gemm", [y, w, b], base="fc", transB=1)
    gb.nodes.append(helper.make_node("Softmax", [y], ["prob"], name="prob", axis=1))
    graph = helper.make_graph(gb.nodes, "caffe_net",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])],
                              initializer=gb.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="caffe2onnx")
    model = to_ir3(model)
    path = Path(out_dir) / file
    onnx.save(model, str(path))
    axes = "Unsqueeze axes as attribute" if opset < 13 else "Unsqueeze axes as an input (an initializer, so also a graph input)"
    return entry(file, "hand-built Caffe (caffe2onnx) layout", path, {"data": inp([1, 3, 32, 32])}, "classifier",
                 "caffe2onnx layout: Conv with W/B initializers, Caffe Scale layer as Mul/Add(x, Unsqueeze(b[C], "
                 f"axes=[1,2])) ({axes}), MaxPool, global AveragePool by kernel size, Flatten+Gemm, Softmax; "
                 "IR 3 with every initializer listed in graph.input; static batch 1")


@builder("caffe_op11_ir3.onnx")
def _(out):
    return build_caffe(out, "caffe_op11_ir3.onnx", 11)


@builder("caffe_op13_ir3.onnx")
def _(out):
    return build_caffe(out, "caffe_op13_ir3.onnx", 13)


# --------------------------------------------------------------------------------------
# verification


def random_feed(inputs: dict, seed: int, batch: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the manifest's shapes (int64 ids in their 'range', fixed 'value's)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, spec in inputs.items():
        shape = list(spec["shape"])
        if batch is not None and spec.get("batch_axis") is not None:
            shape[spec["batch_axis"]] = batch
        if "value" in spec:
            feed[name] = np.full(shape, spec["value"], dtype=spec["dtype"])
        elif spec["dtype"].startswith("int"):
            lo, hi = spec.get("range", [0, 2])
            feed[name] = rng.integers(lo, hi, size=shape).astype(spec["dtype"])
        else:
            feed[name] = rng.standard_normal(shape).astype(spec["dtype"])
    return feed


def verify(path: Path, e: dict) -> dict:
    """onnx.checker + one ONNX Runtime run; returns {output name: shape}. Raises on failure."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if e["ir_version"] != model.ir_version:
        raise AssertionError(f"{path.name}: manifest ir_version {e['ir_version']} != {model.ir_version}")
    declared = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    if declared != set(e["inputs"]):
        raise AssertionError(f"{path.name}: graph inputs {sorted(declared)} != manifest {sorted(e['inputs'])}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, random_feed(e["inputs"], 0))
    for o, v in zip(sess.get_outputs(), outs):
        if not np.all(np.isfinite(v)):
            raise AssertionError(f"{path.name}: output {o.name} has non-finite values")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AssertionError(f"{path.name}: {size} bytes > {MAX_FILE_BYTES}")
    return {o.name: list(v.shape) for o, v in zip(sess.get_outputs(), outs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", action="append", help="build only this file (repeatable)")
    ap.add_argument("--keras", metavar="PYTHON",
                    help="also build the Keras/tf2onnx files with tools/build_corpus_keras.py run by this "
                         "interpreter (a venv with tensorflow-cpu and tf2onnx)")
    ap.add_argument("--verify-only", action="store_true", help="only check the manifest's files")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    old = {e["file"]: e for e in json.loads(manifest_path.read_text())} if manifest_path.exists() else {}

    entries = dict(old)
    build_failures: list[str] = []
    if not args.verify_only:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            torch = None
        names = args.only or list(BUILDERS)
        if not args.only:  # a full build drops entries of files no longer built (Keras ones stay)
            entries = {k: v for k, v in entries.items() if k in BUILDERS or v["exporter"].startswith("tf2onnx")}
        for name in names:
            if name not in BUILDERS:
                continue
            print(f"building {name} ...", flush=True)
            try:
                entries[name] = BUILDERS[name](out)
            except Exception as exc:
                build_failures.append(name)
                entries.pop(name, None)
                print(f"FAIL building {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        if args.keras:
            keras_json = out / "_keras_entries.json"
            cmd = [args.keras, str(Path(__file__).with_name("build_corpus_keras.py")), "--out", str(out),
                   "--entries", str(keras_json)]
            for name in args.only or []:
                cmd += ["--only", name]
            print("running", " ".join(cmd), flush=True)
            # PYTHONHASHSEED: fewer set-order differences in tf2onnx's constant deduplication
            subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONHASHSEED="0"))
            for e in json.loads(keras_json.read_text()):
                entries[e["file"]] = e
            keras_json.unlink()

    failures = len(build_failures)
    for name, e in sorted(entries.items()):
        path = out / name
        try:
            e["outputs"] = verify(path, e)
            print(f"ok   {name:34s} {path.stat().st_size:>8,d} B  opset {e['opset']:>2}  IR {e['ir_version']:>2}  "
                  f"{e['exporter']}")
        except Exception as exc:
            failures += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
    ordered = [entries[k] for k in sorted(entries)]
    text = json.dumps(ordered, indent=1)
    text = re.sub(r"\[\s*([-0-9,\s]*?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)  # shapes on one line
    manifest_path.write_text(text + "\n")
    stale = sorted(p.name for p in out.glob("*.onnx") if p.name not in entries)
    if stale:
        print("files not in the manifest (remove them):", ", ".join(stale))
    total = sum((out / k).stat().st_size for k in entries if (out / k).exists())
    print(f"{len(entries)} files, {total:,d} bytes, {failures} failure(s); manifest {manifest_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
