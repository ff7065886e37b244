"""The AIMET-shaped face: `ModelCompressor.compress_model` and its parameter classes, on
ONNX models. It validates AIMET's argument shapes and calls the native API (`api`)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

from .api import _pairs_to_dict, compress, compress_auto
from . import stats as _stats
from .errors import ParameterError


# AIMET's enums with AIMET's integer values (CompressionScheme(1), CostMetric(2), Mode.auto.value == 2);
# the library reads them by name, so the names double as this project's scheme and metric strings.
class CompressionScheme(Enum):
    weight_svd = 1
    spatial_svd = 2
    channel_pruning = 3


class CostMetric(Enum):
    mac = 1
    memory = 2
    latency = 3  # not AIMET's; auto mode only: layers timed with ONNX Runtime (onnx_compress.search.latency)


class RankSelectScheme(Enum):
    greedy = 1
    tar = 2  # AIMET 1.x's TAR rank selection


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
    manual = 1
    auto = 2


@dataclass(frozen=True)
class _ManualModeParams:
    list_of_module_comp_ratio_pairs: list


class _GreedyAutoModeParams:
    """Auto mode (spatial SVD, channel pruning): AIMET's `AutoModeParams(greedy_select_params,
    modules_to_ignore=None)`; `greedy_params` is AIMET's attribute name for the first."""

    def __init__(self, greedy_select_params: GreedySelectionParameters, modules_to_ignore: list | None = None):
        self.greedy_select_params = greedy_select_params
        self.modules_to_ignore = modules_to_ignore

    @property
    def greedy_params(self) -> GreedySelectionParameters:
        return self.greedy_select_params

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(greedy_select_params={self.greedy_select_params}, "
                f"modules_to_ignore={self.modules_to_ignore})")


_NO_ARG = object()


class _SvdAutoModeParams(_GreedyAutoModeParams):
    """Weight SVD auto mode in AIMET's order: `AutoModeParams(rank_select_scheme, select_params,
    modules_to_ignore=None)`. This project's earlier order `(greedy_select_params,
    modules_to_ignore, rank_select_scheme)` and the keyword `greedy_select_params` still work:
    the arguments are told apart by type."""

    def __init__(self, rank_select_scheme=_NO_ARG, select_params=None, modules_to_ignore=None,
                 greedy_select_params=None):
        args = [a for a in (rank_select_scheme, select_params, modules_to_ignore) if a is not _NO_ARG]
        greedy = greedy_select_params
        rank = RankSelectScheme.greedy
        ignore = None
        for a in args:
            if isinstance(a, GreedySelectionParameters):
                if greedy is not None and greedy is not a:
                    raise ParameterError("AutoModeParams got two GreedySelectionParameters "
                                         "(select_params and greedy_select_params)")
                greedy = a
            elif isinstance(a, RankSelectScheme) or a in ("greedy", "tar"):
                rank = a
            elif a is None or isinstance(a, (list, tuple, set)):
                ignore = ignore if a is None else list(a)
            else:
                raise ParameterError("AutoModeParams(rank_select_scheme, select_params, modules_to_ignore=None): "
                                     f"cannot use {type(a).__name__} {a!r}")
        if greedy is None:
            raise ParameterError("AutoModeParams needs select_params=GreedySelectionParameters(...)")
        super().__init__(greedy, ignore)
        self.rank_select_scheme = rank

    @property
    def select_params(self) -> GreedySelectionParameters:
        return self.greedy_select_params


class _SvdParameters:
    Mode = _Mode
    ManualModeParams = _ManualModeParams
    AutoModeParams = _GreedyAutoModeParams
    scheme = ""

    def __init__(self, mode, params, multiplicity: int | str = 1, data_loader=None, num_reconstruction_samples: int = 2000):
        self.mode = mode
        self.data_loader = data_loader
        self.num_reconstruction_samples = num_reconstruction_samples
        self.params = params
        self.multiplicity = multiplicity

    @property
    def mode_params(self):
        """AIMET's name for `params`."""
        return self.params

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode}, params={self.params}, multiplicity={self.multiplicity})"


class WeightSvdParameters(_SvdParameters):
    """Weight SVD settings: mode (Mode.manual/auto), its params, rank multiplicity (an integer or "auto")."""

    scheme = "weight_svd"
    AutoModeParams = _SvdAutoModeParams


class SpatialSvdParameters(_SvdParameters):
    """Spatial SVD settings: mode (Mode.manual/auto), its params, rank multiplicity (an integer or "auto")."""

    scheme = "spatial_svd"


_ChannelAutoModeParams = _GreedyAutoModeParams


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

    @property
    def mode_params(self):
        """AIMET's name for `params`."""
        return self.params

    def __repr__(self) -> str:
        return (f"ChannelPruningParameters(mode={self.mode}, params={self.params}, "
                f"num_reconstruction_samples={self.num_reconstruction_samples}, "
                f"allow_custom_downsample_ops={self.allow_custom_downsample_ops}, "
                f"multiplicity={self.multiplicity})")


_RULE = "*" * 94


class CompressionStats(_stats.CompressionStats):
    """The statistics `ModelCompressor.compress_model` returns: this project's figures (see
    onnx_compress.stats) and AIMET's field names; `str()` is AIMET's layout."""

    def __str__(self) -> str:
        def f(x):
            return "None" if x is None else format(x, ".6f")

        lines = [_RULE, "Compressed Model Statistics",
                 f"Baseline model accuracy: {f(self.baseline_model_accuracy)}, "
                 f"Compressed model accuracy: {f(self.compressed_model_accuracy)}",
                 f"Compression ratio for memory={f(self.memory_compression_ratio)}, "
                 f"mac={f(self.mac_compression_ratio)}", "", _RULE, "", "Per-layer Stats"]
        lines += [f"    Name:{s.name}, compression-ratio: {f(s.compression_ratio)}" for s in self.per_layer_stats]
        lines += ["", _RULE]
        scores = self.compression_ratio_selection_stats
        if scores is None:
            lines.append("None")
        else:
            lines += ["", "Greedy Eval Dict"]
            for layer, by_ratio in scores.items():
                lines.append(f"    Layer: {layer}")
                lines += [f"        Ratio={r}, Eval score={v}" for r, v in sorted(by_ratio.items(), key=lambda kv: float(kv[0]))]
        lines.append(_RULE)
        return "\n".join(lines) + "\n"


def _aimet_stats(result):
    model, native = result
    return model, CompressionStats(**{f.name: getattr(native, f.name) for f in fields(native)})


def _name(value) -> str:
    """An enum member's name (AIMET's enums carry integers) or the string given."""
    return str(value.name if isinstance(value, Enum) else value).lower()


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
        scheme = _name(compress_scheme)
        if not isinstance(parameters, (_SvdParameters, ChannelPruningParameters)):
            raise ParameterError(
                "parameters must be WeightSvdParameters, SpatialSvdParameters or "
                f"ChannelPruningParameters, got {type(parameters).__name__}"
            )
        if parameters.scheme != scheme:
            raise ParameterError(
                f"compress_scheme is {scheme} but parameters are {type(parameters).__name__}"
            )
        mode = _name(parameters.mode)
        extra = {}
        if isinstance(parameters, _SvdParameters) and parameters.data_loader is not None:
            # data-aware SVD, exactly as the native API's data= (never silently plain SVD)
            extra = dict(data=parameters.data_loader,
                         num_reconstruction_samples=parameters.num_reconstruction_samples)
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
            return _aimet_stats(compress_auto(
                model, scheme, greedy_params.target_comp_ratio, eval_callback, eval_iterations,
                cost_metric=cost_metric, candidates=greedy_params.num_comp_ratio_candidates,
                use_monotonic_fit=greedy_params.use_monotonic_fit,
                saved_eval_scores_dict=greedy_params.saved_eval_scores_dict,
                rank_select=_name(rank), modules_to_ignore=auto.modules_to_ignore,
                trainer=trainer, multiplicity=parameters.multiplicity, input_shape=input_shape,
                visualization=visualization_url, **extra))
        if mode != "manual" or not isinstance(parameters.params, _ManualModeParams):
            raise ParameterError("manual mode needs params=ManualModeParams(list_of_module_comp_ratio_pairs)")
        ratios = _pairs_to_dict(parameters.params.list_of_module_comp_ratio_pairs)
        return _aimet_stats(compress(model, scheme, ratios, cost_metric=cost_metric,
                                     multiplicity=parameters.multiplicity, input_shape=input_shape,
                                     eval_callback=eval_callback, eval_iterations=eval_iterations,
                                     visualization=visualization_url, trainer=trainer, **extra))
