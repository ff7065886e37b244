"""Weight-only quantization of a transformer: size, ORT CPU latency and fidelity (issue 16 item 6).

    python tools/bench_quantize_weights.py --runs 40 --threads 1   # writes its section of docs/benchmarks.md
    python tools/bench_quantize_weights.py --model tests/corpus/bert_ts_op14_dyn.onnx --no-write

Variants: float, int8-weight (dynamic MatMulInteger, the default), int8-weight nbits (8-bit
MatMulNBits, accuracy_level 4 = the default, and 0: "l0"), int4 (MatMulNBits, block 32, symmetric; accuracy_level 4 = the default, and 0).
- size: the saved file's bytes;
- latency: batch 1, sequence 128 (the corpus BERT: 32, its position table), ONNX Runtime CPU,
  median of --runs runs, paired: every round runs each variant once, in turn;
- fidelity: mean (and worst) cosine of the first output to the float model's on 64 random
  token sequences (MiniLM: ids 1000..29999 between [CLS] and [SEP]); for MiniLM also on 256
  real sentences (tools/bench_minilm.py's, needs transformers) with the Spearman correlation of
  the pairwise similarities.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnx_compress as oc
from onnx_compress import ir
from onnx_compress.runtime.quantize import file_size

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _docs import write_section  # noqa: E402

BEGIN, END = "<!-- bench_quantize_weights:begin -->", "<!-- bench_quantize_weights:end -->"

VARIANTS = {"float": None, "int8-weight (dynamic)": dict(precision="int8-weight"),
            "int8-weight (nbits)": dict(precision="int8-weight", int8_weight_format="nbits"),
            "int8-weight (nbits, l0)": dict(precision="int8-weight", int8_weight_format="nbits", accuracy_level=0),
            "int4": dict(precision="int4"), "int4 (accuracy_level 0)": dict(precision="int4", accuracy_level=0)}


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(names, n: int, seq: int, minilm: bool, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1000, 30000, (1, seq)) if minilm else rng.integers(0, 50, (1, seq))
        if minilm:
            ids[0, 0], ids[0, -1] = 101, 102
        f = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, seq), np.int64)}
        if "token_type_ids" in names:
            f["token_type_ids"] = np.zeros((1, seq), np.int64)
        out.append(f)
    return out


def cosines(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    return np.array([float(np.dot(x.ravel(), y.ravel()) / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b)])


def sentences_fidelity(paths: dict[str, Path]) -> dict[str, dict] | None:
    try:
        import bench_minilm as bm
        import export_minilm
        tok = export_minilm.load_tokenizer()
    except Exception as exc:  # transformers missing: random tokens only
        print(f"(no real sentences: {type(exc).__name__}: {exc})")
        return None
    ev, _ = bm.split_sets(256, 0)
    batches = bm.length_batches(tok, ev)
    e0 = bm.embed(paths["float"], batches, len(ev))
    return {k: bm.compare(e0, bm.embed(p, batches, len(ev))) for k, p in paths.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    default = ROOT / "build" / "minilm" / "minilm.onnx"
    ap.add_argument("--model", default=str(default if default.is_file() else ROOT / "tests/corpus/bert_ts_op14_dyn.onnx"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    minilm = "minilm" in Path(args.model).name
    seq = 128 if minilm else 32
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, kw in VARIANTS.items():
            if kw is None:
                paths[name] = Path(args.model)
                continue
            t = time.perf_counter()
            q = oc.quantize(args.model, **kw)
            paths[name] = Path(tmp) / f"{len(paths)}.onnx"
            ir.save(q, paths[name])
            print(f"{name}: quantized in {time.perf_counter() - t:.1f} s")
        sess = {k: session(p, args.threads) for k, p in paths.items()}
        names = [i.name for i in sess["float"].get_inputs()]
        timing = feeds(names, 1, seq, minilm, seed=99)[0]
        for s in sess.values():
            s.run(None, timing)  # warm-up
        times = {k: [] for k in sess}
        for _ in range(args.runs):
            for k, s in sess.items():
                t = time.perf_counter()
                s.run(None, timing)
                times[k].append(time.perf_counter() - t)
        fs = feeds(names, 64, seq, minilm)
        outs = {k: [s.run(None, f)[0] for f in fs] for k, s in sess.items()}
        real = sentences_fidelity(paths) if minilm else None
        print(f"\nmodel {args.model}, batch 1 x sequence {seq}, median of {args.runs} paired runs, "
              f"threads {args.threads or 'default'}, onnxruntime {ort.__version__}")
        print(f"{'variant':<24} {'size':>12} {'x smaller':>9} {'latency ms':>10} {'speed-up':>8} "
              f"{'cos random':>10} {'min':>6}" + ("  cos sentences   min  spearman" if real else ""))
        base_t, base_s = np.median(times["float"]), file_size(paths["float"])
        table = ["| variant | bytes | x smaller | latency ms | speed-up | mean cosine (random) |"
                 + (" mean cosine (sentences) | worst | Spearman |" if real else ""),
                 "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if real else "")]
        for k in sess:
            c = cosines(outs["float"], outs[k])
            row = (f"| {k} | {file_size(paths[k]):,} | {base_s / file_size(paths[k]):.2f} | "
                   f"{1000 * np.median(times[k]):.2f} | {base_t / np.median(times[k]):.2f} | {c.mean():.4f} |")
            if real:
                row += f" {real[k]['cos']:.4f} | {real[k]['cos_min']:.4f} | {real[k]['spearman']:.4f} |"
            table.append(row)
        if not args.no_write:
            head = [BEGIN, "## Weight-only quantization of a transformer (int8-weight, int4)", "",
                    f"`python tools/bench_quantize_weights.py --runs {args.runs} --threads {args.threads}`: "
                    f"{Path(args.model).name}, batch 1 x sequence {seq}, ONNX Runtime {ort.__version__} CPU, "
                    f"{args.threads or 'default'} thread(s), median of {args.runs} paired interleaved runs. "
                    "Cosine: the first output against the float model's, on 64 random token sequences"
                    + (" and on the 256 evaluation sentences of the MiniLM sections" if real else "") + ".", ""]
            write_section("\n".join(head + table + [END]), BEGIN, END)
        for k in sess:
            c = cosines(outs["float"], outs[k])
            line = (f"{k:<24} {file_size(paths[k]):>12,} {base_s / file_size(paths[k]):>9.2f} "
                    f"{1000 * np.median(times[k]):>10.2f} {base_t / np.median(times[k]):>8.2f} "
                    f"{c.mean():>10.4f} {c.min():>6.4f}")
            if real:
                line += f"  {real[k]['cos']:>13.4f} {real[k]['cos_min']:>6.4f} {real[k]['spearman']:>9.4f}"
            print(line)


if __name__ == "__main__":
    main()
