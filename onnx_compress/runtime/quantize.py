"""Hand-off to quantization: ONNX Runtime's static QDQ quantization with calibration data.

`quantize(model, data)` pre-processes the model (ORT's shape inference and graph
optimisation, which folds BatchNormalization into the convolutions), calibrates activation
ranges on `data` (the same forms as everywhere else: .npz path, dict of arrays, iterable
of feed dicts, CalibrationDataReader) and inserts QuantizeLinear/DequantizeLinear pairs:
int8 weights (per channel by default) and int8 activations. The result is an ordinary
ONNX model that ORT and the usual target exporters (TensorRT, QNN, OpenVINO) read.

The data is checked against the model's inputs first, so a mismatch is a clear DataError
naming the input instead of an error from deep inside calibration.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import data as data_mod
from .. import ir
from . import sessions as runtime
from ..errors import CompressionError, DataError, ParameterError

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PRECISIONS = ("int8",)


@dataclass(frozen=True)
class QuantizeSettings:
    """per_channel: one weight scale per output channel (more accurate, the default).
    calibrate_method: "minmax" (default), "entropy" or "percentile".
    max_batches: calibrate on at most this many batches of 64 (None: all of `data`).
    preprocess: run ORT's pre-processing (shape inference, BN folding) first.
    reduce_range: 7-bit weights. x86 CPUs without VNNI compute int8 products with 16-bit
    saturation in ORT's kernels, which can cost accuracy there (VGG on digits: 0.808 ->
    0.968); keep False for targets with real int8 arithmetic (VNNI, ARM, NPUs)."""

    precision: str = "int8"
    per_channel: bool = True
    calibrate_method: str = "minmax"
    max_batches: int | None = None
    preprocess: bool = True
    reduce_range: bool = False
    use_cuda: bool = False

    def check(self) -> "QuantizeSettings":
        if self.precision not in PRECISIONS:
            raise ParameterError(f"quantization precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise ParameterError(f"calibrate_method must be one of {CALIBRATION_METHODS}, "
                                 f"got {self.calibrate_method!r}")
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ParameterError(f"max_batches must be a positive integer, got {self.max_batches!r}")
        return self


class _Reader:
    """ORT CalibrationDataReader over our feed dicts (labels dropped, dtypes matched)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)


def calibration_feeds(proto: onnx.ModelProto, data, max_batches: int | None = None,
                      where: str = "quantization data") -> list[dict[str, np.ndarray]]:
    """The calibration batches, adapted to the model's inputs (data.model_feeds: batch axes,
    scalars, a static batch, safe dtype casts) and checked (names, ranks, static dims)."""
    specs = data_mod.model_inputs(proto)
    feeds = []
    for feed in data_mod.model_feeds(data, specs, where=where):
        out = {k: feed[k] for k in specs}
        feeds.append(out)
        if max_batches is not None and len(feeds) >= max_batches:
            break
    if not feeds:
        raise DataError(f"{where}: the data source is empty")
    return feeds


def quantize(model, data, settings: QuantizeSettings | None = None, **kwargs) -> onnx.ModelProto:
    """Statically quantize `model` (path or ModelProto, not modified) to QDQ int8.

    `data` calibrates the activation ranges; keyword arguments are QuantizeSettings fields.
    Returns the quantized ModelProto (save it with `onnx_compress.ir.save`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = (settings or QuantizeSettings(**kwargs)).check()
    proto = ir.load(model)
    refuse_quantized(proto, model)
    feeds = calibration_feeds(proto, data, settings.max_batches)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.calibrate_method]
    with tempfile.TemporaryDirectory(prefix="onnx_compress_q_") as tmp:
        src = Path(tmp) / "float.onnx"
        ir.save(proto, src)
        if settings.preprocess:
            pre = Path(tmp) / "pre.onnx"
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                src = pre
            except Exception as exc:  # pre-processing is an optimisation, not a requirement
                log.warning("quantization pre-processing failed (%s); quantizing the model as it is", exc)
        out = Path(tmp) / "quant.onnx"
        log.info("calibrating on %d batches (%s) and quantizing", len(feeds), settings.calibrate_method)
        chatter = io.StringIO()  # ORT's calibrators print to stdout; the library prints nothing
        try:
            with contextlib.redirect_stdout(chatter), _quiet_root_logger():
                quantize_static(
                    str(src), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    calibration_providers=runtime.providers(settings.use_cuda),
                    use_external_data_format=ir.uses_external_data(src),
                )
        except CompressionError:
            raise
        except Exception as exc:
            raise CompressionError(f"ONNX Runtime quantization failed: {type(exc).__name__}: {exc}") from None
        finally:
            if chatter.getvalue().strip():
                log.debug("onnxruntime.quantization: %s", chatter.getvalue().strip())
        result = onnx.load(str(out))
    # keep the user's metadata; ORT keeps opset and producer as it needs them
    result.doc_string = proto.doc_string or result.doc_string
    return result


#: Ops that mark a model as quantized already (QDQ pairs, QOperator kernels, ORT's n-bit
#: weight formats): quantizing it again would duplicate its quantization parameters.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QGemm", "MatMulNBits",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention",
})


def quantized_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names (or op types) of the nodes that make `proto` a quantized model, subgraphs included."""
    return [node.name or node.op_type for g in ir.all_graphs(proto.graph) for node in g.node
            if node.op_type in QUANTIZED_OPS]


def refuse_quantized(proto: onnx.ModelProto, model) -> None:
    """ParameterError naming `model` (a path, or 'the model') when `proto` is already quantized."""
    found = quantized_nodes(proto)
    if found:
        where = model if isinstance(model, (str, Path)) else "the model"
        raise ParameterError(f"{where} is already quantized ({len(found)} quantization node(s), e.g. "
                             f"'{found[0]}'); quantize the float model instead")


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantization tools log advice with `logging.warning(...)` on the root logger.

    A filter on the root logger turns those records into our debug messages (a logger's
    filters see only records logged on it, so our own loggers' records pass untouched),
    and a NullHandler keeps `logging.warning` from configuring the root logger as a side
    effect when the application has not.
    """
    root = logging.getLogger()
    guard = _RootToDebug()
    null = logging.NullHandler() if not root.handlers else None
    root.addFilter(guard)
    if null:
        root.addHandler(null)
    try:
        yield
    finally:
        root.removeFilter(guard)
        if null:
            root.removeHandler(null)


class _RootToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("onnxruntime.quantization: %s", record.getMessage())
        return False


def file_size(path) -> int:
    """Bytes on disk of a model file and its external data files."""
    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    seen = set()
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in seen:
                seen.add(loc)
                f = path.parent / loc
                if f.is_file():
                    total += f.stat().st_size
    return total
