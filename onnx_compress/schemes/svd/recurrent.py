"""Weight SVD of an LSTM/GRU's input projection: pure numpy, plus the node specs.

The op's input weight W (dirs, gates*hidden, input) of every direction, stacked, is the
x-form matrix M = Wcat^T (input, dirs*gates*hidden): the op projects every time step's
x_t (input) to x_t @ M before its gates (LSTM gates 4: i, o, f, c; GRU 3: z, r, h). Weight
SVD factors M ~ A @ B, A (input, r), B (r, dirs*gates*hidden), and rewrites the op as

    X (seq, batch, input) -> MatMul(A) -> (seq, batch, r) -> the op with W = B^T as (dirs, gates*hidden, r)

keeping R, B (the biases), sequence_lens, the initial states, the peepholes P and every
attribute (`hidden_size` is unchanged: only the input size becomes r). Either layout works,
since the MatMul acts on X's last axis. The split is exact at r = min(input, rows) (full rank).

Cost, as a function of r (the recurrence is the split's fixed part, `RankCost.fixed`):
MACs steps*(input + rows)*r + steps*rows*hidden against steps*rows*(input + hidden), with
steps = seq*batch and rows = dirs*gates*hidden; memory (input + rows)*r + |R| against |W| + |R|.
The split saves only while r < rows*input / (input + rows).
"""
from __future__ import annotations

import numpy as np

from ...cost import RankCost
from ...errors import ShapeError
from ...ir import NodeSpec
from ...layers import Layer


def x_matrix(w: np.ndarray) -> np.ndarray:
    """W (dirs, gates*hidden, input) -> M (input, dirs*gates*hidden): x_t @ M = every
    direction's input projection of x_t."""
    return w.reshape(-1, w.shape[2]).T


def stored_weight(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An x-form matrix (input', dirs*gates*hidden) back in W's stored layout (dirs, gates*hidden, input')."""
    return matrix.T.reshape(shape[0], shape[1], matrix.shape[0])


def cost(layer: Layer, metric: str) -> RankCost:
    """The split's cost as a function of rank (the recurrent weights R: the fixed part)."""
    n_in, rows = layer.matrix_shape()
    full = min(n_in, rows)
    if metric == "memory":
        return RankCost(layer.memory, n_in + rows, full, layer.memory - int(layer.weight.size))
    if layer.mac is None or layer.in_shape is None:
        raise ShapeError(f"layer '{layer.name}': its input shape is unknown, so its MACs cannot be counted: "
                         f"{layer.shape_note}")
    steps = int(layer.in_shape[0]) * int(layer.in_shape[1])
    return RankCost(layer.mac, steps * (n_in + rows), full, layer.mac - steps * rows * n_in)


def specs(layer: Layer, a: np.ndarray, b: np.ndarray) -> list[NodeSpec]:
    """MatMul(A) then the op with W = B^T in W's layout; the op's other inputs (R, B,
    sequence_lens, initial_h/initial_c, P) follow as they are. a (input, r), b (r, rows)."""
    w = layer.weight
    first = NodeSpec("MatMul", (a.astype(w.dtype),))
    inner = stored_weight(b, w.shape).astype(w.dtype)  # b is the new op's x-form matrix (r, rows)
    rest = tuple(range(2, len(layer.node.inputs)))
    return [first, NodeSpec(layer.op, (inner,), dict(layer.attrs), rest)]
