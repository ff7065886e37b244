"""The onnx-compress subcommands: inspect, compress (manual and auto mode), quantize,
report, eval. Each takes the parsed arguments and returns the exit status; the library is
called through the `api` module attribute (tests patch api.compress)."""
from __future__ import annotations

import json

from .. import api, evaluators, files, ir, runtime
from ..errors import ParameterError
from .checks import _check_flags, _parse_floats, _parse_ratios, _parse_shapes, _schemes
from .outputs import _finish, _outputs, _print_steps, _save, _steps, quant_settings


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


def cmd_compress(args) -> int:
    _check_flags(args)
    if args.quantize:
        settings = quant_settings(args)  # int8 needs --data; checked before any file is read
    with _outputs(args) as outs:
        if args.quantize:
            from ..runtime import quantize as quant_mod

            quant_mod.weight_plan(args.model, settings)  # int4 / int8-weight: a MatMul weight to take
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
    from ..search.config import load_config

    schemes = _schemes(args.scheme)  # several: one target over all of them (a mix, schemes.Mix)
    args.scheme = schemes if len(schemes) > 1 else schemes[0]
    eval_data = args.eval_data or args.data
    if eval_data is None:
        raise ParameterError("auto mode needs data to score candidates: pass --data and/or --eval-data")
    kind = args.eval
    if kind is None:
        from ..data import load_npz
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
        saved_eval_scores_dict=args.scores_in, scores_out=args.staged.get("scores_out"), **_executor(args),
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


def _executor(args) -> dict:
    """The dictionary's executor options: local threads, or --ray's workers."""
    common = {"cache_mb": args.cache_mb, "halving": args.halving}
    if args.ray is None:
        return {"workers": args.workers or 1, **common}
    return {**common, "executor": "ray", "ray_address": None if args.ray == "local" else args.ray,
            "ray_workers": args.workers, "ray_cpus": args.ray_cpus or 1, "ray_gpus": args.ray_gpus}


def cmd_quantize(args) -> int:
    _check_flags(args)
    settings = quant_settings(args)
    with _outputs(args) as outs:
        return _quantize(args, outs, settings)


def _quantize(args, outs: files.Outputs, settings) -> int:
    from ..runtime import quantize as quant_mod

    original = ir.load(args.model)
    quant_mod.refuse_quantized(original, args.model)  # before any evaluation, naming the file
    plan = quant_mod.weight_plan(original, settings, args.model)  # int4 / int8-weight: refused here if no MatMul
    callback = evaluators.accuracy(args.eval_data) if args.eval_data else None
    before = runtime.evaluate(original, callback, None, args.cuda) if callback else None
    qmodel = quant_mod.quantize(original, args.data, settings)
    after = runtime.evaluate(qmodel, callback, None, args.cuda) if callback else None
    _save(args, qmodel)
    label = quant_mod.STEP_NAMES[settings.precision]
    steps = [{"step": "original", "score": before, "bytes": quant_mod.file_size(args.model), "mac_ratio": None},
             {"step": label, "score": after, "bytes": quant_mod.file_size(args.staged["output"]), "mac_ratio": None}]
    if plan is not None:
        steps[1]["note"] = plan.note()
    if args.report:
        _quantize_report(args, original, settings, plan, steps, (before, after))
    outs.commit()
    print(f"wrote {args.output}" + (f"; report {args.report}" if args.report else ""))
    _print_steps(steps, "accuracy" if callback else "score")
    return 0


def _quantize_report(args, original, settings, plan, steps: list[dict], scores: tuple) -> None:
    """The quantize command's HTML report: the steps, the layers left float, the parameters."""
    from .. import report
    from ..runtime.quantize import STEP_NAMES
    from ..stats import CompressionStats, SkippedLayer

    analysis = api.inspect(original)
    params = {"model": args.model, "data": args.data, **vars(settings)}
    skipped = ()
    if plan is not None:
        params["quantization"] = plan.to_dict()
        skipped = tuple(SkippedLayer(name, op, why) for name, op, why in plan.left_float)
    stats = CompressionStats(scheme=STEP_NAMES[settings.precision].replace("quantized", "quantize"), cost_metric="-",
                             mac_before=None, mac_after=None, memory_before=analysis.total("memory"),
                             memory_after=analysis.total("memory"), skipped=skipped, baseline_score=scores[0],
                             final_score=scores[1], input_dims=dict(analysis.input_dims), parameters=params)
    report.write(args.staged["report"], stats, command=args.command_line, steps=steps)


def cmd_report(args) -> int:
    from .. import report

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
