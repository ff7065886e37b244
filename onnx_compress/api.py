"""The public Python API: a short native call and the AIMET-shaped ModelCompressor.

Both faces validate their parameters here, once, and run the same implementation:
load -> analyze -> choose ranks -> rewrite -> export (checked) -> measure -> evaluate.
The input model (path or ModelProto) is never modified.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

import numpy as np
import onnx

from . import cost, files, ir, latency, layers, pruning, runtime
from . import data as data_mod
from .errors import CompressionError, LayerError, ParameterError, ShapeError
from .select import manual
from .stats import CompressionStats, LayerStats, SkippedLayer, describe_parameters, per_layer_rows
from .transforms import SCHEMES, apply

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------ native API
def compress(model, scheme: str | list[str] = "weight_svd", ratios=0.5, *,
             cost_metric: str = "mac", multiplicity: int | str = 1, input_shape=None,
             eval_callback: Callable | None = None, eval_iterations: int | None = None,
             use_cuda: bool = False, data=None, num_reconstruction_samples: int = 2000,
             allow_custom_downsample_ops: bool = False, selection: str = "magnitude",
             reconstruct: bool = True, seed: int = 0, data_aware: bool = True, svd_refit: bool = False,
             modules_to_ignore=None, visualization=None) -> tuple[onnx.ModelProto, CompressionStats]:
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
    Channel pruning: data (calibration .npz path, dict of arrays, iterable of feed dicts
    or CalibrationDataReader), num_reconstruction_samples (per layer), selection
    ("magnitude", the default, or "greedy" least squares), reconstruct (least-squares refit), seed.
    SVD schemes with `data`: data-aware factors (whitened by the second moment of each
    layer's sampled inputs), unless `data_aware=False`; without data, plain SVD.
    `svd_refit` (weight SVD of Gemm/MatMul, with data): then refit each split's second
    factor by least squares, in graph order, so its outputs on the compressed model's
    inputs match the original layer's (corrects errors passed down by earlier splits).
    modules_to_ignore: layer names never to compress (skipped with that reason when one
    ratio applies to all; naming one in `ratios` too is an error).
    visualization: path of an HTML report to write (see onnx_compress.report).
    Returns the compressed ModelProto and its statistics (achieved figures measured on it).
    """
    parameters = describe_parameters(dict(locals(), function="compress"))
    report_path = _report_path(visualization)
    eval_callback = runtime.checked_callback(eval_callback)
    runtime.check_iterations(eval_iterations)
    steps = [_scheme_name(s) for s in (scheme if isinstance(scheme, (list, tuple)) else [scheme])]
    if not steps:
        raise ParameterError("scheme list is empty")
    step_ratios = _step_ratios(steps, ratios)
    metric = cost.check_metric(cost_metric)
    if metric == "latency":
        raise ParameterError("cost_metric='latency' is for auto mode (compress_auto, CLI --target): a layer's "
                             "latency is measured, not computed, so manual ratios are 'mac' or 'memory' ratios")
    multiplicity = resolve_multiplicity(multiplicity, use_cuda, parameters)
    settings = None
    if "channel_pruning" in steps or data is not None:
        settings = pruning.PruneSettings(
            data=data, num_reconstruction_samples=int(num_reconstruction_samples),
            allow_custom_downsample_ops=allow_custom_downsample_ops, selection=selection,
            reconstruct=bool(reconstruct), seed=int(seed), use_cuda=use_cuda, data_aware=bool(data_aware),
            svd_refit=bool(svd_refit))
    if "channel_pruning" in steps:
        if data is None:
            raise ParameterError("channel_pruning needs calibration data: pass data= (an .npz path, a dict "
                                 "of arrays, an iterable of feed dicts or a CalibrationDataReader)")
    proto = ir.load(model)
    first = layers.analyze(proto, input_shape, _data_shapes(data) if data is not None else None)
    _require_layers(first, every=False)
    dims = first.input_dims
    ignored = _ignored(first, modules_to_ignore)
    if not any(isinstance(r, dict) for r in step_ratios):
        _require_eligible(first, steps, ignored, model)
    baseline = runtime.evaluate(proto, eval_callback, eval_iterations, use_cuda) if eval_callback else None
    current, layer_stats, skipped = proto, [], []
    census = None
    for index, (name, step) in enumerate(zip(steps, step_ratios)):
        log.info("%s: compressing", name)
        if name == "channel_pruning":
            census = pruning.lock_census(first if index == 0 else layers.analyze(current, dims))
        step_settings = settings
        if name == "channel_pruning" and index > 0:  # refit toward the uncompressed model's outputs
            step_settings = dataclasses.replace(settings, reference=proto)
        current, lstats, lskipped = _run_step(current, name, step, metric, multiplicity, dims, step_settings,
                                              ignored)
        layer_stats += lstats
        skipped += lskipped
    if not layer_stats and any(s.reason != _UNCHANGED for s in skipped):
        raise LayerError(f"no layer of {_where(model)} can be compressed by {'+'.join(steps)} at these "
                         f"ratios: {_reasons([(s.name, s.reason) for s in skipped if s.reason != _UNCHANGED])}")
    after = layers.analyze(current, dims)
    final = runtime.evaluate(current, eval_callback, eval_iterations, use_cuda) if eval_callback else None
    stats = CompressionStats(
        scheme="+".join(steps), cost_metric=metric,
        mac_before=_total(first, "mac"), mac_after=_total(after, "mac"),
        memory_before=first.total("memory"), memory_after=after.total("memory"),
        layers=tuple(layer_stats), skipped=tuple(skipped),
        baseline_score=baseline, final_score=final, input_dims=dict(dims),
        per_layer=per_layer_rows(first, after, layer_stats, skipped), parameters=parameters,
        channel_groups=census,
    )
    _write_report(report_path, stats)
    return current, stats


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


