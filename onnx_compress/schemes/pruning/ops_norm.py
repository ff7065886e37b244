"""Channel rules of the normalisations and of the other ops that work along some axes and
per index of the others (Softmax, CumSum, TopK, ...): channels pass through unless the op
works along the channel axis; per-channel parameters are sliced, whole groups leave a
GroupNormalization.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ir
from .channels import Action, Position, _data_sides, _delete, _is_output, _present, _slot, _where

if TYPE_CHECKING:
    from .group import Walk
    from .winnow import Cut

#: Per-channel parameter inputs of the normalisations on axis 1 (sliced on axis 0).
CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
#: Ops that work along some axes and per index of the others (locked when the channel
#: axis is among theirs): how each describes what it does along its axes.
ALONG_AXIS = {"Softmax": "normalises over", "LogSoftmax": "normalises over", "Hardmax": "normalises over",
              "LpNormalization": "normalises over", "MeanVarianceNormalization": "normalises over",
              "CumSum": "accumulates along"}


def _channel_norm(w: Walk, node, pos: Position) -> str | None:
    """BatchNormalization and InstanceNormalization: per channel of axis 1."""
    other, why = _data_sides(node, pos)
    if why:
        return why
    if pos.axis == 1:
        for slot in CHANNEL_PARAMS[node.op]:
            if slot < len(node.inputs) and node.inputs[slot].name:
                if ir.constant_value(node.inputs[slot]) is None:
                    return f"{_where(node)} has non-constant per-channel parameters"
                w.act("param", node, pos, slot, 0)
    elif pos.axis >= 2 and node.op == "InstanceNormalization":
        return f"{_where(node)} normalises over the channel axis (axis {pos.axis})"
    w.visit(other, pos.axis, pos.index)
    return None


def _layernorm(w: Walk, node, pos: Position) -> str | None:
    """LayerNormalization normalises over axes [axis, rank): per channel when the channel
    axis comes before them. Normalised over the channel axis alone (a transformer's hidden
    size: axis -1), the channels go with their scale and bias entries, but the mean and
    variance are then over the kept channels (`INEXACT`). Mean and InvStdDev keep the
    leading axes."""
    shape = w.shape(node.inputs[0])
    if shape is not None and _over_channels_alone(node, pos, len(shape)):
        return _layernorm_channels(w, node, pos, shape)
    return _keeps_other_axes(w, node, pos, "a parameter", lambda axis: pos.axis >= axis,
                             "normalises over the channel axis")


#: How a group notes a normalisation whose statistics lose channels.
INEXACT = "LayerNorm over fewer channels: {} takes its mean and variance over the kept channels only"


def _over_channels_alone(node, pos: Position, rank: int) -> bool:
    """Whether the position is the data (input 0 or output 0) on the last axis, the only one
    a LayerNormalization normalises over."""
    data = pos.tensor is node.inputs[0] or pos.tensor is node.outputs[0]
    return data and pos.axis == rank - 1 and int(node.attrs.get("axis", -1)) % rank == rank - 1


def _layernorm_channels(w: Walk, node, pos: Position, shape) -> str | None:
    """A LayerNormalization over the channel axis alone: its scale and bias lose the
    channels' entries (constants of shape (C,), or broadcast ones ending in C)."""
    for slot in (1, 2):
        if slot >= len(node.inputs) or not node.inputs[slot].name:
            continue
        value = ir.constant_value(node.inputs[slot])
        if value is None:
            return f"{_where(node)} has a non-constant scale or bias"
        if value.ndim == 0 or value.shape[-1] == 1:
            return f"{_where(node)} shares one scale or bias across the channels"
        if value.shape[-1] != shape[-1]:
            return f"{_where(node)} has a scale or bias that does not match its channels"
        w.act("param", node, pos, slot, value.ndim - 1)
    w.inexact(INEXACT.format(_where(node)))
    other = node.outputs[0] if pos.tensor is node.inputs[0] else node.inputs[0]
    w.visit(other, pos.axis, pos.index)
    return None


def _reduce_mean(w: Walk, node, pos: Position) -> str | None:
    """ReduceMean: the channel axis survives unless it is reduced (`ops_shape`); reduced over
    the channel axis alone, with keepdims, as a LayerNorm written out (ReduceMean, Sub,
    Pow, ReduceMean, Add, Sqrt, Div, Mul, Add: older exporters, opset < 17) or an RMSNorm
    computes its statistics, it is a per-token statistic over fewer channels (`INEXACT`)."""
    from .ops_shape import _axes, _squeeze_like

    x = node.inputs[0]
    shape, axes = w.shape(x), _axes(node)
    if (pos.tensor is x and shape is not None and axes is not None and int(node.attrs.get("keepdims", 1))
            and sorted({int(a) % len(shape) for a in axes}) == [pos.axis] == [len(shape) - 1]):
        what = _statistic(node)
        if what:
            if what != "variance":  # a variance's LayerNorm is noted at its mean
                w.inexact(INEXACT.format(_where(node)))
            return None
    return _squeeze_like(w, node, pos)


