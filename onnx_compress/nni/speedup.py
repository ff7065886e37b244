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
from ..schemes.pruning import depgraph
from . import weights as wmod


@dataclass(frozen=True)
class GroupSpeedup:
    """One channel group: its root layer, the channels it had, those removed, those that
    were dead but stayed (locked, or the last of some tensor), and the note."""

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


def _weight_axis(action) -> int:
    """The axis of a layer's stored weight that holds the action's channels."""
    if action.node.op == "Conv":
        return 1 if action.kind == "in" else 0
    trans = action.node.op == "Gemm" and int(action.node.attrs.get("transB", 0))
    return (0 if action.kind == "in" else 1) ^ (1 if trans else 0)


def _live(group: depgraph.ChannelGroup, action) -> np.ndarray:
    """Per root: whether the action's layer has a non-zero weight for any of its channels."""
    weight = ir.constant_value(action.node.inputs[1])
    axis = _weight_axis(action)
    nonzero = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).any(axis=1)
    index = group.positions[action.tensor].index
    safe = np.where(index >= 0, np.minimum(index, len(nonzero) - 1), 0)
    return (nonzero[safe] & (index >= 0)).any(axis=1)


def _biased(group: depgraph.ChannelGroup, actions, roots: np.ndarray) -> list[str]:
    """The writers whose bias is non-zero at a channel of `roots`, and the per-channel
    constants (BatchNormalization, an Add of a bias) on those channels: a zeroed filter's
    channel still carries them, and they leave with it."""
    if not len(roots):
        return []
    out = [ir.node_name(a.node) for a in group.actions
           if a.kind == "param" and len(group.positions[a.tensor].removed(roots))]
    for a in actions:
        if len(a.node.inputs) < 3 or not a.node.inputs[2].name:
            continue
        bias = ir.constant_value(a.node.inputs[2])
        idx = group.positions[a.tensor].removed(roots)
        if bias is not None and bias.ndim >= 1 and len(idx) and np.any(np.take(bias, idx, axis=-1) != 0):
            out.append(ir.node_name(a.node))
    return list(dict.fromkeys(out))


def dead_channels(group: depgraph.ChannelGroup) -> tuple[np.ndarray, list[str]]:
    """(roots whose channels are dead, writers with a non-zero bias at the removed filters)."""
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
    return np.flatnonzero(dead), _biased(group, writers, np.flatnonzero(unwritten & ~unread))


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
        if layer is None or layer.reason or layer.in_subgraph or layer.weight is None:
            continue
        group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
        readers = group.in_layers()
        done.update(readers)
        dead, biased = dead_channels(group)
        if not len(dead):
            continue
        roots = _removable(group, dead)
        if not len(roots):
            groups.append(GroupSpeedup(name, group.size, 0, len(dead), tuple(readers),
                                       group.lock_summary() or "the group keeps one channel"))
            continue
        depgraph.winnow(group, roots, ir.all_names(analysis.graph))
        note = (f"not exact: the zeroed filters' channels still carried constants (bias, normalisation "
                f"shift) of {', '.join(biased)}, removed with them as channel pruning does") if biased else ""
        groups.append(GroupSpeedup(name, group.size, len(roots), len(dead) - len(roots),
                                   tuple(readers + group.out_layers()), note))
        analysis = layers.refresh(analysis, ir.export(analysis.graph, proto, check=False))
    out = ir.export(analysis.graph, proto) if groups and any(g.removed for g in groups) else proto
    final = layers.analyze(out)
    mac_after, memory_after = _totals(final)
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
