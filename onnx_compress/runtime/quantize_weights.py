"""Weight-only quantization, no calibration data: `int4` and `int8-weight`.

Transformers hold most of their weights in MatMuls with a constant 2-D weight (the Q/K/V,
output and feed-forward projections). These precisions quantize those weights only:

* `int4`: ONNX Runtime's MatMul n-bit quantizer (`MatMulNBitsQuantizer`, round to
  nearest): every weight becomes 4-bit integers in blocks of `block_size` (default 32)
  values along the input dimension, one float scale per block (symmetric by default; a
  4-bit zero point per block when asymmetric), run by the com.microsoft `MatMulNBits`
  contrib op (ONNX Runtime's CPU, CUDA, DirectML and WebGPU providers). A 32-value block
  takes 16 bytes of codes + a 4-byte scale: 6.4x smaller than float32.
* `int8-weight`: int8 weights (per output column by default), no calibration. Two ways,
  measured on all-MiniLM-L6-v2 (ORT 1.32 CPU, 1 thread, batch 1 x sequence 128, median of
  40 paired runs; cosine of the sentence embeddings to the float model's on 256 sentences):
  ORT's dynamic quantization (`int8_weight_format="dynamic"`, the default: standard ONNX ops
  DynamicQuantizeLinear + MatMulInteger, activations quantized per tensor at run time) ran
  2.0x faster than float (10.5 vs 20.7 ms) at mean cosine 0.994; 8-bit MatMulNBits
  (`"nbits"`, accuracy_level 4) ran 1.03x (20.0 ms; 0.63x with accuracy_level 0) at 0.9997
  and needs ORT's contrib op. Dynamic is the default as the faster one and standard ONNX;
  "nbits" is the more accurate one. (int4 there: 1.0x, 20.7 ms, cosine 0.967; the files
  are only 1.5-1.7x smaller because the 47 MB embedding table stays float.)

Only MatMul weights are quantized. A Gemm with a constant weight and no transA is first
rewritten as MatMul + Add (the same arithmetic; alpha folded into the weight, beta into
the bias), so classifier heads are quantized too (`gemm_to_matmul=False` keeps them).
Conv, recurrent layers, embedding tables (Gather) and MatMuls whose weight is shared with
other nodes stay float; `plan(...)` lists them with the reason, and the CLI prints it. A
model with no MatMul weight to quantize is refused with a ParameterError naming it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ir
from ..errors import CompressionError, ParameterError

log = logging.getLogger(__name__)

WEIGHT_PRECISIONS = ("int4", "int8-weight")
INT8_WEIGHT_FORMATS = ("dynamic", "nbits")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
_FP16 = "float16 weights: int8_weight_format='nbits' (--int8-weight-format nbits) takes them"
_FLOAT_LAYERS = {"Conv": "Conv weights stay float (weight-only quantization takes MatMul weights)",
                 "ConvTranspose": "ConvTranspose weights stay float (weight-only quantization takes MatMul weights)",
                 "LSTM": "recurrent weights stay float", "GRU": "recurrent weights stay float",
                 "RNN": "recurrent weights stay float"}


@dataclass(frozen=True)
class WeightPlan:
    """What weight-only quantization does to a model: the MatMuls whose constant weight it
    quantizes (`matmuls`), the Gemms rewritten as MatMul + Add first and then quantized
    (`gemms`), and the layers that stay float as (name, op, reason) (`left_float`)."""

    precision: str
    matmuls: tuple[str, ...]
    gemms: tuple[str, ...]
    left_float: tuple[tuple[str, str, str], ...]

    @property
    def quantized(self) -> tuple[str, ...]:
        return self.matmuls + self.gemms

    def note(self) -> str:
        """One line: how many weights were quantized and which layers stay float."""
        bits = "4 bits" if self.precision == "int4" else "int8"
        text = f"{len(self.quantized)} MatMul weight(s) in {bits}"
        if self.gemms:
            text += f" ({len(self.gemms)} of them Gemm, rewritten as MatMul + Add)"
        if self.left_float:
            counts = Counter(op for _, op, _ in self.left_float)
            text += "; left float: " + ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
        return text

    def to_dict(self) -> dict:
        return {"precision": self.precision, "quantized_layers": len(self.quantized),
                "gemms_as_matmul": len(self.gemms),
                "left_float": [{"name": n, "op": op, "reason": why} for n, op, why in self.left_float],
                "note": self.note()}


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for g in ir.all_graphs(proto.graph) for t in g.initializer}


def _readers(proto: onnx.ModelProto) -> Counter:
    """How many node inputs (subgraphs included) and graph outputs read each tensor."""
    count = Counter(i for g in ir.all_graphs(proto.graph) for n in g.node for i in n.input if i)
    count.update(o.name for o in proto.graph.output)
    return count


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _gemm_reason(node, inits, readers, floats) -> str | None:
    """Why a Gemm cannot be rewritten as MatMul + Add and quantized (None: it can)."""
    b = inits.get(node.input[1])
    if b is None or len(b.dims) != 2 or b.data_type not in _FLOATS:
        return "its weight is not a constant 2-D float tensor"
    if b.data_type not in floats:
        return _FP16
    if _attr(node, "transA", 0):
        return "Gemm with transA stays float"
    if readers[b.name] > 1:
        return "its weight is shared with other nodes"
    c = node.input[2] if len(node.input) > 2 else ""
    if c and _attr(node, "beta", 1.0) != 1.0 and (c not in inits or readers[c] > 1):
        return "Gemm with beta != 1 and a computed or shared bias stays float"
    return None


def _matmul_reason(node, inits, readers, floats) -> str | None:
    """Why a MatMul with a constant weight cannot be quantized (None: it can)."""
    w = inits[node.input[1]]
    if w.data_type not in _FLOATS:
        return f"its weight is {onnx.TensorProto.DataType.Name(w.data_type)}, not float"
    if w.data_type not in floats:
        return _FP16
    if len(w.dims) < 2 or any(d != 1 for d in w.dims[:-2]):
        return f"its weight has shape {list(w.dims)}, not 2-D"
    if readers[w.name] > 1:
        return "its weight is shared with other nodes"
    return None


def plan(proto: onnx.ModelProto, precision: str = "int4", gemm_to_matmul: bool = True,
         int8_weight_format: str = "dynamic") -> WeightPlan:
    """The weight-only quantization of `proto` (named nodes, constants folded: ir.load)."""
    inits, readers = _initializers(proto), _readers(proto)
    dynamic = precision == "int8-weight" and int8_weight_format == "dynamic"
    floats = (onnx.TensorProto.FLOAT,) if dynamic else _FLOATS  # ORT's DynamicQuantizeLinear: float32 only
    matmuls, gemms, left = [], [], []
    for g in ir.all_graphs(proto.graph):
        for node in g.node:
            name = node.name or node.op_type
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
                why = _matmul_reason(node, inits, readers, floats)
                (left.append((name, "MatMul", why)) if why else matmuls.append(name))
            elif node.op_type == "Gemm":
                why = _gemm_reason(node, inits, readers, floats) if gemm_to_matmul else "gemm_to_matmul=False"
                (left.append((name, "Gemm", why)) if why else gemms.append(name))
            elif node.op_type in _FLOAT_LAYERS and len(node.input) > 1 and node.input[1] in inits:
                left.append((name, node.op_type, _FLOAT_LAYERS[node.op_type]))
            elif node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2 \
                    and inits[node.input[0]].data_type in _FLOATS:
                left.append((name, "Gather", "embedding tables stay float"))
    return WeightPlan(precision, tuple(matmuls), tuple(gemms), tuple(left))


def name_nodes(proto: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (ORT's quantizers select nodes by name)."""
    taken = {n.name for g in ir.all_graphs(proto.graph) for n in g.node if n.name}
    for g in ir.all_graphs(proto.graph):
        for i, node in enumerate(g.node):
            if not node.name:
                node.name = ir.unique_name(f"{node.op_type}_{i}", taken)
                taken.add(node.name)


