"""onnx_compress: compress neural networks at the ONNX graph level.

Two faces over one implementation: `compress(model, scheme, ratios, ...)` and the
AIMET-shaped `ModelCompressor.compress_model(...)`; every scheme is an entry of
`onnx_compress.schemes.SCHEMES` (`schemes.register` adds your own). See README.md.
"""
from __future__ import annotations

from . import schemes
from .aimet import (
    ChannelPruningParameters,
    CompressionScheme,
    CostMetric,
    GreedySelectionParameters,
    ModelCompressor,
    ModuleCompRatioPair,
    RankSelectScheme,
    SpatialSvdParameters,
    WeightSvdParameters,
)
from .api import compress, compress_auto, inspect
from .errors import CompressionError, DataError, LayerError, ModelLoadError, ParameterError, ShapeError
from .ir import save
from .runtime.quantize import QuantizeSettings, quantize
from .stats import CompressionStats, LayerStats, SkippedLayer

__version__ = "0.1.0"

__all__ = [
    "ChannelPruningParameters", "CompressionError", "CompressionScheme", "CompressionStats", "CostMetric", "DataError",
    "GreedySelectionParameters", "LayerError", "LayerStats", "ModelCompressor", "ModelLoadError",
    "ModuleCompRatioPair", "ParameterError", "QuantizeSettings", "quantize", "RankSelectScheme", "ShapeError", "SkippedLayer",
    "SpatialSvdParameters", "WeightSvdParameters", "compress", "compress_auto", "inspect", "save", "schemes",
]
