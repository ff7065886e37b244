"""Channel rules of the layers themselves: Conv, Gemm and MatMul.

A group ends at a layer: the layers that read its tensors lose input channels ("in"), the
ones that write them lose output channels ("out"); a depthwise conv passes the channels
through and loses them from its weight, bias and group count ("depthwise").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ir
from .channels import Action, Position, _delete, _is_output, _slot, _where

if TYPE_CHECKING:
    from .group import Walk
    from .winnow import Cut


# ---------------------------------------------------------------------- propagate
def _conv(w: Walk, node, pos: Position) -> str | None:
    weight = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return f"{_where(node)} has a non-constant weight"
    if not _finite_params(node):
        return f"{_where(node)} has NaN or Inf weight or bias values"
    if pos.axis != 1:
        return f"{_where(node)} sees the channels on axis {pos.axis}"
    group = int(node.attrs.get("group", 1))
    out = _is_output(node, pos.tensor)
    if not out and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a parameter"
    if group == 1:
        w.act("out" if out else "in", node, pos)
        return None
    if weight.shape[1] == 1 and weight.shape[0] == group:  # depthwise, multiplier 1
        w.act("depthwise", node, pos)
        other = node.inputs[0] if out else node.outputs[0]
        w.visit(other, 1, pos.index)
        return None
    return f"grouped conv {ir.node_name(node)!r}, group={group}"


def _batched(w: Walk, node, pos: Position) -> str | None:
    """MatMul of two activations (attention's Q.K^T and P.V): channels on a batch axis (the
    heads) pass to the output and to the other operand where it is not broadcast; on the
    rows of A or the columns of B they pass to the output's; the contracted axis locks."""
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    shapes = [w.shape(t) for t in (a, b, out)]
    if any(s is None or len(s) < 2 for s in shapes):
        return f"{_where(node)} shapes unknown"
    ra, rb, ro = (len(s) for s in shapes)
    if _is_output(node, pos.tensor):
        from_end = ro - pos.axis
    else:
        from_end = (ra if pos.tensor is a else rb) - pos.axis
    if from_end <= 2:  # a matrix axis
        if pos.tensor is a and from_end == 1 or pos.tensor is b and from_end == 2:
            return f"{_where(node)} contracts the channel axis"
        side = a if from_end == 2 else b
        mine = ra if side is a else rb
        if pos.tensor is not side:
            w.visit(side, mine - from_end, pos.index)
        if pos.tensor is not out:
            w.visit(out, ro - from_end, pos.index)
        return None
    size = shapes[2][ro - from_end] if ro - from_end >= 0 else None
    for t, rank, shape in ((a, ra, shapes[0]), (b, rb, shapes[1]), (out, ro, shapes[2])):
        axis = rank - from_end
        if t is pos.tensor or axis < 0 or shape[axis] == 1:
            continue  # broadcast there: not tied
        if shape[axis] != size:
            return f"{_where(node)} mixes batch sizes"
        w.visit(t, axis, pos.index)
    return None


def _matrix(w: Walk, node, pos: Position) -> str | None:
    """Gemm and MatMul with a constant 2-D weight: channels on the last axis. A MatMul of
    two activations passes them on (`_batched`)."""
    if (node.op == "MatMul" and len(node.inputs) == 2 and ir.constant_value(node.inputs[0]) is None
            and ir.constant_value(node.inputs[1]) is None):
        return _batched(w, node, pos)
    if len(node.inputs) < 2 or ir.constant_value(node.inputs[1]) is None:
        return f"{_where(node)} has a non-constant weight"
    weight = ir.constant_value(node.inputs[1])
    if not _finite_params(node):
        return f"{_where(node)} has NaN or Inf weight or bias values"
    if node.op == "MatMul" and weight.ndim != 2:
        return f"{_where(node)} has a {weight.ndim}-D weight"
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return f"{_where(node)} has transA=1"
    out = _is_output(node, pos.tensor)
    if not out and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a parameter"
    rank = len(w.shape(pos.tensor) or ())
    if rank == 0 or pos.axis != rank - 1:
        return f"{_where(node)} sees the channels on axis {pos.axis}, not the last"
    w.act("out" if out else "in", node, pos)
    return None


def _finite(tensor, value: np.ndarray) -> bool:
    """Whether a layer's constant weight is finite, checked once per constant (a layer
    with NaN/Inf weights is refused, so its channels are not pruned from a neighbour)."""
    known = getattr(tensor, "_onnx_compress_finite", None)
    if known is None:
        from ...layers import _all_finite

        known = not np.issubdtype(value.dtype, np.floating) or _all_finite(value)
        try:
            tensor._onnx_compress_finite = known
        except AttributeError:
            pass
    return known


def _finite_params(node) -> bool:
    """Whether a layer's constant weight and bias are finite."""
    for slot in (1, 2) if node.op != "MatMul" else (1,):
        if slot < len(node.inputs) and node.inputs[slot].name:
            value = ir.constant_value(node.inputs[slot])
            if value is not None and not _finite(node.inputs[slot], value):
                return False
    return True


# ------------------------------------------------------------------------- shrink
def weight_axis(action: Action) -> int:
    """The axis of an "in"/"out" layer's stored weight that holds the action's channels:
    Conv (O, I, ...) 1 in / 0 out; Gemm/MatMul B (K, N) 0 in / 1 out, swapped by transB."""
    if action.node.op == "Conv":
        return 1 if action.kind == "in" else 0
    trans = action.node.op == "Gemm" and int(action.node.attrs.get("transB", 0))
    return (0 if action.kind == "in" else 1) ^ (1 if trans else 0)


def _shrink_layer(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """Slice the weight (and, losing output channels, the bias) of a layer; a depthwise
    conv loses its weight and bias rows and as many groups."""
    node = action.node
    if action.kind == "depthwise":
        for slot in (1, 2):
            if slot < len(node.inputs) and node.inputs[slot].name:
                value = ir.constant_value(node.inputs[slot])
                ir.set_input(node, slot, _delete(value, idx, 0), cut.name(node, f"p{slot}"))
        node.attrs["group"] = int(node.attrs["group"]) - len(idx)
        return
    weight = ir.constant_value(node.inputs[1])
    ir.set_input(node, 1, _delete(weight, idx, weight_axis(action)), cut.name(node, "weight"))
    if action.kind != "out":
        return
    cut.removed_out[ir.node_name(node)] = idx
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = ir.constant_value(node.inputs[2])
        if bias is not None and bias.ndim >= 1 and bias.shape[-1] > 1:
            ir.set_input(node, 2, _delete(bias, idx, bias.ndim - 1 if node.op != "Conv" else 0),
                         cut.name(node, "bias"))