def _run_step(proto, name: str, ratios, metric: str, multiplicity: int, dims, settings, ignored=None):
    """One scheme on `proto`: returns (new proto, layer stats, skipped layers).
    `ignored`: layer name -> why it is left out (never compressed)."""
    analysis = layers.analyze(proto, dims)
    if name == "channel_pruning":
        plans, skipped = manual.plan_channels(analysis, pruning.check_layer, ratios, ignored)
        out, lstats, more = pruning.prune(proto, plans, settings, dims, multiplicity,
                                          named=isinstance(ratios, dict))
        return out, lstats, skipped + more
    scheme_obj = SCHEMES[name]
    plans, skipped = manual.plan(analysis, scheme_obj, ratios, metric, multiplicity, ignored)
    moments = None
    if settings is not None and settings.data is not None and settings.data_aware and plans:
        from .moments import input_moments

        moments = input_moments(proto, [p.layer for p in plans], name, settings.data,
                                settings.num_reconstruction_samples, settings.seed, settings.use_cuda)
    new_nodes = apply(analysis, scheme_obj, plans, moments)
    out = ir.export(analysis.graph, proto)
    refit_gains = {}
    if (name == "weight_svd" and plans and settings is not None and settings.data is not None
            and settings.data_aware and settings.svd_refit):
        from .refit import refit_second_factors

        out, refit_gains = refit_second_factors(out, proto, plans, new_nodes, settings)
    layer_stats = []
    for plan in plans:
        mac_rc = scheme_obj.rank_cost(plan.layer, "mac") if plan.layer.mac is not None else None
        mem_rc = scheme_obj.rank_cost(plan.layer, "memory")
        rc = mac_rc if metric == "mac" else mem_rc
        layer_stats.append(LayerStats(
            name=plan.layer.name, op=plan.layer.op, scheme=scheme_obj.name,
            requested_ratio=float(plan.requested), achieved_ratio=float(rc.ratio(plan.rank)),
            rank=plan.rank, full_rank=rc.full_rank,
            mac_before=plan.layer.mac, mac_after=mac_rc.at(plan.rank) if mac_rc else None,
            memory_before=plan.layer.memory, memory_after=mem_rc.at(plan.rank),
            new_nodes=tuple(new_nodes[plan.layer.name]),
            note="; ".join(filter(None, [plan.note, f"refit: output error x{refit_gains[plan.layer.name]:.3f}"
                                         if plan.layer.name in refit_gains else ""])),
        ))
    return out, layer_stats, skipped


def _check_reach(units, current_total: int, total: int, target_q, metric: str, skipped) -> None:
    """ParameterError, before the eval-score dictionary is paid for, when every unit at its
    cheapest candidate still leaves the model above the target (SVD: exact unit costs)."""
    fixed = current_total - sum(u.base_cost for u in units)
    cheapest = fixed + sum(min(c.cost for c in u.candidates) for u in units)
    allowed = (target_q.numerator * int(total)) // target_q.denominator
    if cheapest > allowed:
        raise ParameterError(
            f"target {float(target_q):g} cannot be reached: the smallest achievable {metric} ratio is "
            f"{cheapest / total:.4f} (every selected layer at its cheapest candidate){_left_out(units, skipped)}")


def _left_out(units, skipped) -> str:
    """'; N layers selected, the rest left out: 'name': reason (+k more: reason (n), ...)'."""
    text = f"; {len(units)} layer{'s' if len(units) != 1 else ''} or group{'s' if len(units) != 1 else ''} selectable"
    gone = [s for s in skipped if s.reason]
    if not gone:
        return text
    counts = Counter(s.reason.split(":")[0][:70] for s in gone)
    first = gone[0]
    more = "" if len(gone) == 1 else (f" (+{len(gone) - 1} more; by reason: "
                                       + ", ".join(f"{k} ({n})" for k, n in counts.most_common(3)) + ")")
    return f"{text}, left out: '{first.name}': {first.reason}{more}"


def _dry_run(proto, analysis, name: str, names: list[str], metric: str, multiplicity: int, dims, settings) -> None:
    """Rewrite the layers `names` of a copy at ratio 0.5 (plain SVD; pruning without
    reconstruction, on few samples) and check the result, before the eval-score dictionary
    is paid for: a model that the rewrite cannot write validly fails in seconds, not after
    every evaluation. Per-layer refusals are left to the search, which reports them."""
    if not names:
        return
    others = {layer.name: "not in this run" for layer in analysis.compressible if layer.name not in set(names)}
    quick = None
    if name == "channel_pruning":
        quick = dataclasses.replace(settings, reconstruct=False, selection="magnitude",
                                    num_reconstruction_samples=min(64, settings.num_reconstruction_samples))
    try:
        _run_step(proto, name, 0.5, metric, multiplicity, dims, quick, others)
    except CompressionError as exc:
        log.debug("dry run: %s", exc)


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


