"""ONNX Runtime: sessions and evaluation (`sessions`), the calibration service
(`activations`), static quantization (`quantize`). The only onnxruntime importers."""
from .sessions import (  # noqa: F401  (the sessions module's names, as runtime.X)
    CUDA_MISSING, EvalCallback, PrefixCache, WeightSwapper, _feed_key, _warned, channel_block, check_iterations,
    check_providers, checked_callback, evaluate, options, ort_refuses, providers, runner, score_of, session,
    shapes_by_execution, suffix_model, symbolic_shapes, with_outputs)
