"""Channel dependency graph: which tensors' channels are tied to a layer's input channels.

Removing input channels of a layer means removing the same channels from the tensor it
reads, hence from every producer upstream of that tensor (conv/gemm output channels,
BatchNormalization parameters, depthwise convs, Concat segments ...) and from every
other consumer of the tied tensors (the other convs that read a residual stream, the
other side of an Add or a squeeze-excite Mul). Learned from Torch-Pruning's DepGraph.

A `ChannelGroup` is built by a breadth-first walk from the layer's input tensor. Each
visited tensor gets a `Position`: its channel axis and, for every *root channel* (an
input channel of the layer, or a whole channel block after Flatten), the indices it
occupies there (-1 where absent, e.g. the other segments of a Concat). How a channel
mask moves through a node is decided by one rule per op type (`RULES`). Where channels
cannot be removed (a graph input or output, an op the table does not know, a grouped
conv), the root channels that reach it are *locked*, with the reason; nothing raises.

`winnow` then removes a set of root channels from every tensor of the group by slicing
the constants of the group's nodes. It is exact: removing channels whose contribution is
already zero leaves the model's outputs unchanged.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .. import ir
from ..layers import Layer

Shape = ir.Shape

#: Element-wise or per-channel ops whose input 0 and output 0 carry the same channels.
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout", "Cast", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "ThresholdedRelu", "Clip", "Swish", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "GlobalLpPool", "Upsample", "BatchNormalization",
    "InstanceNormalization", "Resize", "Pad", "IsNaN", "IsInf", "Not",
})
#: Per-channel parameter inputs of unary ops (sliced on axis 0).
CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
#: Broadcasting element-wise ops: every input whose channel dim is not 1 is tied.
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"})
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                    "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare"})


@dataclass(eq=False)
class Position:
    """Where the group's root channels sit in one tensor: `index` (C_root, k) along `axis`."""

    tensor: object
    axis: int
    index: np.ndarray

    def removed(self, roots: np.ndarray) -> np.ndarray:
        """Sorted unique indices along `axis` that removing root channels `roots` deletes."""
        idx = self.index[roots].reshape(-1)
        return np.unique(idx[idx >= 0])


@dataclass(frozen=True, eq=False)
class Action:
    """A change to one node when the group loses channels.

    kind: "in" (a layer loses input channels), "out" (a layer loses output channels),
    "param" (a per-channel constant input `slot` is sliced on `axis`), "depthwise"
    (weight, bias and group shrink together), "concat"/"split"/"reshape"/"resize"
    (sizes stored in the node are updated). `tensor` names the position that drives it.
    """

    kind: str
    node: object
    tensor: str
    slot: int = 0
    axis: int = 0
    sizes: tuple[int, ...] = ()


