"""ONNX Runtime: sessions, execution providers, evaluation. The only onnxruntime user.

`use_cuda=True` selects CUDAExecutionProvider when the installed onnxruntime (the
onnxruntime-gpu package) offers it; otherwise evaluation runs on the CPU with a warning.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from .errors import CompressionError
from .ir import PROTO_LIMIT

log = logging.getLogger(__name__)

EvalCallback = Callable[[ort.InferenceSession, "int | None", bool], float]


def providers(use_cuda: bool = False) -> list[str]:
    """Execution providers for a session: CUDA first when asked for and available."""
    available = ort.get_available_providers()
    if use_cuda:
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        warnings.warn(
            "use_cuda=True but this onnxruntime has no CUDAExecutionProvider (install "
            "onnxruntime-gpu instead of onnxruntime, and check the CUDA libraries); using the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
    return ["CPUExecutionProvider"]


def session(model: onnx.ModelProto | str, use_cuda: bool = False, threads: int | None = None,
            extra_outputs: list[str] | None = None) -> ort.InferenceSession:
    """An InferenceSession for a ModelProto or a path."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto) and extra_outputs:
        model = with_outputs(model, extra_outputs)
    try:
        if isinstance(model, onnx.ModelProto):
            if model.ByteSize() >= PROTO_LIMIT:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "model.onnx")
                    onnx.save_model(model, path, save_as_external_data=True, location="model.data")
                    return ort.InferenceSession(path, opts, providers=providers(use_cuda))
            return ort.InferenceSession(model.SerializeToString(), opts, providers=providers(use_cuda))
        return ort.InferenceSession(str(model), opts, providers=providers(use_cuda))
    except Exception as exc:
        raise CompressionError(f"ONNX Runtime cannot load the model: {exc}") from None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the intermediate tensors `names`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def evaluate(model: onnx.ModelProto, eval_callback: EvalCallback, iterations: int | None,
             use_cuda: bool) -> float:
    """Score `model` with the user's callback: eval_callback(session, iterations, use_cuda)."""
    sess = session(model, use_cuda)
    score = eval_callback(sess, iterations, use_cuda)
    try:
        return float(score)
    except (TypeError, ValueError):
        raise CompressionError(
            f"eval_callback must return a number (higher is better), got {type(score).__name__}"
        ) from None


class WeightSwapper:
    """Sessions of one model with some initializers replaced, without rebuilding it.

    The named main-graph initializers are marked as external data in a prepared copy
    serialised once; each `session(overrides)` then hands ONNX Runtime the current or
    overridden arrays from memory (`add_external_initializers`), so the candidate keeps
    every graph optimisation of a normal session (constant folding, fusions, prepacking).
    """

    def __init__(self, model: onnx.ModelProto, names: list[str], use_cuda: bool = False,
                 threads: int | None = None):
        inits = {t.name: t for t in model.graph.initializer}
        missing = [n for n in names if n not in inits]
        if missing:
            raise CompressionError(f"cannot swap {missing}: not initializers of the main graph")
        self.values = {n: onnx.numpy_helper.to_array(inits[n]) for n in names}
        prepared = onnx.ModelProto()
        prepared.CopyFrom(model)
        for t in prepared.graph.initializer:
            if t.name in self.values:
                nbytes = self.values[t.name].nbytes
                for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
                    t.ClearField(field)
                del t.external_data[:]
                for key, value in (("location", "onnx_compress.swap"), ("offset", "0"), ("length", str(nbytes))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                t.data_location = onnx.TensorProto.EXTERNAL
        self.model_bytes = prepared.SerializeToString()
        self.use_cuda = use_cuda
        self.threads = threads

    def session(self, overrides: dict | None = None) -> ort.InferenceSession:
        """A session of the model with `overrides` (name -> same-shaped array) swapped in."""
        overrides = overrides or {}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        names = list(self.values)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(overrides.get(n, self.values[n])))
                  for n in names]
        opts.add_external_initializers(names, values)
        sess = ort.InferenceSession(self.model_bytes, opts, providers=providers(self.use_cuda))
        sess._onnx_compress_keepalive = values  # the session reads these buffers
        return sess
