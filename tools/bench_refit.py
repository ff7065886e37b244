"""SVD refit on the bundled CNNs: accuracy of weight and spatial SVD at one ratio, data-aware,
without and with `svd_refit` (each split's second conv and bias refit toward the original
layer's outputs, in graph order; issue 16).

    python tools/bench_refit.py               # writes its section of docs/benchmarks.md
    python tools/bench_refit.py --no-write --ratio 0.5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx_compress as oc
from onnx_compress import evaluators

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _docs import write_section  # noqa: E402

BEGIN, END = "<!-- bench_refit:begin -->", "<!-- bench_refit:end -->"
MODELS = ("vgg_small", "resnet_small", "mobilenet_small")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    models, calib = ROOT / "models", str(ROOT / "models" / "digits32_calib.npz")
    evaluate = evaluators.accuracy(models / "digits32_test.npz")
    lines = ["| model | scheme | original | data-aware | data-aware + refit |", "|---|---|---:|---:|---:|"]
    for model in MODELS:
        for scheme in ("weight_svd", "spatial_svd"):
            scores = []
            for refit in (False, True):
                _, st = oc.compress(str(models / f"{model}.onnx"), scheme, args.ratio, data=calib, svd_refit=refit,
                                    eval_callback=evaluate, num_reconstruction_samples=args.samples)
                scores.append(st.final_score)
            lines.append(f"| {model} | {scheme} | {st.baseline_score:.3f} | {scores[0]:.3f} | {scores[1]:.3f} |")
            print(lines[-1], flush=True)
    if not args.no_write:
        head = [BEGIN, "## SVD refit on the bundled CNNs", "",
                f"`python tools/bench_refit.py`: every eligible layer at ratio {args.ratio}, data-aware "
                f"({args.samples} sampled rows per layer from models/digits32_calib.npz), top-1 accuracy on "
                "models/digits32_test.npz, without and with `svd_refit` (each Conv split's second conv and bias "
                "refit by least squares on the compressed model's inputs toward the original layer's outputs).",
                ""]
        write_section("\n".join(head + lines + [END]), BEGIN, END)


if __name__ == "__main__":
    main()
