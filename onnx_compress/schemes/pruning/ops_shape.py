"""Channel rules of the ops that move axes or read shapes: Reshape, Flatten, Transpose,
Squeeze, Unsqueeze, the reductions (Reduce*, ArgMax, ArgMin), Shape and Size.

The channel axis survives them, maybe at another index or (Flatten to 2-D) as blocks of
features; a Reshape target that states the channel count is rewritten on winnow.
"""
from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ... import ir
from .channels import Action, Position, _canon, _from_pairs, _is_output, _slot, _where
from .shapevals import _deps, _elems, _tainted

if TYPE_CHECKING:
    from .group import Walk
    from .winnow import Cut

REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                    "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"})
#: Ops through which a Shape value may flow while it stays a shape value (through input 0
#: only, except for the element-wise ones and Concat, which take it anywhere).
SHAPE_OPS = frozenset({"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Gather", "Slice",
                       "Concat", "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max"})
_ANY_SLOT = frozenset({"Concat", "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max"})


# ---------------------------------------------------------------- Reshape, Flatten
def _expand(index: np.ndarray, block: int) -> np.ndarray:
    """Channel indices -> feature indices of blocks of `block` features (-1 stays -1)."""
    feats = index[:, :, None] * block + np.arange(block)
    return np.where(index[:, :, None] >= 0, feats, -1).reshape(len(index), -1)


