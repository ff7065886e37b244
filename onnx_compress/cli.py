"""Command line: onnx-compress inspect | compress | quantize | eval | report.

Every user error prints one line, `onnx-compress: error: ...`, and exits with status 2;
no traceback, no output file left behind, the input never modified.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys

from . import __version__, api, evaluators, files, ir, runtime
from . import progress as progress_mod
from .errors import CompressionError, ParameterError

log = logging.getLogger("onnx_compress")

SCHEME_NAMES = api.SCHEME_NAMES


# ---------------------------------------------------------------------------- parsing
def _parse_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    if not items:
        return None
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ParameterError(f"--input-shape expects NAME=d0,d1,..., got {item!r}") from None
    return shapes


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


def _parse_ratios(text: str) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ParameterError(f"--ratios expects NAME=R[,NAME=R...], got {item!r}")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise ParameterError(f"--ratios: ratio for '{name}' is not a number: {value!r}") from None
    if not ratios:
        raise ParameterError("--ratios is empty")
    return ratios


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"{flag} expects numbers like 0.5 or 0.7,0.7, got {text!r}") from None


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
    # the same flags after the command name (SUPPRESS: an absent flag keeps the global value)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details (and tracebacks)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars; print only errors and results")

    shape_help = ("fix a dynamic input's shape for the cost model, e.g. input=1,3,224,224 "
                  "(repeat for several inputs; a dynamic batch dim defaults to 1)")

    ins = sub.add_parser("inspect", parents=[common], help="list layers with MACs, memory and eligibility",
                         description="Print every layer: op, weight shape, MACs, weights, share of "
                                     "the total, and which schemes apply (or why not).")
    ins.add_argument("model", help="input .onnx file")
    ins.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=shape_help)
    ins.add_argument("--json", action="store_true", help="print the table as JSON")

    com = sub.add_parser("compress", parents=[common], help="compress a model and write it",
                         description="Compress layers by weight SVD, spatial SVD or channel pruning "
                                     "(or a pipeline of them) at per-layer ratios (cost after / cost "
                                     "before). Writes OUT atomically and prints the statistics.")
    com.add_argument("model", help="input .onnx file (never modified)")
    com.add_argument("-o", "--output", required=True, help="output .onnx file (its folder must exist)")
    com.add_argument("--scheme", required=True, metavar="S[,S...]",
                     help=f"compression scheme, or a comma-separated pipeline applied in turn; "
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
    com.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=shape_help)
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
                     help="weight SVD of Gemm/MatMul with --data: refit each split's second factor by least "
                          "squares in graph order, against the original layer's outputs")
    com.add_argument("--no-reconstruction", action="store_true",
                     help="channel pruning: skip the least-squares refit of pruned layers")
    com.add_argument("--allow-downsample", action="store_true",
                     help="channel pruning: where upstream cannot lose channels (graph input, shared "
                          "tensor), drop them at the layer with a channel Gather instead of keeping them")
    com.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
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
    auto.add_argument("--workers", type=int, default=1, metavar="K", help="evaluate K candidates in parallel")
    auto.add_argument("--eval-iterations", type=int, default=None, metavar="B",
                      help="evaluate on at most B batches of 64")
    com.add_argument("--cuda", action="store_true", help="evaluate with CUDAExecutionProvider if available")
    com.add_argument("--external-data", action="store_true",
                     help="write weights to OUT.data beside the model (automatic above 2 GB "
                          "or when the input model uses external data)")
    com.add_argument("--report", metavar="REPORT.html",
                     help="write a self-contained HTML report: summary, per-layer costs, score "
                          "curves, chosen ratios, skipped layers, the command")
    com.add_argument("--quantize", choices=("int8",), default=None,
                     help="then quantize the compressed model (ONNX Runtime static QDQ, calibrated "
                          "on --data); OUT is the quantized model")
    _quant_options(com)

    qu = sub.add_parser("quantize", parents=[common], help="quantize a model to int8 QDQ (ONNX Runtime static)",
                        description="Static int8 quantization with QuantizeLinear/DequantizeLinear pairs, "
                                    "activation ranges calibrated on D.npz. Prints file size and accuracy "
                                    "(with --eval-data) before and after.")
    qu.add_argument("model", help="input .onnx file (never modified)")
    qu.add_argument("-o", "--output", required=True, help="output .onnx file")
    qu.add_argument("--data", required=True, metavar="CALIB.npz", help="calibration data (inputs by name)")
    qu.add_argument("--eval-data", metavar="E.npz", help="labelled data: report top-1 accuracy before/after")
    qu.add_argument("--cuda", action="store_true", help="calibrate with CUDAExecutionProvider if available")
    qu.add_argument("--report", metavar="REPORT.html", help="write an HTML report of the step")
    _quant_options(qu)

    rep = sub.add_parser("report", parents=[common], help="HTML report from a saved statistics JSON",
                         description="Render the HTML report of a run from the JSON that --stats wrote.")
    rep.add_argument("stats_in", metavar="stats", help="statistics JSON written by `compress --stats`")
    rep.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="output .html file")

    ev = sub.add_parser("eval", parents=[common], help="top-1 accuracy of a model on labelled data",
                        description="Evaluate MODEL on an .npz holding its inputs by name and 'labels'.")
    ev.add_argument("model", help=".onnx file")
    ev.add_argument("--data", required=True, metavar="D.npz", help="labelled data")
    ev.add_argument("--cuda", action="store_true", help="use CUDAExecutionProvider if available")
    return p


def _quant_options(parser) -> None:
    group = parser.add_argument_group("quantization")
    group.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax",
                       help="how activation ranges are calibrated (default minmax)")
    group.add_argument("--calibration-batches", type=int, default=None, metavar="B",
                       help="calibrate on at most B batches of 64 (default: all of --data)")
    group.add_argument("--per-tensor", action="store_true",
                       help="one scale per weight tensor instead of per output channel")
    group.add_argument("--reduce-range", action="store_true",
                       help="7-bit weights: avoids int8 saturation in ORT's kernels on x86 CPUs without "
                            "VNNI (leave off for targets with real int8 arithmetic)")


# --------------------------------------------------------------------------- commands
def cmd_inspect(args) -> int:
    analysis = api.inspect(args.model, _parse_shapes(args.input_shape))
    total_mac = sum(layer.mac or 0 for layer in analysis.compressible)
    total_mem = analysis.total("memory")
    rows = []
    for layer in analysis.layers:
        elig = api.eligibility(layer, analysis) if layer.reason is None else {}
        rows.append({
            "name": layer.name, "op": layer.op,
            "weight_shape": list(layer.weight.shape) if layer.weight is not None else None,
            "output_shape": list(layer.out_shape) if layer.out_shape else None,
            "macs": layer.mac, "memory": layer.memory,
            "mac_share": (layer.mac / total_mac) if layer.mac and total_mac else None,
            "schemes": [s for s, r in elig.items() if r is None],
            "skip_reasons": {s: r for s, r in elig.items() if r} if elig else {"all": layer.reason},
        })
    if args.json:
        print(json.dumps({"input_dims": analysis.input_dims, "total_macs": total_mac,
                          "total_memory": total_mem, "layers": rows}, indent=2))
        return 0
    print(f"model: {args.model}   inputs: " +
          ", ".join(f"{k}={list(v)}" for k, v in analysis.input_dims.items()))
    width = max([len(r["name"]) for r in rows] + [5])
    print(f"{'layer':<{width}}  {'op':<6} {'weight':<16} {'MACs':>12} {'weights':>9} {'share':>6}  schemes / reasons")
    for r in rows:
        shape = "x".join(map(str, r["weight_shape"])) if r["weight_shape"] else "-"
        macs = "?" if r["macs"] is None else f"{r['macs']:,}"
        share = f"{100 * r['mac_share']:.1f}%" if r["mac_share"] is not None else "-"
        notes = ", ".join(r["schemes"]) or "none"
        reasons = "; ".join(f"{s}: {why}" for s, why in r["skip_reasons"].items())
        if reasons:
            notes += f"  ({reasons})"
        print(f"{r['name']:<{width}}  {r['op']:<6} {shape:<16} {macs:>12} {r['memory']:>9,} {share:>6}  {notes}")
    print(f"total: {total_mac:,} MACs, {total_mem:,} weights in {len(analysis.compressible)} layers")
    return 0


#: Flags naming files a command reads (no output may be one of them), as errors name them.
_INPUT_FLAGS = {"model": "the input model", "stats_in": "the input statistics", "data": "the --data file",
                "eval_data": "the --eval-data file", "scores_in": "the --scores-in file",
                "config": "the --config file"}
#: Flags naming files a command writes, with the name errors use.
_OUTPUT_FLAGS = (("output", "output (-o)"), ("stats", "--stats"), ("report", "--report"),
                 ("scores_out", "--scores-out"))


def _outputs(args) -> files.Outputs:
    """Check every output path of the command before any work, and stage them.

    Each output must be a writable file path, none may be an input of the run (the model,
    its external data files, the data, ...) or another output. The command writes to the
    staged paths in `args.staged` and commits them together at the end (files.Outputs):
    a run that fails or is interrupted leaves no new file, and replaces none.
    """
    inputs = {getattr(args, flag, None): what for flag, what in _INPUT_FLAGS.items()}
    if getattr(args, "model", None):
        inputs.update({path: "an external data file of the input model" for path in ir.external_files(args.model)})
    outs = files.Outputs(inputs)
    args.staged = {}
    try:
        for flag, what in _OUTPUT_FLAGS:
            path = getattr(args, flag, None)
            if path is None:
                continue
            if flag == "report" or (flag == "output" and args.command == "report"):
                from . import report

                report.check_path(path)
            companions = (".data",) if flag == "output" and args.command in ("compress", "quantize") else ()
            args.staged[flag] = outs.add(path, what, companions=companions)
    except BaseException:
        outs.discard()
        raise
    return outs


def _check_scheme(name: str) -> None:
    if name not in SCHEME_NAMES:
        raise ParameterError(f"--scheme: unknown scheme {name!r}; expected one of {', '.join(SCHEME_NAMES)}")


def _schemes(text: str) -> list[str]:
    """--scheme S[,S...]: the schemes, each known; ParameterError for an empty list (",")."""
    schemes = [s.strip() for s in text.split(",") if s.strip()]
    if not schemes:
        raise ParameterError(f"--scheme names no scheme (got {text!r}); expected one of {', '.join(SCHEME_NAMES)} "
                             "or a comma-separated pipeline of them")
    for name in schemes:
        _check_scheme(name)
    return schemes


#: Whole-number flags and their smallest value (None: not given, the default applies).
_COUNT_FLAGS = (("eval_iterations", "--eval-iterations", 1), ("candidates", "--candidates", 2),
                ("samples", "--samples", 1), ("workers", "--workers", 1), ("latency_batch", "--latency-batch", 1),
                ("calibration_batches", "--calibration-batches", 1), ("seed", "--seed", 0))


def _check_flags(args) -> None:
    """Range checks of the numeric flags, before any file is read, naming the flag."""
    for attr, flag, low in _COUNT_FLAGS:
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise ParameterError(f"{flag} must be an integer >= {low}, got {value}")
    target = getattr(args, "target", None)
    if target is not None and not 0 < target <= 1:  # nan fails too
        raise ParameterError(f"--target must be a cost ratio in (0, 1] (e.g. 0.5 = half the cost), got {target}")
    if getattr(args, "ratio", None) is not None:
        for value in _parse_floats(args.ratio, "--ratio"):
            if not 0 < value <= 1:
                raise ParameterError(f"--ratio must be in (0, 1] (a layer's cost after / before), got {value}")


def _command_line(argv) -> str:
    return "onnx-compress " + shlex.join(argv)


def _quant_settings(args):
    from .runtime.quantize import QuantizeSettings

    return QuantizeSettings(per_channel=not args.per_tensor, calibrate_method=args.calibration,
                            max_batches=args.calibration_batches, reduce_range=args.reduce_range,
                            use_cuda=args.cuda).check()


def _finish(args, outs: files.Outputs, model, stats, callback, steps: list[dict]) -> dict | None:
    """Optionally quantize, then write the model, the statistics and the report to their
    staged paths, and commit them together. Returns the quantization row of `steps`, if any.
    """
    from .runtime import quantize as quant_mod

    quant_row = None
    if args.quantize:
        qmodel = quant_mod.quantize(model, args.data, _quant_settings(args))
        score = runtime.evaluate(qmodel, callback, args.eval_iterations, args.cuda) if callback else None
        quant_row = {"step": "quantized (int8 QDQ)", "score": score, "mac_ratio": stats.mac_ratio}
        model = qmodel
    _save(args, model)
    if quant_row is not None:
        quant_row["bytes"] = quant_mod.file_size(args.staged["output"])
        steps.append(quant_row)
    if args.stats:
        payload = stats.to_dict()
        payload["pipeline"] = steps
        payload["command"] = args.command_line
        files.write_text(args.staged["stats"], json.dumps(payload, indent=2))
    if args.report:
        from . import report

        report.write(args.staged["report"], stats, command=args.command_line, steps=steps)
    outs.commit()
    return quant_row


def _save(args, model) -> None:
    """Write OUT (staged); with external data when asked or when the input model has it."""
    external = getattr(args, "external_data", False) or ir.uses_external_data(args.model)
    ir.save(model, args.staged["output"], external=True if external else None)


def _steps(args, model_bytes: int, stats) -> list[dict]:
    from .runtime.quantize import file_size

    return [
        {"step": "original", "score": stats.baseline_score, "bytes": file_size(args.model), "mac_ratio": 1.0},
        {"step": f"compressed ({stats.scheme})", "score": stats.final_score, "bytes": model_bytes,
         "mac_ratio": stats.mac_ratio},
    ]


def _print_steps(steps: list[dict], what: str) -> None:
    print(f"\n{'step':<28} {what:>10} {'size':>12} {'MAC ratio':>10}")
    for st in steps:
        score = "-" if st.get("score") is None else f"{st['score']:.4f}"
        ratio = "-" if st.get("mac_ratio") is None else f"{st['mac_ratio']:.4f}"
        print(f"{st['step']:<28} {score:>10} {st['bytes']:>12,} {ratio:>10}")


def _check_common(args) -> None:
    _check_flags(args)
    if args.quantize:
        if not args.data:
            raise ParameterError("--quantize calibrates on --data CALIB.npz; pass it")
        _quant_settings(args)


def cmd_compress(args) -> int:
    _check_common(args)
    with _outputs(args) as outs:
        if args.target is not None:
            return _compress_auto(args, outs)
        return _compress_manual(args, outs)


def _compress_manual(args, outs: files.Outputs) -> int:
    schemes = _schemes(args.scheme)
    if args.ratios is not None:
        if len(schemes) > 1:
            raise ParameterError("--ratios names layers of one scheme; use --ratio for a pipeline")
        ratios = _parse_ratios(args.ratios)
    else:
        ratios = _parse_floats(args.ratio, "--ratio")
        if len(ratios) not in (1, len(schemes)):
            raise ParameterError(f"--ratio gives {len(ratios)} values for {len(schemes)} scheme(s)")
        ratios = ratios[0] if len(ratios) == 1 else ratios
    if "channel_pruning" in schemes and not args.data:
        raise ParameterError("channel_pruning needs calibration data: pass --data CALIB.npz")
    callback = evaluators.accuracy(args.eval_data) if args.eval_data else None
    model, stats = api.compress(
        args.model, schemes if len(schemes) > 1 else schemes[0], ratios, cost_metric=args.metric,
        multiplicity=args.multiplicity, input_shape=_parse_shapes(args.input_shape),
        eval_callback=callback, eval_iterations=args.eval_iterations, use_cuda=args.cuda, data=args.data,
        num_reconstruction_samples=args.samples, selection=args.selection,
        reconstruct=not args.no_reconstruction, seed=args.seed, svd_refit=args.svd_refit,
        allow_custom_downsample_ops=args.allow_downsample,
        modules_to_ignore=[n.strip() for n in args.ignore.split(",") if n.strip()] if args.ignore else None,
    )
    steps = _steps(args, ir.model_bytes(model), stats)
    _finish(args, outs, model, stats, callback, steps)
    if not args.quiet:
        print(stats)
    print(f"wrote {args.output}" + (f" and {args.stats}" if args.stats else "")
          + (f"; report {args.report}" if args.report else ""))
    if stats.baseline_score is not None:
        print(f"top-1 accuracy on {args.eval_data}: {stats.baseline_score:.4f} -> {stats.final_score:.4f}")
    if args.quantize or not args.quiet:
        _print_steps(steps, "accuracy" if callback else "score")
    return 0


def _compress_auto(args, outs: files.Outputs) -> int:
    from .search.config import load_config

    schemes = _schemes(args.scheme)
    if len(schemes) > 1:
        raise ParameterError("auto mode (--target) takes one scheme; run a pipeline's steps one by one")
    args.scheme = schemes[0]
    eval_data = args.eval_data or args.data
    if eval_data is None:
        raise ParameterError("auto mode needs data to score candidates: pass --data and/or --eval-data")
    kind = args.eval
    if kind is None:
        from .data import load_npz
        kind = "accuracy" if "labels" in load_npz(eval_data) else "fidelity"
    if kind == "accuracy":
        callback = evaluators.accuracy(eval_data)
    else:
        callback = evaluators.fidelity(eval_data, measure="cosine" if kind == "cosine" else "auto")
    config = load_config(args.config) if args.config else None
    ignore = [n.strip() for n in args.ignore.split(",") if n.strip()] if args.ignore else None
    model, stats = api.compress_auto(
        args.model, args.scheme, args.target, callback, args.eval_iterations, cost_metric=args.metric,
        candidates=args.candidates, use_monotonic_fit=args.monotonic_fit, method=args.solver,
        rank_select=args.rank_select, modules_to_ignore=ignore, config_list=config,
        saved_eval_scores_dict=args.scores_in, scores_out=args.staged.get("scores_out"), workers=args.workers,
        multiplicity=args.multiplicity, input_shape=_parse_shapes(args.input_shape), use_cuda=args.cuda,
        data=args.data, num_reconstruction_samples=args.samples, selection=args.selection,
        reconstruct=not args.no_reconstruction, seed=args.seed, svd_refit=args.svd_refit,
        latency_batch_size=args.latency_batch, allow_slower_splits=args.allow_slower_splits,
    )
    steps = _steps(args, ir.model_bytes(model), stats)
    _finish(args, outs, model, stats, callback, steps)
    sel = stats.selection
    if not args.quiet:
        print(stats)
        print(f"\nselection: {sel['method']}, {sel['evaluations']} evaluations in {sel['dictionary_seconds']:.1f}s "
              f"({sel['eval_seconds']:.1f}s inside the evaluator), expected score {sel['expected_score']:.4f}")
    print(f"wrote {args.output}" + (f" and {args.stats}" if args.stats else "")
          + (f"; report {args.report}" if args.report else ""))
    achieved = f"MAC ratio {stats.mac_ratio:.4f}"
    if stats.latency and stats.latency.get("layers_ratio") is not None:
        achieved = f"latency ratio {stats.latency['layers_ratio']:.4f} (summed per layer), " + achieved
    print(f"{kind} on {eval_data}: {stats.baseline_score:.4f} -> {stats.final_score:.4f} "
          f"at {achieved} (target {args.target})")
    if args.quantize or not args.quiet:
        _print_steps(steps, kind)
    return 0


def cmd_quantize(args) -> int:
    _check_flags(args)
    settings = _quant_settings(args)
    with _outputs(args) as outs:
        return _quantize(args, outs, settings)


def _quantize(args, outs: files.Outputs, settings) -> int:
    from .runtime import quantize as quant_mod

    original = ir.load(args.model)
    quant_mod.refuse_quantized(original, args.model)  # before any evaluation, naming the file
    callback = evaluators.accuracy(args.eval_data) if args.eval_data else None
    before = runtime.evaluate(original, callback, None, args.cuda) if callback else None
    qmodel = quant_mod.quantize(original, args.data, settings)
    after = runtime.evaluate(qmodel, callback, None, args.cuda) if callback else None
    _save(args, qmodel)
    steps = [{"step": "original", "score": before, "bytes": quant_mod.file_size(args.model), "mac_ratio": None},
             {"step": "quantized (int8 QDQ)", "score": after, "bytes": quant_mod.file_size(args.staged["output"]),
              "mac_ratio": None}]
    if args.report:
        from . import report
        from .stats import CompressionStats

        analysis = api.inspect(original)
        stats = CompressionStats(scheme="quantize (int8 QDQ)", cost_metric="-", mac_before=None, mac_after=None,
                                 memory_before=analysis.total("memory"), memory_after=analysis.total("memory"),
                                 baseline_score=before, final_score=after, input_dims=dict(analysis.input_dims),
                                 parameters={"model": args.model, "data": args.data, **vars(settings)})
        report.write(args.staged["report"], stats, command=args.command_line, steps=steps)
    outs.commit()
    print(f"wrote {args.output}" + (f"; report {args.report}" if args.report else ""))
    _print_steps(steps, "accuracy" if callback else "score")
    return 0


def cmd_report(args) -> int:
    from . import report

    with _outputs(args) as outs:
        payload = files.read_json(args.stats_in, "statistics")
        if not isinstance(payload, dict) or "scheme" not in payload or "per_layer" not in payload:
            raise ParameterError(f"{args.stats_in}: not a statistics JSON written by `onnx-compress compress --stats`")
        report.check_stats(payload, args.stats_in)
        report.write(args.staged["output"], payload, command=payload.get("command"), steps=payload.get("pipeline"))
        outs.commit()
    print(f"wrote {args.output}")
    return 0


def cmd_eval(args) -> int:
    model = ir.load(args.model)
    score = runtime.evaluate(model, evaluators.accuracy(args.data), None, args.cuda)
    print(f"top-1 accuracy of {args.model} on {args.data}: {score:.4f}")
    return 0


COMMANDS = {"inspect": cmd_inspect, "compress": cmd_compress, "quantize": cmd_quantize, "eval": cmd_eval,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        with progress_mod.listen(None if args.quiet else progress_mod.Bars()):
            return COMMANDS[args.command](args)
    except CompressionError as exc:
        print(f"onnx-compress: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onnx-compress: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: say so briefly, full traceback with -v
        if args.verbose:
            raise
        print(f"onnx-compress: internal error: {type(exc).__name__}: {exc} (rerun with -v for details; "
              "please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
