"""The vocabulary the channel rules share: position indices, `Position`, `Action`, node helpers.

A position index is an int64 array (roots, k): for each root channel of a group, the k
indices it occupies along one tensor's channel axis, -1 where absent. Its canonical form
(`_canon`) has each row's indices unique and sorted, -1 after.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ... import ir

if TYPE_CHECKING:
    from .winnow import Cut


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


def _delete(value: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return np.delete(value, idx, axis=axis) if len(idx) else value


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
    """A change to one node when the group loses channels; the shrink of the node's op rule
    carries it out.

    kind: "in" (a layer loses input channels), "out" (a layer loses output channels),
    "param" (a per-channel constant input `slot` is sliced on `axis`), "depthwise"
    (weight, bias and group shrink together), "split"/"reshape"/"resize" (sizes stored in
    the node are updated), "slice" (a Slice's bounds on the channel axis move), "gather"
    (a Gather's channel indices are renumbered), "groupnorm" (whole groups leave a
    GroupNormalization). `tensor` names the position that drives it.
    """

    kind: str
    node: object
    tensor: str
    slot: int = 0
    axis: int = 0
    sizes: tuple[int, ...] = ()


# ------------------------------------------------------------------------------ nodes
def _is_output(node, tensor) -> bool:
    return any(o is tensor for o in node.outputs)


def _slot(node, tensor) -> int:
    return next(i for i, t in enumerate(node.inputs) if t is tensor)


def _where(node) -> str:
    return f"{node.op} '{ir.node_name(node)}'"


def _present(tensor) -> bool:
    return tensor is not None and bool(tensor.name)


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


# ------------------------------------------------------------------ shared shrinks
# The shrinks most op rules use (see ops.OpRule).
def shrink_none(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """The shrink of an op that stores no channel count: its tensors shrink, it does not."""


def shrink_params(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """A "param" action: slice the constant input `action.slot` on `action.axis`."""
    node = action.node
    value = ir.constant_value(node.inputs[action.slot])
    ir.set_input(node, action.slot, _delete(value, idx, action.axis), cut.name(node, f"p{action.slot}"))
