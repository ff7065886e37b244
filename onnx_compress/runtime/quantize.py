"""Hand-off to quantization: ONNX Runtime's static QDQ int8 quantization with calibration
data, or weight-only int4 / int8 quantization without data (`quantize_weights`).

`quantize(model, data)` pre-processes the model (ORT's shape inference and graph
optimisation, which folds BatchNormalization into the convolutions), calibrates activation
ranges on `data` (the same forms as everywhere else: .npz path, dict of arrays, iterable
of feed dicts, CalibrationDataReader) and inserts QuantizeLinear/DequantizeLinear pairs:
int8 weights (per channel by default) and int8 activations. The result is an ordinary
ONNX model that ORT and the usual target exporters (TensorRT, QNN, OpenVINO) read.

The data is checked against the model's inputs first, so a mismatch is a clear DataError
naming the input instead of an error from deep inside calibration.

`precision="int4"` and `precision="int8-weight"` need no data: they quantize the constant
weights of MatMul layers only (transformers), through ORT's MatMul n-bit quantizer (int4,
MatMulNBits) or its dynamic quantization (int8, MatMulInteger); see quantize_weights.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from .. import data as data_mod
from .. import ir
from . import quantize_weights as qw
from . import sessions as runtime
from ..errors import CompressionError, DataError, ParameterError

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PRECISIONS = ("int8",) + qw.WEIGHT_PRECISIONS
#: The step name each precision gets in the CLI's table, --stats and the report.
STEP_NAMES = {"int8": "quantized (int8 QDQ)", "int4": "quantized (int4 weights)",
              "int8-weight": "quantized (int8 weights)"}


@dataclass(frozen=True)
class QuantizeSettings:
    """per_channel: one weight scale per output channel (more accurate, the default).
    calibrate_method: "minmax" (default), "entropy" or "percentile".
    max_batches: calibrate on at most this many batches of 64 (None: all of `data`).
    preprocess: run ORT's pre-processing (shape inference, BN folding) first.
    reduce_range: 7-bit weights. x86 CPUs without VNNI compute int8 products with 16-bit
    saturation in ORT's kernels, which can cost accuracy there (VGG on digits: 0.808 ->
    0.968; the corpus BERT's int8-weight error 0.21 -> 0.011). None (the default): 7-bit
    exactly where this machine's ORT kernel saturates (int8_saturates, measured once);
    False for targets with real int8 arithmetic (VNNI, ARM, NPUs) when quantizing elsewhere.

    precision: "int8" (static QDQ, needs data), "int4" or "int8-weight" (weights only, no
    data; per_channel and reduce_range apply to int8-weight's dynamic format). For those:
    block_size: values per int4 (or 8-bit MatMulNBits) scale along a weight's input
    dimension, a power of 2 >= 16 (default 32). symmetric: no zero points (default).
    accuracy_level: MatMulNBits' compute type (0: as the input, float; 4: int8, activations
    quantized per block inside the kernel; ORT's contrib op docs); None: 4 (8-bit
    MatMulNBits with 0 ran 0.63x the float model's speed on MiniLM). int8_weight_format: "dynamic" (standard
    MatMulInteger, the faster) or "nbits" (8-bit MatMulNBits, the more accurate).
    gemm_to_matmul: rewrite Gemms as MatMul + Add so their weights are quantized too."""

    precision: str = "int8"
    per_channel: bool = True
    calibrate_method: str = "minmax"
    max_batches: int | None = None
    preprocess: bool = True
    reduce_range: bool | None = None
    use_cuda: bool = False
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int | None = None
    int8_weight_format: str = "dynamic"
    gemm_to_matmul: bool = True

    def check(self) -> "QuantizeSettings":
        if self.precision not in PRECISIONS:
            raise ParameterError(f"quantization precision must be one of {PRECISIONS}, got {self.precision!r}")
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
            raise ParameterError(f"block_size must be a power of 2 >= 16 (e.g. 32, 128), got {bs!r}")
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise ParameterError(f"accuracy_level must be 0..4 or None, got {self.accuracy_level!r}")
        if self.int8_weight_format not in qw.INT8_WEIGHT_FORMATS:
            raise ParameterError(f"int8_weight_format must be one of {qw.INT8_WEIGHT_FORMATS}, "
                                 f"got {self.int8_weight_format!r}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise ParameterError(f"calibrate_method must be one of {CALIBRATION_METHODS}, "
                                 f"got {self.calibrate_method!r}")
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ParameterError(f"max_batches must be a positive integer, got {self.max_batches!r}")
        if self.reduce_range not in (None, True, False):
            raise ParameterError(f"reduce_range must be True, False or None (auto), got {self.reduce_range!r}")
        if self.reduce_range is None:
            return replace(self, reduce_range=int8_saturates())
        return self


@functools.cache
def int8_saturates() -> bool:
    """Whether this machine's ORT int8 kernel saturates u8 x s8 sums to 16 bits (x86 without
    VNNI: vpmaddubsw), measured on one MatMulInteger whose exact result needs 32 bits."""
    from onnx import TensorProto, helper

    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [helper.make_tensor("b", TensorProto.INT8, [k, 1], [127] * k)])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    try:
        sess = runtime.session(probe, use_cuda=False)
        got = int(sess.run(None, {"a": np.full((1, k), 255, np.uint8)})[0][0, 0])
    except Exception as exc:  # a probe, never a reason to fail quantization
        log.debug("int8 saturation probe failed (%s); keeping 8-bit weights", exc)
        return False
    saturates = got != 255 * 127 * k
    if saturates:
        log.info("this CPU's int8 kernel saturates 16-bit sums (no VNNI): quantizing to 7-bit weights "
                 "(reduce_range; pass reduce_range=False / --reduce-range off for a target with VNNI)")
    return saturates


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


def quantize(model, data=None, settings: QuantizeSettings | None = None, **kwargs) -> onnx.ModelProto:
    """Quantize `model` (path or ModelProto, not modified): statically to QDQ int8, or the
    MatMul weights only to int4 / int8 (`precision="int4"` / `"int8-weight"`, no data).

    `data` calibrates int8's activation ranges; keyword arguments are QuantizeSettings fields.
    Returns the quantized ModelProto (save it with `onnx_compress.ir.save`).
    """
    settings = (settings or QuantizeSettings(**kwargs)).check()
    if settings.precision == "int8" and data is None:
        raise ParameterError("int8 (static) quantization calibrates activation ranges on data: pass data, or "
                             "quantize the weights only, without data: precision='int8-weight' or 'int4'")
    proto = ir.load(model)
    refuse_quantized(proto, model)
    where = str(model) if isinstance(model, (str, Path)) else "the model"
    if settings.precision in qw.WEIGHT_PRECISIONS:
        result = qw.quantize_weights(proto, settings, where)
        result.doc_string = proto.doc_string or result.doc_string
        return result
    return _static(proto, data, settings)


def weight_plan(model, settings: QuantizeSettings, where: str | None = None) -> qw.WeightPlan | None:
    """What int4 / int8-weight quantization of `model` quantizes and leaves float (None for
    int8); a ParameterError naming `where` (or the path) when it has no MatMul weight."""
    if settings.precision not in qw.WEIGHT_PRECISIONS:
        return None
    proto = ir.load(model)
    qw.name_nodes(proto)
    where = where or (str(model) if isinstance(model, (str, Path)) else "the model")
    return qw.check_weights(proto, settings, where)


def _static(proto: onnx.ModelProto, data, settings: QuantizeSettings) -> onnx.ModelProto:
    """ORT's static QDQ int8 quantization of `proto`, calibrated on `data`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

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
