"""Channel rules of the recurrent ops: LSTM and GRU (hidden-size pruning).

A group that reaches an LSTM/GRU output on its hidden axis (Y [seq, num_directions, batch,
hidden] on axis 3, Y_h/Y_c [num_directions, batch, hidden] on axis 2) ties all three: the op
*writes* those channels ("rnn_hidden"). Removing hidden unit j removes, in every direction,
its rows of W [dirs, gates*H, input] and R [dirs, gates*H, H] for every gate (LSTM: i, o, f,
c; GRU: z, r, h), its entries of B [dirs, 2*gates*H] (the W and R biases), its column of R
(the recurrence reads h), its peephole weights P [dirs, 3H], its initial_h/initial_c
entries, and the `hidden_size` attribute drops. A computed initial state (the zeros an
exporter builds from the input's shape) is read through a Gather of the kept units, so the
computation in front of it stays as it is. A group that reaches the op's input X on its last
(feature) axis makes the op a *reader*: W loses those columns ("rnn_in").

Locked, with the reason: a non-constant W/R/B/P, `layout=1` (batch first), channels on
another axis, and an initial state that comes from a graph input (a state input of the
model: its hidden size is part of the model's interface). Y/Y_h/Y_c as graph outputs lock
as every graph output does.

A bidirectional Y is usually read after Transpose [seq, batch, dirs, hidden] and Reshape
to [seq, batch, dirs*hidden]: the merged channel c = d*H + j is unit j of direction d.
`hidden_split` tells the Reshape rule (`ops_shape._split_merge`) that such a split tensor
comes from a recurrent output, so the merged channels map onto the hidden axis (index j for
every d) rather than onto the outer axis as attention heads do.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ir
from .channels import Action, Position, _canon, _delete, _is_output, _present, _slot, _where

if TYPE_CHECKING:
    from .group import Walk
    from .winnow import Cut

#: Gate blocks of H rows in W and R (and of the two halves of B).
GATES = {"LSTM": 4, "GRU": 3}
_SLOTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
_STATES = (5, 6)  # initial_h, initial_c (GRU has only initial_h)


# ---------------------------------------------------------------------- propagate
def _recurrent(w: Walk, node, pos: Position) -> str | None:
    """LSTM and GRU: a writer of its hidden units (Y, Y_h, Y_c, the initial states) and a
    reader of X's features."""
    why = _refused(node)
    if why:
        return why
    if _is_output(node, pos.tensor):
        k = next(i for i, t in enumerate(node.outputs) if t is pos.tensor)
        want = 3 if k == 0 else 2
        if pos.axis != want:
            name = ("Y", "Y_h", "Y_c")[k]
            return f"{_where(node)} output {name} carries the channels on axis {pos.axis}, not its hidden axis {want}"
        return _hidden(w, node, pos)
    slot = _slot(node, pos.tensor)
    if slot == 0:
        if pos.axis != 2:
            return f"{_where(node)} reads the channels on axis {pos.axis} of X, not its feature axis 2"
        w.act("rnn_in", node, pos, slot=0)
        return None
    if slot in _STATES[:_n_states(node)]:
        if pos.axis != 2:
            return f"{_where(node)} reads the channels on axis {pos.axis} of {_SLOTS[slot]}, not its hidden axis 2"
        return _hidden(w, node, pos)
    return f"{_where(node)} uses the tensor as {_SLOTS[slot] if slot < len(_SLOTS) else f'input {slot}'}"


def _refused(node) -> str | None:
    """Why the op cannot lose channels at all (None when it can)."""
    if int(node.attrs.get("layout", 0)) != 0:
        return f"{_where(node)} has layout=1 (batch-first tensors)"
    for slot in (1, 2, 3, 7):
        if slot < len(node.inputs) and _present(node.inputs[slot]) and ir.constant_value(node.inputs[slot]) is None:
            return f"{_where(node)} has a non-constant {_SLOTS[slot]}"
    if len(node.inputs) < 3 or not _present(node.inputs[1]) or not _present(node.inputs[2]):
        return f"{_where(node)} lacks W or R"
    return None


def _n_states(node) -> int:
    return 2 if node.op == "LSTM" else 1


def _hidden(w: Walk, node, pos: Position) -> str | None:
    """The op writes the group's channels: tie its outputs and record the shrink."""
    why = _state_input(w, node)
    if why:
        return why
    for k, t in enumerate(node.outputs):
        if _present(t) and t is not pos.tensor:
            w.visit(t, 3 if k == 0 else 2, pos.index)
    w.act("rnn_hidden", node, pos, slot=1)
    return None


def _state_input(w: Walk, node) -> str | None:
    """Why an initial state of the op cannot shrink: it comes from a graph input."""
    for slot in _STATES[:_n_states(node)]:
        t = node.inputs[slot] if slot < len(node.inputs) else None
        if not _present(t) or ir.constant_value(t) is not None:
            continue
        source = _graph_source(w, t)
        if source is not None:
            return (f"{_where(node)} takes its {_SLOTS[slot]} from the model's state input '{source}': "
                    "pruning its hidden size would change the model's interface")
    return None


