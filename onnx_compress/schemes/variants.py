"""A layer as timed alone, and its compressed variants: the small graphs the latency
metric times (`search.latency`). The schemes describe their candidates with these
(`Scheme.variants`); nothing here runs a model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .. import ir, layers
from ..errors import ShapeError


@dataclass(frozen=True)
class Variant:
    """A layer as timed alone: `nodes` run in a chain on one input of `input_shape`.

    Each node: (op type, shapes of its constant inputs after the data input (None: an
    empty optional input), attributes as sorted (name, value) pairs).
    """

    input_shape: tuple[int, ...]
    dtype: str
    nodes: tuple[tuple[str, tuple, tuple], ...]
    opset: int


def _freeze(attrs: dict) -> tuple:
    out = []
    for key, value in sorted(attrs.items()):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            value = tuple(value)
        out.append((key, value))
    return tuple(out)


def _in_shape(layer: layers.Layer) -> tuple[int, ...]:
    if layer.in_shape is None:
        raise ShapeError(f"layer '{layer.name}': its input shape is unknown, so it cannot be timed; "
                         "pass input_shape (CLI: --input-shape NAME=d0,d1,...)")
    return tuple(layer.in_shape)


#: An LSTM/GRU is timed without sequence_lens and its initial states (inputs 4-6: zeros,
#: every sequence full length): the same work, and no integer or model-state inputs.
_UNTIMED = {"LSTM": (4, 5, 6), "GRU": (4, 5)}


def _const_shapes(layer: layers.Layer) -> list[tuple[int, ...] | None]:
    shapes = []
    untimed = _UNTIMED.get(layer.op, ())
    for slot, tensor in enumerate(layer.node.inputs[1:], start=1):
        if not tensor.name or slot in untimed:
            shapes.append(None)
            continue
        value = ir.constant_value(tensor)
        if value is None:
            raise ShapeError(f"layer '{layer.name}': input '{tensor.name}' is not constant, so the layer "
                             "cannot be timed alone")
        shapes.append(tuple(value.shape))
    return shapes


def original_variant(layer: layers.Layer, opset: int) -> Variant:
    """The layer as it is."""
    node = (layer.op, tuple(_const_shapes(layer)), _freeze(layer.attrs))
    return Variant(_in_shape(layer), str(layer.weight.dtype), (node,), opset)


def split_variants(layer: layers.Layer, scheme, ranks: list[int], opset: int) -> dict[int, Variant]:
    """rank -> the layer split by `scheme` (an SVD scheme: `specs`, `rank_cost`) at that rank.

    The chain's shapes come from the scheme's specs at ranks 1 and 2 (the axes that
    differ carry the rank), so two factorisations are computed, not one per rank.
    """
    rs = scheme
    one = rs.specs(layer, 1, opset)
    full = rs.rank_cost(layer, "memory").full_rank
    two = rs.specs(layer, 2, opset) if full >= 2 and any(r >= 2 for r in ranks) else None
    consts = [None] + _const_shapes(layer)  # by the original node's input index
    out = {}
    for rank in ranks:
        nodes = []
        for i, spec in enumerate(one):
            shapes = []
            for j, param in enumerate(spec.params):
                if param is None:
                    shapes.append(None)
                    continue
                shape = list(param.shape)
                if two is not None:
                    other = two[i].params[j].shape
                    shape = [rank if a != b else a for a, b in zip(shape, other)]
                shapes.append(tuple(shape))
            shapes += [consts[k] for k in spec.extra_inputs]
            nodes.append((spec.op, tuple(shapes), _freeze(spec.attrs)))
        out[rank] = Variant(_in_shape(layer), str(layer.weight.dtype), tuple(nodes), opset)
    return out


def in_width(layer: layers.Layer) -> int:
    """The layer's input channels (a depthwise conv: its channels)."""
    w = layer.weight
    if layer.op == "Conv":
        return int(w.shape[0] if layer.group != 1 else w.shape[1])
    return int(layer.matrix_shape()[0])


def pruned_variant(layer: layers.Layer, kept: int, opset: int) -> Variant:
    """The layer with `kept` input channels (a depthwise conv: `kept` channels)."""
    w = layer.weight
    in_shape = list(_in_shape(layer))
    shapes = _const_shapes(layer)
    attrs = dict(layer.attrs)
    if layer.op == "Conv" and layer.group != 1:
        if not (layer.group == w.shape[0] and w.shape[1] == 1):
            raise ShapeError(f"layer '{layer.name}': grouped conv (group={layer.group}) cannot lose channels")
        in_shape[1] = kept
        shapes[0] = (kept, *w.shape[1:])
        if len(shapes) > 1 and shapes[1] is not None:
            shapes[1] = (kept,)
        attrs["group"] = kept
    elif layer.op == "Conv":
        in_shape[1] = kept
        shapes[0] = (w.shape[0], kept, *w.shape[2:])
    elif layer.op == "Gemm":
        in_shape[0 if int(attrs.get("transA", 0)) else -1] = kept
        n = layer.matrix_shape()[1]
        shapes[0] = (n, kept) if int(attrs.get("transB", 0)) else (kept, n)
    else:
        in_shape[-1] = kept
        shapes[0] = (kept, int(w.shape[1]))
    node = (layer.op, tuple(shapes), _freeze(attrs))
    return Variant(tuple(in_shape), str(w.dtype), (node,), opset)


def variant_model(v: Variant) -> onnx.ModelProto:
    """The variant as a model: input "x", output "y", random constants (seeded)."""
    return ir.chain_model(v.nodes, v.input_shape, v.dtype, v.opset, producer="onnx_compress.latency")
