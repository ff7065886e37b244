"""The native Python API: `compress` (manual ratios), `compress_auto` (a target),
`inspect` and `eligibility`. It validates the parameters once, builds the step's
`schemes.Context` and runs the registered schemes (`schemes.SCHEMES`); auto mode's search
is `search.auto`. The AIMET-shaped face is `aimet`. The input model (path or ModelProto)
is never modified.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np
import onnx

from . import cost, files, ir, layers, runtime
from . import data as data_mod
from .errors import CompressionError, LayerError, ParameterError, ShapeError
from .options import Calibration, Latency, Search, Settings, as_flat, gather, refuse_unknown
from .schemes import SCHEMES, Scheme
from .schemes import get as get_scheme, mix_of
from .schemes.base import UNCHANGED, apply_with_trainer
from .search import ray_scorer, sources
from .search.auto import context, reasons, require_eligible
from .stats import CompressionStats, describe_parameters, per_layer_rows

log = logging.getLogger(__name__)

SCHEME_NAMES = ("weight_svd", "spatial_svd", "channel_pruning")  # the built-in ones; SCHEMES has all


# ------------------------------------------------------------------------ native API
def compress(model, scheme: str | list[str] = "weight_svd", ratios=0.5, *,
             cost_metric: str = "mac", multiplicity: int | str = 1, input_shape=None,
             eval_callback: Callable | None = None, eval_iterations: int | None = None,
             use_cuda: bool = False, data=None, calibration: Calibration | None = None,
             modules_to_ignore=None, visualization=None, trainer=None,
             **options) -> tuple[onnx.ModelProto, CompressionStats]:
    """Compress `model` with `scheme` at manually chosen per-layer ratios.

    model: path or ModelProto (not modified). scheme: "weight_svd", "spatial_svd",
    "channel_pruning", or a list of them applied in turn (a pipeline, e.g.
    ["spatial_svd", "channel_pruning"]). ratios: {layer name: ratio in (0, 1]} or one
    ratio for every layer the scheme applies to (for a pipeline: one such value per step,
    or one for all); a ratio is the layer's cost after / before under `cost_metric`
    ("mac"/"memory"); channel pruning's upstream savings come on top and are measured in
    the model totals. multiplicity: ranks / kept channels are rounded down to multiples
    of it (never to 0); "auto": to the channel block of ONNX Runtime's fast conv layout on
    the chosen provider (8 on AVX2 CPUs, 16 with AVX-512, 8 on CUDA), which is what makes
    the compressed convs run faster in ORT (see docs/benchmarks.md). input_shape: fixes dynamic input dims for the cost model: a tuple,
    a list of tuples in input order, or {input name: tuple}.
    eval_callback(session, iterations, use_cuda) -> float scores the model before and
    after (optional).
    data: calibration data (an .npz path, dict of arrays, iterable of feed dicts or a
    CalibrationDataReader): channel pruning needs it; with it, SVD factors are data-aware
    (whitened by the second moment of each layer's sampled inputs).
    calibration: `options.Calibration` (how the data is used: num_reconstruction_samples
    per layer, selection "magnitude"/"greedy"/a callable criterion, reconstruct,
    seed, allow_custom_downsample_ops, data_aware, svd_refit: weight and spatial
    SVD then refit each split in graph order). Its fields are also accepted
    as keywords (`num_reconstruction_samples=500`), one way or the other.
    modules_to_ignore: layer names never to compress (skipped with that reason when one
    ratio applies to all; naming one in `ratios` too is an error).
    visualization: path of an HTML report to write (see onnx_compress.report).
    trainer: AIMET's layer-wise fine-tuning hook; the layers are then compressed one at a
    time in graph order and `trainer.train_model(model, layer_name, train_flag=True)`
    (returning the tuned ModelProto, or None for unchanged) runs after each.
    Returns the compressed ModelProto and its statistics (achieved figures measured on it).
    """
    if trainer is not None and not callable(getattr(trainer, "train_model", None)):
        raise ParameterError(f"trainer must have a train_model(model, layer_name, train_flag) method, "
                             f"got {type(trainer).__name__}")
    calibration = gather(Calibration, calibration, options, "compress", "calibration",
                         allowed=set(Calibration.__dataclass_fields__) - {"reference_model"})
    refuse_unknown(options, "compress")
    parameters = describe_parameters(_recorded(locals(), "compress", calibration))
    report_path = _report_path(visualization)
    eval_callback = runtime.checked_callback(eval_callback)
    runtime.check_iterations(eval_iterations)
    steps = [get_scheme(s) for s in (scheme if isinstance(scheme, (list, tuple)) else [scheme])]
    if not steps:
        raise ParameterError("scheme list is empty")
    step_ratios = _step_ratios(steps, ratios)
    metric = cost.check_metric(cost_metric)
    if metric == "latency":
        raise ParameterError("cost_metric='latency' is for auto mode (compress_auto, CLI --target): a layer's "
                             "latency is measured, not computed, so manual ratios are 'mac' or 'memory' ratios")
    multiplicity = resolve_multiplicity(multiplicity, use_cuda, parameters)
    settings = None
    if any(s.needs_data for s in steps) or data is not None:
        settings = _settings(data, calibration, use_cuda)
    _require_data(steps, data)
    proto = ir.load(model)
    first = layers.analyze(proto, input_shape, _data_shapes(data) if data is not None else None)
    _require_layers(first, every=False)
    dims = first.input_dims
    ignored = _ignored(first, modules_to_ignore)
    if not any(isinstance(r, dict) for r in step_ratios):
        require_eligible(first, steps, ignored, _where(model))
    baseline = runtime.evaluate(proto, eval_callback, eval_iterations, use_cuda) if eval_callback else None
    current, layer_stats, skipped, census = _pipeline(proto, first, steps, step_ratios, metric, multiplicity,
                                                      settings, ignored, trainer)
    names = "+".join(s.name for s in steps)
    if not layer_stats and any(s.reason != UNCHANGED for s in skipped):
        raise LayerError(f"no layer of {_where(model)} can be compressed by {names} at these "
                         f"ratios: {reasons([(s.name, s.reason) for s in skipped if s.reason != UNCHANGED])}")
    after = layers.analyze(current, dims)
    final = runtime.evaluate(current, eval_callback, eval_iterations, use_cuda) if eval_callback else None
    stats = CompressionStats(
        scheme=names, cost_metric=metric,
        mac_before=_total(first, "mac"), mac_after=_total(after, "mac"),
        memory_before=first.total("memory"), memory_after=after.total("memory"),
        layers=tuple(layer_stats), skipped=tuple(skipped),
        baseline_score=baseline, final_score=final, input_dims=dict(dims),
        per_layer=per_layer_rows(first, after, layer_stats, skipped), parameters=parameters,
        channel_groups=census,
    )
    _write_report(report_path, stats)
    return current, stats


def _pipeline(proto, first, steps: list[Scheme], step_ratios, metric, multiplicity, settings, ignored,
              trainer=None):
    """Each step on the result of the one before: (model, layer stats, skipped, census)."""
    current, layer_stats, skipped, census = proto, [], [], None
    for index, (step, ratio) in enumerate(zip(steps, step_ratios)):
        log.info("%s: compressing", step.name)
        analysis = first if index == 0 else layers.analyze(current, first.input_dims)
        census = step.census(analysis) or census
        step_settings = settings
        if step.pipeline_reference and index > 0:  # refit toward the uncompressed model's outputs
            step_settings = dataclasses.replace(settings, reference=proto)
        ctx = context(metric, multiplicity, first.input_dims, step_settings)
        if trainer is not None:
            result = apply_with_trainer(step, current, _layerwise(analysis, ratio), ctx, trainer, ignored,
                                        order=[l.name for l in analysis.compressible])
        else:
            result = step.apply(current, ratio, ctx, ignored)
        current = result.model
        layer_stats += result.layers
        skipped += result.skipped
    return current, layer_stats, skipped, census


def _layerwise(analysis: layers.Analysis, ratio):
    """Per-layer ratios in graph order (a trainer runs after each layer), or the one ratio."""
    if not isinstance(ratio, dict):
        return ratio
    order = {l.name: i for i, l in enumerate(analysis.layers)}
    return dict(sorted(ratio.items(), key=lambda kv: order.get(kv[0], -1)))


def _settings(data, c: Calibration, use_cuda: bool, reference=None) -> Settings:
    """The schemes' settings from the public options (checked here, trusted below)."""
    return Settings(data=data, num_reconstruction_samples=int(c.num_reconstruction_samples),
                    allow_custom_downsample_ops=c.allow_custom_downsample_ops, selection=_selection(c.selection),
                    reconstruct=bool(c.reconstruct), seed=int(c.seed), use_cuda=use_cuda,
                    data_aware=bool(c.data_aware), svd_refit=bool(c.svd_refit), reference=reference)


def _recorded(values: dict, function: str, *groups) -> dict:
    """A call's parameters as recorded in its statistics: the option groups' fields under
    their keyword names, beside the direct parameters."""
    out = {k: v for k, v in values.items() if k not in ("options", "calibration", "search", "latency")}
    out.update(as_flat(*groups))
    out["function"] = function
    return out


def _require_data(steps: list[Scheme], data) -> None:
    for step in steps:
        if step.needs_data and data is None:
            raise ParameterError(f"{step.name} needs calibration data: pass data= (an .npz path, a dict "
                                 "of arrays, an iterable of feed dicts or a CalibrationDataReader)")


def _selection(selection):
    """A built-in criterion's name, or a callable (schemes.pruning.select.criterion)."""
    from .schemes.pruning import select

    return select.check_selection(selection)


def resolve_multiplicity(multiplicity, use_cuda: bool = False, parameters: dict | None = None) -> int:
    """An integer >= 1, or "auto": the channel block of ONNX Runtime's fast conv layout on
    the chosen provider (runtime.channel_block: 8 on AVX2 CPUs, 16 with AVX-512, 8 on CUDA,
    1 where there is none), so ranks and kept channels land on it and the compressed
    layers run in the blocked kernels. `parameters` (a call's recorded parameters): "auto"
    is recorded with the block it stood for, e.g. "auto (8)"."""
    if isinstance(multiplicity, str) and multiplicity.strip().lower() == "auto":
        block = runtime.channel_block(bool(use_cuda))
        if parameters is not None:
            parameters["multiplicity"] = f"{multiplicity} ({block})"
        return block
    return cost.check_multiplicity(multiplicity)


def _report_path(visualization):
    """The report's path, checked before any work; None when no report is asked for.

    AIMET's `visualization_url` pointed at a live Bokeh server; an http(s) URL is accepted
    for compatibility but there is no server to push to, so it is ignored with a warning.
    """
    if visualization is None or visualization is False:
        return None
    from . import report

    text = str(visualization)
    if text.startswith(("http://", "https://")):
        log.warning("visualization=%s: live plotting servers are not supported; pass a path "
                    "ending in .html for a self-contained report", text)
        return None
    report.check_path(text)
    return text


def _write_report(path, stats) -> None:
    if path is not None:
        from . import report

        report.write(path, stats)


def _data_shapes(data) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the calibration data's arrays as given (an .npz or dict's whole arrays,
    an iterable's first feed), to fix dynamic dims: layers.resolve_input_dims keeps the
    declared static dims and takes 1 for each input's batch axis."""
    try:
        return data_mod.first_shapes(data)
    except CompressionError:
        return None  # reported with context when the data is used


def _step_ratios(steps: list[str], ratios) -> list:
    if isinstance(ratios, (list, tuple)) and len(steps) > 1:
        if all(isinstance(r, (dict, int, float, str)) for r in ratios) and len(ratios) == len(steps):
            return [_as_ratio_spec(r) for r in ratios]
        raise ParameterError(f"a pipeline of {len(steps)} schemes needs {len(steps)} ratio entries, "
                             f"got {len(ratios)}")
    return [_as_ratio_spec(ratios)] * len(steps)


def _as_ratio_spec(ratios):
    if isinstance(ratios, (list, tuple)):
        ratios = _pairs_to_dict(ratios)
    for name, r in (ratios.items() if isinstance(ratios, dict) else [(None, ratios)]):
        if isinstance(r, (bool, np.bool_)):  # True would read as the ratio 1
            where = f"layer '{name}'" if name is not None else "ratios"
            raise ParameterError(f"{where}: ratio must be a number in (0, 1], got {r!r}")
    return ratios


def _where(model) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else "the model"


def inspect(model, input_shape=None) -> layers.Analysis:
    """Analyze `model`: its layers with shapes, MACs, memory and skip reasons."""
    return layers.analyze(ir.load(model), input_shape)


def eligibility(layer: layers.Layer, analysis: layers.Analysis | None = None,
                metric: str = "mac") -> dict[str, str | None]:
    """Scheme name -> None when the scheme applies to `layer`, else the reason it does not.

    With the layer's `analysis`, the reasons `compress` finds only when it tries are
    found too: a split never cheaper than the layer under `metric`, and a channel group
    whose every channel is locked (e.g. a stem conv fed by a graph input), so `inspect`
    lists a layer as eligible only where `compress` can change it.
    """
    return {name: scheme.reason(layer, analysis, metric) for name, scheme in SCHEMES.items()}


def _ignored(analysis: layers.Analysis, ignore) -> dict[str, str]:
    """Layers the user asked never to compress (`ignore`: names), each checked to exist."""
    if ignore is None:
        return {}
    names = [ignore] if isinstance(ignore, str) else list(ignore)
    known = {layer.name for layer in analysis.layers}
    for name in names:
        if name not in known:
            analysis.find(name)  # LayerError with close matches
    return {name: "ignored (modules_to_ignore / --ignore)" for name in names}


def _require_layers(analysis: layers.Analysis, every: bool) -> None:
    """LayerError when no layer of the model can be compressed: always with `every` (auto
    mode has nothing to choose from), else when some layer was refused for NaN/Inf values."""
    if analysis.compressible or not analysis.layers:
        return
    refused = [l for l in analysis.layers if l.reason]
    if every or any("NaN or Inf" in l.reason for l in refused):
        first = refused[0]
        more = f" (+{len(refused) - 1} more)" if len(refused) > 1 else ""
        raise LayerError(f"no layer of the model can be compressed: '{first.name}': {first.reason}{more}")


def _total(analysis: layers.Analysis, metric: str) -> int | None:
    try:
        return analysis.total(metric)
    except ShapeError:  # MACs unknown for some layer: totals only where measurable
        return None


def _pairs_to_dict(pairs) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in pairs:
        if hasattr(p, "module") and hasattr(p, "comp_ratio"):  # aimet.ModuleCompRatioPair
            name, ratio = p.module, p.comp_ratio
        else:
            try:
                name, ratio = p
            except (TypeError, ValueError):
                raise ParameterError(f"expected (layer name, ratio) pairs, got {p!r}") from None
        if not isinstance(name, str):
            raise ParameterError(
                f"a module is named by its ONNX node name (a string), got {type(name).__name__}"
            )
        if name in out:
            raise ParameterError(f"layer '{name}' is listed twice")
        out[name] = ratio
    return out


# ------------------------------------------------------------------------- auto mode
def compress_auto(model, scheme: str | list[str], target: float, eval_callback: Callable, eval_iterations: int | None = None,
                  *, cost_metric: str = "mac", multiplicity: int | str = 1, input_shape=None, use_cuda: bool = False,
                  data=None, search: Search | None = None, calibration: Calibration | None = None,
                  latency: Latency | None = None, visualization=None,
                  **options) -> tuple[onnx.ModelProto, CompressionStats]:
    """Auto mode: choose per-layer ratios so the model's cost ratio meets `target`.

    Options come in three groups (`onnx_compress.options`), each also accepted as flat
    keywords, one way or the other: `search=Search(candidates=..., method=..., ...)` or
    `candidates=...`; `calibration=Calibration(...)` (as for `compress`; `data=` is direct);
    `latency=Latency(batch_size, allow_slower_splits, repeats)` or `latency_batch_size`,
    `allow_slower_splits`, `latency_repeats`.

    Builds the eval-score dictionary (every selected layer alone at each of the
    `candidates` - 1 ratios i/N, scored with `eval_callback(session, iterations, use_cuda)`),
    then picks one ratio per layer maximising the expected score without exceeding the
    target (`method`: "knapsack", exact; or "threshold", AIMET's bisection). The achieved
    ratio is measured on the result. `rank_select="tar"` (weight/spatial SVD) uses
    relative-error levels as candidates instead of ratios. `config_list` / `modules_to_ignore`
    choose the layers (NNI style; entries with a `ratio` are fixed). The dictionary is
    returned in the statistics, saved as JSON to `scores_out` when given, and reused from
    `saved_eval_scores_dict` (a path) without evaluations when it matches the model.
    `trainer.train_model(model, layer_name, train_flag=True) -> ModelProto or None` is called after
    each layer of the final compression. `progress(done, total)` reports the dictionary.
    `reference_model` (channel pruning after another step): the uncompressed model whose
    layer outputs the pruned layers are refit toward, where it has them (so the refit also
    corrects the earlier step's error).
    `verify_finalists` (SVD schemes): score the selections of both objectives and of the
    threshold method on the real combined model (a few more evaluations) and keep the best.
    `visualization`: path of an HTML report to write (see onnx_compress.report).
    `executor="ray"`: the dictionary on Ray workers (`ray_address`, `ray_workers`, `ray_cpus`,
    `ray_gpus`; see options.Search and search.ray_scorer), the same scores as locally.

    Latency (onnx_compress.search.latency): every unit's original layer and candidates are timed
    alone with ONNX Runtime on the chosen provider (`use_cuda`) at `latency_batch_size`
    (default: the model's batch, 1 when dynamic), the 20th percentile of up to
    `latency_repeats` interleaved rounds (progress stage "measuring latency"). With
    `cost_metric="latency"` those figures are the costs and `target` is a ratio of
    *summed per-layer latency*: the model's compressible layers (Conv, Gemm, MatMul), each
    timed alone, as the MAC ratio sums their MACs; candidates are the MAC-ratio grid (so a
    mac dictionary serves), and the end-to-end model latency before/after is reported in
    `stats.latency`. `allow_slower_splits`: None (default) means False under the latency
    metric and True (nothing timed, fast) under mac/memory; False drops every candidate
    measured slower than its original layer before scoring (pass it with mac/memory to
    have the check there too); True keeps them. Fixed `config_list` ratios are not checked.
    """
    search = gather(Search, search, options, "compress_auto", "search")
    calibration = gather(Calibration, calibration, options, "compress_auto", "calibration")
    latency = gather(Latency, latency, options, "compress_auto", "latency")
    refuse_unknown(options, "compress_auto")
    parameters = describe_parameters(_recorded(locals(), "compress_auto", search, calibration, latency))
    from .search import auto as auto_mod

    report_path = _report_path(visualization)
    step = mix_of(scheme)
    metric = cost.check_metric(cost_metric)
    eval_callback = runtime.checked_callback(eval_callback)
    runtime.check_iterations(eval_iterations)
    if isinstance(target, (bool, np.bool_)):
        raise ParameterError(f"target_comp_ratio: ratio must be a number in (0, 1], got {target!r}")
    multiplicity = resolve_multiplicity(multiplicity, use_cuda, parameters)
    target_q = cost.check_ratio(target, "target_comp_ratio")
    timer = auto_mod.latency_timer(metric, latency.batch_size, latency.allow_slower_splits, latency.repeats, use_cuda)
    if eval_callback is None:
        raise ParameterError("auto mode needs an eval_callback (or the CLI's --eval) to score candidates")
    _check_search(search, step)
    ray_scorer.check_options(search, use_cuda, eval_callback)
    settings = _auto_settings(step, data, calibration, use_cuda)
    job = auto_mod.Job(
        scheme=step, target=target_q, metric=metric, eval=auto_mod.Eval(eval_callback, eval_iterations, use_cuda),
        multiplicity=multiplicity, keys=auto_mod.candidate_keys(search.rank_select, search.candidates),
        search=search, timer=timer, allow_slower_splits=latency.allow_slower_splits, report=report_path,
        parameters=parameters)
    proto = ir.load(model)
    first = layers.analyze(proto, input_shape, _data_shapes(data) if data is not None else None)
    _require_layers(first, every=True)
    out, stats = auto_mod.run(job, proto, first, settings, _where(model))
    _write_report(report_path, stats)
    return out, stats


def _check_search(search: Search, step: Scheme) -> None:
    if search.rank_select not in ("greedy", "tar"):
        raise ParameterError(f"rank_select must be 'greedy' or 'tar', got {search.rank_select!r}")
    if search.rank_select not in step.rank_selects:
        offer = [n for n, s in SCHEMES.items() if search.rank_select in s.rank_selects]
        raise ParameterError(f"rank_select={search.rank_select!r} applies to {' and '.join(offer)}, not {step.name}")
    if not isinstance(search.workers, int) or search.workers < 1:
        raise ParameterError(f"workers must be an integer >= 1, got {search.workers!r}")
    mb = search.cache_mb
    if mb is not None and (isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0):
        raise ParameterError(f"cache_mb must be a number of MiB >= 0 (0: no activations kept in memory), got {mb!r}")
    sources.check_halving(search)
    if search.scores_out is not None:  # found before the dictionary runs, not after
        files.check_writable(search.scores_out, "scores_out")


def _auto_settings(step: Scheme, data, calibration: Calibration, use_cuda: bool) -> Settings | None:
    if step.needs_data and data is None:
        raise ParameterError(f"{step.name} needs calibration data: pass data= (or --data)")
    if data is None:
        return None
    reference = ir.load(calibration.reference_model) if calibration.reference_model is not None else None
    return _settings(data, calibration, use_cuda, reference)
