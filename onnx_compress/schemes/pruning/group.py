"""Channel groups: which tensors' channels are tied to a layer's input channels.

`build_group` walks breadth-first from the layer's input tensor; at each node the op's
channel rule (`ops.OPS`) says which of the node's other tensors carry the same channels and
what the node must change when they go. Each visited tensor gets a `Position`; roots
(channels) that share an index of some tensor are merged into units; roots that reach
something that cannot lose channels are locked, with the reason (see `depgraph`).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ... import ir
from ...layers import Layer
from . import ops
from .channels import Action, Position, _canon

Shape = ir.Shape


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
    graph: object = None  # the graph the group lives in (winnow may add nodes to it)
    inexact: list[str] = field(default_factory=list)  # why winnowing changes kept outputs

    @property
    def exact(self) -> bool:
        """Whether removing channels whose contribution is zero leaves the outputs unchanged
        (False when the group normalises over its channels: a LayerNorm over fewer channels
        takes its mean and variance over the kept ones; `inexact` says where)."""
        return not self.inexact

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

    def inexact_summary(self) -> str:
        """What makes the group inexact, by kind: "LayerNorm over fewer channels (5 norms)"."""
        kinds: dict[str, int] = {}
        for note in self.inexact:
            kind = note.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return "; ".join(f"{kind} ({n} norm{'s' if n != 1 else ''})" for kind, n in kinds.items())

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
        for note in self.inexact:
            lines.append(f"  inexact: {note}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ build
class Walk:
    """Breadth-first walk state; an op rule's propagate calls shape/visit/act/lock/lock_rows/
    couple/inexact/later (see `ops`)."""

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

    def inexact(self, note: str) -> None:
        """Record that winnowing is not exact there (`ChannelGroup.inexact`), once per note."""
        if note not in self.g.inexact:
            self.g.inexact.append(note)

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
        rule = ops.OPS.get(node.op)
        if rule is None:
            self.lock(pos.index, f"{node.op} node '{ir.node_name(node)}' does not propagate channels")
            return
        reason = rule.propagate(self, node, pos)
        if reason:
            self.lock(pos.index, reason)



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
    group = ChannelGroup(layer=layer, size=int(size), locked=np.zeros(int(size), dtype=bool), graph=graph)
    names_in = {t.name for t in graph.inputs}
    names_out = {t.name for t in graph.outputs}
    walk = Walk(group, shapes, names_in, names_out, int(getattr(graph, "opset", None) or 17))
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


def _merge_units(group: ChannelGroup, walk: Walk) -> None:
    """Merge roots that share an index of some tensor (or that a rule coupled) into units."""
    size = group.size
    label = _root_labels(group, walk)
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


def _root_labels(group: ChannelGroup, walk: Walk) -> np.ndarray:
    """For each root, the smallest root it must go with (union-find over the couples and
    the roots sharing an index of some tensor)."""
    parent = np.arange(group.size)

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
    return np.array([find(i) for i in range(group.size)], dtype=np.int64)