def _statistic(node) -> str | None:
    """What a ReduceMean of a normalisation computes: "mean" (its output is subtracted from
    its input), "variance" (the mean square of such a difference), "mean square" (of
    anything else: an RMSNorm); None when it is not one of these."""
    x, out = node.inputs[0], node.outputs[0]
    if any(c.op == "Sub" and len(c.inputs) == 2 and c.inputs[0] is x and c.inputs[1] is out for c in out.outputs):
        return "mean"
    square = x.inputs[0] if x.inputs else None
    if square is None or square.op not in ("Pow", "Mul") or len(square.inputs) != 2:
        return None
    base, other = square.inputs
    if square.op == "Pow":
        exponent = ir.constant_value(other)
        if exponent is None or exponent.size != 1 or float(np.asarray(exponent).reshape(-1)[0]) != 2.0:
            return None
    elif other is not base:
        return None
    producer = base.inputs[0] if base.inputs else None
    if (producer is not None and producer.op == "Sub" and len(producer.inputs) == 2
            and producer.inputs[1].inputs and producer.inputs[1].inputs[0].op == "ReduceMean"
            and _statistic(producer.inputs[1].inputs[0]) == "mean"):
        return "variance"
    return "mean square"


def _topk(w: Walk, node, pos: Position) -> str | None:
    return _keeps_other_axes(w, node, pos, "k", lambda axis: pos.axis == axis, "selects along the channel axis")


def _keeps_other_axes(w: Walk, node, pos: Position, param: str, blocked, why: str) -> str | None:
    """An op working along its `axis` attribute whose input 0 and outputs keep the other
    axes: channels pass through to all of them unless `blocked(axis)` (then `why`)."""
    x = node.inputs[0]
    if not _is_output(node, pos.tensor) and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as {param}"
    shape = w.shape(x)
    if shape is None:
        return f"{_where(node)} input shape unknown"
    if blocked(int(node.attrs.get("axis", -1)) % len(shape)):
        return f"{_where(node)} {why}"
    for t in [x] + list(node.outputs):
        if _present(t) and t is not pos.tensor:
            w.visit(t, pos.axis, pos.index)
    return None


def _along_axis(w: Walk, node, pos: Position) -> str | None:
    """Softmax, LogSoftmax, Hardmax, LpNormalization, MeanVarianceNormalization, CumSum:
    per index of the axes they do not work along."""
    other, why = _data_sides(node, pos)
    if why:
        return why
    shape = w.shape(node.inputs[0])
    if shape is None:
        return f"{_where(node)} input shape unknown"
    rank = len(shape)
    if node.op in ("Softmax", "LogSoftmax", "Hardmax"):
        if w.opset >= 13:
            axes = [int(node.attrs.get("axis", -1))]
        else:  # coerced to 2-D: works along every axis from `axis` on
            axes = list(range(int(node.attrs.get("axis", 1)) % rank, rank))
    elif node.op == "LpNormalization":
        axes = [int(node.attrs.get("axis", -1))]
    elif node.op == "MeanVarianceNormalization":
        axes = [int(a) for a in node.attrs.get("axes", [0, 2, 3])]
    else:  # CumSum
        value = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if value is None:
            return f"{_where(node)} has a computed axis"
        axes = [int(np.asarray(value).reshape(-1)[0])]
    if pos.axis in {a % rank for a in axes}:
        return f"{_where(node)} {ALONG_AXIS[node.op]} the channel axis"
    w.visit(other, pos.axis, pos.index)
    return None


# -------------------------------------------------------------- GroupNormalization
def _groupnorm(w: Walk, node, pos: Position) -> str | None:
    """GroupNormalization: exact when whole groups of channels go; the channels of one group
    become one unit (a group only partly in this channel group is locked)."""
    x = node.inputs[0]
    other, why = _data_sides(node, pos)
    if why:
        return why
    if pos.axis == 0:
        w.visit(other, 0, pos.index)
        return None
    if pos.axis != 1:
        return f"{_where(node)} normalises over the channel axis (axis {pos.axis})"
    shape = w.shape(x)
    groups = int(node.attrs.get("num_groups", 0))
    if shape is None or groups < 1 or shape[1] % groups:
        return f"{_where(node)} input shape or num_groups unknown"
    for slot in (1, 2):
        if slot < len(node.inputs) and node.inputs[slot].name and ir.constant_value(node.inputs[slot]) is None:
            return f"{_where(node)} has non-constant parameters"
    channels = shape[1]
    w.visit(other, 1, pos.index)
    w.act("groupnorm", node, None, sizes=(channels, groups), tensor=x.name)
    w.later(("groupnorm", id(node)), lambda: _groupnorm_units(w, node, x.name, channels // groups))
    return None


def _groupnorm_units(w: Walk, node, name: str, block: int) -> None:
    pos = w.g.positions.get(name)
    if pos is None:
        return
    rows, cols = np.nonzero(pos.index >= 0)
    group_of = pos.index[rows, cols] // block
    partial = np.zeros(len(pos.index), bool)
    for g in np.unique(group_of):
        members = rows[group_of == g]
        if len(np.unique(pos.index[rows[group_of == g], cols[group_of == g]])) < block:
            partial[members] = True
        else:
            w.couple(members)
    w.lock_rows(partial, f"{_where(node)} normalises groups of channels that are not all in this group")


def _shrink_groupnorm(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """Whole groups leave a GroupNormalization: fewer groups, their scale and bias go."""
    node, removed = action.node, idx
    channels, groups = action.sizes
    block = channels // groups
    gone = np.unique(removed // block)
    assert len(gone) * block == len(removed), "GroupNormalization loses part of a group"
    node.attrs["num_groups"] = int(node.attrs["num_groups"]) - len(gone)
    for slot in (1, 2):
        if slot < len(node.inputs) and node.inputs[slot].name:
            value = ir.constant_value(node.inputs[slot])
            idx = removed if value.shape[0] == channels else gone
            ir.set_input(node, slot, _delete(value, idx, 0), cut.name(node, f"p{slot}"))
