"""Beat the reference: auto mode on AIMET's anchor model (and the reference models).

For each model, scheme (weight SVD, spatial SVD, channel pruning, and the pipeline
spatial SVD then channel pruning) and target, runs auto mode with the test-accuracy
evaluator and 10 candidates (first conv ignored, as in AIMET's anchor runs) and records:
achieved MAC ratio, test accuracy, evaluations, wall time (dictionary, whole run), the
pure inference time of the same evaluations, and the ORT latency ratio compressed /
original at batch 1 and 64 (paired, interleaved runs, 2 threads, median). Ablations
(`--ablations`): multiplicity "auto" (ranks and kept channels on ORT's conv channel block),
plain vs data-aware SVD, magnitude vs greedy channel selection, with vs without
reconstruction, knapsack vs threshold selection. Writes a section of
docs/benchmarks.md and docs/anchor_accuracy_vs_mac.png (AIMET's points beside ours).

    python tools/bench_anchor.py --rows goals            # the issue's goal rows (about 10 min)
    python tools/bench_anchor.py --rows full --ablations # every target (long)

Needs matplotlib (tools/requirements.txt) for the plot.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnx_compress as oc
from onnx_compress import runtime
from onnx_compress.evaluators import accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# ONNX_COMPRESS_ANCHORS: another copy of the anchor folder (tools/gpu_check.sh carries one to a GPU machine)
ANCHOR = Path(os.environ.get("ONNX_COMPRESS_ANCHORS", ROOT.parent / "shared" / "anchors"))
BEGIN, END = "<!-- bench_anchor:begin -->", "<!-- bench_anchor:end -->"
PLOT = "anchor_accuracy_vs_mac.png"
AIMET = {  # (achieved MAC ratio, accuracy, seconds or None): ../shared/anchors/README.md
    "weight_svd": [(0.381, 0.443, 48.8), (0.511, 0.704, None), (0.296, 0.163, None)],
    "spatial_svd": [(0.399, 0.704, 37.9), (0.296, 0.243, None)],
    "channel_pruning": [(0.262, 0.851, 64.2), (0.176, 0.954, 124.6)],
}
GOALS = [("weight_svd", 0.51), ("spatial_svd", 0.40), ("channel_pruning", 0.262), ("channel_pruning", 0.18),
         ("pipeline", 0.25)]
FULL_TARGETS = [0.8, 0.7, 0.5, 0.4, 0.3, 0.2]


def paths(model: str) -> tuple[Path, Path, Path]:
    if model == "anchor":
        return ANCHOR / "resnet_small.onnx", ANCHOR / "digits32_calib.npz", ANCHOR / "digits32_test.npz"
    return ROOT / "models" / f"{model}.onnx", ROOT / "models/digits32_calib.npz", ROOT / "models/digits32_test.npz"


USE_CUDA = False  # --cuda: every session (scoring, sampling, latency) on CUDAExecutionProvider


def latency_ratio(original, compressed, batch: int, rounds: int = 30) -> float:
    """Median of compressed/original run times, runs interleaved, 2 intra-op threads.

    Each model runs through `runtime.runner` (I/O bound once; the intra-op threads stop
    spinning when a run returns). With two plain sessions in turn on a 2-core machine, the
    one that just ran keeps both cores spinning into the other's run, which added about
    40 ms to each run of either model at batch 64 and pulled every ratio toward 1.
    """
    x = np.random.default_rng(0).normal(size=(batch, 1, 32, 32)).astype(np.float32)
    name = original.graph.input[0].name
    a, b = (runtime.runner(m, {name: x}, use_cuda=USE_CUDA, threads=2) for m in (original, compressed))
    for run in (a, b):
        run()
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def one_run(model: str, scheme: str, target: float, **options) -> dict:
    path, calib, test = paths(model)
    evaluate = accuracy(test)
    first = oc.inspect(path).compressible[0].name
    extra = dict(data=calib, num_reconstruction_samples=500, modules_to_ignore=[first], use_cuda=USE_CUDA)
    extra.update(options)
    t0 = time.perf_counter()
    if scheme == "pipeline":
        # spatial SVD to 0.7 first (or to sqrt(target) for targets above 0.49), then channel pruning
        m1, s1 = oc.compress_auto(path, "spatial_svd", max(0.7, target ** 0.5), evaluate, **extra)
        ratio, acc, model_out = s1.mac_ratio, s1.final_score, m1
        evals, dict_s = s1.selection["evaluations"], s1.selection["dictionary_seconds"]
        if s1.mac_ratio > target:  # the spatial step can land at or under the target: no pruning then
            ignore = [l.name for l in oc.inspect(m1).compressible if l.name.startswith(first)]
            model_out, s2 = oc.compress_auto(m1, "channel_pruning", target / s1.mac_ratio, evaluate,
                                             reference_model=path, **dict(extra, modules_to_ignore=ignore))
            ratio, acc = s1.mac_ratio * s2.mac_ratio, s2.final_score
            evals += s2.selection["evaluations"]
            dict_s += s2.selection["dictionary_seconds"]
    else:
        model_out, st = oc.compress_auto(path, scheme, target, evaluate, **extra)
        ratio, acc = st.mac_ratio, st.final_score
        evals, dict_s = st.selection["evaluations"], st.selection["dictionary_seconds"]
    seconds = time.perf_counter() - t0
    original = oc.ir.load(path)
    sess = runtime.session(original, use_cuda=USE_CUDA)
    t = time.perf_counter()
    evaluate(sess, None, USE_CUDA)
    one_eval = time.perf_counter() - t
    return dict(model=model, scheme=scheme, target=target, ratio=ratio, acc=acc, evals=evals, dict_s=dict_s,
                seconds=seconds, pure=one_eval * evals, lat1=latency_ratio(original, model_out, 1),
                lat64=latency_ratio(original, model_out, 64), options=options)


def rows_for(kind: str, models: list[str], ablations: bool, base: dict | None = None) -> list[tuple]:
    """(model, scheme, target, options) per row; `base` options go into every row."""
    base = base or {}
    plan = []
    for model in models:
        pairs = GOALS if kind == "goals" else [(s, t) for s in ("weight_svd", "spatial_svd", "channel_pruning",
                                                                "pipeline") for t in FULL_TARGETS]
        for scheme, target in pairs:
            plan.append((model, scheme, target, {}))
            if ablations and "multiplicity" not in base:  # ranks / kept channels on ORT's conv channel block
                plan.append((model, scheme, target, {"multiplicity": "auto"}))
            if ablations and scheme in ("weight_svd", "spatial_svd"):
                plan.append((model, scheme, target, {"data_aware": False}))
                plan.append((model, scheme, target, {"method": "threshold"}))
            if ablations and scheme == "channel_pruning":
                plan.append((model, scheme, target, {"selection": "greedy"}))
                plan.append((model, scheme, target, {"reconstruct": False}))
                plan.append((model, scheme, target, {"method": "threshold"}))
    return [(m, sc, t, {**base, **o}) for m, sc, t, o in plan]


def describe(options: dict) -> str:
    if not options:
        return "default"
    return ", ".join(f"{k}={v}" for k, v in options.items())


def table(results: list[dict], command: str) -> str:
    device = "GPU (CUDAExecutionProvider)" if USE_CUDA else "CPU"
    models = list(dict.fromkeys(r["model"] for r in results))
    title = "## Beat the reference: auto mode on AIMET's anchor model"
    if PLOT != "anchor_accuracy_vs_mac.png":
        title = "## Every target: auto mode at 0.8 ... 0.2" + ("" if models == ["anchor"] else
                                                            " on " + ", ".join(models))
    images = "497 images" if models == ["anchor"] else "497 images on the anchor, 500 on the reference models"
    lines = [BEGIN, title + (", GPU" if USE_CUDA else ""), "",
             f"`{command}`: test-accuracy evaluator ({images}), 10 candidates, first conv ignored, no "
             "fine-tuning, 500 reconstruction samples (channel pruning) and data-aware SVD from the 256 "
             f"calibration images. Latency ratio: compressed / original, ORT {device}, 2 threads, median of 30 "
             "interleaved pairs, each model run through `runtime.runner` (inputs and outputs bound once, intra-op "
             "threads stop spinning when a run returns); *b64 <= MAC + 0.10*: the issue's latency goal. Pipeline: "
             "spatial SVD at 0.7 (at sqrt(target) above 0.49), then channel pruning to the target. Targets a scheme cannot reach are left out.", "",
             "| model | scheme | options | target | achieved MAC | accuracy | evals | dictionary s | pure inference s "
             "| whole run s | latency b1 / b64 | b64 <= MAC + 0.10 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['scheme']} | {describe(r['options'])} | {r['target']} | {r['ratio']:.3f} | "
                     f"{r['acc']:.3f} | {r['evals']} | {r['dict_s']:.1f} | {r['pure']:.1f} | {r['seconds']:.1f} | "
                     f"{r['lat1']:.2f} / {r['lat64']:.2f} | {'yes' if r['lat64'] <= r['ratio'] + 0.10 else 'no'} |")
    if "anchor" in models:
        lines += ["", "AIMET on the same model (anchors README): weight SVD 0.443 at 0.381 (48.8 s), 0.704 at 0.511; "
                  "spatial SVD 0.704 at 0.399 (37.9 s); channel pruning 0.851 at 0.262 with 500 samples (64.2 s), "
                  "0.954 at 0.176 (124.6 s)."]
    lines += ["", f"![accuracy vs MAC ratio]({PLOT})", END]
    return "\n".join(lines)


def plot(results: list[dict], path: Path, base: dict | None = None) -> None:
    """Accuracy vs achieved MAC ratio, one panel per model; AIMET's points on the anchor's.
    Only rows run with the run's own options (`base`; not the ablations) are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results)) or ["anchor"]
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models) ** 0.5 + 1.5 * (len(models) - 1), 4.5),
                             squeeze=False)
    colors = {"weight_svd": "tab:blue", "spatial_svd": "tab:orange", "channel_pruning": "tab:green",
              "pipeline": "tab:purple"}
    for ax, model in zip(axes[0], models):
        for scheme, color in colors.items():
            pts = sorted((r["ratio"], r["acc"]) for r in results
                         if r["scheme"] == scheme and r["options"] == (base or {}) and r["model"] == model)
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=f"onnx_compress {scheme}")
            if scheme in AIMET and model == "anchor":
                ax.plot([p[0] for p in AIMET[scheme]], [p[1] for p in AIMET[scheme]], "x", color=color,
                        markersize=9, label=f"AIMET {scheme}")
        ax.set_xlabel("achieved MAC ratio (compressed / original)")
        ax.set_ylabel("test accuracy, no fine-tuning")
        ax.set_title("Anchor ResNet: onnx_compress (o) vs AIMET (x)" if model == "anchor" else model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(section: str) -> None:
    write_section(section, BEGIN, END)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", choices=("goals", "full"), default="goals")
    p.add_argument("--models", default="anchor")
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--multiplicity", default=None, metavar="M",
                   help="multiplicity for every row (an integer or 'auto'; default: the library's, 1)")
    p.add_argument("--cuda", action="store_true",
                   help="run on CUDAExecutionProvider (onnxruntime-gpu and a GPU); the figures then go to a "
                        "separate GPU section of docs/benchmarks.md")
    args = p.parse_args()
    global USE_CUDA, BEGIN, END, PLOT
    if args.rows == "full":  # its own section and plot, beside the goal rows
        tag = "" if args.models == "anchor" else ":" + args.models.replace(",", "+")  # one section per model set
        BEGIN, END = f"<!-- bench_anchor_full{tag}:begin -->", f"<!-- bench_anchor_full{tag}:end -->"
        PLOT = f"{'_'.join(args.models.split(','))}_full_accuracy_vs_mac.png"
    if args.cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            sys.exit("--cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        USE_CUDA = True
        BEGIN, END = "<!-- bench_anchor_gpu:begin -->", "<!-- bench_anchor_gpu:end -->"
    results = []
    base = {}
    if args.multiplicity is not None:
        base = {"multiplicity": args.multiplicity if args.multiplicity == "auto" else int(args.multiplicity)}
    for model, scheme, target, options in rows_for(args.rows, args.models.split(","), args.ablations, base):
        try:
            r = one_run(model, scheme, target, **options)
        except oc.CompressionError as exc:  # e.g. an unreachable target: say so in the table
            print(f"{model} {scheme} {describe(options)} target {target}: {exc}", file=sys.stderr, flush=True)
            continue
        results.append(r)
        print(f"{model} {scheme} {describe(options)} target {target}: {r['ratio']:.3f} acc {r['acc']:.3f} "
              f"{r['seconds']:.1f}s lat {r['lat1']:.2f}/{r['lat64']:.2f}", file=sys.stderr, flush=True)
    command = "python tools/bench_anchor.py " + " ".join(sys.argv[1:])
    section = table(results, command.strip())
    print(section)
    if not args.no_write:
        write(section)
        if not args.cuda:
            plot(results, ROOT / "docs" / PLOT, base)


if __name__ == "__main__":
    main()
