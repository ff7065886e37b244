"""Channel rules of the ops that cut, join or pick along an axis: Concat, Split, Slice and
Gather. Along another axis channels pass through; along the channel axis they are
renumbered, and the sizes, bounds or indices the node stores are rewritten on winnow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ir
from .channels import Action, Position, _is_output, _rows, _slot, _where, shrink_params
from .shapevals import _slice_bounds

if TYPE_CHECKING:
    from .group import Walk
    from .winnow import Cut

INT64_MIN = int(np.iinfo(np.int64).min)


# ------------------------------------------------------------------------- Concat
def _concat(w: Walk, node, pos: Position) -> str | None:
    out = node.outputs[0]
    out_shape = w.shape(out)
    if out_shape is None:
        return f"{_where(node)} output shape unknown"
    axis = int(node.attrs.get("axis", 1)) % len(out_shape)
    if axis != pos.axis:  # concatenation along another axis: every input is tied
        for tensor in node.inputs + [out]:
            if tensor is not pos.tensor:
                w.visit(tensor, pos.axis, pos.index)
        return None
    sizes = []
    for tensor in node.inputs:
        shape = w.shape(tensor)
        if shape is None:
            return f"{_where(node)} input shape unknown"
        sizes.append(shape[axis])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if _is_output(node, pos.tensor):
        for slot, tensor in enumerate(node.inputs):
            lo, hi = offsets[slot], offsets[slot + 1]
            inside = (pos.index >= lo) & (pos.index < hi)
            if ir.constant_value(tensor) is not None and inside.any():
                return f"{_where(node)} concatenates a constant"
            w.visit(tensor, axis, np.where(inside, pos.index - lo, -1))
    else:
        for slot, tensor in enumerate(node.inputs):  # the same tensor may come in twice
            if tensor is pos.tensor:
                w.visit(out, axis, np.where(pos.index >= 0, pos.index + offsets[slot], -1))
    return None


# -------------------------------------------------------------------------- Split
def _split(w: Walk, node, pos: Position) -> str | None:
    src = node.inputs[0]
    shape = w.shape(src)
    if shape is None:
        return f"{_where(node)} input shape unknown"
    axis = int(node.attrs.get("axis", 0)) % len(shape)
    if not _is_output(node, pos.tensor) and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a parameter"
    if axis != pos.axis:
        for tensor in [src] + list(node.outputs):
            if tensor is not pos.tensor:
                w.visit(tensor, pos.axis, pos.index)
        return None
    sizes = [w.shape(t)[axis] if w.shape(t) else None for t in node.outputs]
    if None in sizes:
        return f"{_where(node)} output shapes unknown"
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    w.act("split", node, pos, sizes=sizes)
    if _is_output(node, pos.tensor):
        j = next(i for i, t in enumerate(node.outputs) if t is pos.tensor)
        w.visit(src, axis, np.where(pos.index >= 0, pos.index + offsets[j], -1))
    else:
        for j, tensor in enumerate(node.outputs):
            inside = (pos.index >= offsets[j]) & (pos.index < offsets[j + 1])
            w.visit(tensor, axis, np.where(inside, pos.index - offsets[j], -1))
    return None


def _shrink_split(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """Rewrite a channel Split's sizes after its outputs lost channels."""
    node, new = action.node, []
    for out, size in zip(node.outputs, action.sizes):
        out_pos = cut.group.positions.get(out.name)
        new.append(int(size) - (len(out_pos.removed(cut.roots)) if out_pos is not None else 0))
    if "split" in node.attrs:
        node.attrs["split"] = new
        return
    value = np.asarray(new, dtype=np.int64)
    name = cut.name(node, "split")
    if len(node.inputs) > 1 and node.inputs[1].name:
        ir.set_input(node, 1, value, name)
    else:
        node.attrs.pop("num_outputs", None)
        ir.append_input(node, value, name)


# -------------------------------------------------------------------------- Slice
def _slice_axes(w: Walk, node, rank: int) -> list[int] | None:
    """The axes a Slice cuts, also when its bounds are computed (None when unknown)."""
    if "starts" in node.attrs:
        return [int(a) % rank for a in node.attrs.get("axes", range(len(node.attrs["starts"])))]
    if len(node.inputs) > 3 and node.inputs[3].name:
        axes = ir.constant_value(node.inputs[3])
        return None if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    n = w.shape(node.inputs[1])
    return None if n is None or len(n) != 1 else list(range(n[0]))


def _slice(w: Walk, node, pos: Position) -> str | None:
    """Slice: channels pass through on the other axes; on the channel axis the output holds
    the segment [start:end] (step 1 or -1) of the input."""
    src, out = node.inputs[0], node.outputs[0]
    forward = not _is_output(node, pos.tensor)
    if forward and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as slice bounds"
    shape = w.shape(src)
    if shape is None:
        return f"{_where(node)} input shape unknown"
    axes = _slice_axes(w, node, len(shape))
    if axes is None:
        return f"{_where(node)} has computed axes"
    if pos.axis not in axes:
        w.visit(out if forward else src, pos.axis, pos.index)
        return None
    bounds = _slice_bounds(node, len(shape))
    if bounds is None:
        return f"{_where(node)} has computed bounds on the channel axis"
    start, end, step, entry = bounds[pos.axis]
    if abs(step) != 1:
        return f"{_where(node)} slices the channel axis with step {step}"
    dim = shape[pos.axis]
    sel = np.arange(dim)[slice(start, end, step)]
    if ir.constant_value(src) is None:
        w.act("slice", node, None, slot=entry, sizes=(dim, start, end, step), tensor=src.name)
    if forward:
        fwd = np.full(dim, -1, dtype=np.int64)
        fwd[sel] = np.arange(len(sel))
        w.visit(out, pos.axis, np.where(pos.index >= 0, fwd[np.maximum(pos.index, 0)], -1))
    else:
        w.visit(src, pos.axis, np.where(pos.index >= 0, sel[np.maximum(pos.index, 0)], -1))
    return None