_UNCHANGED = "ratio 1.0: left unchanged"


def _where(model) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else "the model"


def _reasons(items: list[tuple[str, str]]) -> str:
    """'name': reason (+k more; by reason: r (n), ...) for a one-line error."""
    if not items:
        return f"it has no {', '.join(layers.LAYER_OPS[:-1])} or {layers.LAYER_OPS[-1]} layer"
    name, reason = items[0]
    if len(items) == 1:
        return f"'{name}': {reason}"
    counts = Counter(r.split(":")[0][:70] for _, r in items)
    return (f"'{name}': {reason} (+{len(items) - 1} more; by reason: "
            + ", ".join(f"{k} ({n})" for k, n in counts.most_common(3)) + ")")


def _require_eligible(analysis: layers.Analysis, steps: list[str], ignored: dict[str, str], model) -> None:
    """LayerError, before any work, when no step of `steps` applies to any layer of the model
    (every layer refused, ignored or of a kind the scheme cannot take), with the reasons."""
    why: dict[str, str] = {l.name: l.reason for l in analysis.layers if l.reason}
    for layer in analysis.compressible:
        for step in steps:
            check = pruning.check_layer if step == "channel_pruning" else SCHEMES[step].check
            reason = ignored.get(layer.name) or check(layer)
            if reason is None:
                return
            why.setdefault(layer.name, reason)
    raise LayerError(f"no layer of {_where(model)} can be compressed by {'+'.join(steps)}: "
                     f"{_reasons(list(why.items()))}")


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
    out = {}
    for name, scheme in SCHEMES.items():
        why = scheme.check(layer)
        if why is None and (metric == "memory" or layer.mac is not None):
            rc = scheme.rank_cost(layer, metric)
            if rc.max_rank == 0:
                why = f"{name} is never cheaper than this layer ({metric} at rank 1: {rc.at(1)} >= {rc.before})"
        out[name] = why
    why = pruning.check_layer(layer)
    if why is None and analysis is not None:
        from .transforms import depgraph

        group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
        if group.all_locked:
            why = f"no channel can be removed: {group.lock_summary()}"
    out["channel_pruning"] = why
    return out


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


SCHEME_NAMES = ("weight_svd", "spatial_svd", "channel_pruning")


def _scheme_name(scheme) -> str:
    name = str(getattr(scheme, "value", scheme)).lower()
    if name not in SCHEME_NAMES:
        raise ParameterError(f"unknown scheme {scheme!r}; expected one of {list(SCHEME_NAMES)}")
    return name


def _pairs_to_dict(pairs) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in pairs:
        if isinstance(p, ModuleCompRatioPair):
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


# ------------------------------------------------------------------- AIMET-shaped API
class CompressionScheme(Enum):
    weight_svd = "weight_svd"
    spatial_svd = "spatial_svd"
    channel_pruning = "channel_pruning"


class CostMetric(Enum):
    mac = "mac"
    memory = "memory"
    latency = "latency"  # auto mode only: layers timed with ONNX Runtime (onnx_compress.latency)


class RankSelectScheme(Enum):
    greedy = "greedy"
    tar = "tar"


@dataclass(frozen=True)
class ModuleCompRatioPair:
    """A layer (named by its ONNX node name) and its compression ratio."""

    module: str
    comp_ratio: float


@dataclass(frozen=True)
class GreedySelectionParameters:
    target_comp_ratio: float
    num_comp_ratio_candidates: int = 10
    use_monotonic_fit: bool = False
    saved_eval_scores_dict: str | None = None


class _Mode(Enum):
    manual = "manual"
    auto = "auto"


@dataclass(frozen=True)
class _ManualModeParams:
    list_of_module_comp_ratio_pairs: list


@dataclass(frozen=True)
class _SvdAutoModeParams:
    """Auto mode: `greedy_select_params`, layers to ignore, and the rank selection scheme."""

    greedy_select_params: GreedySelectionParameters
    modules_to_ignore: list | None = None
    rank_select_scheme: RankSelectScheme = RankSelectScheme.greedy


class _SvdParameters:
    Mode = _Mode
    ManualModeParams = _ManualModeParams
    AutoModeParams = _SvdAutoModeParams
    scheme = ""

    def __init__(self, mode, params, multiplicity: int | str = 1, data_loader=None, num_reconstruction_samples: int = 2000):
        self.mode = mode
        self.data_loader = data_loader
        self.num_reconstruction_samples = num_reconstruction_samples
        self.params = params
        self.multiplicity = multiplicity

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode}, params={self.params}, multiplicity={self.multiplicity})"


class WeightSvdParameters(_SvdParameters):
    """Weight SVD settings: mode (Mode.manual/auto), its params, rank multiplicity (an integer or "auto")."""

    scheme = "weight_svd"


class SpatialSvdParameters(_SvdParameters):
    """Spatial SVD settings: mode (Mode.manual/auto), its params, rank multiplicity (an integer or "auto")."""

    scheme = "spatial_svd"


@dataclass(frozen=True)
class _ChannelAutoModeParams:
    greedy_select_params: GreedySelectionParameters
    modules_to_ignore: list | None = None


