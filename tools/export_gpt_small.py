#!/usr/bin/env python3
"""Train a small decoder-only GPT-2 on CPU and export it to ONNX (two exporters).

A `transformers.GPT2LMHeadModel` (2 layers, 4 heads, width 64, FFN 128, 64 positions, 128
byte-level (ASCII) tokens, no KV cache) is trained for 4000 steps (seeded, one thread) on the
prose of the Python language reference that CPython ships as `pydoc_data.topics`, so its
attention heads carry real structure. Sentences are shuffled with a fixed seed; the first
`--eval` are held out and never trained on. The model is fed an all-ones attention mask
inside the graph (transformers' packed-sequence check does not export otherwise); the
dynamo file's node metadata (source stack traces) is stripped to keep it small. Written
to tests/corpus:

- gpt_ts_op14_dyn.onnx      torch.onnx TorchScript exporter (dynamo=False), opset 14
- gpt_dynamo_op18_dyn.onnx  torch.onnx dynamo exporter, opset 18
- gpt_text.npz              held-out int64 `input_ids` [128, 32] (bytes of held-out sentences;
                            tests/test_heads_gpt.py evaluates on rows :64, calibrates on 64:)

Both take `input_ids` [batch, seq] (dynamic axes) and return `logits` [batch, seq, 128].

    python tools/export_gpt_small.py                 # about 3 minutes of training on one core
    python tools/export_gpt_small.py --steps 500

Tool-only dependencies (tools/requirements.txt): torch CPU, transformers, onnxscript.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "corpus"
SEQ = 32


def byte_stream(sents: list[str]) -> np.ndarray:
    return np.frombuffer(" ".join(sents).encode("ascii", "replace"), np.uint8).astype(np.int64)


def split_text(n_eval: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training bytes, held-out bytes): disjoint sets of sentences."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_minilm import sentences  # the same prose sentences as the MiniLM benchmarks

    pool = sentences()
    order = np.random.default_rng(seed).permutation(len(pool))
    held = [pool[i] for i in order[:n_eval]]
    train = [pool[i] for i in order[n_eval:]]
    return byte_stream(train), byte_stream(held)


def make_model(seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_inner=128, n_positions=64, vocab_size=128,
                     bos_token_id=0, eos_token_id=0, use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def train(model, data: np.ndarray, steps: int, seed: int = 0, batch: int = 32, seq: int = 64) -> list:
    """Next-byte training on random windows of `data` for `steps` steps (AdamW, cosine decay)."""
    import torch

    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    t0, log = time.monotonic(), []
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        starts = rng.integers(0, len(data) - seq - 1, size=batch)
        ids = torch.from_numpy(np.stack([data[s:s + seq] for s in starts]))
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 500 == 0:
            elapsed = time.monotonic() - t0
            log.append((step, round(elapsed, 1), float(loss)))
            print(f"step {step:5d}  {elapsed:6.1f}s  loss {float(loss):.3f}", flush=True)
    model.eval()
    return log


class Logits:
    """Wraps the LM so the graph has one input (input_ids) and one output (logits)."""

    @staticmethod
    def module(model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lm = model

            def forward(self, input_ids):
                # an all-ones padding mask: without one, transformers' packed-sequence check
                # (torch.diff on the position ids) does not export to opset 14
                mask = torch.ones_like(input_ids)
                return self.lm(input_ids=input_ids, attention_mask=mask, use_cache=False, return_dict=False)[0]

        return Wrapped().eval()


def export(model, path: Path, dynamo: bool, opset: int) -> None:
    import onnx
    import torch

    wrapped = Logits.module(model)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("seq", max=64)
            prog = torch.onnx.export(wrapped, (ids,), dynamo=True, opset_version=opset, input_names=["input_ids"],
                                     output_names=["logits"], dynamic_shapes=({0: batch, 1: seq},),
                                     optimize=True, verbose=False)
            prog.save(str(path), external_data=False)
            model = onnx.load(str(path))
            for node in model.graph.node:  # the source stack traces: 190 kB of the file
                del node.metadata_props[:]
            onnx.save(model, str(path))
        else:
            torch.onnx.export(wrapped, (ids,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input_ids"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
                              do_constant_folding=True)


def check(model, path: Path, ids: np.ndarray) -> float:
    """Largest |ONNX Runtime - torch| logit difference on `ids`."""
    import onnxruntime as ort
    import torch

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    with torch.no_grad():
        want = Logits.module(model)(torch.from_numpy(ids)).numpy()
    return float(np.abs(got - want).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000, help="training steps (batch 32 x 64 bytes; ~30/s on one core)")
    ap.add_argument("--eval", type=int, default=200, help="held-out sentences")
    ap.add_argument("--rows", type=int, default=128, help="held-out rows of 32 tokens saved")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    train_bytes, held = split_text(args.eval)
    rows = len(held) // SEQ
    if rows < args.rows:
        raise SystemExit(f"only {rows} held-out rows")
    held_ids = held[:args.rows * SEQ].reshape(args.rows, SEQ)
    print(f"training bytes {len(train_bytes):,d}, held-out rows {args.rows} x {SEQ}")
    model = make_model()
    train(model, train_bytes, args.steps)
    with torch.no_grad():
        t = torch.from_numpy(held_ids)
        loss = float(model(input_ids=t, labels=t, use_cache=False).loss)
    print(f"held-out next-byte loss {loss:.3f} (perplexity {math.exp(loss):.2f})")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "gpt_text.npz", input_ids=held_ids)
    for name, dynamo, opset in (("gpt_ts_op14_dyn.onnx", False, 14), ("gpt_dynamo_op18_dyn.onnx", True, 18)):
        path = args.out / name
        export(model, path, dynamo, opset)
        diff = check(model, path, held_ids[:3, :9])
        print(f"wrote {path} ({path.stat().st_size:,d} B), max |ort - torch| = {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit(f"{name}: export differs from torch by {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
