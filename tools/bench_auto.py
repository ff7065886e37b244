"""Auto mode on the reference models: target vs achieved, accuracy, evaluations, speed.

For each model in models/ and each scheme, the eval-score dictionary is built once (test
accuracy evaluator, 10 candidates) and saved; every target then reuses it. Per target:
knapsack selection (default), AIMET's threshold bisection, and knapsack asked for the
threshold's achieved ratio (the comparison at an equal ratio). Speed: the dictionary's
wall time against the pure inference time of the same number of evaluations, measured
in the same run as full evaluations on a ready session (median of 3).

    python tools/bench_auto.py [--targets 0.7,0.5,0.3] [--no-write]
"""
from __future__ import annotations

import argparse
from fractions import Fraction
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx_compress as oc
from onnx_compress import runtime
from onnx_compress.evaluators import accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["vgg_small", "resnet_small", "mobilenet_small"]
SCHEMES = ["weight_svd", "spatial_svd", "channel_pruning"]
BEGIN, END = "<!-- bench_auto:begin -->", "<!-- bench_auto:end -->"


def pure_eval_seconds(path: Path, evaluate) -> float:
    sess = runtime.session(oc.ir.load(path))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        evaluate(sess, None, False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(targets: list[float]) -> tuple[list[dict], list[dict]]:
    calib, test = ROOT / "models/digits32_calib.npz", ROOT / "models/digits32_test.npz"
    evaluate = accuracy(test)
    rows, speed = [], []
    tmp = Path(tempfile.mkdtemp())
    for model in MODELS:
        path = ROOT / "models" / f"{model}.onnx"
        one_eval = pure_eval_seconds(path, evaluate)
        for scheme in SCHEMES:
            extra = dict(data=calib, num_reconstruction_samples=500) if scheme == "channel_pruning" else {}
            scores = tmp / f"{model}_{scheme}.json"
            first = True
            for target in targets:
                results = {}
                for method in ("knapsack", "threshold"):
                    t0 = time.perf_counter()
                    try:
                        _, st = oc.compress_auto(path, scheme, target, evaluate, method=method,
                                                 scores_out=None if scores.exists() else scores,
                                                 saved_eval_scores_dict=scores if scores.exists() else None, **extra)
                    except oc.CompressionError as exc:
                        results[method] = {"error": str(exc).split(";")[0]}
                        continue
                    sel = st.selection
                    if first:
                        first = False
                        speed.append(dict(model=model, scheme=scheme, evaluations=sel["evaluations"],
                                          dictionary=sel["dictionary_seconds"], inside=sel["eval_seconds"],
                                          pure=one_eval * sel["evaluations"], total=time.perf_counter() - t0))
                    results[method] = dict(ratio=st.mac_ratio, acc=st.final_score, expected=sel["expected_score"],
                                           exact=Fraction(st.mac_after, st.mac_before))
                equal = None
                if "ratio" in results.get("threshold", {}):
                    try:
                        # the exact ratio: a rounded float can fall just below it and exclude
                        # the threshold's own selection
                        _, st = oc.compress_auto(path, scheme, results["threshold"].pop("exact"), evaluate,
                                                 saved_eval_scores_dict=scores, **extra)
                        equal = dict(ratio=st.mac_ratio, acc=st.final_score)
                    except oc.CompressionError:
                        equal = None
                for r in results.values():
                    r.pop("exact", None)
                rows.append(dict(model=model, scheme=scheme, target=target, **{
                    f"{m}_{k}": v for m, r in results.items() for k, v in r.items()}, equal=equal))
                print(model, scheme, target, results, equal, file=sys.stderr, flush=True)
    return rows, speed


def fmt(row: dict, method: str) -> str:
    if f"{method}_error" in row:
        return "unreachable"
    return f"{row[f'{method}_ratio']:.3f} / {row[f'{method}_acc']:.3f}"


def table(rows, speed, targets) -> str:
    lines = [
        BEGIN,
        "## Auto mode on the reference models",
        "",
        f"`python tools/bench_auto.py --targets {','.join(map(str, targets))}`: evaluator = top-1 accuracy on "
        "`models/digits32_test.npz` (500 images), 10 candidates, one dictionary per model and scheme "
        "(saved, reused by every target and method), channel pruning with 500 reconstruction samples. "
        "Cells: achieved MAC ratio / accuracy. *knapsack @ threshold's ratio*: knapsack asked for the "
        "ratio the threshold bisection achieved (accuracy at an equal ratio).",
        "",
        "| model | scheme | target | knapsack | threshold (AIMET) | knapsack @ threshold's ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        eq = f"{r['equal']['ratio']:.3f} / {r['equal']['acc']:.3f}" if r.get("equal") else "-"
        lines.append(f"| {r['model']} | {r['scheme']} | {r['target']} | {fmt(r, 'knapsack')} | "
                     f"{fmt(r, 'threshold')} | {eq} |")
    lines += [
        "",
        "Dictionary speed (same run): *pure inference* = evaluations x one full evaluation on a ready "
        "session; *overhead* = dictionary wall time / pure inference - 1 (negative: faster than pure "
        "inference, thanks to the prefix cache that runs only the layers after the changed one).",
        "",
        "| model | scheme | evaluations | dictionary s | inside evaluator s | pure inference s | overhead |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in speed:
        lines.append(f"| {s['model']} | {s['scheme']} | {s['evaluations']} | {s['dictionary']:.1f} | "
                     f"{s['inside']:.1f} | {s['pure']:.1f} | {100 * (s['dictionary'] / s['pure'] - 1):+.0f}% |")
    lines.append(END)
    return "\n".join(lines)


def write(section: str) -> None:
    write_section(section, BEGIN, END)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="0.7,0.5,0.3")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    section = table(*run(targets), targets)
    print(section)
    if not args.no_write:
        write(section)


if __name__ == "__main__":
    main()
