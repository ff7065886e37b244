"""Channel pruning on the reference models: accuracy by selection method and reconstruction.

Every eligible layer of each model in models/ is pruned at one ratio (default 0.5); for
each channel-selection method, with and without the least-squares reconstruction, the
script measures test accuracy, the achieved MAC ratio (measured on the pruned model) and
wall time, then writes the table into docs/benchmarks.md (between markers, so other
benchmarks' sections stay) and prints it.

    python tools/bench_pruning.py [--ratio 0.5] [--samples 2000] [--no-write]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx_compress as oc
from onnx_compress.evaluators import accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["vgg_small", "resnet_small", "mobilenet_small"]
BEGIN, END = "<!-- bench_pruning:begin -->", "<!-- bench_pruning:end -->"


def run(ratio: float, samples: int) -> list[dict]:
    calib, test = ROOT / "models/digits32_calib.npz", ROOT / "models/digits32_test.npz"
    evaluate = accuracy(test)
    rows = []
    for name in MODELS:
        path = ROOT / "models" / f"{name}.onnx"
        base = oc.runtime.evaluate(oc.ir.load(path), evaluate, None, False)
        for selection in ("greedy", "magnitude"):
            for rec in (True, False):
                t0 = time.perf_counter()
                model, stats = oc.compress(path, "channel_pruning", ratio, data=calib, selection=selection,
                                           reconstruct=rec, num_reconstruction_samples=samples)
                seconds = time.perf_counter() - t0
                acc = oc.runtime.evaluate(model, evaluate, None, False)
                rows.append(dict(model=name, selection=selection, reconstruction=rec, baseline=base,
                                 accuracy=acc, mac_ratio=stats.mac_ratio, seconds=seconds,
                                 layers=len(stats.layers)))
                print(f"{name:16s} {selection:9s} rec={rec!s:5s} acc {base:.4f} -> {acc:.4f} "
                      f"MAC ratio {stats.mac_ratio:.3f} {seconds:.1f}s", file=sys.stderr)
    return rows


def table(rows: list[dict], ratio: float, samples: int) -> str:
    lines = [
        BEGIN,
        f"## Channel pruning, every eligible layer at ratio {ratio}",
        "",
        f"`python tools/bench_pruning.py --ratio {ratio} --samples {samples}`: calibration "
        "`models/digits32_calib.npz` (256 images), accuracy on `models/digits32_test.npz`, "
        f"{samples} reconstruction samples per layer, seed 0, CPU. MAC ratio is measured on the "
        "pruned model (upstream savings included).",
        "",
        "| model | selection | reconstruction | accuracy before | accuracy after | MAC ratio | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['selection']} | {'yes' if r['reconstruction'] else 'no'} | "
                     f"{r['baseline']:.4f} | {r['accuracy']:.4f} | {r['mac_ratio']:.3f} | {r['seconds']:.1f} |")
    lines.append(END)
    return "\n".join(lines)


def write(section: str) -> None:
    write_section(section, BEGIN, END)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    section = table(run(args.ratio, args.samples), args.ratio, args.samples)
    print(section)
    if not args.no_write:
        write(section)


if __name__ == "__main__":
    main()