def _contract(index: np.ndarray, block: int) -> np.ndarray | None:
    """Feature indices -> channel indices when they form whole blocks, else None."""
    rows, cols = np.nonzero(index >= 0)
    vals = index[rows, cols]
    if not len(vals):
        return np.full((len(index), 1), -1, dtype=np.int64)
    span = int(vals.max()) // block + 1
    keys, counts = np.unique(rows * span + vals // block, return_counts=True)
    if (counts != block).any():  # canonical rows hold each feature once
        return None
    return _from_pairs(len(index), keys // span, keys % span)


def _reshape_axis(in_shape, out_shape, axis: int) -> int | None:
    """Where a reshape puts input axis `axis` when it keeps it whole: the output axis of the
    same size with as many elements before it (e.g. [N, H*W, C] -> [N, H, W, C]), else None."""
    before = math.prod(in_shape[:axis])
    for a, size in enumerate(out_shape):
        if size == in_shape[axis] and math.prod(out_shape[:a]) == before:
            return a
    return None


def _flatten_like(w: Walk, node, pos: Position) -> str | None:
    """Flatten and Reshape: (N, C, *S) <-> (N, C*prod(S)), or shapes that keep the channel
    axis whole (regrouping the axes before or after it)."""
    src, out = node.inputs[0], node.outputs[0]
    if not _is_output(node, pos.tensor) and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a shape"
    in_shape, out_shape = w.shape(src), w.shape(out)
    if in_shape is None or out_shape is None:
        return f"{_where(node)} shapes unknown"
    if node.op == "Flatten" and int(node.attrs.get("axis", 1)) % max(len(in_shape), 1) != 1:
        return f"{_where(node)} flattens across the channel axis"
    target = None  # a computed target's elements
    if node.op == "Reshape" and ir.constant_value(node.inputs[1]) is None:
        target = _elems(w, node.inputs[1])
        if target is None or len(target) != len(out_shape):
            return f"{_where(node)} has a computed shape"
    from .ops_recurrent import hidden_split

    flat = len(out_shape) == 2 and len(in_shape) >= 2 and out_shape[0] == in_shape[0] and pos.axis == 1
    if flat and not (node.op == "Reshape" and hidden_split(w, src, 1)):  # [B, dirs, H] merges as below
        why = _flatten_blocks(w, node, pos, in_shape, target)
    else:
        why = _keep_whole(w, node, pos, in_shape, out_shape, target)
        if why and why.endswith("reshapes the channel axis") and node.op == "Reshape":
            split = _split_merge(w, node, pos, in_shape, out_shape, target)
            if split is not True:
                return split or why
            return None
    if why:
        return why
    if node.op == "Reshape" and target is None:
        w.act("reshape", node, pos)
    return None


def _flatten_blocks(w: Walk, node, pos: Position, in_shape, target) -> str | None:
    """(N, C, *S) <-> (N, C*prod(S)): each channel is a block of prod(S) features."""
    src, out = node.inputs[0], node.outputs[0]
    block = math.prod(in_shape[2:])
    if target is not None and target[1] != ("c", -1) and not (block == 1 and target[1] == ("d", src.name, 1)):
        return f"{_where(node)} computes the feature count of its target"
    if not _is_output(node, pos.tensor):
        w.visit(out, 1, _expand(pos.index, block))
        return None
    index = _contract(pos.index, block)
    if index is None:
        return f"{_where(node)} splits channel blocks"
    w.visit(src, 1, index)
    return None


def _keep_whole(w: Walk, node, pos: Position, in_shape, out_shape, target) -> str | None:
    """A reshape that keeps the channel axis whole, maybe at another index."""
    src, out = node.inputs[0], node.outputs[0]
    forward = not _is_output(node, pos.tensor)
    if forward:
        in_axis, out_axis = pos.axis, _reshape_axis(in_shape, out_shape, pos.axis)
    else:
        in_axis, out_axis = _reshape_axis(out_shape, in_shape, pos.axis), pos.axis
    if in_axis is None or out_axis is None:
        return f"{_where(node)} reshapes the channel axis"
    if node.op == "Reshape":
        why = _target_keeps(w, node, target, in_axis, out_axis, len(out_shape))
        if why:
            return why
        if target is not None and target[out_axis][0] == "c" and target[out_axis][1] > 0:
            w.act("reshape", node, pos, sizes=_target_slot(w, node, out_axis, out_shape))  # (Conv1D's view)
    if forward:
        w.visit(out, out_axis, pos.index)
    else:
        w.visit(src, in_axis, pos.index)
    return None


def _target_keeps(w: Walk, node, target, in_axis: int, out_axis: int, out_rank: int) -> str | None:
    """Why a Reshape's target pins the channel count it moves from `in_axis` to `out_axis`
    (None when it is -1, copies it, or is a constant that winnow updates)."""
    src = node.inputs[0]
    elems = target if target is not None else _elems(w, node.inputs[1])
    copy = not int(node.attrs.get("allowzero", 0))  # a 0 copies the input's dim there
    if elems is None or len(elems) != out_rank:
        return None
    entry = elems[out_axis]
    fine = (entry == ("c", -1) or entry == ("d", src.name, in_axis)
            or (copy and entry == ("c", 0) and in_axis == out_axis)
            or (entry[0] == "c" and entry[1] > 0  # updated on winnow (a computed one: in its Concat)
                and (target is None or _target_slot(w, node, out_axis, None) != ())))
    if not fine:
        return f"{_where(node)} has a target that fixes the channel count"
    if copy and in_axis != out_axis and in_axis < len(elems) and elems[in_axis] == ("c", 0):
        return f"{_where(node)} copies the channel count to axis {in_axis}"
    return None


# --------------------------------------------- Reshape splitting or merging channels
def _split_pair(in_shape, out_shape, axis: int):
    """(first output axis, outer size H, inner size D) when a reshape splits input axis
    `axis` into two adjacent output axes (H, D) with H * D its size, the axes before it
    holding as many elements (attention's [B, S, H*D] -> [B, S, H, D]); else None."""
    before = math.prod(in_shape[:axis])
    for a in range(len(out_shape) - 1):
        if (out_shape[a] * out_shape[a + 1] == in_shape[axis] and math.prod(out_shape[:a]) == before
                and out_shape[a] > 1 and out_shape[a + 1] > 1):
            return a, out_shape[a], out_shape[a + 1]
    return None


def _split_merge(w: Walk, node, pos: Position, in_shape, out_shape, target):
    """A Reshape that splits the channel axis into (H, D) or merges (H, D) into one axis:
    the channels go by whole blocks of D (attention heads). On the split side the position
    is the H axis, so a channel's root shares its head's index with the head's other
    channels and they merge into one unit; the D axis keeps its size. When the split tensor
    is an LSTM/GRU output's (direction, hidden) pair (`ops_recurrent.hidden_split`), a
    merged channel d*D + j maps to index j of the inner (hidden) axis instead. True when
    handled, else the reason (or None to keep the caller's)."""
    src, out = node.inputs[0], node.outputs[0]
    forward = not _is_output(node, pos.tensor)
    merged_is_in = len(out_shape) > len(in_shape)
    merged_shape, split_shape = (in_shape, out_shape) if merged_is_in else (out_shape, in_shape)
    on_merged = forward == merged_is_in
    merged_axis = pos.axis if on_merged else None
    if merged_axis is None:  # the position is on the split side: find which merged axis
        for a in range(len(merged_shape)):
            pair = _split_pair(merged_shape, split_shape, a)
            if pair and pair[0] in (pos.axis, pos.axis - 1):
                merged_axis = a
                break
        if merged_axis is None:
            return None
    pair = _split_pair(merged_shape, split_shape, merged_axis)
    if pair is None:
        return None
    head_axis, heads, block = pair
    split_tensor, merged_tensor = (out, src) if merged_is_in else (src, out)
    from .ops_recurrent import from_hidden, hidden_split, to_hidden

    inner = not merged_is_in and hidden_split(w, split_tensor, head_axis)
    if not on_merged and pos.axis != head_axis + int(inner):
        return f"{_where(node)} splits the channel axis inside a block (axis {pos.axis})"
    out_axis = (head_axis if merged_is_in else merged_axis)
    why = _computed_entry(w, node, target, out_axis, merged_is_in, block)
    if why:
        return why
    if on_merged:
        w.visit(split_tensor, head_axis + int(inner), (to_hidden if inner else _heads)(pos.index, block))
    else:
        w.visit(merged_tensor, merged_axis,
                from_hidden(pos.index, heads, block) if inner else _expand(pos.index, block))
    w.act("reshape", node, pos, sizes=_target_slot(w, node, out_axis, out_shape))
    return True


def _heads(index: np.ndarray, block: int) -> np.ndarray:
    """Channel indices -> the index of the block of `block` that holds each (-1 stays)."""
    return _canon(np.where(index >= 0, index // block, -1))


def _computed_entry(w: Walk, node, target, out_axis: int, split: bool, block: int) -> str | None:
    """Why the Reshape's target cannot be updated where the channel count changes."""
    elems = target if target is not None else _elems(w, node.inputs[1])
    if elems is None or out_axis >= len(elems):
        return f"{_where(node)} has a target shape it cannot read"
    entry = elems[out_axis]
    if split and out_axis + 1 < len(elems) and elems[out_axis + 1] not in (("c", block), ("c", -1)):
        return f"{_where(node)} computes the size of the blocks it splits the channels into"
    if entry[0] == "e" or (entry[0] == "c" and entry[1] == 0):
        return f"{_where(node)} computes the channel count of its target"
    if target is not None and entry != ("c", -1) and _target_slot(w, node, out_axis, None) == ():
        return f"{_where(node)} has a computed target whose channel count it cannot rewrite"
    return None


def _target_slot(w: Walk, node, out_axis: int, out_shape) -> tuple[int, ...]:
    """For a computed Reshape target built by a Concat: (concat input slot, offset in that
    input, the target's dim there now) of the entry that states the channel count, when that
    input has one element or is a constant (a piece such as [H, D]); () when the target is a
    constant, the entry is -1, or the input cannot be rewritten."""
    if ir.constant_value(node.inputs[1]) is not None:
        return ()
    t = node.inputs[1]
    while t.inputs and t.inputs[0].op in ("Cast", "Identity"):
        t = t.inputs[0].inputs[0]
    if not t.inputs or t.inputs[0].op != "Concat":
        return ()
    concat, start = t.inputs[0], 0
    for slot, part in enumerate(concat.inputs):
        elems = _elems(w, part)
        if elems is None:
            return ()
        if start <= out_axis < start + len(elems):
            offset = out_axis - start
            if elems[offset] == ("c", -1) or (len(elems) != 1 and ir.constant_value(part) is None):
                return ()
            dim = out_shape[out_axis] if out_shape is not None else 0
            return (slot, offset, int(dim))
        start += len(elems)
    return ()


def _shrink_reshape(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """Rewrite an explicit channel (or feature) count in a Reshape's target shape."""
    node = action.node
    out_pos = cut.group.positions.get(node.outputs[0].name)
    if out_pos is None:
        return
    if ir.constant_value(node.inputs[1]) is None:
        _shrink_computed(cut, action, out_pos)
        return
    shape = ir.constant_value(node.inputs[1]).copy()
    if shape[out_pos.axis] > 0:
        shape[out_pos.axis] -= len(out_pos.removed(cut.roots))
        ir.set_input(node, 1, shape, cut.name(node, "shape"))


def _shrink_computed(cut: Cut, action: Action, out_pos: Position) -> None:
    """A computed target (Concat of shape pieces): the Reshape gets a private copy of the
    Concat, whose input that states the channel count gets the new count at its offset (the
    dim recorded when the group was built), in the Concat's own integer type."""
    if len(action.sizes) != 3:
        return  # -1 (or a copied dim that shrinks along): nothing stored
    slot, offset, dim = action.sizes
    # the Reshape gets its own copy of the Concat: exporters share one between layers
    concat = ir.private_producer(cut.group.graph, action.node, 1, cut.taken)
    old = ir.constant_value(concat.inputs[slot])
    siblings = [v for v in (ir.constant_value(t) for t in concat.inputs) if v is not None]
    dtype = _np_dtype(concat.outputs[0].dtype) or (siblings[0].dtype if siblings else np.dtype(np.int64))
    new = np.array(old, dtype=dtype).reshape(-1) if old is not None else np.zeros(1, dtype=dtype)
    new[offset] = dim - len(out_pos.removed(cut.roots))
    ir.set_input(concat, slot, new, cut.name(concat, f"dim{slot}"))


def _np_dtype(dtype):
    """A numpy dtype from what onnx-graphsurgeon records (numpy or ONNX enum), else None."""
    if dtype is None:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)) if isinstance(dtype, int) else np.dtype(dtype)
    except (TypeError, KeyError, ValueError):
        return None


# ----------------------------------------------------------------------- Transpose
def _transpose(w: Walk, node, pos: Position) -> str | None:
    shape = w.shape(node.inputs[0])
    if shape is None:
        return f"{_where(node)} input shape unknown"
    perm = list(node.attrs.get("perm", reversed(range(len(shape)))))
    if _is_output(node, pos.tensor):
        w.visit(node.inputs[0], perm[pos.axis], pos.index)
    else:
        w.visit(node.outputs[0], perm.index(pos.axis), pos.index)
    return None


# --------------------------------------------------- Squeeze, Unsqueeze, reductions
def _axes(node, slot: int = 1) -> list[int] | None:
    if node.op in ("ArgMax", "ArgMin"):
        return [int(node.attrs.get("axis", 0))]
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > slot and node.inputs[slot].name:
        value = ir.constant_value(node.inputs[slot])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return []


def _squeeze_like(w: Walk, node, pos: Position) -> str | None:
    """Squeeze/Unsqueeze/Reduce*/ArgMax: the channel axis survives, maybe at another index."""
    src, out = node.inputs[0], node.outputs[0]
    in_shape, out_shape = w.shape(src), w.shape(out)
    axes = _axes(node)
    if in_shape is None or out_shape is None or axes is None:
        return f"{_where(node)} shapes or axes unknown"
    if not _is_output(node, pos.tensor) and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a parameter"
    mapping = _axis_map(node, in_shape, out_shape, axes)
    if _is_output(node, pos.tensor):
        back = {v: k for k, v in mapping.items()}
        if pos.axis not in back:
            return f"{_where(node)} creates the channel axis"
        w.visit(src, back[pos.axis], pos.index)
    else:
        if pos.axis not in mapping:
            if node.op == "Squeeze":
                return f"{_where(node)} removes the channel axis"
            return f"{_where(node)} reduces over the channel axis (axis {pos.axis})"
        w.visit(out, mapping[pos.axis], pos.index)
    return None


def _axis_map(node, in_shape, out_shape, axes: list[int]) -> dict[int, int]:
    """{input axis: output axis} for the input axes that still carry channels."""
    if node.op == "Unsqueeze":
        axes = sorted(a % len(out_shape) for a in axes)
        keep_out = [i for i in range(len(out_shape)) if i not in axes]  # out axes from input axes
        return dict(enumerate(keep_out))
    if not axes:
        if node.op == "Squeeze":
            axes = [i for i, d in enumerate(in_shape) if d == 1]
        elif int(node.attrs.get("noop_with_empty_axes", 0)):
            axes = []
        else:
            axes = list(range(len(in_shape)))
    axes = sorted(a % len(in_shape) for a in axes)
    keepdims = node.op == "Squeeze" or int(node.attrs.get("keepdims", 1)) == 0
    kept = [i for i in range(len(in_shape)) if not (keepdims and i in axes)]
    mapping = {i: kept.index(i) for i in kept}
    if node.op != "Squeeze":
        for a in axes:
            mapping.pop(a, None)  # a reduced axis no longer carries channels
    return mapping


# ---------------------------------------------------------------------- Shape, Size
def _shape(w: Walk, node, pos: Position) -> str | None:
    """Shape and Size of a tied tensor: fine unless the channel count flows on (into a
    Reshape target, Resize sizes, Expand, ...). A target that copies the channel count of
    the very tensor it reshapes or resizes stays right, since both shrink together."""
    x = pos.tensor
    if _is_output(node, x):
        return f"{_where(node)} outputs a tied tensor"
    key = (x.name, pos.axis)
    queue, seen = deque(node.outputs), set()
    while queue:
        v = queue.popleft()
        if v.name in seen:
            continue
        seen.add(v.name)
        elems = _elems(w, v)
        if elems is not None and not _tainted(elems, key):
            continue  # carries other dimensions only
        if v.name in w.outputs:
            return f"the channel count of '{x.name}' ({_where(node)}) is a graph output"
        for consumer in list(v.outputs):
            slots = [i for i, t in enumerate(consumer.inputs) if t is v]
            if consumer.op in SHAPE_OPS and (consumer.op in _ANY_SLOT or slots == [0]):
                queue.extend(consumer.outputs)
                continue
            if _self_sized(w, consumer, slots, x, pos.axis, elems):
                continue
            return f"the channel count of '{x.name}' ({_where(node)}) reaches {_where(consumer)}"
    return None


def _self_sized(w: Walk, node, slots, x, axis: int, elems) -> bool:
    """Whether a Reshape target / Resize sizes holding x's channel count only copy it onto
    the channel axis of x's own reshaped / resized output."""
    shape_slot = {"Reshape": 1, "Resize": 3}.get(node.op)
    if shape_slot is None or slots != [shape_slot] or node.inputs[0] is not x or elems is None:
        return False
    if node.op == "Resize":
        out_axis = axis
    else:
        in_shape, out_shape = w.shape(x), w.shape(node.outputs[0])
        out_axis = None if in_shape is None or out_shape is None else _reshape_axis(in_shape, out_shape, axis)
    key = (x.name, axis)
    return all(i == out_axis and e == ("d", x.name, axis) for i, e in enumerate(elems) if key in _deps(e))
