"""Channel dependency graph: which tensors' channels are tied to a layer's input channels.

Removing input channels of a layer means removing the same channels from the tensor it
reads, hence from every producer upstream of that tensor (conv/gemm output channels,
BatchNormalization parameters, depthwise convs, Concat segments ...) and from every
other consumer of the tied tensors (the other convs that read a residual stream, the
other side of an Add or a squeeze-excite Mul). Learned from Torch-Pruning's DepGraph.

A `ChannelGroup` is built by a breadth-first walk from the layer's input tensor. Each
visited tensor gets a `Position`: its channel axis and, for every *root channel* (an
input channel of the layer, or a whole channel block after Flatten), the indices it
occupies there (-1 where absent, e.g. the other segments of a Concat). A root may occupy
several indices of one tensor (a Concat of a tensor with itself, or of a residual stream
and the tensors added to it, as in YOLO's C2f blocks); roots that share an index of some
tensor can only go together, so they are merged into one *unit* (GroupNormalization ties
the channels of each of its groups the same way). After merging, the group's roots are
these units: `size` counts them and a root's row lists all the channels it stands for.
How a channel mask moves through a node is decided by one rule per op type (`RULES`).
Where channels cannot be removed (a graph input or output, an op the table does not know,
a grouped conv, a normalisation over the channel axis), the roots that reach it are
*locked*, with the reason; nothing raises.

`winnow` then removes a set of roots from every tensor of the group by slicing the
constants of the group's nodes (and rewriting the Slice bounds, Gather indices, Split
sizes, Reshape targets and GroupNormalization group counts they touch). It is exact:
removing channels whose contribution is already zero leaves the model's outputs unchanged.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ... import ir
from ...layers import Layer

Shape = ir.Shape

#: Element-wise or per-channel ops whose input 0 and output 0 carry the same channels.
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout", "Cast", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "ThresholdedRelu", "Clip", "Swish", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "GlobalLpPool", "Upsample", "Resize", "Pad", "IsNaN", "IsInf", "Not",
})
#: Per-channel parameter inputs of the normalisations on axis 1 (sliced on axis 0).
CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
#: Broadcasting element-wise ops: every input whose channel dim is not 1 is tied.
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where",
                       "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
                       "Mod"})
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                    "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"})
#: Ops that work along some axes and per index of the others (locked when the channel
#: axis is among theirs): how each describes what it does along its axes.
ALONG_AXIS = {"Softmax": "normalises over", "LogSoftmax": "normalises over", "Hardmax": "normalises over",
              "LpNormalization": "normalises over", "MeanVarianceNormalization": "normalises over",
              "CumSum": "accumulates along"}
#: Ops through which a Shape value may flow while it stays a shape value (through input 0
#: only, except for the element-wise ones and Concat, which take it anywhere).
SHAPE_OPS = frozenset({"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Gather", "Slice",
                       "Concat", "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max"})
_ANY_SLOT = frozenset({"Concat", "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max"})
INT64_MIN = int(np.iinfo(np.int64).min)


# ---------------------------------------------------------------------------- indices
def _from_pairs(n_rows: int, rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """(n_rows, k) index from unique (row, value) pairs: rows sorted, -1 padding at the end."""
    rows, vals = np.asarray(rows, np.int64), np.asarray(vals, np.int64)
    counts = np.bincount(rows, minlength=n_rows) if len(rows) else np.zeros(n_rows, np.int64)
    out = np.full((n_rows, max(1, int(counts.max(initial=0)))), -1, dtype=np.int64)
    if len(rows):
        order = np.lexsort((vals, rows))
        r, v = rows[order], vals[order]
        start = np.cumsum(counts) - counts
        out[r, np.arange(len(r)) - start[r]] = v
    return out


def _canon(index: np.ndarray) -> np.ndarray:
    """The canonical form of a position index: each row's indices unique and sorted, -1 after."""
    index = np.asarray(index, dtype=np.int64)
    if index.ndim == 1:
        index = index[:, None]
    rows, cols = np.nonzero(index >= 0)
    vals = index[rows, cols]
    if len(vals):
        span = int(vals.max()) + 1
        key = np.unique(rows * span + vals)
        rows, vals = key // span, key % span
    return _from_pairs(len(index), rows, vals)


