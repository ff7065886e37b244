"""A command's output files, checked and staged before any work (files.Outputs), then
written and committed together; the quantization hand-off's settings; the printed table of
steps (original, compressed, quantized)."""
from __future__ import annotations

import json

from .. import files, ir, runtime
from ..errors import ParameterError


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
                from .. import report

                report.check_path(path)
            companions = (".data",) if flag == "output" and args.command in ("compress", "quantize") else ()
            # the eval-score file is a checkpoint, written as scores arrive: a rerun resumes from it
            args.staged[flag] = outs.add(path, what, companions=companions, stage=flag != "scores_out")
    except BaseException:
        outs.discard()
        raise
    return outs


def _finish(args, outs: files.Outputs, model, stats, callback, steps: list[dict]) -> dict | None:
    """Optionally quantize, then write the model, the statistics and the report to their
    staged paths, and commit them together. Returns the quantization row of `steps`, if any.
    """
    from ..runtime import quantize as quant_mod

    quant_row = None
    if args.quantize:
        settings = quant_settings(args)
        plan = quant_mod.weight_plan(model, settings, "the compressed model")
        qmodel = quant_mod.quantize(model, args.data, settings)
        score = runtime.evaluate(qmodel, callback, args.eval_iterations, args.cuda) if callback else None
        quant_row = {"step": quant_mod.STEP_NAMES[settings.precision], "score": score, "mac_ratio": stats.mac_ratio}
        if plan is not None:
            quant_row["note"] = plan.note()
            stats.parameters["quantization"] = plan.to_dict()  # shown in the report's parameters
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
        from .. import report

        report.write(args.staged["report"], stats, command=args.command_line, steps=steps)
    outs.commit()
    return quant_row


def quant_settings(args):
    """QuantizeSettings from the quantization flags (compress --quantize P, quantize --precision P),
    checked before any file is read; int8 (static) needs --data."""
    from ..runtime.quantize import QuantizeSettings

    precision = getattr(args, "precision", None) or args.quantize
    if precision == "int8" and not args.data:
        flag = "--precision int8" if args.command == "quantize" else "--quantize"
        other = "--precision" if args.command == "quantize" else "--quantize"
        raise ParameterError(f"{flag} calibrates on --data CALIB.npz; pass it, or quantize the weights only, "
                             f"without data: {other} int8-weight or {other} int4")
    reduce_range = {"auto": None, "on": True, "off": False}[args.reduce_range]
    return QuantizeSettings(precision=precision, per_channel=not args.per_tensor, calibrate_method=args.calibration,
                            max_batches=args.calibration_batches, reduce_range=reduce_range,
                            use_cuda=args.cuda, block_size=args.block_size, symmetric=not args.asymmetric,
                            accuracy_level=args.accuracy_level, int8_weight_format=args.int8_weight_format,
                            gemm_to_matmul=not args.keep_gemm).check()


def _save(args, model) -> None:
    """Write OUT (staged); with external data when asked or when the input model has it."""
    external = getattr(args, "external_data", False) or ir.uses_external_data(args.model)
    ir.save(model, args.staged["output"], external=True if external else None)


def _steps(args, model_bytes: int, stats) -> list[dict]:
    from ..runtime.quantize import file_size

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
    for st in steps:
        if st.get("note"):
            print(f"{st['step']}: {st['note']}")
