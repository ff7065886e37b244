"""The onnx-compress argument parser, built one subcommand and one flag group at a time.

`build_parser()` is the whole command line; `_Parser` gives every parser (subcommands
included) the module's error contract: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse

from .. import __version__
from .checks import SCHEME_NAMES

PRECISIONS = ("int8", "int4", "int8-weight")

SHAPE_HELP = ("fix a dynamic input's shape for the cost model, e.g. input=1,3,224,224 "
              "(repeat for several inputs; a dynamic batch dim defaults to 1)")


def _multiplicity(text: str) -> int | str:
    """--multiplicity: a whole number >= 1, or 'auto' (resolved for the provider later)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'auto', got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the module's error contract: one line on stderr, exit status 2 (argparse
    itself prints the whole usage block first). Subcommand parsers are made of this class too."""

    def error(self, message: str):
        self.exit(2, f"onnx-compress: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="onnx-compress",
        description="Compress ONNX models: weight SVD, spatial SVD and channel pruning with "
                    "per-layer ratios.",
    )
    p.add_argument("--version", action="version", version=f"onnx-compress {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details (and tracebacks)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and results")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_flags()
    for add in (_add_inspect, _add_compress, _add_quantize, _add_report, _add_eval):
        add(sub, common)
    return p


def _common_flags() -> argparse.ArgumentParser:
    """-v and -q again, after the command name (SUPPRESS: an absent flag keeps the global value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details (and tracebacks)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars; print only errors and results")
    return common


def _add_inspect(sub, common) -> None:
    ins = sub.add_parser("inspect", parents=[common], help="list layers with MACs, memory and eligibility",
                         description="Print every layer: op, weight shape, MACs, weights, share of "
                                     "the total, and which schemes apply (or why not).")
    ins.add_argument("model", help="input .onnx file")
    ins.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=SHAPE_HELP)
    ins.add_argument("--json", action="store_true", help="print the table as JSON")


def _add_compress(sub, common) -> None:
    com = sub.add_parser("compress", parents=[common], help="compress a model and write it",
                         description="Compress layers by weight SVD, spatial SVD or channel pruning "
                                     "(or a pipeline of them) at per-layer ratios (cost after / cost "
                                     "before). Writes OUT atomically and prints the statistics.")
    _compress_what(com)
    _compress_cost(com)
    _compress_data(com)
    _auto_options(com)
    _compress_outputs(com)


def _compress_what(com) -> None:
    """The model, OUT, the schemes and how ratios are given (--target | --ratios | --ratio)."""
    com.add_argument("model", help="input .onnx file (never modified)")
    com.add_argument("-o", "--output", required=True, help="output .onnx file (its folder must exist)")
    com.add_argument("--scheme", required=True, metavar="S[,S...]",
                     help=f"compression scheme, or a comma-separated list: with --ratio a pipeline applied in turn, "
                          f"with --target one target over all of them (the dictionary picks per unit); "
                          f"schemes: {', '.join(SCHEME_NAMES)} (e.g. spatial_svd,channel_pruning)")
    which = com.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", type=float, metavar="T",
                       help="auto mode: the model's cost ratio to reach (e.g. 0.5 = half the MACs); "
                            "per-layer ratios are chosen from an eval-score dictionary")
    which.add_argument("--ratios", metavar="NAME=R[,NAME=R...]",
                       help="per-layer ratios in (0, 1], layers named as `inspect` shows them")
    which.add_argument("--ratio", metavar="R[,R...]",
                       help="one ratio for every layer the scheme applies to (for a pipeline: one "
                            "value for all steps, or one per step)")


def _compress_cost(com) -> None:
    """What the ratios measure: multiplicity, metric, latency timing, input shapes."""
    com.add_argument("--multiplicity", type=_multiplicity, default=1, metavar="M",
                     help="round ranks and kept channels down to multiples of M (never to 0; default 1); "
                          "'auto': to ONNX Runtime's conv channel block on the chosen provider (8 on AVX2 "
                          "CPUs, 16 with AVX-512, 8 on CUDA), so the compressed convs run in its fast "
                          "kernels: recommended when latency matters")
    com.add_argument("--metric", choices=("mac", "memory", "latency"), default="mac",
                     help="cost metric the ratios refer to (default mac); latency (auto mode only): each "
                          "layer timed alone with ONNX Runtime, the target a ratio of their summed latency")
    com.add_argument("--latency-batch", type=int, default=None, metavar="N",
                     help="auto mode: batch size layers are timed at (default: the model's, 1 when dynamic)")
    slower = com.add_mutually_exclusive_group()
    slower.add_argument("--allow-slower-splits", dest="allow_slower_splits", action="store_const", const=True,
                        default=None, help="auto mode: keep candidates measured slower than the original "
                                           "layer (dropped by default under --metric latency)")
    slower.add_argument("--drop-slower-splits", dest="allow_slower_splits", action="store_const", const=False,
                        help="auto mode with --metric mac/memory: time the layers and drop candidates "
                             "measured slower than the original layer")
    com.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=SHAPE_HELP)


