"""Channel rules of element-wise and per-channel ops: activations, pools, Pad, Resize and
the broadcasting binary ops.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ir
from .channels import Action, Position, _data_sides, _is_output, _where
from .shapevals import _elems

if TYPE_CHECKING:
    from .group import Walk
    from .winnow import Cut

#: Element-wise or per-channel ops whose input 0 and output 0 carry the same channels.
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout", "Cast", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "ThresholdedRelu", "Clip", "Swish", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "GlobalLpPool", "Upsample", "Resize", "Pad", "IsNaN", "IsInf", "Not",
})
#: Broadcasting element-wise ops: every input whose channel dim is not 1 is tied.
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where",
                       "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
                       "Mod"})


# --------------------------------------------------------------------- one input
def _unary(w: Walk, node, pos: Position) -> str | None:
    """Input 0 and output 0 carry the same channels (activations, pools, Cast, ...)."""
    return _pass(w, node, pos)


def _pass(w: Walk, node, pos: Position, pre=None, post=None) -> str | None:
    """Channels pass between input 0 and output 0 when the channel count stays; `pre` and
    `post` are the op's own checks before and after that one (a reason, or None)."""
    other, why = _data_sides(node, pos)
    if why:
        return why
    why = (pre and pre(w, node, pos)) or _count_changes(w, node, pos) or (post and post(w, node, pos))
    if why:
        return why
    w.visit(other, pos.axis, pos.index)
    return None


def _count_changes(w: Walk, node, pos: Position) -> str | None:
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    if (in_shape is not None and out_shape is not None and len(in_shape) == len(out_shape)
            and in_shape[pos.axis] != out_shape[pos.axis]):
        return f"{_where(node)} changes the channel count"
    return None


def _pad(w: Walk, node, pos: Position) -> str | None:
    return _pass(w, node, pos, pre=_pads_channels)


def _pads_channels(w: Walk, node, pos: Position) -> str | None:
    if not _pad_keeps_channels(w, node, pos.axis, w.shape(node.inputs[0])):
        return f"{_where(node)} pads the channel axis"
    return None


def _pad_keeps_channels(w: Walk, node, axis: int, shape) -> bool:
    if shape is None:
        return False
    rank = len(shape)
    if "pads" in node.attrs:
        pads = [("c", int(p)) for p in node.attrs["pads"]]
    else:
        pads = _elems(w, node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        return False
    if len(node.inputs) > 3 and node.inputs[3].name:  # explicit axes (opset 18)
        axes = _elems(w, node.inputs[3])
        if axes is None or any(a[0] != "c" for a in axes):
            return False
        axes = [int(a[1]) % rank for a in axes]
        if axis not in axes:
            return True
        j, n = axes.index(axis), len(axes)
    else:
        j, n = axis, rank
    return len(pads) == 2 * n and pads[j] == ("c", 0) and pads[n + j] == ("c", 0)


def _resize(w: Walk, node, pos: Position) -> str | None:
    """Resize and Upsample: explicit constant sizes are updated on winnow."""
    return _pass(w, node, pos, post=_resize_sizes)


def _resize_sizes(w: Walk, node, pos: Position) -> str | None:
    if len(node.inputs) > 3 and node.inputs[3].name:  # explicit sizes include the channel count
        if ir.constant_value(node.inputs[3]) is not None:
            w.act("resize", node, pos)
        else:  # computed sizes: fine when they copy the input's own channel count
            elems = _elems(w, node.inputs[3])
            if elems is None or len(elems) <= pos.axis or elems[pos.axis] != ("d", node.inputs[0].name, pos.axis):
                return f"{_where(node)} has computed sizes that fix the channel count"
    return None


def _shrink_resize(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    node = action.node
    sizes = ir.constant_value(node.inputs[3]).copy()
    sizes[pos.axis] -= len(idx)
    ir.set_input(node, 3, sizes, cut.name(node, "sizes"))


# ------------------------------------------------------------------- broadcasting
def _broadcast(w: Walk, node, pos: Position) -> str | None:
    """Every input whose dim on the (right-aligned) channel axis is not 1 is tied; constant
    ones are sliced on winnow."""
    out = node.outputs[0]
    out_shape = w.shape(out)
    if out_shape is None:
        return f"{_where(node)} output shape unknown"
    rank = len(out_shape)
    if _is_output(node, pos.tensor):
        axis = pos.axis
    else:
        in_shape = w.shape(pos.tensor)
        if in_shape is None:
            return f"{_where(node)} input shape unknown"
        axis = pos.axis + rank - len(in_shape)
    size = out_shape[axis]
    for slot, tensor in enumerate(node.inputs):
        shape = w.shape(tensor)
        if shape is None:
            return f"{_where(node)} input shape unknown"
        a = axis - (rank - len(shape))  # numpy broadcasting: shapes align on the right
        if a < 0 or shape[a] == 1:
            continue  # broadcast along the channel axis: not tied
        if shape[a] != size:
            return f"{_where(node)} mixes channel counts"
        if ir.constant_value(tensor) is not None:
            w.act("param", node, pos, slot, a)
        elif tensor is not pos.tensor:
            w.visit(tensor, a, pos.index)
    if out is not pos.tensor:
        w.visit(out, axis, pos.index)
    return None
