"""An independent MAC/weight counter for written ONNX files, used to check the statistics.

Deliberately separate from onnx_compress.layers: it reads the file with plain onnx,
infers shapes with fixed input dims and counts Conv/Gemm/MatMul with constant weights.
"""
from __future__ import annotations

import math

import onnx
from onnx import numpy_helper, shape_inference


def count(path_or_model, input_dims: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(MACs, weight parameters) of the model's Conv/Gemm/MatMul layers with constant weights."""
    model = onnx.load(path_or_model) if isinstance(path_or_model, str) else path_or_model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_dims:
            dims = inp.type.tensor_type.shape.dim
            del dims[:]
            for d in input_dims[inp.name]:
                dims.add().dim_value = d
    del m.graph.value_info[:]
    m = shape_inference.infer_shapes(m)
    shapes, consts = {}, {}

    def collect(g):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for t in g.initializer:
            consts[t.name] = numpy_helper.to_array(t).shape
        for n in g.node:
            if n.op_type == "Constant":
                consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t).shape
            elif n.op_type == "Identity" and n.input[0] in consts:  # a weight read through Identity
                consts[n.output[0]] = consts[n.input[0]]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)

    collect(m.graph)
    macs = params = 0

    def walk(g):
        nonlocal macs, params
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
            if n.op_type not in ("Conv", "Gemm", "MatMul") or n.input[1] not in consts:
                continue
            w = consts[n.input[1]]
            out = shapes[n.output[0]]
            if n.op_type == "MatMul" and len(w) != 2:
                continue
            params += math.prod(w)
            if n.op_type == "Conv":
                macs += math.prod(out) * math.prod(w[1:])
            elif n.op_type == "Gemm":
                trans_b = any(a.name == "transB" and a.i for a in n.attribute)
                macs += math.prod(out) * (w[1] if trans_b else w[0])
            else:
                macs += math.prod(out) * w[0]

    walk(m.graph)
    return macs, params
