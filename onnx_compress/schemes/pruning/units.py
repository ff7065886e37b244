"""Auto-mode units for channel pruning: one per channel group.

A unit is named by the first requested layer of its group (graph order); the group's
other requested layers are pruned with it. For each candidate ratio the unit carries
the exact keep count, the channels the selection keeps, and the model-level savings of
pruning that group alone (the root, the group's other consumers, its upstream producers
and depthwise convs). Its overrides are the group's consumer weights with the removed
channels zeroed and the kept ones refit on samples of the original model: a model with
them swapped in computes what pruning that group alone computes, since the pruned
layers' kept inputs are unchanged when only this group is pruned. Unit costs count the
layers whose input channels the group prunes, so they add up without double counting;
upstream savings come on top, and the final compression measures the real ratio.
"""
from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import onnx

from ... import ir, layers, progress
from ...cost import kept_count
from ...options import Settings
from . import prune as pruning
from . import depgraph, lstsq
from ..base import Candidate, Unit


#: Why a group whose sampled inputs or outputs hold NaN/Inf (downstream of a layer with
#: NaN weights) is not scored.
NOT_FINITE_SAMPLES = "its calibration inputs or outputs hold NaN or Inf values"


def _weight_names(proto: onnx.ModelProto) -> set[str]:
    return {t.name for t in proto.graph.initializer}


def _shared(proto: onnx.ModelProto, inits: set[str]) -> set[str]:
    """Initializers that more than one node reads (tied embeddings: a Gather's table that an
    lm_head Gemm also reads, with transB=1)."""
    uses = Counter(name for node in proto.graph.node for name in node.input if name in inits)
    return {name for name, n in uses.items() if n > 1}


def group_units(proto: onnx.ModelProto, analysis: layers.Analysis, names: list[str], keys: list[float],
                settings: Settings, metric: str, multiplicity: int, activations):
    """(units, skipped: layer name -> reason) for channel pruning in auto mode."""
    sampler = activations.sampler(proto, settings)
    rng = np.random.default_rng(settings.seed)
    inits = _weight_names(proto)
    shared = _shared(proto, inits)
    by_name = {l.name: l for l in analysis.compressible}
    covered: dict[str, str] = {}
    costs = layer_costs(analysis, metric)
    units, skipped = [], {}
    order = [l.name for l in analysis.layers if l.name in set(names)]
    for step, name in enumerate(order):
        progress.update("channel-pruning candidates", step, len(order))
        layer = analysis.find(name)
        if name in covered:
            skipped[name] = f"pruned with the channel group of '{covered[name]}'"
            continue
        if reason := pruning.check_layer(layer):
            skipped[name] = reason
            continue
        group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
        if group.all_locked and not settings.allow_custom_downsample_ops:
            skipped[name] = f"no channel can be removed: {group.lock_summary()}"
            continue
        members = [by_name[n] for n in group.in_layers() if n in by_name]
        if any(m.node.inputs[1].name not in inits or m.in_subgraph for m in members):
            skipped[name] = "a layer of its group has no main-graph initializer weight"
            continue
        for m in members:
            covered.setdefault(m.name, name)
        unit = _unit(layer, group, members, sampler, rng, keys, settings, costs, multiplicity, shared)
        if unit is None:
            skipped[name] = "no candidate ratio removes a channel"
        elif unit is NOT_FINITE_SAMPLES:
            skipped[name] = unit
        else:
            units.append(unit)
    progress.update("channel-pruning candidates", len(order), len(order))
    return units, skipped


def _samples(sampler, layer: layers.Layer, rng, n: int):
    """Patches (n, C, K) of `layer`'s input and its outputs (n, n_out), original model."""
    return pruning.sample_layer(sampler, sampler.original, layer, rng, n, True, layer.node.outputs[0].name, None)


