"""Hidden-size (residual stream) pruning of the small trained GPT-2 (tests/corpus, issue 16):
held-out cross-entropy, perplexity and logits cosine at several ratios with and without the
least-squares refit of the stream's readers, the MAC ratio (from the statistics and from an
independent count of the written files), the cost of the LayerNorms' statistics over fewer
channels alone, and auto mode with the stream as one unit beside the heads and FFN dims.

    python tools/bench_gpt_hidden.py               # writes its section of docs/benchmarks.md
    python tools/bench_gpt_hidden.py --no-write --ratios 0.75
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import onnx_compress as oc
from onnx_compress import ir, layers, runtime
from onnx_compress.schemes.pruning import depgraph

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _docs import write_section  # noqa: E402

BEGIN, END = "<!-- bench_gpt_hidden:begin -->", "<!-- bench_gpt_hidden:end -->"
CORPUS = ROOT / "tests" / "corpus"
EXPORTS = ("gpt_ts_op14_dyn.onnx", "gpt_dynamo_op18_dyn.onnx")
DIMS = {"input_ids": (2, 16)}


def logits(model, ids: np.ndarray) -> np.ndarray:
    return runtime.session(model).run(None, {"input_ids": ids})[0].astype(np.float64)


def cross_entropy(out: np.ndarray, ids: np.ndarray) -> float:
    z = out[:, :-1] - out[:, :-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, ids[:, 1:, None], -1).mean())


def cosine(out: np.ndarray, ref: np.ndarray) -> float:
    return float(((out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)).mean())


def independent_macs(model: onnx.ModelProto, tokens: int) -> int:
    """Each constant-weight Gemm/MatMul of the GPT-2 runs once per token: tokens x K x N."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return tokens * sum(math.prod(shapes[n.input[1]]) for n in model.graph.node
                        if n.op_type in ("Gemm", "MatMul") and n.input[1] in shapes)


def kept_channels(model: onnx.ModelProto, pruned: onnx.ModelProto) -> np.ndarray:
    """The stream channels a pruned model kept: its position table's columns in the original's."""
    def table(m):
        inits = {t.name: t for t in m.graph.initializer}
        node = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[0] in inits
                    and inits[n.input[0]].dims[0] == 64)  # the position embedding (64 positions)
        return numpy_helper.to_array(inits[node.input[0]])
    full, kept = table(model), table(pruned)
    return np.array([int(np.flatnonzero((full == kept[:, [j]]).all(0))[0]) for j in range(kept.shape[1])])


def readers_zeroed(model: onnx.ModelProto, removed: np.ndarray) -> onnx.ModelProto:
    """The model with the stream readers' input rows of `removed` zeroed: the channels are
    never read, but every LayerNorm still takes its statistics over all of them."""
    analysis = layers.analyze(ir.load(model), DIMS)
    group = depgraph.build_group(analysis.layers[0], analysis.graph, analysis.shapes)
    taken = ir.all_names(analysis.graph)
    for act in (a for a in group.actions if a.kind == "in"):
        idx = group.positions[act.tensor].removed(removed)
        w = ir.constant_value(act.node.inputs[1]).copy()
        if act.node.op == "Gemm" and act.node.attrs.get("transB", 0):
            w[:, idx] = 0
        else:
            w[idx] = 0
        ir.set_input(act.node, 1, w, ir.unique_name("zeroed", taken))
    return ir.export(analysis.graph, model)


def manual_rows(name: str, ratios, evaluation, calib) -> list[str]:
    model = onnx.load(str(CORPUS / name))
    ref = logits(model, evaluation)
    base = cross_entropy(ref, evaluation)
    root = layers.analyze(ir.load(model), DIMS).layers[0].name
    tokens = math.prod(DIMS["input_ids"])
    rows = [f"| {name} | 1 | 64 | 1 | 1 | {base:.3f} ({math.exp(base):.2f}) | - | 1 | - | - |"]
    for ratio in ratios:
        got = {}
        for refit in (True, False):
            t0 = time.monotonic()
            out, st = oc.compress(model, "channel_pruning", {root: ratio}, data={"input_ids": calib},
                                  input_shape=DIMS, reconstruct=refit)
            y = logits(out, evaluation)
            got[refit] = (out, st, cross_entropy(y, evaluation), cosine(y, ref), time.monotonic() - t0)
        out, st, ce, cos, secs = got[True]
        plain, st_plain, ce0, cos0, _ = got[False]
        removed = np.setdiff1d(np.arange(64), kept_channels(model, plain))
        ce_zero = cross_entropy(logits(readers_zeroed(model, removed), evaluation), evaluation)
        indep = independent_macs(out, tokens) / independent_macs(model, tokens)
        rows.append(f"| {name} | {ratio} | {st.layers[0].rank} | {st.mac_ratio:.4f} | {indep:.4f} | "
                    f"{ce:.3f} ({math.exp(ce):.2f}) | {ce0:.3f} ({math.exp(ce0):.2f}) | {cos:.4f} | {cos0:.4f} | "
                    f"{ce_zero:.3f} |")
        print(rows[-1], f"({secs:.1f} s)", flush=True)
    return rows