class ChannelPruningParameters:
    """Channel pruning settings (AIMET's shape).

    data_loader: calibration data (.npz path, dict of arrays, iterable of feed dicts, or a
    CalibrationDataReader); num_reconstruction_samples: samples per layer for the
    least-squares refit; allow_custom_downsample_ops: insert channel Gathers where
    upstream producers cannot lose channels (otherwise those channels are kept and reported).
    """

    Mode = _Mode
    ManualModeParams = _ManualModeParams
    AutoModeParams = _ChannelAutoModeParams
    scheme = "channel_pruning"

    def __init__(self, data_loader, num_reconstruction_samples: int, allow_custom_downsample_ops: bool,
                 mode, params, multiplicity: int | str = 1):
        self.data_loader = data_loader
        self.num_reconstruction_samples = num_reconstruction_samples
        self.allow_custom_downsample_ops = allow_custom_downsample_ops
        self.mode = mode
        self.params = params
        self.multiplicity = multiplicity

    def __repr__(self) -> str:
        return (f"ChannelPruningParameters(mode={self.mode}, params={self.params}, "
                f"num_reconstruction_samples={self.num_reconstruction_samples}, "
                f"allow_custom_downsample_ops={self.allow_custom_downsample_ops}, "
                f"multiplicity={self.multiplicity})")


class ModelCompressor:
    """AIMET's entry point, on ONNX models."""

    @staticmethod
    def compress_model(model, eval_callback, eval_iterations, input_shape, compress_scheme,
                       cost_metric, parameters, trainer=None, visualization_url=None):
        """Compress `model` (path or ModelProto); return (compressed ModelProto, statistics).

        eval_callback(session, iterations, use_cuda) -> float, where session is an
        onnxruntime.InferenceSession of the candidate model; it may be None in manual mode.
        visualization_url: a path ending in .html writes a self-contained report there
        (AIMET's live Bokeh server URLs are accepted and ignored with a warning).
        """
        scheme = str(getattr(compress_scheme, "value", compress_scheme))
        if not isinstance(parameters, (_SvdParameters, ChannelPruningParameters)):
            raise ParameterError(
                "parameters must be WeightSvdParameters, SpatialSvdParameters or "
                f"ChannelPruningParameters, got {type(parameters).__name__}"
            )
        if parameters.scheme != scheme:
            raise ParameterError(
                f"compress_scheme is {scheme} but parameters are {type(parameters).__name__}"
            )
        mode = getattr(parameters.mode, "value", parameters.mode)
        extra = {}
        if isinstance(parameters, ChannelPruningParameters):
            extra = dict(data=parameters.data_loader,
                         num_reconstruction_samples=parameters.num_reconstruction_samples,
                         allow_custom_downsample_ops=parameters.allow_custom_downsample_ops)
        if mode == "auto":
            auto = parameters.params
            greedy_params = getattr(auto, "greedy_select_params", None)
            if not isinstance(greedy_params, GreedySelectionParameters):
                raise ParameterError("auto mode needs params=AutoModeParams(GreedySelectionParameters(...))")
            rank = getattr(auto, "rank_select_scheme", RankSelectScheme.greedy)
            extra.pop("allow_custom_downsample_ops", None)
            return compress_auto(
                model, scheme, greedy_params.target_comp_ratio, eval_callback, eval_iterations,
                cost_metric=cost_metric, candidates=greedy_params.num_comp_ratio_candidates,
                use_monotonic_fit=greedy_params.use_monotonic_fit,
                saved_eval_scores_dict=greedy_params.saved_eval_scores_dict,
                rank_select=str(getattr(rank, "value", rank)), modules_to_ignore=auto.modules_to_ignore,
                trainer=trainer, multiplicity=parameters.multiplicity, input_shape=input_shape,
                visualization=visualization_url, **extra)
        if mode != "manual" or not isinstance(parameters.params, _ManualModeParams):
            raise ParameterError("manual mode needs params=ManualModeParams(list_of_module_comp_ratio_pairs)")
        if trainer is not None:
            raise ParameterError("trainer (per-layer fine-tuning) runs in auto mode; in manual mode, "
                                 "fine-tune the returned model yourself")
        ratios = _pairs_to_dict(parameters.params.list_of_module_comp_ratio_pairs)
        return compress(model, scheme, ratios, cost_metric=cost_metric,
                        multiplicity=parameters.multiplicity, input_shape=input_shape,
                        eval_callback=eval_callback, eval_iterations=eval_iterations,
                        visualization=visualization_url, **extra)