def _shrink_slice(cut: Cut, action: Action, pos: Position, removed: np.ndarray) -> None:
    """Move a Slice's bounds on the channel axis after its input lost channels `removed`
    (input numbering): the kept channels of the segment stay one contiguous segment."""
    node = action.node
    dim, start, end, step = action.sizes
    j = action.slot
    start, stop, step = slice(start, end, step).indices(dim)

    def below(i: int) -> int:  # removed channels before channel i
        return int(np.searchsorted(removed, i, side="left"))

    if step == 1:
        new_start, new_stop = start - below(start), stop - below(stop)
    else:  # the segment (stop, start], walked down
        new_start, new_stop = start - below(start + 1), stop - below(stop + 1)
        if new_start < 0:
            new_start, new_stop = 0, 0  # empty
        elif new_stop < 0:
            new_stop = INT64_MIN  # down to channel 0
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        starts[j], ends[j] = new_start, new_stop
        node.attrs["starts"], node.attrs["ends"] = starts, ends
        return
    for slot, value, what in ((1, new_start, "starts"), (2, new_stop, "ends")):
        bounds = np.array(ir.constant_value(node.inputs[slot]), copy=True)
        bounds.reshape(-1)[j] = max(value, int(np.iinfo(bounds.dtype).min))
        ir.set_input(node, slot, bounds, cut.name(node, what))


# ------------------------------------------------------------------------- Gather
def _gather(w: Walk, node, pos: Position) -> str | None:
    """Gather: channels pass through on the other axes; on the channel axis, constant 1-D
    indices map them (a channel gathered twice, or picked by a scalar index, is locked)."""
    data, idx_t, out = node.inputs[0], node.inputs[1], node.outputs[0]
    from_out = _is_output(node, pos.tensor)
    if not from_out and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as indices"
    shape, ishape = w.shape(data), w.shape(idx_t)
    if shape is None or ishape is None:
        return f"{_where(node)} shapes unknown"
    q = len(ishape)
    axis = int(node.attrs.get("axis", 0)) % len(shape)
    d_axis = _gather_data_axis(pos.axis, axis, q) if from_out else pos.axis
    if d_axis is None:
        return f"{_where(node)} builds the channel axis from its indices"
    if d_axis != axis:  # gathering along another axis
        if ir.constant_value(data) is not None:  # e.g. an embedding table: its columns go
            w.act("param", node, pos, 0, d_axis)
        elif from_out:
            w.visit(data, d_axis, pos.index)
        else:
            w.visit(out, d_axis if d_axis < axis else d_axis + q - 1, pos.index)
        return None
    return _gather_channels(w, node, pos, axis, shape[axis], from_out)


def _gather_data_axis(out_axis: int, axis: int, q: int) -> int | None:
    """The data axis behind output axis `out_axis` of a Gather along `axis` with q-D indices
    (None: the output axis is built from the indices)."""
    if out_axis < axis:
        return out_axis
    if out_axis >= axis + q:
        return out_axis - q + 1
    return axis if q == 1 else None


def _gather_channels(w: Walk, node, pos: Position, axis: int, dim: int, from_out: bool) -> str | None:
    """A Gather along the channel axis: constant indices renumber the channels."""
    data, out = node.inputs[0], node.outputs[0]
    indices = ir.constant_value(node.inputs[1])
    if indices is None:
        return f"{_where(node)} has computed indices on the channel axis"
    if indices.ndim > 1:
        return f"{_where(node)} gathers the channel axis with {indices.ndim}-D indices"
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + dim, flat)
    values, counts = np.unique(flat, return_counts=True)
    repeated = values[counts > 1]
    if ir.constant_value(data) is None:
        w.act("gather", node, None, axis=axis, sizes=(dim,), tensor=data.name)
    index = np.where(pos.index >= 0, flat[np.maximum(pos.index, 0)], -1) if from_out else pos.index
    if indices.ndim == 0:  # one channel picked, the axis dropped
        picked = (index == flat[0]).any(axis=1)
        w.lock_rows(picked, f"{_where(node)} picks channel {int(flat[0])}")
        return None
    twice = (np.isin(index, repeated) & (index >= 0)).any(axis=1)
    w.lock_rows(twice, f"{_where(node)} gathers a channel more than once")
    index = _rows(index, ~twice)
    if from_out:
        w.visit(data, axis, index)
    else:
        fwd = np.full(dim, -1, dtype=np.int64)
        fwd[flat] = np.arange(len(flat))
        w.visit(out, axis, np.where(index >= 0, fwd[np.maximum(index, 0)], -1))
    return None


def _shrink_gather(cut: Cut, action: Action, pos: Position, removed: np.ndarray) -> None:
    """A constant data table loses its columns ("param"); otherwise drop the Gather indices
    of removed channels and renumber the others."""
    if action.kind == "param":
        shrink_params(cut, action, pos, removed)
        return
    node = action.node
    value = ir.constant_value(node.inputs[1])
    flat = np.asarray(value, dtype=np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + action.sizes[0], flat)
    keep = ~np.isin(flat, removed)
    new = flat[keep] - np.searchsorted(removed, flat[keep])
    new = np.asarray(new, dtype=value.dtype).reshape(np.shape(value) if np.ndim(value) == 0 else -1)
    ir.set_input(node, 1, new, cut.name(node, "indices"))
