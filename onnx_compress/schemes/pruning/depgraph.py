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
How a channel mask moves through a node, and how the node shrinks when the channels go,
is decided by one rule per op type, both side by side (`ops.OPS`, open to `register_op`).
Where channels cannot be removed (a graph input or output, an op the table does not know,
a grouped conv, a normalisation over the channel axis), the roots that reach it are
*locked*, with the reason; nothing raises.

A Reshape that splits the channel axis into (H, D) or merges (H, D) back (attention's head
split and merge) maps channels to blocks of D: on the split side the position is the H axis,
so each head becomes one unit; a MatMul of two activations passes channels on its batch axes
(the heads) to both operands. The group of an attention block's output projection thus
reaches Q, K and V, one unit per head.

`winnow` then removes a set of roots from every tensor of the group by slicing the
constants of the group's nodes (and rewriting the Slice bounds, Gather indices, Split
sizes, Reshape targets and GroupNormalization group counts they touch). It is exact:
removing channels whose contribution is already zero leaves the model's outputs unchanged.

This module gathers the public names; the code lives in `channels` (positions, actions),
`shapevals` (traced shape values), `ops` and `ops_*` (the per-op rules), `group` (the
walk and the units) and `winnow`.
"""
from __future__ import annotations

from .channels import Action, Position, shrink_none, shrink_params
from .group import ChannelGroup, Shape, Walk, build_group
from .ops import ALONG_AXIS, BROADCAST, OPS, REDUCE, UNARY, OpRule, register_op
from .ops_norm import CHANNEL_PARAMS
from .ops_shape import SHAPE_OPS
from .winnow import Cut, winnow

__all__ = ["ALONG_AXIS", "BROADCAST", "CHANNEL_PARAMS", "OPS", "REDUCE", "SHAPE_OPS", "UNARY",
           "Action", "ChannelGroup", "Cut", "OpRule", "Position", "Shape", "Walk",
           "build_group", "register_op", "shrink_none", "shrink_params", "winnow"]
