"""ONNX Runtime: sessions and evaluation (`sessions`), weight swapping and prefix caching
(`swap`), the calibration service (`activations`), static quantization (`quantize`). The
only onnxruntime importers."""
from .sessions import (
    CUDA_MISSING, EvalCallback, _warned, channel_block, check_iterations, check_providers, checked_callback, evaluate,
    options, ort_refuses, providers, runner, score_of, session, shapes_by_execution, symbolic_shapes, with_outputs)
from .swap import PrefixCache, WeightSwapper, _feed_key, suffix_model

__all__ = [  # the sessions' and the swapper's names, as runtime.X
    "CUDA_MISSING", "EvalCallback", "PrefixCache", "WeightSwapper", "_feed_key", "_warned", "channel_block",
    "check_iterations", "check_providers", "checked_callback", "evaluate", "options", "ort_refuses", "providers",
    "runner", "score_of", "session", "shapes_by_execution", "suffix_model", "symbolic_shapes", "with_outputs"]
