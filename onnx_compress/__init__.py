"""onnx_compress: compress neural networks at the ONNX graph level.

Two faces over one implementation: `compress(model, scheme, ratios, ...)` and the
AIMET-shaped `ModelCompressor.compress_model(...)`. See README.md.
"""
from __future__ import annotations

from .api import (
    ChannelPruningParameters,
    CompressionScheme,
    CostMetric,
    GreedySelectionParameters,
    ModelCompressor,
    ModuleCompRatioPair,
    RankSelectScheme,
    SpatialSvdParameters,
    WeightSvdParameters,
    compress,
    compress_auto,
    inspect,
)
from .errors import CompressionError, DataError, LayerError, ModelLoadError, ParameterError, ShapeError
from .ir import save
from .quantization import QuantizeSettings, quantize
from .stats import CompressionStats, LayerStats, SkippedLayer

__version__ = "0.1.0"

__all__ = [
    "ChannelPruningParameters", "CompressionError", "CompressionScheme", "CompressionStats", "CostMetric", "DataError",
    "GreedySelectionParameters", "LayerError", "LayerStats", "ModelCompressor", "ModelLoadError",
    "ModuleCompRatioPair", "ParameterError", "QuantizeSettings", "quantize", "RankSelectScheme", "ShapeError", "SkippedLayer",
    "SpatialSvdParameters", "WeightSvdParameters", "compress", "compress_auto", "inspect", "save",
]
