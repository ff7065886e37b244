"""NNI's ModelSpeedup on ONNX models: channels that masks zeroed whole are removed.

A pruner's masks only zero weights: the model keeps its shapes and its MACs. `speedup`
finds, in each layer's channel group (the tensors and nodes tied to its input channels,
as channel pruning builds it), the channels that are dead, and winnows them from every
tensor and node of the group (channel pruning's winnowing, without reconstruction):

- a channel every reader ignores: each layer that reads it ("in") has an all-zero weight
  slice for it. Removing it is exact: the outputs do not change;
- a channel every writer dropped: each layer that writes it ("out") has an all-zero
  filter for it. Removing it takes the filter's bias too, as NNI's speedup and channel
  pruning do; it is exact when those biases are zero (the stats say where they were not).

Each tensor of a group keeps at least one channel (a narrow Concat segment, a Split
output), and locked channels stay (graph inputs and outputs, ops that need their channel
count); the figures say how many dead channels stayed and why.

    masked = nni.LevelPruner(...)(model)        # or any Pruner whose masks zero whole channels
    fast = nni.speedup(masked)                  # or ModelSpeedup(masked, None, masks).speedup_model()
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from .. import ir, layers
from ..errors import ParameterError
from ..schemes.pruning import depgraph, prune
from ..schemes.pruning.ops_layer import weight_axis
from . import weights as wmod


@dataclass(frozen=True)
class GroupSpeedup:
    """One channel group: its root layer, the channels it had (counted in units: channels
    that can only go together, such as an attention head's, count once), those removed,
    those that were dead but stayed (locked, or the last of some tensor), and the note."""

    layer: str
    channels: int
    removed: int
    kept_dead: int
    layers: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class SpeedupStats:
    """MACs and weights before and after, and the groups that lost channels."""

    mac_before: int
    mac_after: int
    memory_before: int
    memory_after: int
    groups: tuple[GroupSpeedup, ...]

    @property
    def mac_ratio(self) -> float:
        return self.mac_after / self.mac_before if self.mac_before else 1.0

    @property
    def memory_ratio(self) -> float:
        return self.memory_after / self.memory_before if self.memory_before else 1.0

    def __str__(self) -> str:
        rows = [f"speedup: MACs {self.mac_before:,} -> {self.mac_after:,} ({self.mac_ratio:.4f}), "
                f"weights {self.memory_before:,} -> {self.memory_after:,} ({self.memory_ratio:.4f})"]
        for g in self.groups:
            extra = f", {g.kept_dead} dead kept" if g.kept_dead else ""
            note = f"; {g.note}" if g.note else ""
            rows.append(f"  {g.layer}: {g.channels} -> {g.channels - g.removed} channels{extra} "
                        f"({', '.join(g.layers)}){note}")
        return "\n".join(rows)


def _live(group: depgraph.ChannelGroup, action) -> np.ndarray:
    """Per root: whether the action's layer has a non-zero weight for any of its channels."""
    weight = ir.constant_value(action.node.inputs[1])
    axis = weight_axis(action)
    nonzero = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).any(axis=1)
    index = group.positions[action.tensor].index
    safe = np.where(index >= 0, np.minimum(index, len(nonzero) - 1), 0)
    return (nonzero[safe] & (index >= 0)).any(axis=1)


#: Ops that map a zero channel to zero (so a zeroed filter's channel stays zero through them).
ZERO_SAFE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Tanh", "Gelu", "Erf", "Identity", "Dropout",
    "HardSwish", "Mish", "Softsign", "Neg", "Abs", "Sign", "Sin", "Sinh", "Asin", "Asinh", "Tan", "Atan",
    "Atanh", "ThresholdedRelu", "Clip", "Mul", "Div", "Add", "Sub", "Sum", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Pad", "Resize", "Upsample", "Transpose", "Reshape",
    "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Cast", "ReduceMean",
    "ReduceSum", "ReduceMax", "ReduceMin", "BatchNormalization", "InstanceNormalization", "Conv", "Gemm", "MatMul"})
