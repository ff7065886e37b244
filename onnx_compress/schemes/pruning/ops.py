"""The per-op channel rules: one open registry, `OPS`, keyed by op type.

Each entry is an `OpRule` holding the op's two behaviours side by side (as Torch-Pruning
keeps an op's "prune" and "get channels" together in one pruner):

``propagate(walk, node, pos) -> str | None``
    While a channel group is built, the tensor `pos.tensor` (an input or an output of
    `node`) carries the group's roots on axis `pos.axis`. The rule ties the node's other
    tensors with `walk.visit(tensor, axis, index)`, records what winnow must change in the
    node with `walk.act(kind, node, pos, ...)`, and may lock roots (`walk.lock_rows`) or
    couple them (`walk.couple`). It returns None when it handled the position, or the
    reason the channels that reach it cannot be removed (the walk locks them).
``shrink(cut, action, pos, idx) -> None``
    When the group loses roots `cut.roots`, carry out one of the `Action`s the op's
    propagate recorded: `idx` are the channels removed from the position `pos` that drives
    it. Name new constants with `cut.name(node, what)`. An op that records no action
    stores no channel count: its shrink is `shrink_none`.

An op type the registry does not know locks the channels that reach it. `register_op` adds
an op (a custom-domain op, say) or replaces a rule; an existing rule can be reused, e.g.
``register_op("MyGelu", OPS["Relu"])`` for an element-wise op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .channels import shrink_none, shrink_params
from .ops_elementwise import BROADCAST, UNARY, _broadcast, _pad, _resize, _shrink_resize, _unary
from .ops_index import _concat, _gather, _shrink_gather, _shrink_slice, _shrink_split, _slice, _split
from .ops_layer import _conv, _matrix, _shrink_layer
from .ops_norm import (ALONG_AXIS, _along_axis, _channel_norm, _groupnorm, _layernorm, _reduce_mean,
                       _shrink_groupnorm, _topk)
from .ops_recurrent import GATES, _recurrent, _shrink_recurrent
from .ops_shape import REDUCE, _flatten_like, _shape, _shrink_reshape, _squeeze_like, _transpose

__all__ = ["OpRule", "OPS", "register_op", "shrink_none", "shrink_params",
           "UNARY", "BROADCAST", "REDUCE", "ALONG_AXIS"]


@dataclass(frozen=True)
class OpRule:
    """How channels propagate through one op type, and how the op shrinks when they go."""

    propagate: Callable[..., str | None]
    shrink: Callable[..., None]


_PASS = OpRule(_unary, shrink_none)  # element-wise and per-channel: nothing stored in the node

OPS: dict[str, OpRule] = {
    # layers: the group's ends ("in", "out") or a depthwise conv passing it through
    "Conv": OpRule(_conv, _shrink_layer),
    "Gemm": OpRule(_matrix, _shrink_layer),
    "MatMul": OpRule(_matrix, _shrink_layer),
    # recurrent: writers of their hidden units, readers of their input features
    **{op: OpRule(_recurrent, _shrink_recurrent) for op in sorted(GATES)},
    # element-wise
    **{op: _PASS for op in sorted(UNARY - {"Pad", "Resize", "Upsample"})},
    "Pad": OpRule(_pad, shrink_none),
    "Resize": OpRule(_resize, _shrink_resize),
    "Upsample": OpRule(_resize, _shrink_resize),
    **{op: OpRule(_broadcast, shrink_params) for op in sorted(BROADCAST)},
    # normalisations and ops along an axis
    "BatchNormalization": OpRule(_channel_norm, shrink_params),
    "InstanceNormalization": OpRule(_channel_norm, shrink_params),
    "LayerNormalization": OpRule(_layernorm, shrink_params),
    "GroupNormalization": OpRule(_groupnorm, _shrink_groupnorm),
    **{op: OpRule(_along_axis, shrink_none) for op in ALONG_AXIS},
    "TopK": OpRule(_topk, shrink_none),
    # cutting, joining, picking along an axis
    "Concat": OpRule(_concat, shrink_none),
    "Split": OpRule(_split, _shrink_split),
    "Slice": OpRule(_slice, _shrink_slice),
    "Gather": OpRule(_gather, _shrink_gather),
    # moving axes, reading shapes
    "Flatten": OpRule(_flatten_like, shrink_none),
    "Reshape": OpRule(_flatten_like, _shrink_reshape),
    "Transpose": OpRule(_transpose, shrink_none),
    "Squeeze": OpRule(_squeeze_like, shrink_none),
    "Unsqueeze": OpRule(_squeeze_like, shrink_none),
    **{op: OpRule(_squeeze_like, shrink_none) for op in sorted(REDUCE)},
    "ReduceMean": OpRule(_reduce_mean, shrink_none),  # also a LayerNorm's statistics
    "Shape": OpRule(_shape, shrink_none),
    "Size": OpRule(_shape, shrink_none),
}


def register_op(op_type: str, rule: OpRule) -> OpRule | None:
    """Add (or replace) the channel rule of op type `op_type`; returns the rule it replaces.

    The rule's `propagate` and `shrink` follow the contract in this module's docstring.
    """
    if not isinstance(op_type, str) or not op_type:
        raise TypeError(f"the 'op_type' parameter of register_op must be a non-empty str; got {op_type!r}")
    if not isinstance(rule, OpRule) or not callable(rule.propagate) or not callable(rule.shrink):
        raise TypeError("the 'rule' parameter of register_op must be an OpRule with a callable propagate "
                        f"and shrink; got {rule!r}")
    old = OPS.get(op_type)
    OPS[op_type] = rule
    return old
