"""Compress, then quantize: accuracy and file size after each step on the reference models.

    python tools/bench_quantize.py [--target 0.5] [--samples 500]

For each model in models/: auto-mode channel pruning at the target (500 reconstruction
samples, test-accuracy evaluator), then ONNX Runtime static int8 QDQ quantization
calibrated on the same calibration data, and quantization of the uncompressed model for
comparison. Writes its section of docs/benchmarks.md. Not run by CI.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _docs import write_section  # noqa: E402

from onnx_compress import compress_auto, evaluators, ir, quantize, runtime  # noqa: E402
from onnx_compress.runtime.quantize import file_size  # noqa: E402

BEGIN, END = "<!-- bench_quantize:begin -->", "<!-- bench_quantize:end -->"
MODELS = ("vgg_small", "resnet_small", "mobilenet_small")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=500)
    args = p.parse_args()
    calib, test = str(ROOT / "models/digits32_calib.npz"), str(ROOT / "models/digits32_test.npz")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            src = ROOT / "models" / f"{name}.onnx"
            acc = evaluators.accuracy(test)
            t0 = time.perf_counter()
            model, stats = compress_auto(src, "channel_pruning", args.target, acc, data=calib,
                                         num_reconstruction_samples=args.samples)
            t1 = time.perf_counter()
            cpath = Path(tmp) / f"{name}_c.onnx"
            ir.save(model, cpath)
            q = quantize(model, calib, reduce_range=False)
            t2 = time.perf_counter()
            qpath = Path(tmp) / f"{name}_cq.onnx"
            ir.save(q, qpath)
            q7 = quantize(model, calib, reduce_range=True)
            q_only = quantize(src, calib, reduce_range=False)
            opath = Path(tmp) / f"{name}_q.onnx"
            ir.save(q_only, opath)
            row = {
                "model": name,
                "orig": (stats.baseline_score, file_size(src)),
                "comp": (stats.final_score, file_size(cpath), stats.mac_ratio),
                "cq": (runtime.evaluate(q, acc, None, False), file_size(qpath)),
                "cq7": runtime.evaluate(q7, acc, None, False),
                "q": (runtime.evaluate(q_only, acc, None, False), file_size(opath)),
                "seconds": (t1 - t0, t2 - t1),
            }
            rows.append(row)
            print(f"{name}: original {row['orig'][0]:.4f} {row['orig'][1]:,} B | compressed {row['comp'][0]:.4f} "
                  f"{row['comp'][1]:,} B (MAC {row['comp'][2]:.3f}) | + int8 {row['cq'][0]:.4f} {row['cq'][1]:,} B "
                  f"(reduce-range {row['cq7']:.4f}) | "
                  f"int8 only {row['q'][0]:.4f} {row['q'][1]:,} B | {row['seconds'][0]:.1f}s + {row['seconds'][1]:.1f}s",
                  flush=True)
    lines = [BEGIN, "## Compress, then quantize (int8 QDQ)", "",
             f"`python tools/bench_quantize.py --target {args.target} --samples {args.samples}`: auto-mode channel "
             f"pruning at target {args.target} ({args.samples} reconstruction samples, test-accuracy evaluator), then "
             "ONNX Runtime static QDQ quantization (int8 weights per channel, int8 activations, MinMax "
             "calibration on `digits32_calib.npz`; BatchNormalization folded by ORT's pre-processing). "
             "The CLI does both in one command: `onnx-compress compress ... --quantize int8`. "
             "Accuracy on the 500-image test split; sizes are the .onnx files on disk.", "",
             "| model | original | compressed | compressed + int8 | + int8, --reduce-range | int8 only | MAC ratio | compress s | quantize s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cell = lambda acc_size: f"{acc_size[0]:.3f} / {acc_size[1] / 1000:.1f} kB"  # noqa: E731
        lines.append(f"| {r['model']} | {cell(r['orig'])} | {cell(r['comp'])} | {cell(r['cq'])} | {r['cq7']:.3f} | {cell(r['q'])} | "
                     f"{r['comp'][2]:.3f} | {r['seconds'][0]:.1f} | {r['seconds'][1]:.1f} |")
    lines += ["", "`--reduce-range` (7-bit weights) avoids the 16-bit saturation of ORT's int8 kernels on "
              "x86 CPUs without VNNI, such as this benchmark machine; 8-bit weights (`--reduce-range off`) suit "
              "targets with real int8 arithmetic; the default `auto` picks 7-bit where the machine's kernel saturates. Cells: accuracy / file size. On these tiny models (20-30k weights) the QDQ nodes' "
              "scales and zero points are a visible share of the file, so int8 saves less than the 4x "
              "it approaches on real-sized layers.", END]
    write_section("\n".join(lines), BEGIN, END)
    print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