def check_weights(proto: onnx.ModelProto, settings, where: str) -> WeightPlan:
    """The plan for `settings` (QuantizeSettings), or a ParameterError naming `where` when
    there is no MatMul weight to quantize."""
    p = plan(proto, settings.precision, settings.gemm_to_matmul, settings.int8_weight_format)
    if not p.quantized:
        counts = Counter(op for _, op, _ in p.left_float)
        has = ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "no layer with a constant weight"
        if p.left_float:
            has += f"; '{p.left_float[0][0]}': {p.left_float[0][2]}"
        raise ParameterError(f"{where}: {settings.precision} quantization takes MatMul layers with a constant 2-D "
                             f"weight (and Gemms), and the model has none to take ({has}); quantize convolutional "
                             f"models with int8 (static, with calibration data)")
    return p


def gemms_to_matmul(proto: onnx.ModelProto, names: tuple[str, ...]) -> None:
    """Rewrite the named Gemms (checked by `plan`) as MatMul (same name) + Add, in place.

    Y = alpha * A @ op(B) + beta * C becomes MatMul(A, alpha * op(B)) + Add(beta * C); the
    weight keeps its initializer name. Exact up to float rounding of alpha * B and beta * C.
    """
    wanted = set(names)
    inits = _initializers(proto)
    for g in ir.all_graphs(proto.graph):
        nodes = list(g.node)
        new = []
        for node in nodes:
            if node.op_type != "Gemm" or node.name not in wanted:
                new.append(node)
                continue
            alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
            w = inits[node.input[1]]
            b = ir.to_array(w).astype(np.float32 if w.data_type == onnx.TensorProto.FLOAT else np.float16)
            b = b.T if _attr(node, "transB", 0) else b
            w.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(b * b.dtype.type(alpha)), w.name))
            c = node.input[2] if len(node.input) > 2 else ""
            if not c:
                new.append(helper.make_node("MatMul", node.input[:2], node.output, name=node.name))
                continue
            if c in inits and beta != 1.0:
                t = inits[c]
                bias = ir.to_array(t)
                t.CopyFrom(numpy_helper.from_array((bias * bias.dtype.type(beta)).astype(bias.dtype), t.name))
            mid = f"{node.output[0]}_matmul"
            new.append(helper.make_node("MatMul", node.input[:2], [mid], name=node.name))
            new.append(helper.make_node("Add", [mid, c], node.output, name=f"{node.name}_bias"))
        g.ClearField("node")
        g.node.extend(new)