@dataclass(eq=False)
class ChannelGroup:
    """Tensors and nodes tied to the input channels of `layer`; `locked` channels must stay."""

    layer: Layer
    size: int
    positions: dict[str, Position] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    locked: np.ndarray | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def in_layers(self) -> list[str]:
        """Names of the layers that lose input channels with this group."""
        return [ir.node_name(a.node) for a in self.actions if a.kind == "in"]

    def out_layers(self) -> list[str]:
        """Names of the upstream layers that lose output channels with this group."""
        return [ir.node_name(a.node) for a in self.actions if a.kind == "out"]

    def lock_summary(self) -> str:
        return "; ".join(f"{why} ({n} channel{'s' if n != 1 else ''})" for why, n in self.reasons.items())

    def describe(self) -> str:
        """A printable summary, like Torch-Pruning's group printout."""
        lines = [f"channel group of '{self.layer.name}': {self.size} channels, "
                 f"{int(self.locked.sum())} locked"]
        for a in self.actions:
            extra = f" input {a.slot}" if a.kind == "param" else ""
            lines.append(f"  {a.kind:<9} {a.node.op:<18} {ir.node_name(a.node)}{extra}")
        if self.reasons:
            lines.append(f"  locked: {self.lock_summary()}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ build
class _Walk:
    """Breadth-first walk state; rules call visit/act/lock."""

    def __init__(self, group: ChannelGroup, shapes: dict[str, Shape], graph_inputs: set[str],
                 graph_outputs: set[str]):
        self.g = group
        self.shapes = shapes
        self.inputs = graph_inputs
        self.outputs = graph_outputs
        self.queue: deque[Position] = deque()
        self.done: set[tuple] = set()

    def shape(self, tensor) -> Shape | None:
        value = ir.constant_value(tensor)
        if value is not None:
            return tuple(value.shape)
        shape = self.shapes.get(tensor.name)
        return tuple(shape) if shape is not None else None

    def visit(self, tensor, axis: int, index: np.ndarray) -> None:
        if not (index >= 0).any():
            return
        if ir.constant_value(tensor) is not None:
            self.lock(index, f"tensor '{tensor.name}' is a constant")
            return
        old = self.g.positions.get(tensor.name)
        if old is not None:
            # Partial views of one tensor (e.g. one Concat segment) merge when they agree.
            new_rows, old_rows = (index >= 0).any(axis=1), (old.index >= 0).any(axis=1)
            both = new_rows & old_rows
            if (old.axis != axis or old.index.shape != index.shape
                    or not np.array_equal(old.index[both], index[both])):
                why = f"tensor '{tensor.name}' ties its channels in two different ways"
                self.lock(index, why)
                self.lock(old.index, why)
                return
            if (new_rows & ~old_rows).any():
                old.index = np.where(new_rows[:, None], index, old.index)
                self.queue.append(old)
            return
        pos = Position(tensor, axis, index)
        self.g.positions[tensor.name] = pos
        self.queue.append(pos)

    def act(self, kind: str, node, pos: Position, slot: int = 0, axis: int = 0, sizes=()) -> None:
        key = (kind, id(node), slot)
        if key not in self.done:
            self.done.add(key)
            self.g.actions.append(Action(kind, node, pos.tensor.name, slot, axis, tuple(sizes)))

    def lock(self, index: np.ndarray, reason: str) -> None:
        rows = (index >= 0).any(axis=1)
        fresh = rows & ~self.g.locked
        if fresh.any():
            self.g.reasons[reason] = self.g.reasons.get(reason, 0) + int(fresh.sum())
        self.g.locked |= rows

    def run(self) -> None:
        while self.queue:
            pos = self.queue.popleft()
            t = pos.tensor
            if t.name in self.inputs:
                self.lock(pos.index, f"tensor '{t.name}' is a graph input")
            elif t.inputs:
                self.apply_rule(t.inputs[0], pos)
            if t.name in self.outputs:
                self.lock(pos.index, f"tensor '{t.name}' is a graph output")
            for consumer in list(t.outputs):
                self.apply_rule(consumer, pos)

    def apply_rule(self, node, pos: Position) -> None:
        rule = RULES.get(node.op)
        if node.op in UNARY:
            rule = _unary
        elif node.op in BROADCAST:
            rule = _broadcast
        elif node.op in REDUCE:
            rule = _reduce
        if rule is None:
            self.lock(pos.index, f"{node.op} node '{ir.node_name(node)}' does not propagate channels")
            return
        reason = rule(self, node, pos)
        if reason:
            self.lock(pos.index, reason)


def _is_output(node, tensor) -> bool:
    return any(o is tensor for o in node.outputs)


def _slot(node, tensor) -> int:
    return next(i for i, t in enumerate(node.inputs) if t is tensor)


def _where(node) -> str:
    return f"{node.op} '{ir.node_name(node)}'"


# ------------------------------------------------------------------------------ rules
# A rule returns None when it handled the position, or the reason the channels it
# reaches cannot be removed (the walk locks them).
def _layer(w: _Walk, node, pos: Position) -> str | None:
    if node.op == "Conv":
        weight = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None:
            return f"{_where(node)} has a non-constant weight"
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
    weight_slot = 1
    if len(node.inputs) < 2 or ir.constant_value(node.inputs[weight_slot]) is None:
        return f"{_where(node)} has a non-constant weight"
    weight = ir.constant_value(node.inputs[1])
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


def _unary(w: _Walk, node, pos: Position) -> str | None:
    if _is_output(node, pos.tensor):
        if pos.tensor is not node.outputs[0]:
            return f"{_where(node)} output {pos.tensor.name} is not its data output"
        other = node.inputs[0]
    else:
        if _slot(node, pos.tensor) != 0:
            return f"{_where(node)} uses the tensor as a parameter"
        other = node.outputs[0]
    if node.op == "Pad" and not _pad_keeps_channels(node, pos.axis, w.shape(node.inputs[0])):
        return f"{_where(node)} pads the channel axis"
    if node.op in ("Resize", "Upsample"):
        if len(node.inputs) > 3 and node.inputs[3].name:  # explicit sizes include the channel count
            if ir.constant_value(node.inputs[3]) is None:
                return f"{_where(node)} has non-constant sizes"
            w.act("resize", node, pos)
    for slot in CHANNEL_PARAMS.get(node.op, ()):
        if slot < len(node.inputs) and node.inputs[slot].name:
            if ir.constant_value(node.inputs[slot]) is None:
                return f"{_where(node)} has non-constant per-channel parameters"
            w.act("param", node, pos, slot, 0)
    w.visit(other, pos.axis, pos.index)
    return None


def _pad_keeps_channels(node, axis: int, shape) -> bool:
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        pads = ir.constant_value(node.inputs[1])
    if pads is None or shape is None:
        return False
    pads = list(np.asarray(pads).reshape(-1))
    if len(node.inputs) > 3 and node.inputs[3].name:  # explicit axes (opset 18)
        axes = ir.constant_value(node.inputs[3])
        if axes is None:
            return False
        axes = [int(a) % len(shape) for a in np.asarray(axes).reshape(-1)]
        return axis not in axes or (pads[axes.index(axis)] == 0 and pads[len(axes) + axes.index(axis)] == 0)
    return pads[axis] == 0 and pads[len(shape) + axis] == 0


def _broadcast(w: _Walk, node, pos: Position) -> str | None:
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
        a = axis - (rank - len(shape))
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


def _concat(w: _Walk, node, pos: Position) -> str | None:
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
        slot = _slot(node, pos.tensor)
        w.visit(out, axis, np.where(pos.index >= 0, pos.index + offsets[slot], -1))
    return None


def _split(w: _Walk, node, pos: Position) -> str | None:
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


def _expand(index: np.ndarray, block: int) -> np.ndarray:
    """Channel indices -> feature indices of blocks of `block` features (-1 stays -1)."""
    feats = index[:, :, None] * block + np.arange(block)
    return np.where(index[:, :, None] >= 0, feats, -1).reshape(len(index), -1)


def _contract(index: np.ndarray, block: int) -> np.ndarray | None:
    """Feature indices -> channel indices when they form whole blocks, else None."""
    if index.shape[1] % block:
        return None
    blocks = index.reshape(len(index), -1, block)
    first = blocks[:, :, 0]
    expect = np.where(first[:, :, None] >= 0, first[:, :, None] + np.arange(block), -1)
    if not np.array_equal(blocks, expect) or ((first >= 0) & (first % block != 0)).any():
        return None
    return np.where(first >= 0, first // block, -1)


def _flatten_like(w: _Walk, node, pos: Position) -> str | None:
    """Flatten and Reshape: (N, C, *S) <-> (N, C*prod(S)), or shapes that keep axis 1."""
    src, out = node.inputs[0], node.outputs[0]
    if not _is_output(node, pos.tensor) and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a shape"
    in_shape, out_shape = w.shape(src), w.shape(out)
    if in_shape is None or out_shape is None:
        return f"{_where(node)} shapes unknown"
    if node.op == "Flatten" and int(node.attrs.get("axis", 1)) % max(len(in_shape), 1) != 1:
        return f"{_where(node)} flattens across the channel axis"
    forward = not _is_output(node, pos.tensor)
    if node.op == "Reshape" and ir.constant_value(node.inputs[1]) is None:
        return f"{_where(node)} has a computed shape"
    if len(out_shape) == 2 and len(in_shape) >= 2 and out_shape[0] == in_shape[0] and pos.axis == 1:
        block = math.prod(in_shape[2:])
        if forward:
            w.visit(out, 1, _expand(pos.index, block))
        else:
            index = _contract(pos.index, block)
            if index is None:
                return f"{_where(node)} splits channel blocks"
            w.visit(src, 1, index)
    elif (len(in_shape) > pos.axis and len(out_shape) > pos.axis and
          in_shape[:pos.axis + 1] == out_shape[:pos.axis + 1] and
          math.prod(in_shape[pos.axis + 1:]) == math.prod(out_shape[pos.axis + 1:])):
        w.visit(out if forward else src, pos.axis, pos.index)  # channel axis kept as is
    else:
        return f"{_where(node)} reshapes the channel axis"
    if node.op == "Reshape":
        w.act("reshape", node, pos)
    return None


def _transpose(w: _Walk, node, pos: Position) -> str | None:
    shape = w.shape(node.inputs[0])
    if shape is None:
        return f"{_where(node)} input shape unknown"
    perm = list(node.attrs.get("perm", reversed(range(len(shape)))))
    if _is_output(node, pos.tensor):
        w.visit(node.inputs[0], perm[pos.axis], pos.index)
    else:
        w.visit(node.outputs[0], perm.index(pos.axis), pos.index)
    return None


def _axes(node, slot: int = 1) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > slot and node.inputs[slot].name:
        value = ir.constant_value(node.inputs[slot])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return []


def _squeeze_like(w: _Walk, node, pos: Position) -> str | None:
    """Squeeze/Unsqueeze/Reduce*: the channel axis survives, maybe at another index."""
    src, out = node.inputs[0], node.outputs[0]
    in_shape, out_shape = w.shape(src), w.shape(out)
    axes = _axes(node)
    if in_shape is None or out_shape is None or axes is None:
        return f"{_where(node)} shapes or axes unknown"
    if not _is_output(node, pos.tensor) and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as a parameter"
    if node.op == "Unsqueeze":
        axes = sorted(a % len(out_shape) for a in axes)
        keep_out = [i for i in range(len(out_shape)) if i not in axes]  # out axes from input axes
        mapping = dict(enumerate(keep_out))
    else:
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
    if _is_output(node, pos.tensor):
        back = {v: k for k, v in mapping.items()}
        if pos.axis not in back:
            return f"{_where(node)} creates the channel axis"
        w.visit(src, back[pos.axis], pos.index)
    else:
        if pos.axis not in mapping:
            return f"{_where(node)} reduces or removes the channel axis"
        w.visit(out, mapping[pos.axis], pos.index)
    return None


def _reduce(w: _Walk, node, pos: Position) -> str | None:
    return _squeeze_like(w, node, pos)


RULES = {
    "Conv": _layer, "Gemm": _layer, "MatMul": _layer,
    "Concat": _concat, "Split": _split,
    "Flatten": _flatten_like, "Reshape": _flatten_like,
    "Transpose": _transpose, "Squeeze": _squeeze_like, "Unsqueeze": _squeeze_like,
}


def build_group(layer: Layer, graph: ir.Graph, shapes: dict[str, Shape]) -> ChannelGroup:
    """The channel group of `layer`'s input channels.

    Root channels are the layer's input channels; when the layer reads a flattened
    (N, C*S) tensor, they are the C channels before the Flatten, each a block of S features.
    """
    node = layer.node
    data = node.inputs[0]
    shape = shapes.get(data.name)
    rank = len(shape) if shape else (2 if layer.op == "Gemm" else None)
    start, axis = data, (1 if layer.op == "Conv" else (rank - 1 if rank else -1))
    size = layer.weight.shape[1] if layer.op == "Conv" else layer.matrix_shape()[0]
    producer = data.inputs[0] if data.inputs else None
    if (layer.op != "Conv" and producer is not None and producer.op in ("Flatten", "Reshape")
            and rank == 2):
        src_shape = shapes.get(producer.inputs[0].name)
        if src_shape and len(src_shape) > 2 and math.prod(src_shape[1:]) == size:
            start, axis, size = producer.inputs[0], 1, src_shape[1]
    group = ChannelGroup(layer=layer, size=int(size), locked=np.zeros(int(size), dtype=bool))
    names_in = {t.name for t in graph.inputs}
    names_out = {t.name for t in graph.outputs}
    walk = _Walk(group, shapes, names_in, names_out)
    index = np.arange(size)[:, None]
    if axis < 0:
        walk.lock(index, f"layer '{layer.name}' input shape unknown")
        return group
    walk.visit(start, axis, index)
    walk.run()
    if not any(a.kind == "in" and a.node is node for a in group.actions):
        walk.lock(index, f"layer '{layer.name}' is not reached through its input")
    return group


# ----------------------------------------------------------------------------- winnow
def _delete(value: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return np.delete(value, idx, axis=axis) if len(idx) else value


def winnow(group: ChannelGroup, roots: np.ndarray, taken: set[str]) -> dict[str, np.ndarray]:
    """Remove root channels `roots` from every tensor and node of `group`, in place.

    Returns, for each layer that lost output channels, the output-channel indices removed
    (in its current numbering), so callers can track which original channels remain.
    """
    roots = np.asarray(roots, dtype=np.int64)
    removed_out: dict[str, np.ndarray] = {}
    if roots.size == 0:
        return removed_out
    if group.locked[roots].any():
        raise ValueError("winnow asked to remove locked channels")
    for action in group.actions:
        node, pos = action.node, group.positions[action.tensor]
        idx = pos.removed(roots)
        if len(idx) == 0:
            continue
        name = ir.node_name(node)
        if action.kind in ("in", "out"):
            weight = ir.constant_value(node.inputs[1])
            if node.op == "Conv":
                w_axis = 1 if action.kind == "in" else 0
            else:
                trans = node.op == "Gemm" and int(node.attrs.get("transB", 0))
                w_axis = (0 if action.kind == "in" else 1) ^ (1 if trans else 0)
            ir.set_input(node, 1, _delete(weight, idx, w_axis), ir.unique_name(f"{name}.weight", taken))
            if action.kind == "out":
                removed_out[name] = idx
                if len(node.inputs) > 2 and node.inputs[2].name:
                    bias = ir.constant_value(node.inputs[2])
                    if bias is not None and bias.ndim >= 1 and bias.shape[-1] > 1:
                        ir.set_input(node, 2, _delete(bias, idx, bias.ndim - 1 if node.op != "Conv" else 0),
                                     ir.unique_name(f"{name}.bias", taken))
        elif action.kind == "depthwise":
            for slot in (1, 2):
                if slot < len(node.inputs) and node.inputs[slot].name:
                    value = ir.constant_value(node.inputs[slot])
                    ir.set_input(node, slot, _delete(value, idx, 0), ir.unique_name(f"{name}.p{slot}", taken))
            node.attrs["group"] = int(node.attrs["group"]) - len(idx)
        elif action.kind == "param":
            value = ir.constant_value(node.inputs[action.slot])
            ir.set_input(node, action.slot, _delete(value, idx, action.axis),
                         ir.unique_name(f"{name}.p{action.slot}", taken))
        elif action.kind == "split":
            _update_split(group, node, action, roots, taken)
        elif action.kind == "reshape":
            _update_reshape(group, node, roots, taken)
        elif action.kind == "resize":
            sizes = ir.constant_value(node.inputs[3]).copy()
            sizes[pos.axis] -= len(idx)
            ir.set_input(node, 3, sizes, ir.unique_name(f"{name}.sizes", taken))
    for pos in group.positions.values():
        ir.forget_shape(pos.tensor)
    return removed_out


def _update_split(group: ChannelGroup, node, action: Action, roots, taken) -> None:
    """Rewrite a channel Split's sizes after its outputs lost channels."""
    new = []
    for out, size in zip(node.outputs, action.sizes):
        pos = group.positions.get(out.name)
        new.append(int(size) - (len(pos.removed(roots)) if pos is not None else 0))
    if "split" in node.attrs:
        node.attrs["split"] = new
        return
    value = np.asarray(new, dtype=np.int64)
    name = ir.unique_name(f"{ir.node_name(node)}.split", taken)
    if len(node.inputs) > 1 and node.inputs[1].name:
        ir.set_input(node, 1, value, name)
    else:
        node.attrs.pop("num_outputs", None)
        ir.append_input(node, value, name)


def _update_reshape(group: ChannelGroup, node, roots, taken) -> None:
    """Rewrite an explicit channel (or feature) count in a Reshape's target shape."""
    out_pos = group.positions.get(node.outputs[0].name)
    if out_pos is None:
        return
    shape = ir.constant_value(node.inputs[1]).copy()
    if shape[out_pos.axis] > 0:
        shape[out_pos.axis] -= len(out_pos.removed(roots))
        ir.set_input(node, 1, shape, ir.unique_name(f"{ir.node_name(node)}.shape", taken))