def short(name: str) -> str:
    """'/lm/transformer/h.0/attn/c_attn/Gemm' -> 'h.0/attn/c_attn'."""
    parts = name.strip("/").split("/")
    return "/".join(parts[2:-1]) if len(parts) > 3 else name


def auto_rows(targets, evaluation, calib) -> list[str]:
    model = onnx.load(str(CORPUS / EXPORTS[0]))
    probe = evaluation[:16]

    def log_likelihood(session, iterations=None, use_cuda=False) -> float:
        return -cross_entropy(session.run(None, {"input_ids": probe})[0].astype(np.float64), probe)

    root = layers.analyze(ir.load(model), DIMS).layers[0].name
    rows = []
    for target in targets:
        t0 = time.monotonic()
        out, st = oc.compress_auto(model, "channel_pruning", target, log_likelihood, data={"input_ids": calib},
                                   candidates=8, input_shape=DIMS)
        chosen = st.selection["chosen"]
        ce = cross_entropy(logits(out, evaluation), evaluation)
        picks = ", ".join(f"{short(k)} {float(v):g}" for k, v in chosen.items())
        rows.append(f"| {target} | {len(st.selection['scores'])} | {float(chosen.get(root, 1)):g} | {picks} | "
                    f"{st.mac_ratio:.4f} | {ce:.3f} ({math.exp(ce):.2f}) | {time.monotonic() - t0:.0f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.75, 0.5])
    p.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6])
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    ids = np.load(CORPUS / "gpt_text.npz")["input_ids"]
    evaluation, calib = ids[:64], ids[64:]  # as tests/test_heads_gpt.py: held-out rows, disjoint
    manual = ["| export | ratio | kept | MAC ratio | independent count | CE (ppl), refit | CE (ppl), no refit "
              "| cosine, refit | cosine, no refit | CE, readers zeroed |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in EXPORTS:
        manual += manual_rows(name, args.ratios, evaluation, calib)
    auto = ["| target | units | stream | chosen (heads, FFN, stream) | MAC ratio | CE (ppl) | seconds |",
            "|---:|---:|---:|---|---:|---:|---:|"]
    auto += auto_rows(args.targets, evaluation, calib)
    if args.no_write:
        return
    head = [BEGIN, "## Hidden-size pruning of the small GPT-2 (residual stream through LayerNorm)", "",
            "`python tools/bench_gpt_hidden.py`: the stream group (token and position embedding tables, five "
            "LayerNorms' scale and bias, QKV and FFN-in of both blocks and the lm_head as readers, attention and "
            "FFN output projections as writers) pruned in manual mode, named by the first block's QKV projection, "
            "magnitude selection; calibration rows 64: and held-out rows :64 of tests/corpus/gpt_text.npz "
            "([64, 32] bytes each). CE: mean next-byte cross-entropy in nats (perplexity in brackets); cosine: "
            "mean cosine of the logits to the original's. *Readers zeroed*: the original model with only the "
            "readers' input rows of the removed channels zeroed (every LayerNorm still normalises over all 64 "
            "channels): against *no refit* (the same channels pruned, statistics over the kept ones) it isolates "
            "the cost of the inexact LayerNorm. MAC ratios: the statistics' and an independent count of the "
            "written file (tokens x K x N of every constant-weight Gemm/MatMul).", ""]
    tail = ["", "Auto mode (TorchScript export, 8 candidates, eval: log-likelihood of 16 held-out rows; units: "
            "the stream, the heads of each block, the FFN dims of each block):", ""]
    write_section("\n".join(head + manual + tail + auto + [END]), BEGIN, END)


if __name__ == "__main__":
    main()