# ------------------------------------------------------------------------- auto mode
def compress_auto(model, scheme: str, target: float, eval_callback: Callable, eval_iterations: int | None = None,
                  *, cost_metric: str = "mac", candidates: int = 10, use_monotonic_fit: bool = False,
                  method: str = "knapsack", rank_select: str = "greedy", modules_to_ignore=None,
                  config_list=None, saved_eval_scores_dict=None, scores_out=None, workers: int = 1,
                  trainer=None, multiplicity: int | str = 1, input_shape=None, use_cuda: bool = False, data=None,
                  num_reconstruction_samples: int = 2000, selection: str = "magnitude", reconstruct: bool = True,
                  seed: int = 0, progress: Callable | None = None,
                  verify_finalists: bool = True, data_aware: bool = True, reference_model=None, svd_refit: bool = False,
                  visualization=None, latency_batch_size: int | None = None,
                  allow_slower_splits: bool | None = None,
                  latency_repeats: int = 21) -> tuple[onnx.ModelProto, CompressionStats]:
    """Auto mode: choose per-layer ratios so the model's cost ratio meets `target`.

    Builds the eval-score dictionary (every selected layer alone at each of the
    `candidates` - 1 ratios i/N, scored with `eval_callback(session, iterations, use_cuda)`),
    then picks one ratio per layer maximising the expected score without exceeding the
    target (`method`: "knapsack", exact; or "threshold", AIMET's bisection). The achieved
    ratio is measured on the result. `rank_select="tar"` (weight/spatial SVD) uses
    relative-error levels as candidates instead of ratios. `config_list` / `modules_to_ignore`
    choose the layers (NNI style; entries with a `ratio` are fixed). The dictionary is
    returned in the statistics, saved as JSON to `scores_out` when given, and reused from
    `saved_eval_scores_dict` (a path) without evaluations when it matches the model.
    `trainer.train_model(model, layer_name, train_flag=True) -> ModelProto` is called after
    each layer of the final compression. `progress(done, total)` reports the dictionary.
    `reference_model` (channel pruning after another step): the uncompressed model whose
    layer outputs the pruned layers are refit toward, where it has them (so the refit also
    corrects the earlier step's error).
    `verify_finalists` (SVD schemes): score the selections of both objectives and of the
    threshold method on the real combined model (a few more evaluations) and keep the best.
    `visualization`: path of an HTML report to write (see onnx_compress.report).

    Latency (onnx_compress.latency): every unit's original layer and candidates are timed
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
    parameters = describe_parameters(dict(locals(), function="compress_auto"))
    report_path = _report_path(visualization)
    from .select import config as config_mod
    from .select import greedy, prune_units, scores_io

    name = _scheme_name(scheme)
    metric = cost.check_metric(cost_metric)
    eval_callback = runtime.checked_callback(eval_callback)
    runtime.check_iterations(eval_iterations)
    if isinstance(target, (bool, np.bool_)):
        raise ParameterError(f"target_comp_ratio: ratio must be a number in (0, 1], got {target!r}")
    grid = "mac" if metric == "latency" else metric  # candidates (and fixed ratios) on the MAC grid
    multiplicity = resolve_multiplicity(multiplicity, use_cuda, parameters)
    target_q = cost.check_ratio(target, "target_comp_ratio")
    timer = _latency_timer(metric, latency_batch_size, allow_slower_splits, latency_repeats, use_cuda)
    if eval_callback is None:
        raise ParameterError("auto mode needs an eval_callback (or the CLI's --eval) to score candidates")
    if rank_select not in ("greedy", "tar"):
        raise ParameterError(f"rank_select must be 'greedy' or 'tar', got {rank_select!r}")
    if rank_select == "tar" and name == "channel_pruning":
        raise ParameterError("rank_select='tar' applies to weight_svd and spatial_svd, not channel_pruning")
    if not isinstance(workers, int) or workers < 1:
        raise ParameterError(f"workers must be an integer >= 1, got {workers!r}")
    if scores_out is not None:  # found before the dictionary runs, not after
        files.check_writable(scores_out, "scores_out")
    settings = None
    if name == "channel_pruning" and data is None:
        raise ParameterError("channel_pruning needs calibration data: pass data= (or --data)")
    if data is not None:
        settings = pruning.PruneSettings(data=data, num_reconstruction_samples=int(num_reconstruction_samples),
                                         selection=selection, reconstruct=bool(reconstruct), seed=int(seed),
                                         use_cuda=use_cuda, data_aware=bool(data_aware), svd_refit=bool(svd_refit),
                                         reference=ir.load(reference_model) if reference_model is not None else None)
    keys = greedy.tar_levels(candidates) if rank_select == "tar" else greedy.candidate_keys(candidates)
    proto = ir.load(model)
    first = layers.analyze(proto, input_shape, _data_shapes(data) if data is not None else None)
    _require_layers(first, every=True)
    dims = first.input_dims
    total = first.total(grid)
    checker = pruning.check_layer if name == "channel_pruning" else SCHEMES[name].check
    eligible = [l for l in first.compressible if checker(l) is None]
    if not eligible:
        _require_eligible(first, [name], {}, model)
    resolution = config_mod.resolve(eligible, config_list, modules_to_ignore)
    skipped = [SkippedLayer(l.name, l.op, l.reason) for l in first.layers if l.reason]
    skipped += [SkippedLayer(l.name, l.op, checker(l)) for l in first.compressible if checker(l)]
    skipped += [SkippedLayer(n, first.find(n).op, why) for n, why in resolution.excluded.items()]
    current, layer_stats = proto, []
    if resolution.fixed:
        current, fixed_stats, more = _run_step(current, name, dict(resolution.fixed), grid, multiplicity, dims, settings)
        layer_stats += fixed_stats
        skipped += more
    analysis = layers.analyze(current, dims)
    if name == "channel_pruning":
        units, left = prune_units.group_units(current, analysis, list(resolution.auto), keys, settings, grid,
                                              multiplicity)
    else:
        moments = None
        if settings is not None and settings.data_aware:
            from .moments import input_moments

            targets = [analysis.find(n) for n in resolution.auto]
            moments = input_moments(current, targets, name, data, settings.num_reconstruction_samples,
                                    settings.seed, use_cuda)
        units, left = greedy.svd_units(analysis, name, list(resolution.auto), keys, grid, multiplicity,
                                       tar=rank_select == "tar", moments=moments)
    skipped += [SkippedLayer(n, analysis.find(n).op, why) for n, why in left.items()]
    if not units and not resolution.fixed:
        raise LayerError(f"no layer of {_where(model)} can be compressed by {name}: "
                         f"{_reasons([(k.name, k.reason) for k in _dedupe(skipped) if k.reason])}")
    _dry_run(current, analysis, name, list(resolution.auto), grid, multiplicity, dims, settings)
    if name != "channel_pruning" and metric != "latency":  # exact unit costs: refuse before any evaluation
        _check_reach(units, analysis.total(grid), total, target_q, grid, skipped)
    timed = None
    if timer is not None:
        timer.batch_size = timer.batch_size or (next(iter(dims.values()))[0] if dims else 1)
        timed = latency.prepare(proto, current, dims, units, name, metric, timer,
                                allow_slower=allow_slower_splits is True)
        units = timed.units
        skipped += [SkippedLayer(n, analysis.find(n).op, why) for n, why in timed.gone.items()]
    digest = scores_io.model_digest(current.SerializeToString())
    scheme_key = name if rank_select == "greedy" else f"{name}/tar"
    if name != "channel_pruning" and settings is not None and settings.data_aware:
        scheme_key += "/data-aware"
    if multiplicity > 1:  # other sizes behind the same ratio keys: a table made for another multiplicity is refused
        scheme_key += f"/multiplicity-{multiplicity}"
    if saved_eval_scores_dict is not None:
        table = scores_io.load(saved_eval_scores_dict)
        scores_io.check_matches(table, digest, scheme_key, grid, keys, [u.name for u in units])
        dictionary = greedy.from_table(table)
        dictionary.loaded_from = str(saved_eval_scores_dict)
    else:
        dictionary = greedy.build_dictionary(current, units, eval_callback, eval_iterations, use_cuda,
                                             workers=workers, progress=progress)
    if scores_out is not None:
        scores_io.save(greedy.to_table(dictionary, digest, scheme_key, grid, keys), scores_out)
    current_total = analysis.total(grid)
    measure = None
    if metric == "latency":
        total, current_total = timed.total, timed.current_total
        measure = _latency_measure(name, current, dims, timer)
    try:
        chosen, out, step_stats, more = _select_and_apply(
            units, dictionary, current, current_total, total, target_q, method, use_monotonic_fit,
            name, grid, multiplicity, dims, settings, trainer,
            verify=(eval_callback, eval_iterations, use_cuda) if verify_finalists else None, measure=measure,
            exact=timed.estimator() if measure is not None and name == "channel_pruning" else None)
    except ParameterError as exc:
        if "cannot be reached" not in str(exc):
            raise
        raise ParameterError(f"{exc}{_left_out(units, skipped)}") from None
    layer_stats += step_stats
    skipped += more
    final = runtime.evaluate(out, eval_callback, eval_iterations, use_cuda)
    after = layers.analyze(out, dims)
    selection_info = {
        "method": method, "rank_select": rank_select, "target": float(target_q), "candidates": keys,
        "baseline": dictionary.baseline,
        "scores": {u: {scores_io.format_ratio(k): v for k, v in s.items()} for u, s in dictionary.scores.items()},
        "chosen": {u: opt.ratio for u, opt in chosen.choices.items()},
        "expected_score": chosen.expected_score, "evaluations": dictionary.evaluations,
        "dictionary_seconds": dictionary.seconds, "eval_seconds": dictionary.eval_seconds,
        "session_seconds": dictionary.session_seconds, "loaded_from": dictionary.loaded_from,
        "fixed": dict(resolution.fixed), "verified": list(dictionary.verified),
    }
    stats = CompressionStats(
        scheme=name, cost_metric=metric, mac_before=_total(first, "mac"), mac_after=_total(after, "mac"),
        memory_before=first.total("memory"), memory_after=after.total("memory"), layers=tuple(layer_stats),
        skipped=tuple(_dedupe(skipped)), baseline_score=dictionary.baseline, final_score=final,
        input_dims=dict(dims), selection=selection_info,
        per_layer=per_layer_rows(first, after, layer_stats, _dedupe(skipped)), parameters=parameters,
        latency=_latency_summary(timed, proto, out, dims, chosen, total, measure, allow_slower_splits is True),
        channel_groups=pruning.lock_census(analysis) if name == "channel_pruning" else None,
    )
    _write_report(report_path, stats)
    return out, stats


def _latency_timer(metric, batch_size, allow_slower_splits, repeats, use_cuda):
    """A latency timer when auto mode times layers (latency metric or the slower-split check)."""
    batch_size = latency.check_batch_size(batch_size)
    if allow_slower_splits not in (None, True, False):
        raise ParameterError(f"allow_slower_splits must be None, True or False, got {allow_slower_splits!r}")
    if metric != "latency" and allow_slower_splits is not False:
        if batch_size is not None:
            log.warning("latency_batch_size has no effect: nothing is timed unless cost_metric='latency' "
                        "or allow_slower_splits=False")
        return None
    return latency.Timer(batch_size=batch_size or 0, use_cuda=use_cuda, repeats=repeats)


def _latency_measure(name, current, dims, timer):
    """The achieved cost under the latency metric: SVD, the selection's own sum (each split
    as measured); channel pruning, the pruned model's layers timed (upstream savings included),
    each relative to the same layer of `current`."""
    reference = latency.layer_variants(current, dims, timer.batch_size) if name == "channel_pruning" else None
    if name == "channel_pruning":
        return lambda out, chosen: latency.model_total(out, dims, timer, reference)[0]
    return lambda out, chosen: chosen.cost


def _latency_summary(timed, proto, out, dims, chosen, total, measure, allow_slower):
    """The statistics' latency section: per-layer sums (latency metric) and end to end."""
    if timed is None:
        return None
    after = measure(out, chosen) if measure is not None else None
    model = latency.end_to_end([proto, out], dims, timed.timer)
    return latency.summary(timed.timer, timed.lat, timed.dropped, total if measure else None, after, model,
                           allow_slower=allow_slower)