def quantize_weights(proto: onnx.ModelProto, settings, where: str) -> onnx.ModelProto:
    """Weight-only quantization of `proto` (a private copy: it is changed) per `settings`
    (runtime.quantize.QuantizeSettings, checked); `where` names the model in errors."""
    name_nodes(proto)
    p = check_weights(proto, settings, where)
    if p.gemms:
        gemms_to_matmul(proto, p.gemms)
    targets = set(p.quantized)
    skip = [n.name for g in ir.all_graphs(proto.graph) for n in g.node if n.op_type == "MatMul"
            and n.name not in targets]
    log.info("%s: quantizing %d MatMul weight(s), %d layer(s) stay float", settings.precision, len(targets),
             len(p.left_float))
    from .quantize import _quiet_root_logger

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), _quiet_root_logger(), _quiet_ort_loggers():
            if settings.precision == "int8-weight" and settings.int8_weight_format == "dynamic":
                result = _dynamic(proto, settings, sorted(targets))
            else:
                result = _nbits(proto, settings, skip)
    except CompressionError:
        raise
    except Exception as exc:
        raise CompressionError(f"ONNX Runtime weight-only quantization ({settings.precision}) of {where} failed: "
                               f"{type(exc).__name__}: {exc}") from None
    finally:
        if chatter.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", chatter.getvalue().strip())
    return result


def _nbits(proto: onnx.ModelProto, settings, skip: list[str]) -> onnx.ModelProto:
    """MatMulNBits (4 bits, or 8 for int8-weight with int8_weight_format="nbits")."""
    quantizer = _nbits_quantizer()
    bits = 4 if settings.precision == "int4" else 8
    # None: 4 (int8 compute). 8-bit MatMulNBits with float compute ran slower than the float model
    # (MiniLM, 1 thread: 32.7 vs 20.7 ms; 20.0 with 4); int4 ran alike with 0 and 4, at the same cosine
    level = 4 if settings.accuracy_level is None else settings.accuracy_level
    q = quantizer(proto, bits=bits, block_size=settings.block_size, is_symmetric=settings.symmetric,
                             accuracy_level=level, nodes_to_exclude=skip)
    q.process()
    return q.model.model


def _dynamic(proto: onnx.ModelProto, settings, targets: list[str]) -> onnx.ModelProto:
    """ORT's dynamic quantization of the target MatMuls: int8 weights, uint8 activations at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnx_compress_w8_") as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
        ir.save(proto, src)
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=settings.per_channel,
                         reduce_range=settings.reduce_range, weight_type=QuantType.QInt8, nodes_to_quantize=targets,
                         use_external_data_format=ir.uses_external_data(src),
                         extra_options={"MatMulConstBOnly": True})
        return onnx.load(str(out))


def _nbits_quantizer():
    """ORT's MatMulNBitsQuantizer class. Its module calls logging.basicConfig(level=INFO) when
    first imported, which would configure the application's root logger: undone here."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    return MatMulNBitsQuantizer


@contextlib.contextmanager
def _quiet_ort_loggers():
    """ORT's weight-only quantizers log every node at INFO on their own loggers: not the user's."""
    names = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.onnx_quantizer")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