def _unit(root, group, members, sampler, rng, keys, settings, costs, multiplicity, shared=frozenset()):
    size = group.size
    sampler.prefetch([t.name for m in members for t in (m.node.inputs[0], m.node.outputs[0])])
    samples = {m.name: _samples(sampler, m, rng, settings.num_reconstruction_samples) for m in members}
    if not all(np.isfinite(p).all() and np.isfinite(t).all() for p, t in samples.values()):
        return NOT_FINITE_SAMPLES
    grams = {}
    if settings.reconstruct:  # a weight another node reads too is previewed zeroed, not refit
        for m in (m for m in members if m.node.inputs[1].name not in shared):
            grams[m.name] = lstsq.GramFit(samples[m.name][0], samples[m.name][1], _has_bias(m),
                                                seed=settings.seed)
    root_index = group.positions[root.node.inputs[0].name].index
    weight_view = pruning.root_view(pruning.layer_weight(root), root_index)
    patches_view = None
    if settings.selection != "magnitude":
        patches_view = pruning.root_view(samples[root.name][0].astype(np.float64), root_index)
    # allow_custom_downsample_ops: locked channels may go from the root layer alone, through
    # a channel Gather in front of it (as the final compression inserts); the rest keep them
    gather = settings.allow_custom_downsample_ops and bool(group.locked.any())
    choices = []
    for key in keys:
        q = Fraction(repr(float(key)))
        if q.numerator * size < q.denominator:
            continue
        keep = kept_count(size, q, multiplicity)
        if not gather:
            keep = max(keep, int(group.locked.sum()))
        if keep >= size or any(c[1] == keep for c in choices):  # past the top, or a repeat after rounding
            continue
        kept = pruning.select_kept(group, settings.selection, patches_view, weight_view, keep,
                                   None if gather else group.locked, multiplicity)
        keep = len(kept)  # more when every branch of the group keeps a channel
        if keep >= size or any(c[1] == keep for c in choices):
            continue
        removed = _Removed(group, root, np.setdiff1d(np.arange(size), kept))
        choices.append((key, keep, removed, _unit_cost(group, removed, costs)))
    if not choices:
        return None
    base = _owned_cost(group, costs)
    cands, removed_by_size = [], {size: _Removed(group, root, np.zeros(0, dtype=np.int64))}  # nothing removed
    effects = {key: _effects(group, removed, costs) for key, _, removed, _ in choices}
    for key, keep, removed, cost in choices:
        cands.append(Candidate(key, keep, cost, Fraction(keep, size), footprint(effects[key])))
        removed_by_size[keep] = removed

    def preview(c: Candidate) -> dict[str, np.ndarray]:
        return _overrides(group, members, samples, grams, removed_by_size[c.size], settings)

    weights = [m.node.inputs[1].name for m in members]
    if settings.reconstruct:
        weights += [m.node.inputs[2].name for m in members if _has_bias(m) and m.name in grams]
    touched = tuple(dict.fromkeys(name for name, _ in effects[choices[0][0]]))
    return Unit(root.name, cands, preview, base, tuple(weights), touched, data=effects, size=size)


def footprint(effects: dict[tuple[str, str], Fraction]) -> dict[str, Fraction]:
    """Layer -> kept fraction of its cost: the product of its sides' kept fractions."""
    out: dict[str, Fraction] = {}
    for (name, _side), kept in effects.items():
        out[name] = out.get(name, Fraction(1)) * kept
    return out


def _has_bias(layer: layers.Layer) -> bool:
    """Whether the layer has a constant bias input (Conv B / Gemm C) to refit."""
    node = layer.node
    return len(node.inputs) > 2 and bool(node.inputs[2].name) and ir.constant_value(node.inputs[2]) is not None


def layer_costs(analysis: layers.Analysis, metric: str) -> dict[str, int]:
    """Layer name -> cost under `metric`, for the model's layers."""
    return {l.name: layers.cost_of(l, metric) for l in analysis.compressible}


def _unit_cost(group, removed: "_Removed", costs: dict[str, int]) -> int:
    """Cost of the layers this group owns after it loses root channels `removed`.

    A group owns the layers whose *input* channels it prunes (and its depthwise convs, and
    the LSTM/GRU layers whose hidden units it prunes: their whole cost, W and R);
    their producers' output savings are not counted (another group owns those layers).
    Each layer is owned once, so unit costs add up, and the estimate is an upper bound on
    the real cost (which the final compression measures).
    """
    total = Fraction(0)
    for action in group.actions:
        name = ir.node_name(action.node)
        if action.kind == "rnn_hidden" and name in costs:  # the group of its hidden units owns an LSTM/GRU
            total += costs[name] * _recurrent_kept(action, len(removed.of(action)))
            continue
        if action.kind not in ("in", "depthwise"):
            continue
        if name not in costs:
            continue
        total += Fraction(costs[name] * (_width(action) - len(removed.of(action))), _width(action))
    return int(total)


