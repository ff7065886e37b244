"""The public Python API: a short native call and the AIMET-shaped ModelCompressor.

Both faces validate their parameters here, once, and run the same implementation:
load -> analyze -> choose ranks -> rewrite -> export (checked) -> measure -> evaluate.
The input model (path or ModelProto) is never modified.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import onnx

from . import cost, ir, layers, runtime
from .errors import ParameterError
from .select import manual
from .stats import CompressionStats, LayerStats
from .transforms import SCHEMES, apply

log = logging.getLogger(__name__)

ModelLike = "str | os.PathLike | onnx.ModelProto"


# ------------------------------------------------------------------------ native API
def compress(model, scheme: str = "weight_svd", ratios: dict[str, float] | float = 0.5, *,
             cost_metric: str = "mac", multiplicity: int = 1, input_shape=None,
             eval_callback: Callable | None = None, eval_iterations: int | None = None,
             use_cuda: bool = False) -> tuple[onnx.ModelProto, CompressionStats]:
    """Compress `model` with `scheme` at manually chosen per-layer ratios.

    model: path or ModelProto (not modified). scheme: "weight_svd" or "spatial_svd".
    ratios: {layer name: ratio in (0, 1]} or one ratio for every layer the scheme applies
    to; a ratio is the layer's cost after / before under `cost_metric` ("mac"/"memory").
    multiplicity: ranks are rounded down to multiples of it (never to 0).
    input_shape: fixes dynamic input dims for the cost model: a tuple, a list of tuples in
    input order, or {input name: tuple}.
    eval_callback(session, iterations, use_cuda) -> float scores the model before and
    after (optional). Returns the compressed ModelProto and its statistics.
    """
    scheme_obj = _scheme(scheme)
    metric = cost.check_metric(cost_metric)
    multiplicity = cost.check_multiplicity(multiplicity)
    if isinstance(ratios, (list, tuple)):
        ratios = _pairs_to_dict(ratios)
    proto = ir.load(model)
    analysis = layers.analyze(proto, input_shape)
    plans, skipped = manual.plan(analysis, scheme_obj, ratios, metric, multiplicity)
    baseline = runtime.evaluate(proto, eval_callback, eval_iterations, use_cuda) if eval_callback else None
    log.info("%s: splitting %d layer(s)", scheme_obj.name, len(plans))
    new_nodes = apply(analysis, scheme_obj, plans)
    out = ir.export(analysis.graph, proto)
    after = layers.analyze(out, analysis.input_dims)
    final = runtime.evaluate(out, eval_callback, eval_iterations, use_cuda) if eval_callback else None
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
            new_nodes=tuple(new_nodes[plan.layer.name]), note=plan.note,
        ))
    stats = CompressionStats(
        scheme=scheme_obj.name, cost_metric=metric,
        mac_before=_total(analysis, "mac"), mac_after=_total(after, "mac"),
        memory_before=analysis.total("memory"), memory_after=after.total("memory"),
        layers=tuple(layer_stats), skipped=tuple(skipped),
        baseline_score=baseline, final_score=final, input_dims=dict(analysis.input_dims),
    )
    return out, stats


def inspect(model, input_shape=None) -> layers.Analysis:
    """Analyze `model`: its layers with shapes, MACs, memory and skip reasons."""
    return layers.analyze(ir.load(model), input_shape)


def eligibility(layer: layers.Layer) -> dict[str, str | None]:
    """Scheme name -> None when the scheme applies to `layer`, else the reason it does not."""
    return {name: s.check(layer) for name, s in SCHEMES.items()}


def _total(analysis: layers.Analysis, metric: str) -> int | None:
    try:
        return analysis.total(metric)
    except Exception:  # MACs unknown for some layer: totals only where measurable
        return None


def _scheme(scheme):
    name = str(getattr(scheme, "value", scheme)).lower()
    if name == "channel_pruning":
        raise ParameterError("channel_pruning is not available yet in this version")
    if name not in SCHEMES:
        raise ParameterError(f"unknown scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    return SCHEMES[name]


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
    greedy_select_params: GreedySelectionParameters
    modules_to_ignore: list | None = None
    rank_select_scheme: RankSelectScheme = RankSelectScheme.greedy


class _SvdParameters:
    Mode = _Mode
    ManualModeParams = _ManualModeParams
    AutoModeParams = _SvdAutoModeParams
    scheme = ""

    def __init__(self, mode, params, multiplicity: int = 1):
        self.mode = mode
        self.params = params
        self.multiplicity = multiplicity

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode}, params={self.params}, multiplicity={self.multiplicity})"


class WeightSvdParameters(_SvdParameters):
    """Weight SVD settings: mode (Mode.manual/auto), its params, rank multiplicity."""

    scheme = "weight_svd"


class SpatialSvdParameters(_SvdParameters):
    """Spatial SVD settings: mode (Mode.manual/auto), its params, rank multiplicity."""

    scheme = "spatial_svd"


class ModelCompressor:
    """AIMET's entry point, on ONNX models."""

    @staticmethod
    def compress_model(model, eval_callback, eval_iterations, input_shape, compress_scheme,
                       cost_metric, parameters, trainer=None, visualization_url=None):
        """Compress `model` (path or ModelProto); return (compressed ModelProto, statistics).

        eval_callback(session, iterations, use_cuda) -> float, where session is an
        onnxruntime.InferenceSession of the candidate model; it may be None in manual mode.
        """
        scheme = str(getattr(compress_scheme, "value", compress_scheme))
        if not isinstance(parameters, _SvdParameters):
            raise ParameterError(
                f"parameters must be WeightSvdParameters or SpatialSvdParameters for {scheme}, "
                f"got {type(parameters).__name__}"
            )
        if parameters.scheme != scheme:
            raise ParameterError(
                f"compress_scheme is {scheme} but parameters are {type(parameters).__name__}"
            )
        mode = getattr(parameters.mode, "value", parameters.mode)
        if mode == "auto":
            raise ParameterError(
                "auto mode (greedy ratio selection) is not available yet in this version; "
                "use Mode.manual with ManualModeParams"
            )
        if mode != "manual" or not isinstance(parameters.params, _ManualModeParams):
            raise ParameterError("manual mode needs params=ManualModeParams(list_of_module_comp_ratio_pairs)")
        if trainer is not None:
            raise ParameterError("trainer (per-layer fine-tuning) is not available yet in manual mode")
        ratios = _pairs_to_dict(parameters.params.list_of_module_comp_ratio_pairs)
        return compress(model, scheme, ratios, cost_metric=cost_metric,
                        multiplicity=parameters.multiplicity, input_shape=input_shape,
                        eval_callback=eval_callback, eval_iterations=eval_iterations)