_SCALES = frozenset({"Mul", "Div", "PRelu"})  # per-channel constants that keep zero at zero


def _nonzero_at(value, idx: np.ndarray, axis: int) -> bool:
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[axis] == 1:  # broadcast: every channel gets it
        return bool(np.any(value != 0))
    return bool(np.any(np.take(value, idx, axis=axis) != 0))


def _shift_nonzero(node, idx: np.ndarray) -> bool:
    """Whether a BatchNormalization gives a non-zero output for a zero input at `idx`."""
    scale, bias, mean, var = (ir.constant_value(node.inputs[k]) for k in (1, 2, 3, 4))
    if any(v is None for v in (scale, bias, mean, var)):
        return True
    eps = float(node.attrs.get("epsilon", 1e-5))
    shift = bias - mean * scale / np.sqrt(var + eps)
    return _nonzero_at(shift, idx, 0)


def not_exact(group: depgraph.ChannelGroup, roots: np.ndarray) -> list[str]:
    """Why removing the zeroed filters `roots` changes the outputs: the nodes that give their
    channels a non-zero value (a writer's or depthwise conv's bias, an added constant, a
    BatchNormalization shift, an op that maps 0 elsewhere such as Sigmoid); [] when exact."""
    if not len(roots):
        return []
    why = []
    for a in group.actions:
        pos = group.positions.get(a.tensor)
        idx = pos.removed(roots) if pos is not None else np.zeros(0, np.int64)
        if not len(idx):
            continue
        node = a.node
        if a.kind in ("out", "depthwise") and len(node.inputs) > 2 and node.inputs[2].name:
            bias = ir.constant_value(node.inputs[2])
            if bias is None or _nonzero_at(bias, idx, -1):
                why.append(f"the bias of {ir.node_name(node)}")
        elif a.kind == "param" and node.op not in _SCALES:
            if node.op == "BatchNormalization":
                if _shift_nonzero(node, idx):
                    why.append(f"the shift of {ir.node_name(node)}")
            elif node.op not in ("InstanceNormalization",):
                value = ir.constant_value(node.inputs[a.slot])
                if value is None or _nonzero_at(value, idx, a.axis):
                    why.append(f"the constant {node.op} {ir.node_name(node)} adds")
    for pos in group.positions.values():
        producer = pos.tensor.inputs[0] if getattr(pos.tensor, "inputs", None) else None
        if producer is not None and producer.op not in ZERO_SAFE and len(pos.removed(roots)):
            why.append(f"{producer.op} {ir.node_name(producer)}, which maps 0 to a non-zero value")
    return list(dict.fromkeys(why))


def dead_channels(group: depgraph.ChannelGroup) -> tuple[np.ndarray, np.ndarray]:
    """(roots whose channels are dead, those of them dead only because their filters are
    zero: removing these is exact only when nothing downstream makes them non-zero)."""
    readers = [a for a in group.actions if a.kind == "in"]
    writers = [a for a in group.actions if a.kind == "out"]
    unread = np.full(group.size, bool(readers))
    for a in readers:
        unread &= ~_live(group, a)
    unwritten = np.zeros(group.size, dtype=bool)
    if writers:
        unwritten[:] = True
        for a in writers:
            unwritten &= ~_live(group, a)
    dead = unread | unwritten
    return np.flatnonzero(dead), np.flatnonzero(unwritten & ~unread)


def _removable(group: depgraph.ChannelGroup, dead: np.ndarray) -> np.ndarray:
    """`dead` less the locked roots, with every exhaustible set keeping its strongest root
    (the first; all are dead) and the group keeping one channel."""
    mask = np.zeros(group.size, dtype=bool)
    mask[dead] = True
    mask &= ~group.locked
    for roots in group.exhaustible():
        if mask[roots].all():
            mask[roots[0]] = False
    if mask.all():
        mask[0] = False
    return np.flatnonzero(mask)


