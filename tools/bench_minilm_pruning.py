"""Structured pruning of a sentence-embedding transformer: all-MiniLM-L6-v2's attention heads
and FFN intermediate dims (issue 16), on the same sentences and metrics as bench_minilm.py.

Channel pruning takes two kinds of unit in a BERT encoder: an attention block's heads (the
channel group of its output projection reaches Q, K and V through the head split/merge
Reshapes: 12 units of 32 channels) and a feed-forward block's intermediate dims (the group
of its second MatMul: 1536 channels). The hidden size (384, through every LayerNorm and
residual Add) stays. Rows:

- manual: the six attention output projections (heads) or the six FFN output MatMuls at a
  ratio each, channels chosen by greedy least squares (or magnitude), every pruned layer
  refit by least squares toward the original layer's outputs;
- auto: compress_auto(channel_pruning) at a target of the 36 MatMul layers' MACs, one
  dictionary over the 12 head and FFN units, scored by mean cosine on calibration sentences.

    python tools/bench_minilm_pruning.py                 # writes its section of docs/benchmarks.md
    python tools/bench_minilm_pruning.py --no-write --ratios 0.5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import onnx_compress as oc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_minilm as bm  # noqa: E402
import export_minilm  # noqa: E402
from _docs import write_section  # noqa: E402

BEGIN, END = "<!-- bench_minilm_pruning:begin -->", "<!-- bench_minilm_pruning:end -->"


def run(args) -> tuple[list[dict], dict]:
    path = export_minilm.export(args.model_dir)
    tokenizer = export_minilm.load_tokenizer()
    ev, cal = bm.split_sets(args.eval, args.calib, args.seed)
    ev_batches = bm.length_batches(tokenizer, ev)
    cal_feeds = [feed for _, feed in bm.length_batches(tokenizer, cal)]
    shape = {k: (1, bm.COST_SEQ) for k in export_minilm.INPUTS}
    original = onnx.load(str(path))
    e0 = bm.embed(original, ev_batches, len(ev))
    macs0 = bm.matmul_macs(original)
    names = [layer.name for layer in oc.inspect(original, shape).layers]
    heads = [n for n in names if n.endswith("attention/output/dense/MatMul")]
    ffn = [n for n in names if n.endswith("/output/dense/MatMul") and "attention" not in n]
    info = dict(n_eval=len(ev), n_calib=len(cal), samples=args.samples, heads=len(heads), ffn=len(ffn))
    rows, models = [], {}

    def record(mode, target, what, model, st, seconds):
        models[(mode, target, what)] = model
        row = dict(mode=mode, target=target, what=what, layer_ratio=st.mac_ratio,
                   model_ratio=bm.matmul_macs(model) / macs0, seconds=seconds,
                   **bm.compare(e0, bm.embed(model, ev_batches, len(ev))))
        rows.append(row)
        print(f"{mode:6} {target:4} {what:28} MAC layers {row['layer_ratio']:.3f}  model {row['model_ratio']:.3f}  "
              f"cos {row['cos']:.4f} (min {row['cos_min']:.4f})  spearman {row['spearman']:.4f}  {seconds:.1f}s",
              flush=True)

    plans = [("heads", heads), ("FFN dims", ffn), ("heads + FFN dims", heads + ffn)]
    for ratio in args.ratios:
        for what, layers in plans:
            for selection in (("greedy", "magnitude") if what == "heads" and ratio == args.ratios[-1]
                              else ("greedy",)):
                t0 = time.perf_counter()
                model, st = oc.compress(original, "channel_pruning", {n: ratio for n in layers}, data=cal_feeds,
                                        input_shape=shape, num_reconstruction_samples=args.samples,
                                        selection=selection)
                record("manual", ratio, f"{what}, {selection}", model, st, time.perf_counter() - t0)
    if args.auto:
        sel = cal_feeds[::max(1, len(cal_feeds) // args.auto_batches)][:args.auto_batches]
        info["auto_sentences"] = sum(len(f["input_ids"]) for f in sel)
        scores = Path(tempfile.mkdtemp()) / "scores.json"
        for target in args.targets:
            reuse = scores.exists()
            t0 = time.perf_counter()
            model, st = oc.compress_auto(
                original, "channel_pruning", target, bm.cosine_evaluator(sel, original), data=cal_feeds,
                input_shape=shape, num_reconstruction_samples=args.samples, candidates=args.candidates,
                selection="greedy", scores_out=None if reuse else scores,
                saved_eval_scores_dict=scores if reuse else None)
            record("auto", target, "heads + FFN dims" + (" (reused scores)" if reuse else ""), model, st,
                   time.perf_counter() - t0)
        if args.mix:
            _mix_rows(args, original, sel, cal_feeds, shape, record, info)
    if args.latency:
        info["latency"] = latency_rows(original, rows, models, args.latency_rounds)
    return rows, info


def _mix_rows(args, original, sel, cal_feeds, shape, record, info) -> None:
    """Auto mode over channel pruning and data-aware weight SVD under one target (schemes.Mix):
    heads, FFN dims and every projection's split in one dictionary and one knapsack."""
    scores = Path(tempfile.mkdtemp()) / "mix_scores.json"
    for target in args.targets:
        reuse = scores.exists()
        t0 = time.perf_counter()
        model, st = oc.compress_auto(
            original, ["channel_pruning", "weight_svd"], target, bm.cosine_evaluator(sel, original), data=cal_feeds,
            input_shape=shape, num_reconstruction_samples=args.samples, candidates=args.candidates,
            selection="greedy", scores_out=None if reuse else scores, saved_eval_scores_dict=scores if reuse else None)
        chosen = [u for u, r in st.selection["chosen"].items() if r != 1.0]
        kinds = "+".join(sorted({u.split(":")[0].replace("channel_pruning", "pruning").replace("weight_svd", "SVD")
                                 for u in chosen})) or "none"
        record("auto", target, f"mix: pruning + SVD, chose {kinds}" + (" (reused scores)" if reuse else ""), model,
               st, time.perf_counter() - t0)
        info.setdefault("mix", []).append(dict(target=target, chosen=len(chosen), units=len(st.selection["scores"])))