def _compress_data(com) -> None:
    """Outputs and data of every mode, and channel pruning's sampling and refits."""
    com.add_argument("--stats", metavar="STATS.json", help="also write the statistics as JSON")
    com.add_argument("--eval-data", metavar="E.npz",
                     help="labelled data (inputs by name + 'labels'): report top-1 accuracy before/after")
    com.add_argument("--data", metavar="CALIB.npz",
                     help="calibration data (inputs by name) for channel pruning's sampling")
    com.add_argument("--samples", type=int, default=2000, metavar="N",
                     help="channel pruning: reconstruction samples per layer (default 2000)")
    com.add_argument("--selection", choices=("magnitude", "greedy"), default="magnitude",
                     help="channel pruning: which input channels to keep: largest weight magnitude "
                          "(default; kept more accuracy in docs/benchmarks.md) or greedy least squares")
    com.add_argument("--svd-refit", action="store_true",
                     help="weight/spatial SVD with --data: refit each split by least squares in graph "
                          "order, against the original layer's outputs")
    com.add_argument("--no-reconstruction", action="store_true",
                     help="channel pruning: skip the least-squares refit of pruned layers")
    com.add_argument("--allow-downsample", action="store_true",
                     help="channel pruning: where upstream cannot lose channels (graph input, shared "
                          "tensor), drop them at the layer with a channel Gather instead of keeping them")
    com.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")


def _auto_options(com) -> None:
    """The auto-mode group (--target), and --ignore (any mode) in its place in the usage line."""
    auto = com.add_argument_group("auto mode (--target)")
    auto.add_argument("--eval", choices=("accuracy", "fidelity", "cosine"), default=None,
                      help="built-in evaluator: top-1 accuracy on --eval-data (labelled), or label-free "
                           "fidelity to the original model's outputs (top-1 agreement for (N, C) "
                           "outputs, else cosine), or cosine: per-sample cosine similarity always "
                           "(embedding models); default: accuracy when the evaluation data has labels, "
                           "else fidelity")
    auto.add_argument("--candidates", type=int, default=10, metavar="N",
                      help="candidate ratios i/N, i = 1..N-1 (default 10)")
    auto.add_argument("--monotonic-fit", action="store_true",
                      help="fit each layer's scores to a non-decreasing curve before choosing")
    auto.add_argument("--solver", choices=("knapsack", "threshold"), default="knapsack",
                      help="knapsack: best expected score without exceeding the target (default); "
                           "threshold: AIMET's bisection on one score threshold")
    auto.add_argument("--rank-select", choices=("greedy", "tar"), default="greedy",
                      help="SVD schemes: candidates by ratio (greedy) or by reconstruction-error level (tar)")
    com.add_argument("--ignore", metavar="NAMES", help="comma-separated layers never to compress (any mode)")
    auto.add_argument("--config", metavar="CONFIG.json",
                      help="NNI-style config_list choosing the layers (op_types, op_names, exclude, ratio)")
    auto.add_argument("--scores-in", metavar="F.json", help="reuse a saved eval-score dictionary (no evaluations)")
    auto.add_argument("--scores-out", metavar="F.json", help="save the eval-score dictionary as JSON")
    auto.add_argument("--workers", type=int, default=None, metavar="K",
                      help="evaluate K candidates in parallel (default 1; with --ray: K Ray workers, default as "
                           "many as the cluster holds)")
    auto.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                      help="score the eval-score dictionary on Ray (pip install onnx_compress[ray]): without "
                           "ADDRESS on a local Ray instance started for the run; 'auto' or HOST:6379: on a running "
                           "cluster (`ray start --head`); the same scores as locally")
    auto.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                      help="with --ray: CPUs per Ray worker, its ONNX Runtime threads (default 1)")
    auto.add_argument("--ray-gpus", type=float, default=None, metavar="G",
                      help="with --ray and --cuda: GPUs per Ray worker (default 1; 0.25 puts 4 workers on a GPU)")
    auto.add_argument("--halving", action="store_true",
                      help="successive halving: score every candidate on a quarter of the evaluation batches and "
                           "only what can change the selection on all of them (about half the evaluation work)")
    auto.add_argument("--cache-mb", type=float, default=None, metavar="MB",
                      help="memory for the eval-score dictionary's recorded activations (default a sixteenth of the "
                           "available memory; beyond it they spill to temporary files, then are recomputed)")
    auto.add_argument("--eval-iterations", type=int, default=None, metavar="B",
                      help="evaluate on at most B batches of 64")


