"""Exception types. Every error the user can cause derives from CompressionError.

Messages say what was wrong, where (file or layer), what was expected, and a hint.
"""
from __future__ import annotations


class CompressionError(ValueError):
    """Root of every error onnx_compress raises on bad input or an impossible request."""


class ModelLoadError(CompressionError):
    """The model file or ModelProto cannot be read or is not a usable ONNX model."""


class LayerError(CompressionError):
    """A named layer does not exist, or the requested scheme cannot apply to it."""


class ParameterError(CompressionError):
    """A parameter is out of range or inconsistent with another."""


class ShapeError(CompressionError):
    """Shapes needed for the cost model are unknown (dynamic dimensions, no data)."""


class DataError(CompressionError):
    """Calibration or evaluation data is missing or does not match the model's inputs."""