def _exact_goal(units, dictionary, current, current_total, total, target_q, method, use_monotonic_fit, metric, dims,
                exact=None, objective="product"):
    """The largest budget whose selection's *exact* model cost meets the target.

    Channel-pruning unit costs leave out upstream savings, so the selection under the
    target itself undershoots; bisection on the budget with the exact (bilinear) cost of
    each selection finds the selection that uses the target fully.
    """
    from .select import greedy, prune_units

    if exact is None:  # `exact(choices)`: the model's cost of a selection (latency: an estimate)
        costs = prune_units.layer_costs(layers.analyze(current, dims), metric)

        def exact(choices):
            return prune_units.exact_cost(units, choices, costs)

    def fits(goal) -> bool:
        try:
            sel = greedy.choose(units, dictionary, current_total, total, goal, method, use_monotonic_fit,
                                objective=objective)
        except ParameterError:
            return False
        choices = {u: o.ratio for u, o in sel.choices.items()}
        return Fraction(exact(choices), total) <= target_q

    if not fits(target_q):
        return None
    lo, hi = Fraction(target_q), Fraction(1)
    if fits(hi):
        return hi
    for _ in range(20):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _verified_choice(units, dictionary, current, current_total, total, target_q, method, use_monotonic_fit, verify,
                     goal_of=None, scored=None):
    """Score the finalist selections on the real combined model; keep the best.

    Finalists: the selection `method` makes under both objectives ("product", "sum") and,
    for the knapsack, AIMET's threshold selection. Each is scored once with every chosen
    weight swapped in, and ties keep the first (the requested method under the default
    objective). For SVD this is the combined model exactly (the units' weights do not
    overlap). For channel pruning each group's weights were refit on the original model's
    activations, while the final build refits each layer on the pruned model's own: the
    swapped-in score estimates the built model's, and ranks the finalists.
    `goal_of(method, objective)`: the budget to hand that solver (None: it has no
    selection that meets the target); default: the target itself.
    """
    from .select import greedy

    eval_callback, iterations, use_cuda = verify
    finalists = []
    for meth, objective in ((method, "product"), (method, "sum"), ("threshold", "product")):
        if meth == "threshold" and method == "threshold" and objective == "product" and finalists:
            continue
        goal = target_q if goal_of is None else goal_of(meth, objective)
        if goal is None:
            continue
        try:
            sel = greedy.choose(units, dictionary, current_total, total, goal, meth, use_monotonic_fit,
                                objective=objective)
        except ParameterError:
            if not finalists and meth == method and goal_of is None:
                raise
            continue
        key = tuple(sorted((u, o.ratio) for u, o in sel.choices.items()))
        if key not in {k for k, _ in finalists}:
            finalists.append((key, sel))
    if len(finalists) <= 1:
        return finalists[0][1] if finalists else None
    by_unit = {u.name: u for u in units}
    swapper = runtime.WeightSwapper(current, sorted({n for u in units for n in u.weights}),
                                    use_cuda)
    best, best_score = None, None
    for _, sel in finalists:
        overrides = {}
        for u, opt in sel.choices.items():
            if opt.ratio != 1.0:
                cand = next(c for c in by_unit[u].candidates if c.key == opt.ratio)
                overrides.update(by_unit[u].overrides(cand))
        score = float(eval_callback(swapper.session(overrides), iterations, use_cuda))
        dictionary.verified.append({"method": sel.method, "expected": sel.expected_score, "score": score,
                                    "estimate": goal_of is not None})
        if scored is not None:
            scored.append((sel, score))
        if best_score is None or score > best_score:
            best, best_score = sel, score
    return best


