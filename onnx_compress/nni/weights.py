"""The layers' weights of an ONNX model, read and written for the NNI compressors.

A compressor sees each layer's constant weight as numpy (wherever the exporter stored
it: an initializer or a Constant node), returns a new one of the same shape, and the
model is written back with them; the input model is never modified.
"""
from __future__ import annotations

import numpy as np
import onnx

from .. import ir, layers
from ..errors import ParameterError


def load(model) -> tuple[onnx.ModelProto, layers.Analysis]:
    """A private copy of `model` (path or ModelProto) and its layers."""
    proto = ir.load(model)
    return proto, layers.analyze(proto)


def node_protos(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Node name -> NodeProto, subgraphs included (what calc_mask receives as `op`)."""
    return {node.name: node for g in ir.all_graphs(proto.graph) for node in g.node if node.name}


def rewrite(proto: onnx.ModelProto, analysis: layers.Analysis, new: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`proto` with the weights of the layers in `new` (layer name -> array) replaced,
    exported and checked."""
    taken = ir.all_names(analysis.graph)
    for layer in analysis.layers:
        if layer.name in new:
            value = np.asarray(new[layer.name]).astype(layer.weight.dtype, copy=False)
            ir.set_input(layer.node, 1, value, ir.unique_name(f"{layer.name}.weight", taken))
    return ir.export(analysis.graph, proto)


def weights_of(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Layer name -> its weight as written in `proto`."""
    return {layer.name: layer.weight for layer in layers.analyze(proto).layers if layer.weight is not None}


def input_axis(op_type: str, op: onnx.NodeProto | None) -> int:
    """The input-channel axis of a layer's stored weight: Conv (O, I, ...) 1; Gemm B
    (K, N), or (N, K) with transB=1; MatMul (K, N) 0."""
    if op_type == "Conv":
        return 1
    if op_type == "Gemm" and op is not None:
        trans = [a.i for a in op.attribute if a.name == "transB"]
        return 1 if trans and trans[0] else 0
    return 0


def checked(value, weight: np.ndarray, name: str, what: str) -> np.ndarray:
    """`value` as an array of `weight`'s shape; ParameterError naming the layer otherwise."""
    if value is None:
        raise ParameterError(f"layer '{name}': {what} returned None; return an array of shape {weight.shape}")
    arr = np.asarray(value)
    if arr.shape != weight.shape:
        raise ParameterError(f"layer '{name}': {what} returned shape {arr.shape}, the weight's is {weight.shape}")
    if arr.dtype != bool and not np.isfinite(arr.astype(np.float64)).all():
        raise ParameterError(f"layer '{name}': {what} returned NaN or Inf values")
    return arr
