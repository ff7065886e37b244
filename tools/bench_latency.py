"""Latency-aware auto mode: which splits are really faster, and what the latency metric buys.

1. Per layer, on models/resnet_small.onnx and AIMET's anchor (../shared/anchors), at
   batch 1 and 64: every weight/spatial SVD candidate (MAC ratio i/10) timed against its
   original layer with onnx_compress.search.latency (each layer alone, ORT CPU, interleaved
   rounds, median): how many splits are slower, and the latency ratio at MAC ratio 0.8
   and 0.5.
2. Auto mode on the anchor, weight SVD, target 0.8: cost metric mac (AIMET's setting),
   mac with the slower-split check, and latency, at batch 1 and 64 (one eval-score
   dictionary, reused), with the end-to-end latency ratio of each result.

    python tools/bench_latency.py            # writes its section of docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx_compress as oc
from onnx_compress import ir, layers
from onnx_compress.search import latency
from onnx_compress.evaluators import accuracy
from onnx_compress.search import dictionary as greedy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT.parent / "shared" / "anchors"
MODELS = {"resnet_small": (ROOT / "models" / "resnet_small.onnx", ROOT / "models" / "digits32_test.npz",
                           ROOT / "models" / "digits32_calib.npz"),
          "anchor": (ANCHOR / "resnet_small.onnx", ANCHOR / "digits32_test.npz", ANCHOR / "digits32_calib.npz")}
BEGIN, END = "<!-- bench_latency:begin -->", "<!-- bench_latency:end -->"


def layer_rows(model: str, scheme: str, batch: int) -> tuple[dict, list[dict]]:
    path = MODELS[model][0]
    proto = ir.load(path)
    analysis = layers.analyze(proto)
    names = [l.name for l in analysis.compressible if oc.schemes.SCHEMES[scheme].check(l) is None]
    keys = greedy.candidate_keys(10)
    units, _ = oc.schemes.SCHEMES[scheme].units(analysis.proto, analysis, names, keys, oc.schemes.Context("mac", 1, analysis.input_dims))
    timer = latency.Timer(batch_size=batch)
    lat = latency.unit_latencies(proto, analysis.input_dims, units, oc.schemes.SCHEMES[scheme], timer)
    detail, slower, n = [], 0, 0
    at = {0.8: [], 0.5: []}
    for u in units:
        lu = lat[u.name]
        ratios = {c.key: lu.candidates[c.key] / lu.original for c in u.candidates}
        slower += sum(r > 1 for r in ratios.values())
        n += len(ratios)
        row = {"layer": u.name, "original_us": lu.original / 1e3}
        for q in at:
            c = next((c for c in u.candidates if c.key == q), None)
            row[q] = ratios[c.key] if c else None
            if c:
                at[q].append(ratios[c.key])
        detail.append(row)
    summary = {"model": model, "scheme": scheme, "batch": batch, "layers": len(units), "slower": slower,
               "candidates": n, "at": at, "seconds": timer.seconds}
    return summary, detail


def auto_rows(batches: list[int]) -> list[dict]:
    path, test, calib = MODELS["anchor"]
    ev = accuracy(test)
    first = oc.inspect(path).compressible[0].name
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scores = Path(tmp) / "scores.json"
        for batch in batches:
            for label, kw in (("mac", {}), ("mac + slower-split check", {"allow_slower_splits": False}),
                              ("latency", {"cost_metric": "latency"})):
                extra = dict(data=calib, modules_to_ignore=[first], latency_batch_size=batch, **kw)
                if scores.exists():
                    extra["saved_eval_scores_dict"] = str(scores)
                else:
                    extra["scores_out"] = str(scores)
                if not kw:
                    extra.pop("latency_batch_size")
                t0 = time.perf_counter()
                try:
                    out, st = oc.compress_auto(path, "weight_svd", 0.8, ev, **extra)
                except oc.ParameterError as exc:
                    rows.append({"batch": batch, "metric": label, "error": str(exc)})
                    continue
                seconds = time.perf_counter() - t0
                timer = latency.Timer(batch_size=batch)
                e2e = latency.end_to_end([ir.load(path), out], layers.analyze(ir.load(path)).input_dims, timer)
                lat = st.latency or {}
                rows.append({"batch": batch, "metric": label, "mac": st.mac_ratio, "acc": st.final_score,
                             "layers": lat.get("layers_ratio"), "e2e": e2e[1] / e2e[0] if e2e else None,
                             "dropped": sum(len(v) for v in lat.get("dropped", {}).values()),
                             "seconds": seconds})
    return rows


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,64")
    p.add_argument("--no-auto", action="store_true", help="skip the auto-mode rows")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    summaries, anchor_detail = [], {}
    for model in MODELS:
        for scheme in ("weight_svd", "spatial_svd"):
            for batch in batches:
                s, detail = layer_rows(model, scheme, batch)
                summaries.append(s)
                if model == "anchor" and scheme == "weight_svd":
                    anchor_detail[batch] = detail
                print(s["model"], scheme, batch, f"{s['slower']}/{s['candidates']} slower", flush=True)
    autos = [] if args.no_auto else auto_rows(batches)
    lines = [BEGIN, "## Latency: are the splits faster?", "",
             f"`python tools/bench_latency.py --batches {args.batches}`: every candidate of every eligible layer "
             "(MAC ratio i/10) timed against its original layer with `onnx_compress.search.latency` (each layer alone "
             "as a one-node model, ORT CPUExecutionProvider, default threads, up to 21 interleaved rounds, "
             "20th percentile of each). The machine is a shared 2-core VM with other jobs running, so single "
             "figures are noisy; counts and medians are what to read.", "",
             "| model | scheme | batch | layers | candidates slower than the original | latency ratio at MAC 0.8: "
             "median (min-max) | at MAC 0.5 | timing s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s['model']} | {s['scheme']} | {s['batch']} | {s['layers']} | {s['slower']} of "
                     f"{s['candidates']} | {spread(s['at'][0.8])} | {spread(s['at'][0.5])} | {s['seconds']:.1f} |")
    if anchor_detail:
        lines += ["", "Anchor, weight SVD, per layer (latency ratio split / original):", "",
                  "| layer | " + " | ".join(f"batch {b}: original us | MAC 0.8 | MAC 0.5" for b in anchor_detail)
                  + " |", "|---|" + "---:|---:|---:|" * len(anchor_detail)]
        names = [r["layer"] for r in next(iter(anchor_detail.values()))]
        for i, name in enumerate(names):
            cells = []
            for detail in anchor_detail.values():
                r = detail[i]
                cells += [f"{r['original_us']:.1f}", fmt(r[0.8]), fmt(r[0.5])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if autos:
        lines += ["", "Auto mode on the anchor, weight SVD, target 0.8 (first conv ignored, data-aware, one "
                  "dictionary reused by every row, so seconds after the first row exclude it; layer timings are "
                  "cached from the table above). *layers*: the latency metric's ratio (summed per-layer "
                  "latency); *end to end*: whole models timed interleaved after the run.", "",
                  "| batch | cost metric | MAC ratio | layers latency ratio | end-to-end latency ratio | "
                  "accuracy | candidates dropped | seconds |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in autos:
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['metric']} | {r['error']} | | | | | |")
                continue
            lines.append(f"| {r['batch']} | {r['metric']} | {r['mac']:.3f} | {fmt(r['layers'], '.3f')} | "
                         f"{fmt(r['e2e'], '.3f')} | {r['acc']:.3f} | {r['dropped']} | "
                         f"{r['seconds']:.1f} |")
    lines.append(END)
    write_section("\n".join(lines), BEGIN, END)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