def _select_and_apply(units, dictionary, current, current_total, total, target_q, method, use_monotonic_fit,
                      name, metric, multiplicity, dims, settings, trainer, verify=None, measure=None, exact=None):
    """Choose and apply; for channel pruning, correct toward the target with measurements.

    SVD unit costs are exact. Channel-pruning unit costs are an upper bound (upstream
    savings are not counted), so the measured ratio can fall short of the target: the
    budget is then relaxed by the shortfall and the selection repeated (a few times),
    keeping the best-scoring result that meets the target. `measure(out, chosen)`: the
    achieved cost when it is not the layers' MACs/memory (latency); `exact(choices)`: the
    model's cost of a channel-pruning selection (default: exact MACs/memory).
    """
    from .select import greedy

    by_unit = {u.name: u for u in units}

    def build(sel):
        """(out, layer stats, skipped) of the model with selection `sel` applied."""
        ratios = {u: _ratio_of(by_unit[u], opt.ratio) for u, opt in sel.choices.items() if opt.ratio != 1.0}
        return _final(current, name, ratios, metric, multiplicity, dims, settings, trainer)

    def achieved(out, sel) -> Fraction:
        """The built model's cost ratio, as measured."""
        return Fraction(measure(out, sel) if measure else layers.analyze(out, dims).total(metric), total)

    if name != "channel_pruning" and verify is not None:
        chosen = _verified_choice(units, dictionary, current, current_total, total, target_q, method,
                                  use_monotonic_fit, verify)
        return (chosen, *build(chosen))
    if (name == "channel_pruning" and (measure is None or exact is not None) and units
            and all(u.effects is not None for u in units)):
        goal = _exact_goal(units, dictionary, current, current_total, total, target_q, method, use_monotonic_fit,
                           metric, dims, exact)
        if goal is not None:
            chosen = None
            if verify is not None:
                def goal_of(meth, objective):
                    if meth == method and objective == "product":
                        return goal
                    return _exact_goal(units, dictionary, current, current_total, total, target_q, meth,
                                       use_monotonic_fit, metric, dims, exact, objective=objective)

                scored = []
                chosen = _verified_choice(units, dictionary, current, current_total, total, target_q, method,
                                          use_monotonic_fit, verify, goal_of=goal_of, scored=scored)
                built = _build_close_finalists(scored, chosen, build, achieved, verify, dictionary, target_q)
                if built is not None:
                    return built
            if chosen is None:
                chosen = greedy.choose(units, dictionary, current_total, total, goal, method, use_monotonic_fit)
            out, step_stats, more = build(chosen)
            if achieved(out, chosen) <= target_q:
                return chosen, out, step_stats, more
    goal, best, tries = target_q, None, (4 if name == "channel_pruning" and trainer is None else 1)
    for _ in range(tries):
        try:
            chosen = greedy.choose(units, dictionary, current_total, total, goal, method, use_monotonic_fit)
        except ParameterError:  # a corrected goal below reach: keep what was measured so far
            if goal == target_q:
                raise
            break
        out, step_stats, more = build(chosen)
        ratio = achieved(out, chosen)
        if ratio <= target_q and (best is None or chosen.expected_score > best[0].expected_score):
            best = (chosen, out, step_stats, more)
        gap = target_q - ratio
        if abs(gap) < Fraction(1, 200):
            break
        new_goal = min(Fraction(1), goal + gap)
        if new_goal <= 0 or new_goal == goal:
            break
        goal = new_goal
    if best is None:
        raise ParameterError(f"no selection met the target {float(target_q):g} once measured "
                             f"(last: {float(ratio):.4f}); lower the target a little")
    return best