def _graph_source(w: Walk, tensor) -> str | None:
    """The graph input a computed initial state is copied or reshaped from (following data
    input 0 of each producer; shape-reading ops end the trail), else None."""
    for _ in range(32):
        if tensor.name in w.inputs:
            return tensor.name
        if not tensor.inputs or not tensor.inputs[0].inputs:
            return None
        producer = tensor.inputs[0]
        if producer.op in ("Shape", "Size", "ConstantOfShape", "Constant"):
            return None
        tensor = producer.inputs[0]
        if not _present(tensor) or ir.constant_value(tensor) is not None:
            return None
    return None


# ------------------------------------------------------- bidirectional Y, merged
def hidden_split(w: Walk, tensor, outer: int) -> bool:
    """Whether axes (outer, outer + 1) of `tensor` are the (direction, hidden) axes of an
    LSTM/GRU output, through Transpose, Identity, Squeeze and Unsqueeze."""
    from .ops_shape import _axes, _axis_map

    axes = [outer, outer + 1]
    for _ in range(16):
        if not tensor.inputs:
            return False
        node = tensor.inputs[0]
        if node.op in GATES:
            k = next(i for i, t in enumerate(node.outputs) if t is tensor)
            return axes == ([1, 3] if k == 0 else [0, 2])
        if node.op == "Transpose":
            shape = w.shape(node.inputs[0])
            if shape is None:
                return False
            perm = list(node.attrs.get("perm", reversed(range(len(shape)))))
            axes = [perm[a] for a in axes]
        elif node.op in ("Squeeze", "Unsqueeze"):
            in_shape, out_shape, ax = w.shape(node.inputs[0]), w.shape(tensor), _axes(node)
            if in_shape is None or out_shape is None or ax is None:
                return False
            back = {v: k for k, v in _axis_map(node, in_shape, out_shape, ax).items()}
            if any(a not in back for a in axes):
                return False
            axes = [back[a] for a in axes]
        elif node.op != "Identity":
            return False
        tensor = node.inputs[0]
    return False


def to_hidden(index: np.ndarray, block: int) -> np.ndarray:
    """Merged channel indices d*H + j -> hidden unit j (-1 stays -1)."""
    return _canon(np.where(index >= 0, index % block, -1))


def from_hidden(index: np.ndarray, dirs: int, block: int) -> np.ndarray:
    """Hidden unit j -> merged channel indices d*H + j for every direction d."""
    merged = index[:, :, None] + np.arange(dirs) * block
    return np.where(index[:, :, None] >= 0, merged, -1).reshape(len(index), -1)


# ------------------------------------------------------------------------- shrink
def _shrink_recurrent(cut: Cut, action: Action, pos: Position, idx: np.ndarray) -> None:
    """"rnn_in": W loses input columns; "rnn_hidden": hidden units `idx` leave every gate
    of W, R, B and P, R's columns, the initial states and `hidden_size`."""
    node = action.node
    w = ir.constant_value(node.inputs[1])
    if action.kind == "rnn_in":
        ir.set_input(node, 1, _delete(w, idx, 2), cut.name(node, "W"))
        return
    r = ir.constant_value(node.inputs[2])
    hidden = int(r.shape[-1])
    gates = GATES[node.op]
    rows = _blocks(idx, gates, hidden)
    ir.set_input(node, 1, _delete(w, rows, 1), cut.name(node, "W"))
    ir.set_input(node, 2, _delete(_delete(r, rows, 1), idx, 2), cut.name(node, "R"))
    for slot, blocks in ((3, 2 * gates), (7, 3)):
        if slot < len(node.inputs) and _present(node.inputs[slot]):
            value = ir.constant_value(node.inputs[slot])
            ir.set_input(node, slot, _delete(value, _blocks(idx, blocks, hidden), 1),
                         cut.name(node, _SLOTS[slot]))
    _shrink_states(cut, node, idx, hidden)
    node.attrs["hidden_size"] = hidden - len(idx)


def _blocks(idx: np.ndarray, blocks: int, hidden: int) -> np.ndarray:
    """Indices of units `idx` in each of `blocks` consecutive blocks of `hidden`."""
    return (np.arange(blocks)[:, None] * hidden + np.asarray(idx)[None, :]).reshape(-1)


def _shrink_states(cut: Cut, node, idx: np.ndarray, hidden: int) -> None:
    """initial_h/initial_c lose units `idx`: a constant is sliced, a computed one is read
    through a Gather of the kept units (one Gather for a tensor both slots share); one the
    group itself holds shrinks with the group."""
    keep = np.setdiff1d(np.arange(hidden), idx)
    done: dict[str, object] = {}
    for slot in _STATES[:_n_states(node)]:
        t = node.inputs[slot] if slot < len(node.inputs) else None
        if not _present(t) or t.name in cut.group.positions:
            continue
        if t.name in done:
            node.inputs[slot] = done[t.name]
            continue
        value = ir.constant_value(t)
        if value is not None:
            ir.set_input(node, slot, _delete(value, idx, 2), cut.name(node, _SLOTS[slot]))
        else:
            ir.insert_gather(cut.group.graph, node, slot, keep, 2, f"{ir.node_name(node)}.{_SLOTS[slot]}",
                             cut.taken)
        done[t.name] = node.inputs[slot]