def apply_masks(proto: onnx.ModelProto, masks) -> onnx.ModelProto:
    """`proto` with each named layer's weight times its mask (a dict layer -> array, or
    the .npz path a pruner's export_model wrote)."""
    if isinstance(masks, (str, os.PathLike)):
        try:
            with np.load(masks) as f:
                masks = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise ParameterError(f"masks file {os.fspath(masks)!r} cannot be read as .npz: {exc}") from None
    analysis = layers.analyze(proto)
    by_name = {layer.name: layer for layer in analysis.layers if layer.weight is not None}
    new = {}
    for name, mask in dict(masks).items():
        if name not in by_name:
            raise ParameterError(f"masks name layer '{name}', which the model does not have")
        w = by_name[name].weight
        m = wmod.checked(mask, w, name, "the mask")
        new[name] = np.where(m != 0, w, np.zeros((), w.dtype))
    return wmod.rewrite(proto, analysis, new)


def speedup(model, masks=None) -> tuple[onnx.ModelProto, SpeedupStats]:
    """The model with every dead channel removed (see the module), and the figures.

    `model`: a path or ModelProto (not modified), masked already or with `masks` (dict or
    .npz path) to apply first.
    """
    proto = ir.load(model)
    if masks is not None:
        proto = apply_masks(proto, masks)
    analysis = layers.analyze(proto)
    mac_before, memory_before = _totals(analysis)
    done: set[str] = set()
    groups = []
    order = [layer.name for layer in analysis.layers]
    for name in order:
        if name in done:
            continue
        layer = next((l for l in analysis.layers if l.name == name), None)
        if layer is None or layer.weight is None or prune.check_layer(layer):
            continue  # (a depthwise conv's channels go with its consumer's group)
        group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
        readers = group.in_layers()
        done.update(readers)
        dead, unwritten = dead_channels(group)
        if not len(dead):
            continue
        roots = _removable(group, dead)
        if not len(roots):
            groups.append(GroupSpeedup(name, group.size, 0, len(dead), tuple(readers),
                                       group.lock_summary() or "the group keeps one channel"))
            continue
        why = not_exact(group, np.intersect1d(roots, unwritten))
        depgraph.winnow(group, roots, ir.all_names(analysis.graph))
        note = (f"not exact: the zeroed filters' channels were not zero downstream ({'; '.join(why)}); "
                "removed with them, as NNI's speedup and channel pruning do") if why else ""
        groups.append(GroupSpeedup(name, group.size, len(roots), len(dead) - len(roots),
                                   tuple(readers + group.out_layers()), note))
        analysis = layers.refresh(analysis, ir.export(analysis.graph, proto, check=False))
    out = ir.export(analysis.graph, proto) if groups and any(g.removed for g in groups) else proto
    mac_after, memory_after = _totals(analysis)  # refreshed after the last winnow
    return out, SpeedupStats(mac_before, mac_after, memory_before, memory_after, tuple(groups))


def _totals(analysis: layers.Analysis) -> tuple[int, int]:
    return (sum(l.mac or 0 for l in analysis.layers), sum(l.memory or 0 for l in analysis.layers))


class ModelSpeedup:
    """NNI's `ModelSpeedup(model, dummy_input, masks_file, map_location=None)`.

    `model` is an ONNX path or ModelProto; `dummy_input` is not needed (shapes come from
    the graph) and may be None; `masks_file` is what `export_model` wrote (or a dict, or
    None when the model is masked already). `speedup_model()` returns the smaller
    ModelProto (an ONNX model cannot change in place) and keeps it in `.model`, the
    figures in `.stats`."""

    def __init__(self, model, dummy_input=None, masks_file=None, map_location=None):
        self._source, self.masks_file = model, masks_file
        self.model: onnx.ModelProto | None = None
        self.stats: SpeedupStats | None = None

    def speedup_model(self) -> onnx.ModelProto:
        self.model, self.stats = speedup(self._source, self.masks_file)
        return self.model
