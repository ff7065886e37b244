"""Winnow: remove a set of roots from every tensor and node of a channel group, in place.

Each recorded `Action` is carried out by the shrink of its node's op rule (`ops.OPS`):
slicing constants, rewriting the Slice bounds, Gather indices, Split sizes, Reshape
targets and GroupNormalization group counts it touches. It is exact: removing channels
whose contribution is already zero leaves the model's outputs unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import ir
from . import ops
from .group import ChannelGroup


@dataclass(eq=False)
class Cut:
    """One winnow in progress: the group, the roots it removes, the names already taken in
    the graph, and (filled by the layers' shrink) each layer's removed output channels."""

    group: ChannelGroup
    roots: np.ndarray
    taken: set[str]
    removed_out: dict[str, np.ndarray]

    def name(self, node, what: str) -> str:
        """A fresh name for a constant replacing input `what` of `node`."""
        return ir.unique_name(f"{ir.node_name(node)}.{what}", self.taken)


def winnow(group: ChannelGroup, roots: np.ndarray, taken: set[str]) -> dict[str, np.ndarray]:
    """Remove roots `roots` from every tensor and node of `group`, in place.

    Returns, for each layer that lost output channels, the output-channel indices removed
    (in its current numbering), so callers can track which original channels remain.
    """
    roots = np.asarray(roots, dtype=np.int64)
    cut = Cut(group, roots, taken, {})
    if roots.size == 0:
        return cut.removed_out
    if group.locked[roots].any():
        raise ValueError("winnow asked to remove locked channels")
    for action in group.actions:
        pos = group.positions.get(action.tensor)
        if pos is None:
            continue
        idx = pos.removed(roots)
        if len(idx):
            ops.OPS[action.node.op].shrink(cut, action, pos, idx)
    for pos in group.positions.values():
        # Only tensors that lost channels changed shape. The others keep theirs: a graph
        # input or output reached only by locked roots (beside a Concat segment that
        # shrank) must keep its declared dims, since the model's interface never changes.
        if len(pos.removed(roots)):
            ir.forget_shape(pos.tensor)
    return cut.removed_out