def _rows(index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`index` with the rows outside `mask` emptied."""
    return np.where(np.asarray(mask, bool)[:, None], index, -1)


@dataclass(eq=False)
class Position:
    """Where the group's roots sit in one tensor: `index` (roots, k) along `axis`."""

    tensor: object
    axis: int
    index: np.ndarray
    width: int | None = None  # the tensor's channel count along `axis` (None: unknown)

    def removed(self, roots: np.ndarray) -> np.ndarray:
        """Sorted unique indices along `axis` that removing roots `roots` deletes."""
        idx = self.index[roots].reshape(-1)
        return np.unique(idx[idx >= 0])


@dataclass(frozen=True, eq=False)
class Action:
    """A change to one node when the group loses channels.

    kind: "in" (a layer loses input channels), "out" (a layer loses output channels),
    "param" (a per-channel constant input `slot` is sliced on `axis`), "depthwise"
    (weight, bias and group shrink together), "concat"/"split"/"reshape"/"resize"
    (sizes stored in the node are updated), "slice" (a Slice's bounds on the channel axis
    move), "gather" (a Gather's channel indices are renumbered), "groupnorm" (whole groups
    leave a GroupNormalization). `tensor` names the position that drives it.
    """

    kind: str
    node: object
    tensor: str
    slot: int = 0
    axis: int = 0
    sizes: tuple[int, ...] = ()


@dataclass(eq=False)
class ChannelGroup:
    """Tensors and nodes tied to the input channels of `layer`; `locked` roots must stay.

    `size` counts the group's roots. It is the layer's input channel count unless
    channels that can only go together were merged into units: then `unit_of` gives,
    for each of the layer's original roots, the unit (root) it belongs to.
    """

    layer: Layer
    size: int
    positions: dict[str, Position] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    locked: np.ndarray | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    unit_of: np.ndarray | None = None

    def in_layers(self) -> list[str]:
        """Names of the layers that lose input channels with this group."""
        return [ir.node_name(a.node) for a in self.actions if a.kind == "in"]

    def out_layers(self) -> list[str]:
        """Names of the upstream layers that lose output channels with this group."""
        return [ir.node_name(a.node) for a in self.actions if a.kind == "out"]

    @property
    def all_locked(self) -> bool:
        """Whether no channel of the group can be removed."""
        return int(self.locked.sum()) == self.size

    def exhaustible(self) -> list[np.ndarray]:
        """Sets of unlocked roots that fill every channel of some tensor of the group (a
        narrow Concat segment, its producer, a Split output): removing a whole set would
        leave that tensor, and the layer behind it, with no channel. Sorted root indices,
        each set once; the set of every root (the layer's own input) is left out."""
        out, seen = [], set()
        for pos in self.positions.values():
            if pos.width is None:
                continue
            present = pos.index >= 0
            if len(np.unique(pos.index[present])) < pos.width:
                continue  # channels outside the group stay there
            roots = np.flatnonzero(present.any(axis=1))
            key = tuple(int(r) for r in roots)
            if len(roots) == self.size or key in seen or self.locked[roots].any():
                continue
            seen.add(key)
            out.append(roots)
        return out

    def lock_summary(self) -> str:
        return "; ".join(f"{why} ({n} channel{'s' if n != 1 else ''})" for why, n in self.reasons.items())

    def describe(self) -> str:
        """A printable summary, like Torch-Pruning's group printout."""
        units = "" if self.unit_of is None else f" in {self.size} units"
        n = self.size if self.unit_of is None else len(self.unit_of)
        lines = [f"channel group of '{self.layer.name}': {n} channels{units}, "
                 f"{int(self.locked.sum())} locked"]
        for a in self.actions:
            extra = f" input {a.slot}" if a.kind == "param" else ""
            lines.append(f"  {a.kind:<9} {a.node.op:<18} {ir.node_name(a.node)}{extra}")
        if self.reasons:
            lines.append(f"  locked: {self.lock_summary()}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ build
class _Walk:
    """Breadth-first walk state; rules call visit/act/lock/couple/later."""

    def __init__(self, group: ChannelGroup, shapes: dict[str, Shape], graph_inputs: set[str],
                 graph_outputs: set[str], opset: int = 17):
        self.g = group
        self.shapes = shapes
        self.inputs = graph_inputs
        self.outputs = graph_outputs
        self.opset = opset
        self.queue: deque[Position] = deque()
        self.done: set[tuple] = set()
        self.locks: list[tuple[str, np.ndarray]] = []  # (reason, rows) in order, for the unit count
        self.couples: list[np.ndarray] = []  # sets of roots that can only go together
        self.deferred: dict[tuple, object] = {}  # checks that need the final positions
        self.elems: dict[str, list | None] = {}  # shape values traced so far (see _elems)

    def shape(self, tensor) -> Shape | None:
        value = ir.constant_value(tensor)
        if value is not None:
            return tuple(value.shape)
        shape = self.shapes.get(tensor.name)
        return tuple(shape) if shape is not None else None

    def visit(self, tensor, axis: int, index: np.ndarray) -> None:
        index = _canon(index)
        if not (index >= 0).any():
            return
        if ir.constant_value(tensor) is not None:
            self.lock(index, f"tensor '{tensor.name}' is a constant")
            return
        old = self.g.positions.get(tensor.name)
        if old is not None:
            if old.axis != axis:  # one tensor, two channel axes: a true conflict
                why = f"tensor '{tensor.name}' ties its channels in two different ways (axes {old.axis} and {axis})"
                self.lock(index, why)
                self.lock(old.index, why)
                return
            # Every path that reaches a tensor adds the indices it ties to each root.
            merged = _canon(np.concatenate([old.index, index], axis=1))
            if merged.shape != old.index.shape or not np.array_equal(merged, old.index):
                old.index = merged
                self.queue.append(old)
            return
        shape = self.shape(tensor)
        width = int(shape[axis]) if shape is not None and 0 <= axis < len(shape) else None
        pos = Position(tensor, axis, index, width)
        self.g.positions[tensor.name] = pos
        self.queue.append(pos)

    def act(self, kind: str, node, pos: Position | None, slot: int = 0, axis: int = 0, sizes=(),
            tensor: str | None = None) -> None:
        key = (kind, id(node), slot)
        if key not in self.done:
            self.done.add(key)
            name = tensor if tensor is not None else pos.tensor.name
            self.g.actions.append(Action(kind, node, name, slot, axis, tuple(sizes)))

    def lock(self, index: np.ndarray, reason: str) -> None:
        self.lock_rows((np.asarray(index) >= 0).any(axis=1), reason)

    def lock_rows(self, rows: np.ndarray, reason: str) -> None:
        rows = np.asarray(rows, bool)
        if not rows.any():
            return
        self.locks.append((reason, rows))
        fresh = rows & ~self.g.locked
        if fresh.any():
            self.g.reasons[reason] = self.g.reasons.get(reason, 0) + int(fresh.sum())
        self.g.locked |= rows

    def couple(self, roots) -> None:
        roots = np.unique(np.asarray(roots, np.int64))
        if len(roots) > 1:
            self.couples.append(roots)

    def later(self, key: tuple, check) -> None:
        """Run `check()` once the walk is over (it sees the final positions)."""
        self.deferred.setdefault(key, check)

    def run(self) -> None:
        while self.queue or self.deferred:
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
            checks, self.deferred = list(self.deferred.values()), {}
            for check in checks:
                check()

    def apply_rule(self, node, pos: Position) -> None:
        rule = RULES.get(node.op)
        if node.op in UNARY:
            rule = _unary
        elif node.op in BROADCAST:
            rule = _broadcast
        elif node.op in REDUCE:
            rule = _reduce
        elif node.op in ALONG_AXIS:
            rule = _along_axis
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


def _present(tensor) -> bool:
    return tensor is not None and bool(tensor.name)


# --------------------------------------------------------------------- shape values
# What each element of a small integer tensor (a shape, a Reshape target, Resize sizes)
# holds: ("c", value) a constant, ("d", tensor name, axis) one dimension of a tensor,
# ("e", frozenset of (tensor name, axis)) an expression of dimensions.
def _deps(elem) -> frozenset:
    if elem[0] == "d":
        return frozenset({(elem[1], elem[2])})
    return elem[1] if elem[0] == "e" else frozenset()


def _binary(op: str, a, b):
    if a[0] == "c" and b[0] == "c":
        x, y = a[1], b[1]
        ints = isinstance(x, int) and isinstance(y, int)
        try:
            value = {"Add": lambda: x + y, "Sub": lambda: x - y, "Mul": lambda: x * y,
                     "Div": lambda: (int(x / y) if ints else x / y), "Mod": lambda: x % y,
                     "Min": lambda: min(x, y), "Max": lambda: max(x, y)}[op]()
        except (ZeroDivisionError, KeyError):
            return ("e", frozenset())
        return ("c", value)
    return ("e", _deps(a) | _deps(b))


def _elems(w: _Walk, tensor, depth: int = 0) -> list | None:
    """The elements of a 0-D or 1-D shape-like tensor (see above), or None when unknown."""
    if tensor is None or not tensor.name or depth > 32:
        return None
    if tensor.name not in w.elems:
        w.elems[tensor.name] = _trace_elems(w, tensor, depth)
    return w.elems[tensor.name]


def _trace_elems(w: _Walk, tensor, depth: int) -> list | None:
    value = ir.constant_value(tensor)
    if value is not None:
        value = np.asarray(value)
        if value.ndim > 1 or value.size > 64 or value.dtype.kind not in "iuf":
            return None
        return [("c", v.item()) for v in value.reshape(-1)]
    if len(tensor.inputs) != 1:
        return None
    node, op = tensor.inputs[0], tensor.inputs[0].op
    if op in ("Shape", "Size"):
        shape = w.shape(node.inputs[0])
        if shape is None:
            return None
        name = node.inputs[0].name
        if op == "Size":
            return [("e", frozenset((name, i) for i in range(len(shape))))]
        dims = range(len(shape))[slice(node.attrs.get("start", 0), node.attrs.get("end", None))]
        return [("d", name, i) for i in dims]
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        return _elems(w, node.inputs[0], depth + 1)
    if op == "Concat":
        out = []
        for t in node.inputs:
            part = _elems(w, t, depth + 1)
            if part is None:
                return None
            out.extend(part)
        return out
    if op == "Gather":
        data, idx = _elems(w, node.inputs[0], depth + 1), ir.constant_value(node.inputs[1])
        if data is None or idx is None or int(node.attrs.get("axis", 0)) != 0:
            return None
        flat = [int(i) + (len(data) if i < 0 else 0) for i in np.asarray(idx).reshape(-1)]
        return [data[i] for i in flat] if all(0 <= i < len(data) for i in flat) else None
    if op == "Slice":
        data = _elems(w, node.inputs[0], depth + 1)
        bounds = _slice_bounds(node, 1)
        if data is None or bounds is None or any(a != 0 for a in bounds):
            return None
        return data[slice(*bounds[0][:3])] if bounds else data
    if op in ("Add", "Sub", "Mul", "Div", "Mod", "Min", "Max"):
        a, b = _elems(w, node.inputs[0], depth + 1), _elems(w, node.inputs[1], depth + 1)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
            return None
        n = max(len(a), len(b))
        return [_binary(op, a[i % len(a)], b[i % len(b)]) for i in range(n)]
    return None


def _tainted(elems, key) -> bool:
    return any(key in _deps(e) for e in elems)


# ------------------------------------------------------------------------------ rules
# A rule returns None when it handled the position, or the reason the channels it
# reaches cannot be removed (the walk locks them).
def _layer(w: _Walk, node, pos: Position) -> str | None:
    if node.op == "Conv":
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
    weight_slot = 1
    if len(node.inputs) < 2 or ir.constant_value(node.inputs[weight_slot]) is None:
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


def _data_sides(node, pos: Position):
    """(other side, None) for a node whose input 0 and output 0 carry the same channels, or
    (None, reason) when the position is another input or output."""
    if _is_output(node, pos.tensor):
        if pos.tensor is not node.outputs[0]:
            return None, f"{_where(node)} output {pos.tensor.name} is not its data output"
        return node.inputs[0], None
    if _slot(node, pos.tensor) != 0:
        return None, f"{_where(node)} uses the tensor as a parameter"
    return node.outputs[0], None


def _unary(w: _Walk, node, pos: Position) -> str | None:
    other, why = _data_sides(node, pos)
    if why:
        return why
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    if node.op == "Pad" and not _pad_keeps_channels(w, node, pos.axis, in_shape):
        return f"{_where(node)} pads the channel axis"
    if (in_shape is not None and out_shape is not None and len(in_shape) == len(out_shape)
            and in_shape[pos.axis] != out_shape[pos.axis]):
        return f"{_where(node)} changes the channel count"
    if node.op in ("Resize", "Upsample"):
        if len(node.inputs) > 3 and node.inputs[3].name:  # explicit sizes include the channel count
            if ir.constant_value(node.inputs[3]) is not None:
                w.act("resize", node, pos)
            else:  # computed sizes: fine when they copy the input's own channel count
                elems = _elems(w, node.inputs[3])
                if elems is None or len(elems) <= pos.axis or elems[pos.axis] != ("d", node.inputs[0].name, pos.axis):
                    return f"{_where(node)} has computed sizes that fix the channel count"
    w.visit(other, pos.axis, pos.index)
    return None


def _pad_keeps_channels(w: _Walk, node, axis: int, shape) -> bool:
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


def _channel_norm(w: _Walk, node, pos: Position) -> str | None:
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


def _layernorm(w: _Walk, node, pos: Position) -> str | None:
    """LayerNormalization normalises over axes [axis, rank): per channel only when the
    channel axis comes before them (removing a normalised channel changes the mean and
    variance of the others, even when its values are zero). Mean and InvStdDev keep the
    leading axes."""
    return _keeps_other_axes(w, node, pos, "a parameter", lambda axis: pos.axis >= axis,
                             "normalises over the channel axis")


def _keeps_other_axes(w: _Walk, node, pos: Position, param: str, blocked, why: str) -> str | None:
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


def _groupnorm(w: _Walk, node, pos: Position) -> str | None:
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


def _groupnorm_units(w: _Walk, node, name: str, block: int) -> None:
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


def _along_axis(w: _Walk, node, pos: Position) -> str | None:
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


def _topk(w: _Walk, node, pos: Position) -> str | None:
    return _keeps_other_axes(w, node, pos, "k", lambda axis: pos.axis == axis, "selects along the channel axis")


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
        for slot, tensor in enumerate(node.inputs):  # the same tensor may come in twice
            if tensor is pos.tensor:
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


def _slice_bounds(node, rank: int) -> dict[int, tuple[int, int, int, int]] | None:
    """{axis: (start, end, step, entry)} of a Slice with constant bounds (None when computed);
    `entry` is the axis' place in the starts/ends lists."""
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        values = []
        for slot in (1, 2, 3, 4):
            t = node.inputs[slot] if slot < len(node.inputs) else None
            if not _present(t):
                values.append(None)
                continue
            v = ir.constant_value(t)
            if v is None:
                return None
            values.append([int(x) for x in np.asarray(v).reshape(-1)])
        starts, ends, axes, steps = values
        if starts is None or ends is None:
            return None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
    return {int(a) % rank: (int(s), int(e), int(st), j)
            for j, (a, s, e, st) in enumerate(zip(axes, starts, ends, steps))}


def _slice_axes(w: _Walk, node, rank: int) -> list[int] | None:
    """The axes a Slice cuts, also when its bounds are computed (None when unknown)."""
    if "starts" in node.attrs:
        return [int(a) % rank for a in node.attrs.get("axes", range(len(node.attrs["starts"])))]
    if len(node.inputs) > 3 and node.inputs[3].name:
        axes = ir.constant_value(node.inputs[3])
        return None if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    n = w.shape(node.inputs[1])
    return None if n is None or len(n) != 1 else list(range(n[0]))


def _slice(w: _Walk, node, pos: Position) -> str | None:
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


def _gather(w: _Walk, node, pos: Position) -> str | None:
    """Gather: channels pass through on the other axes; on the channel axis, constant 1-D
    indices map them (a channel gathered twice, or picked by a scalar index, is locked)."""
    data, idx_t, out = node.inputs[0], node.inputs[1], node.outputs[0]
    from_out = _is_output(node, pos.tensor)
    if not from_out and _slot(node, pos.tensor) != 0:
        return f"{_where(node)} uses the tensor as indices"
    shape, ishape = w.shape(data), w.shape(idx_t)
    if shape is None or ishape is None:
        return f"{_where(node)} shapes unknown"
    rank, q = len(shape), len(ishape)
    axis = int(node.attrs.get("axis", 0)) % rank
    if from_out:
        if pos.axis < axis:
            d_axis = pos.axis
        elif pos.axis >= axis + q:
            d_axis = pos.axis - q + 1
        elif q == 1:
            d_axis = axis
        else:
            return f"{_where(node)} builds the channel axis from its indices"
    else:
        d_axis = pos.axis
    if d_axis != axis:  # gathering along another axis
        if ir.constant_value(data) is not None:  # e.g. an embedding table: its columns go
            w.act("param", node, pos, 0, d_axis)
        elif from_out:
            w.visit(data, d_axis, pos.index)
        else:
            w.visit(out, d_axis if d_axis < axis else d_axis + q - 1, pos.index)
        return None
    indices = ir.constant_value(idx_t)
    if indices is None:
        return f"{_where(node)} has computed indices on the channel axis"
    if indices.ndim > 1:
        return f"{_where(node)} gathers the channel axis with {indices.ndim}-D indices"
    dim = shape[axis]
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + dim, flat)
    values, counts = np.unique(flat, return_counts=True)
    repeated = values[counts > 1]
    if ir.constant_value(data) is None:
        w.act("gather", node, None, axis=axis, sizes=(dim,), tensor=data.name)
    if from_out:
        index = np.where(pos.index >= 0, flat[np.maximum(pos.index, 0)], -1)
    else:
        index = pos.index
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


def _shape(w: _Walk, node, pos: Position) -> str | None:
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


def _self_sized(w: _Walk, node, slots, x, axis: int, elems) -> bool:
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


def _flatten_like(w: _Walk, node, pos: Position) -> str | None:
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
    forward = not _is_output(node, pos.tensor)
    target = None  # a computed target's elements
    if node.op == "Reshape" and ir.constant_value(node.inputs[1]) is None:
        target = _elems(w, node.inputs[1])
        if target is None or len(target) != len(out_shape):
            return f"{_where(node)} has a computed shape"
    if len(out_shape) == 2 and len(in_shape) >= 2 and out_shape[0] == in_shape[0] and pos.axis == 1:
        block = math.prod(in_shape[2:])
        if target is not None and target[1] != ("c", -1) and not (block == 1 and target[1] == ("d", src.name, 1)):
            return f"{_where(node)} computes the feature count of its target"
        if forward:
            w.visit(out, 1, _expand(pos.index, block))
        else:
            index = _contract(pos.index, block)
            if index is None:
                return f"{_where(node)} splits channel blocks"
            w.visit(src, 1, index)
    else:  # the channel axis kept whole, maybe at another index
        if forward:
            in_axis, out_axis = pos.axis, _reshape_axis(in_shape, out_shape, pos.axis)
        else:
            in_axis, out_axis = _reshape_axis(out_shape, in_shape, pos.axis), pos.axis
        if in_axis is None or out_axis is None:
            return f"{_where(node)} reshapes the channel axis"
        if node.op == "Reshape":
            elems = target if target is not None else _elems(w, node.inputs[1])
            copy = not int(node.attrs.get("allowzero", 0))  # a 0 copies the input's dim there
            if elems is not None and len(elems) == len(out_shape):
                entry = elems[out_axis]
                fine = (entry == ("c", -1) or entry == ("d", src.name, in_axis)
                        or (copy and entry == ("c", 0) and in_axis == out_axis)
                        or (target is None and entry[0] == "c" and entry[1] > 0))  # updated on winnow
                if not fine:
                    return f"{_where(node)} has a target that fixes the channel count"
                if copy and in_axis != out_axis and in_axis < len(elems) and elems[in_axis] == ("c", 0):
                    return f"{_where(node)} copies the channel count to axis {in_axis}"
        if forward:
            w.visit(out, out_axis, pos.index)
        else:
            w.visit(src, in_axis, pos.index)
    if node.op == "Reshape" and target is None:
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
    if node.op in ("ArgMax", "ArgMin"):
        return [int(node.attrs.get("axis", 0))]
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > slot and node.inputs[slot].name:
        value = ir.constant_value(node.inputs[slot])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    return []


def _squeeze_like(w: _Walk, node, pos: Position) -> str | None:
    """Squeeze/Unsqueeze/Reduce*/ArgMax: the channel axis survives, maybe at another index."""
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
            if node.op == "Squeeze":
                return f"{_where(node)} removes the channel axis"
            return f"{_where(node)} reduces over the channel axis (axis {pos.axis})"
        w.visit(out, mapping[pos.axis], pos.index)
    return None


def _reduce(w: _Walk, node, pos: Position) -> str | None:
    return _squeeze_like(w, node, pos)


RULES = {
    "Conv": _layer, "Gemm": _layer, "MatMul": _layer,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "Flatten": _flatten_like, "Reshape": _flatten_like,
    "Transpose": _transpose, "Squeeze": _squeeze_like, "Unsqueeze": _squeeze_like,
    "BatchNormalization": _channel_norm, "InstanceNormalization": _channel_norm,
    "LayerNormalization": _layernorm, "GroupNormalization": _groupnorm, "TopK": _topk,
    "Shape": _shape, "Size": _shape,
}


def build_group(layer: Layer, graph: ir.Graph, shapes: dict[str, Shape]) -> ChannelGroup:
    """The channel group of `layer`'s input channels.

    Root channels are the layer's input channels; when the layer reads a flattened
    (N, C*S) tensor, they are the C channels before the Flatten, each a block of S features.
    Roots that can only be removed together are then merged into units (see the module).
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
    walk = _Walk(group, shapes, names_in, names_out, int(getattr(graph, "opset", None) or 17))
    index = np.arange(size)[:, None]
    if axis < 0:
        walk.lock(index, f"layer '{layer.name}' input shape unknown")
        return group
    walk.visit(start, axis, index)
    walk.run()
    if not any(a.kind == "in" and a.node is node for a in group.actions):
        walk.lock(index, f"layer '{layer.name}' is not reached through its input")
    _merge_units(group, walk)
    return group


def _merge_units(group: ChannelGroup, walk: _Walk) -> None:
    """Merge roots that share an index of some tensor (or that a rule coupled) into units."""
    size = group.size
    parent = np.arange(size)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for roots in walk.couples:
        for r in roots[1:]:
            union(int(roots[0]), int(r))
    for pos in group.positions.values():
        rows, cols = np.nonzero(pos.index >= 0)
        if len(rows) < 2 or len(np.unique(pos.index[rows, cols])) == len(rows):
            continue
        vals = pos.index[rows, cols]
        order = np.lexsort((rows, vals))
        v, r = vals[order], rows[order]
        for i in np.flatnonzero(v[1:] == v[:-1]):
            union(int(r[i]), int(r[i + 1]))
    label = np.array([find(i) for i in range(size)], dtype=np.int64)
    if (label == np.arange(size)).all():
        return
    _, label = np.unique(label, return_inverse=True)  # units in the order of their first root
    n_units = int(label.max()) + 1
    order = np.argsort(label, kind="stable")
    counts = np.bincount(label, minlength=n_units)
    rank_in_unit = np.arange(size) - (np.cumsum(counts) - counts)[label[order]]
    for pos in group.positions.values():
        merged = np.full((n_units, int(counts.max()), pos.index.shape[1]), -1, dtype=np.int64)
        merged[label[order], rank_in_unit] = pos.index[order]
        pos.index = _canon(merged.reshape(n_units, -1))
    locked = np.zeros(n_units, dtype=bool)
    reasons: dict[str, int] = {}
    for reason, rows in walk.locks:  # recount the reasons in units, in the order they locked
        units = np.zeros(n_units, dtype=bool)
        units[label[rows]] = True
        fresh = units & ~locked
        if fresh.any():
            reasons[reason] = reasons.get(reason, 0) + int(fresh.sum())
        locked |= units
    group.size, group.locked, group.reasons, group.unit_of = n_units, locked, reasons, label


# ----------------------------------------------------------------------------- winnow
def _delete(value: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return np.delete(value, idx, axis=axis) if len(idx) else value


def winnow(group: ChannelGroup, roots: np.ndarray, taken: set[str]) -> dict[str, np.ndarray]:
    """Remove roots `roots` from every tensor and node of `group`, in place.

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
        node, pos = action.node, group.positions.get(action.tensor)
        if pos is None:
            continue
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
        elif action.kind == "slice":
            _update_slice(node, action, idx, taken)
        elif action.kind == "gather":
            _update_gather(node, action, idx, taken)
        elif action.kind == "groupnorm":
            _update_groupnorm(node, action, idx, taken)
    for pos in group.positions.values():
        # Only tensors that lost channels changed shape. The others keep theirs: a graph
        # input or output reached only by locked roots (beside a Concat segment that
        # shrank) must keep its declared dims, since the model's interface never changes.
        if len(pos.removed(roots)):
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


def _update_slice(node, action: Action, removed: np.ndarray, taken) -> None:
    """Move a Slice's bounds on the channel axis after its input lost channels `removed`
    (input numbering): the kept channels of the segment stay one contiguous segment."""
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
        ir.set_input(node, slot, bounds, ir.unique_name(f"{ir.node_name(node)}.{what}", taken))


def _update_gather(node, action: Action, removed: np.ndarray, taken) -> None:
    """Drop the Gather indices of removed channels and renumber the others."""
    value = ir.constant_value(node.inputs[1])
    flat = np.asarray(value, dtype=np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + action.sizes[0], flat)
    keep = ~np.isin(flat, removed)
    new = flat[keep] - np.searchsorted(removed, flat[keep])
    new = np.asarray(new, dtype=value.dtype).reshape(np.shape(value) if np.ndim(value) == 0 else -1)
    ir.set_input(node, 1, new, ir.unique_name(f"{ir.node_name(node)}.indices", taken))


def _update_groupnorm(node, action: Action, removed: np.ndarray, taken) -> None:
    """Whole groups leave a GroupNormalization: fewer groups, their scale and bias go."""
    channels, groups = action.sizes
    block = channels // groups
    gone = np.unique(removed // block)
    assert len(gone) * block == len(removed), "GroupNormalization loses part of a group"
    node.attrs["num_groups"] = int(node.attrs["num_groups"]) - len(gone)
    for slot in (1, 2):
        if slot < len(node.inputs) and node.inputs[slot].name:
            value = ir.constant_value(node.inputs[slot])
            idx = removed if value.shape[0] == channels else gone
            ir.set_input(node, slot, _delete(value, idx, 0), ir.unique_name(f"{ir.node_name(node)}.p{slot}", taken))