CLOSE_CALL = 0.01  # finalists estimated within this fraction of the baseline score are built and scored


def _build_close_finalists(scored, chosen, build, achieved, verify, dictionary, target_q):
    """Channel pruning: when finalists' estimated scores are a close call (within
    CLOSE_CALL x |baseline| of the best), build each of them for real (`build(sel)`, its
    ratio `achieved(out, sel)`) and keep the best built model that meets the target.
    Returns (chosen, out, stats, skipped) or None."""
    if chosen is None or len(scored) < 2:
        return None
    best_estimate = max(score for _, score in scored)
    margin = CLOSE_CALL * max(abs(dictionary.baseline), 1e-12)
    close = [sel for sel, score in scored if score >= best_estimate - margin]
    if len(close) < 2:
        return None
    eval_callback, iterations, use_cuda = verify
    best = None
    for sel in close:
        out, step_stats, more = build(sel)
        if achieved(out, sel) > target_q:
            continue
        score = runtime.evaluate(out, eval_callback, iterations, use_cuda)
        dictionary.verified.append({"method": sel.method, "expected": sel.expected_score, "score": score,
                                    "estimate": False})
        if best is None or score > best[0]:
            best = (score, (sel, out, step_stats, more))
    return None if best is None else best[1]


def _ratio_of(unit, key: float) -> Fraction:
    """The manual ratio that reproduces a unit's chosen candidate exactly."""
    return next(c.ratio for c in unit.candidates if c.key == key)


def _final(proto, name, ratios, metric, multiplicity, dims, settings, trainer):
    """Apply the chosen ratios; with a trainer, one layer at a time, training after each."""
    if trainer is None or not ratios:
        return _run_step(proto, name, ratios, metric, multiplicity, dims, settings)
    current, stats, skipped = proto, [], []
    for layer_name, ratio in ratios.items():
        current, s, k = _run_step(current, name, {layer_name: ratio}, metric, multiplicity, dims, settings)
        stats += s
        skipped += k
        updated = trainer.train_model(current, layer_name, train_flag=True)
        if not isinstance(updated, onnx.ModelProto):
            raise ParameterError(f"trainer.train_model must return an onnx.ModelProto, got {type(updated).__name__}")
        current = updated
    return current, stats, skipped


def _dedupe(skipped: list[SkippedLayer]) -> list[SkippedLayer]:
    seen, out = set(), []
    for s in skipped:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out