def _compress_outputs(com) -> None:
    """Provider, external data, the report, and the optional quantization step after compressing."""
    com.add_argument("--cuda", action="store_true", help="evaluate with CUDAExecutionProvider if available")
    com.add_argument("--external-data", action="store_true",
                     help="write weights to OUT.data beside the model (automatic above 2 GB "
                          "or when the input model uses external data)")
    com.add_argument("--report", metavar="REPORT.html",
                     help="write a self-contained HTML report: summary, per-layer costs, score "
                          "curves, chosen ratios, skipped layers, the command")
    com.add_argument("--quantize", choices=PRECISIONS, default=None,
                     help="then quantize the compressed model; OUT is the quantized model. int8: ONNX Runtime "
                          "static QDQ, calibrated on --data; int4 / int8-weight: the MatMul weights only, no "
                          "data (transformers; Conv layers stay float)")
    _quant_options(com)


def _add_quantize(sub, common) -> None:
    qu = sub.add_parser("quantize", parents=[common], help="quantize a model (ONNX Runtime: int8 QDQ, or "
                                                           "int4 / int8 weights only)",
                        description="--precision int8 (default): static int8 quantization with "
                                    "QuantizeLinear/DequantizeLinear pairs, activation ranges calibrated on "
                                    "CALIB.npz. int4 / int8-weight: the weights of MatMul layers only, no data "
                                    "(ORT's MatMulNBits / dynamic MatMulInteger). Prints file size and accuracy "
                                    "(with --eval-data) before and after.")
    qu.add_argument("model", help="input .onnx file (never modified)")
    qu.add_argument("-o", "--output", required=True, help="output .onnx file")
    qu.add_argument("--precision", choices=PRECISIONS, default="int8",
                    help="int8: static QDQ, weights and activations, needs --data (default); int4: 4-bit MatMul "
                         "weights (MatMulNBits); int8-weight: int8 MatMul weights, no data (activations quantized "
                         "at run time)")
    qu.add_argument("--data", metavar="CALIB.npz", help="calibration data (inputs by name; int8 only)")
    qu.add_argument("--eval-data", metavar="E.npz", help="labelled data: report top-1 accuracy before/after")
    qu.add_argument("--cuda", action="store_true", help="calibrate with CUDAExecutionProvider if available")
    qu.add_argument("--report", metavar="REPORT.html", help="write an HTML report of the step")
    _quant_options(qu)


def _add_report(sub, common) -> None:
    rep = sub.add_parser("report", parents=[common], help="HTML report from a saved statistics JSON",
                         description="Render the HTML report of a run from the JSON that --stats wrote.")
    rep.add_argument("stats_in", metavar="stats", help="statistics JSON written by `compress --stats`")
    rep.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="output .html file")


def _add_eval(sub, common) -> None:
    ev = sub.add_parser("eval", parents=[common], help="top-1 accuracy of a model on labelled data",
                        description="Evaluate MODEL on an .npz holding its inputs by name and 'labels'.")
    ev.add_argument("model", help=".onnx file")
    ev.add_argument("--data", required=True, metavar="D.npz", help="labelled data")
    ev.add_argument("--cuda", action="store_true", help="use CUDAExecutionProvider if available")


def _quant_options(parser) -> None:
    group = parser.add_argument_group("quantization")
    group.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax",
                       help="how activation ranges are calibrated (default minmax)")
    group.add_argument("--calibration-batches", type=int, default=None, metavar="B",
                       help="calibrate on at most B batches of 64 (default: all of --data)")
    group.add_argument("--per-tensor", action="store_true",
                       help="one scale per weight tensor instead of per output channel")
    group.add_argument("--reduce-range", nargs="?", choices=("auto", "on", "off"), const="on", default="auto",
                       help="7-bit weights, which avoid the 16-bit saturation of ORT's int8 kernels on x86 CPUs "
                            "without VNNI; auto (default): on exactly where this machine's kernel saturates; "
                            "off for a target with real int8 arithmetic")
    weights = parser.add_argument_group("weight-only quantization (int4, int8-weight)")
    weights.add_argument("--block-size", type=int, default=32, metavar="N",
                         help="int4: weights per scale along the input dimension, a power of 2 >= 16 (default 32)")
    weights.add_argument("--asymmetric", action="store_true", help="int4: a zero point per block (default symmetric)")
    weights.add_argument("--accuracy-level", type=int, choices=range(5), default=None, metavar="{0..4}",
                         help="MatMulNBits compute type: 0 float, 4 int8 (default 4)")
    weights.add_argument("--int8-weight-format", choices=("dynamic", "nbits"), default="dynamic",
                         help="int8-weight: dynamic = ORT dynamic quantization, MatMulInteger (faster, default); "
                              "nbits = 8-bit MatMulNBits (more accurate, ORT only)")
    weights.add_argument("--keep-gemm", action="store_true",
                         help="keep Gemm layers float (default: rewritten as MatMul + Add and quantized)")
