"""The AIMET-shaped face: `ModelCompressor.compress_model` and its parameter classes, on
ONNX models. It validates AIMET's argument shapes and calls the native API (`api`)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .api import _pairs_to_dict, compress, compress_auto
from .errors import ParameterError


class CompressionScheme(Enum):
    weight_svd = "weight_svd"
    spatial_svd = "spatial_svd"
    channel_pruning = "channel_pruning"


class CostMetric(Enum):
    mac = "mac"
    memory = "memory"
    latency = "latency"  # auto mode only: layers timed with ONNX Runtime (onnx_compress.search.latency)


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