def _feed(batch: int, seq: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1000, 20000, size=(batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}


def paired_latency(original, pruned, batch: int, rounds: int) -> tuple[float, float, float]:
    """(original ms, pruned ms, ratio): medians of `rounds` interleaved runs, sequence 128."""
    feed = _feed(batch, bm.COST_SEQ)
    sessions = [bm._session(original), bm._session(pruned)]
    for s in sessions:
        s.run(None, feed)  # warm up
    times = ([], [])
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    a, b = (statistics.median(t) * 1e3 for t in times)
    return a, b, b / a


def latency_rows(original, rows: list[dict], models: dict, rounds: int) -> list[dict]:
    """Paired latency at batch 1 and 16 of the auto rows and the manual heads + FFN rows."""
    out = []
    for r in rows:
        if not (r["mode"] == "auto" or r["what"].startswith("heads + FFN")):
            continue
        model = models[(r["mode"], r["target"], r["what"])]
        for batch in (1, 16):
            a, b, ratio = paired_latency(original, model, batch, rounds)
            out.append(dict(row=f"{r['mode']} {r['target']} {r['what']}", batch=batch, mac=r["model_ratio"],
                            original_ms=a, pruned_ms=b, ratio=ratio))
            print(f"latency {out[-1]['row']:40} batch {batch:2}: {a:.1f} -> {b:.1f} ms (x{ratio:.3f}; "
                  f"MAC x{r['model_ratio']:.3f})", flush=True)
    return out


def section(rows: list[dict], info: dict, command: str) -> str:
    lines = [
        BEGIN,
        "## Transformer: all-MiniLM-L6-v2, attention heads and FFN dims pruned",
        "",
        f"`{command}`: the model, sentences ({info['n_eval']} for evaluation, {info['n_calib']} other ones for "
        "calibration) and metrics of the weight-SVD section above. Channel pruning takes each attention block's "
        f"heads ({info['heads']} blocks of 12 heads of 32 channels: Q, K and V lose the head's columns, the output "
        "projection its rows, the head-split Reshapes their head count) and each feed-forward block's "
        f"intermediate dims ({info['ffn']} blocks of 1536); the 384-wide hidden stream stays. Every pruned "
        f"layer is refit by least squares toward the original layer's outputs ({info['samples']} sampled token "
        "rows). *MAC layers*: over the model's 36 projection/FFN MatMuls; *MAC model*: over all MatMul MACs, "
        f"attention products included, at sequence {bm.COST_SEQ}.",
        "",
        "| mode | ratio / target | pruned | MAC layers | MAC model | mean cosine | worst cosine | Spearman | seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['target']} | {r['what']} | {r['layer_ratio']:.3f} | {r['model_ratio']:.3f} | "
                     f"{r['cos']:.4f} | {r['cos_min']:.4f} | {r['spearman']:.4f} | {r['seconds']:.1f} |")
    if info.get("mix"):
        lines += ["", "Mix: `compress_auto(model, [\"channel_pruning\", \"weight_svd\"], target, ...)`: the 12 head "
                  "and FFN groups and the 36 projections' data-aware SVD splits in one dictionary ("
                  f"{info['mix'][0]['units']} units) and one knapsack; a layer may be pruned and split. Each "
                  "scheme's own selection is a finalist beside the mixed ones, scored on the combined model; "
                  "\"chose\" says which kinds of unit the kept selection compresses."]
    if "auto_sentences" in info:
        lines += ["", "Auto mode: one knapsack over the 12 head and FFN units, each alone at {0.1 .. 0.9} of its "
                  f"channels, scored by mean cosine to the original on {info['auto_sentences']} calibration "
                  "sentences (not the evaluation set); the dictionary is built once and reused for the other "
                  "target."]
    if info.get("latency"):
        lines += ["", f"Latency (ONNX Runtime CPU, sequence {bm.COST_SEQ}, medians of paired interleaved runs on this "
                  "2-core machine; goal: latency ratio <= MAC ratio + 0.10):", "",
                  "| model | batch | original ms | pruned ms | latency ratio | MAC ratio (model) | goal met |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for t in info["latency"]:
            lines.append(f"| {t['row']} | {t['batch']} | {t['original_ms']:.1f} | {t['pruned_ms']:.1f} | "
                         f"{t['ratio']:.3f} | {t['mac']:.3f} | {'yes' if t['ratio'] <= t['mac'] + 0.10 else 'no'} |")
    at = [r for r in rows if r["layer_ratio"] <= 0.7]
    best = max(at, key=lambda r: r["cos"]) if at else None
    if best is not None:
        met = "met" if best["cos"] >= 0.98 and best["spearman"] >= 0.98 else "**not met**"
        lines += ["", f"Goal of issue 16 (mean cosine and Spearman >= 0.98 at 0.7 of the MatMul MACs): {met} by "
                  f"pruning alone; the best row at or below 0.7 is {best['mode']} {best['what']} at "
                  f"{best['layer_ratio']:.3f}: mean cosine {best['cos']:.4f}, Spearman {best['spearman']:.4f}."]
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", default="0.75,0.5", help="manual ratios of each pruned layer's channels")
    p.add_argument("--targets", default="0.8,0.7,0.5", help="auto-mode targets (MAC ratio of the 36 MatMul layers)")
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--calib", type=int, default=512)
    p.add_argument("--samples", type=int, default=4000, help="token rows sampled per layer for selection and refit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-auto", dest="auto", action="store_false")
    p.add_argument("--auto-batches", type=int, default=8)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--no-mix", dest="mix", action="store_false", help="skip the pruning + SVD mix rows")
    p.add_argument("--model-dir", type=Path, default=export_minilm.DEFAULT_DIR)
    p.add_argument("--no-latency", dest="latency", action="store_false")
    p.add_argument("--latency-rounds", type=int, default=30)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.targets = [float(t) for t in args.targets.split(",")]
    rows, info = run(args)
    if not args.no_write:
        write_section(section(rows, info, "python tools/bench_minilm_pruning.py"), BEGIN, END)


if __name__ == "__main__":
    main()