def _owned_cost(group, costs: dict[str, int]) -> int:
    return _unit_cost(group, _Removed(group, None, np.zeros(0, dtype=np.int64)), costs)


class _Removed:
    """The roots a candidate removes: the unlocked ones leave every tensor of the group;
    locked ones (only with allow_custom_downsample_ops) leave the root layer's input alone,
    through a channel Gather, as `prune._downsample` does."""

    def __init__(self, group, root, roots: np.ndarray):
        self.group, self.root = group, root
        roots = np.asarray(roots, dtype=np.int64)
        self.unlocked = roots[~group.locked[roots]]
        self.downsampled = roots[group.locked[roots]]

    def of(self, action) -> np.ndarray:
        """The channel indices of the action's tensor that go for this action's node."""
        pos = self.group.positions[action.tensor]
        idx = pos.removed(self.unlocked)
        if len(self.downsampled) and action.kind == "in" and self.root is not None and action.node is self.root.node:
            idx = np.union1d(idx, pos.removed(self.downsampled))
        return idx


def _effects(group, removed: "_Removed", costs: dict[str, int]) -> dict[tuple[str, str], Fraction]:
    """(layer, side) -> fraction of that side's channels kept, for the layers this group touches."""
    out = {}
    for action in group.actions:
        name = ir.node_name(action.node)
        if action.kind in ("rnn_hidden", "rnn_in") and name in costs:
            out[(name, action.kind)] = _recurrent_kept(action, len(removed.of(action)))
            continue
        if action.kind not in ("in", "out", "depthwise"):
            continue
        if name not in costs:
            continue
        width = _width(action)
        side = "out" if action.kind == "out" else "in"
        out[(name, side)] = Fraction(width - len(removed.of(action)), width)
    return out


def _recurrent_kept(action, gone: int) -> Fraction:
    """Kept fraction of an LSTM/GRU layer's cost (W and R at every step: rows*(input + hidden),
    rows = dirs*gates*hidden) when `gone` of its hidden units ("rnn_hidden": W's and R's rows
    and R's columns go) or of its input features ("rnn_in": W's columns) go."""
    weight = ir.constant_value(action.node.inputs[1])
    n_in, hidden = int(weight.shape[2]), int(weight.shape[1]) // (4 if action.node.op == "LSTM" else 3)
    if action.kind == "rnn_in":
        return Fraction(n_in - gone + hidden, n_in + hidden)
    kept = hidden - gone
    return Fraction(kept * (n_in + kept), hidden * (n_in + hidden))


def _width(action) -> int:
    """Channel count of the node on the side the action touches."""
    weight = ir.constant_value(action.node.inputs[1])
    node = action.node
    if node.op == "Conv":
        return int(weight.shape[1] if action.kind == "in" else weight.shape[0])
    trans = node.op == "Gemm" and int(node.attrs.get("transB", 0))
    k_axis, n_axis = (1, 0) if trans else (0, 1)
    return int(weight.shape[k_axis] if action.kind == "in" else weight.shape[n_axis])


def _overrides(group, members, samples, grams, removed: "_Removed", settings) -> dict[str, np.ndarray]:
    out = {}
    for m in members:
        patches, targets = samples[m.name]
        drop = removed.of(next(a for a in group.actions if a.kind == "in" and a.node is m.node))
        keep = np.setdiff1d(np.arange(patches.shape[1]), drop)
        w3 = pruning.layer_weight(m).astype(np.float64)
        has_bias = _has_bias(m)
        new = np.zeros_like(w3)
        if m.name in grams:
            stored = ir.constant_value(m.node.inputs[2]) if has_bias else None
            bias = stored.astype(np.float64).reshape(-1) if has_bias else None
            fit_w, fit_b, _ = grams[m.name].fit(keep, w3[:, keep])
            new[:, keep] = fit_w
            if has_bias and fit_b is not None and bias is not None and bias.shape == fit_b.shape:
                # the stored layout (e.g. a Gemm C of shape (1, N)): a swapped-in value keeps its shape
                out[m.node.inputs[2].name] = fit_b.reshape(stored.shape).astype(m.weight.dtype)
        else:
            new[:, keep] = w3[:, keep]
        out[m.node.inputs[1].name] = pruning.stored_layout(m, new).astype(m.weight.dtype)
    return out
