"""Channel pruning driver: per layer, in graph order, choose input channels to keep,
winnow them from the layer's whole channel group, and refit the affected layers.

For each requested layer L:
1. build L's channel group on the current (already partly pruned) model;
2. sample L's input patches from the current model through ONNX Runtime (at random
   output positions of calibration batches, seeded) and choose the channels to keep
   (`selection`: AIMET's "magnitude", the default, or "greedy" least squares);
3. winnow: remove the other channels from every tensor and node of the group, so the
   upstream producers really lose output channels and their MACs fall too;
4. reconstruct every layer that lost input channels: least squares on inputs from the
   *pruned* model against outputs of the *original* model at the same positions.

Layers inside If/Loop subgraphs are not pruned (their tensors cannot be sampled).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx


from ... import ir, layers
from ... import progress as progress_mod
from ...errors import ParameterError
from ...stats import LayerStats, SkippedLayer
from ...cost import kept_count
from ...options import Settings
from .. import patches as patches_mod
from ..svd import factor as svd
from . import depgraph, lstsq, select as criteria, stream

log = logging.getLogger(__name__)

SELECTIONS = tuple(criteria.SELECTORS)


def check_layer(layer: layers.Layer) -> str | None:
    """Why channel pruning cannot take `layer` (None when it can)."""
    if layer.reason:
        return layer.reason
    if layer.recurrent:
        article = "an" if layer.op == "LSTM" else "a"
        return (f"{article} {layer.op} is pruned through its hidden size, with the channel group of the layer "
                "that reads its output")
    if layer.in_subgraph:
        return "inside an If/Loop/Scan subgraph: its inputs cannot be sampled"
    if layer.op == "Conv" and layer.group != 1:
        if layer.weight.shape[1] == 1 and layer.group == layer.weight.shape[0]:
            return f"depthwise conv, group={layer.group}: its channels are pruned with its consumer's group"
        return f"grouped conv, group={layer.group}"
    if layer.op == "Gemm" and int(layer.attrs.get("transA", 0)):
        return "Gemm with transA=1"
    return None


def lock_census(analysis: layers.Analysis) -> dict:
    """How many channel groups of the model are locked whole: one group per layer that
    channel pruning could take (its input channels), locked when none of them can go.
    {"groups", "locked", "locked_fraction", "reasons": {lock reason: groups}}, and
    "inexact" (how many free groups normalise over their channels) when there are any."""
    groups = [depgraph.build_group(layer, analysis.graph, analysis.shapes)
              for layer in analysis.compressible if check_layer(layer) is None]
    locked = [g for g in groups if g.all_locked]
    reasons = Counter(why for g in locked for why in g.reasons)
    census = {"groups": len(groups), "locked": len(locked),
              "locked_fraction": len(locked) / len(groups) if groups else 0.0, "reasons": dict(reasons)}
    inexact = [g for g in groups if not g.all_locked and not g.exact]
    if inexact:  # groups whose pruning is not exact (a LayerNorm over fewer channels)
        census["inexact"] = len(inexact)
    return census


def _layer_patches(layer: layers.Layer, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n, C, K) input patches of `layer` at output `positions`."""
    if layer.op == "Conv":
        nd = layer.weight.ndim - 2
        return patches_mod.conv_patches(
            x, positions, layer.kernel, layer.attrs.get("strides", [1] * nd),
            svd.explicit_pads(layer), layer.attrs.get("dilations", [1] * nd))
    return patches_mod.matmul_rows(x, positions)


def layer_weight(layer: layers.Layer) -> np.ndarray:
    """Weight as (n_out, C, K) with output = patches . weight (see reconstruct)."""
    w = layer.weight
    if layer.op == "Conv":
        return w.reshape(w.shape[0], w.shape[1], -1)
    k, n = layer.matrix_shape()
    mat = w.T if (layer.op == "Gemm" and int(layer.attrs.get("transB", 0))) else w  # (K, N)
    return mat.T[:, :, None]


def root_view(arr: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Gather (a, C_in, K) on axis 1 by root index (C_root, k) -> (a, C_root, k*K), zeros at -1."""
    safe = np.where(index >= 0, index, 0)
    out = arr[:, safe.reshape(-1), :].reshape(arr.shape[0], index.shape[0], index.shape[1], arr.shape[2])
    out = out * (index >= 0)[None, :, :, None]
    return out.reshape(arr.shape[0], index.shape[0], -1)


def select_kept(group: depgraph.ChannelGroup, selection, patches_view, weight_view: np.ndarray, keep: int,
                locked: np.ndarray | None, multiplicity: int = 1) -> np.ndarray:
    """The roots to keep: `selection`'s choice of `keep`, with every tensor of the group
    left at least one channel (`group.exhaustible`: a narrow Concat segment must not lose
    its producer's every output channel), `multiplicity` of them where the count allows.

    A set the selection would empty gets its strongest roots (L1 norm of the root layer's
    weight) locked, and the selection runs again; the result may then hold more than
    `keep` roots. Sorted int64 root indices.
    """
    locked = np.zeros(group.size, dtype=bool) if locked is None else np.array(locked, dtype=bool)
    sets = group.exhaustible()
    floor = 1
    if multiplicity > 1 and int(locked.sum()) + sum(min(multiplicity, len(r)) for r in sets) <= keep:
        floor = multiplicity
    norms = np.abs(weight_view).sum(axis=(0, 2), dtype=np.float64)
    select = criteria.selector(selection)
    while True:
        kept = select(patches_view, weight_view, max(keep, int(locked.sum())), locked)
        mask = np.zeros(group.size, dtype=bool)
        mask[kept] = True
        short = [r for r in sets if int(mask[r].sum()) < min(floor, len(r))]
        if not short:
            return kept
        for roots in short:
            order = roots[np.lexsort((roots, -norms[roots]))]
            locked[order[:min(floor, len(roots))]] = True


def sample_layer(sampler, model: onnx.ModelProto, layer: layers.Layer, rng, n_total: int,
                 with_targets: bool, orig_layer_out: str, out_keep: np.ndarray | None, minus=None):
    """Patches (n, C, K) of `layer`'s input in `model`, and the original layer's outputs
    (n, n_out) at the same positions (restricted to `out_keep` channels), or None.
    `minus`: per batch, a current tensor of the outputs' shape to subtract from the targets
    (stream.StreamTarget's residual); ValueError when its shape does not match."""
    xs = sampler.current_tensor(model, layer.node.inputs[0].name)
    ys = sampler.target_tensor(orig_layer_out) if with_targets else None
    counts = patches_mod.positions_per_batch(n_total, len(xs))
    patches, targets = [], []
    for i, (x, n) in enumerate(zip(xs, counts)):
        if n == 0:
            continue
        out_shape = ys[i].shape if ys is not None else _out_shape(layer, x)
        pos = patches_mod.distinct_positions(rng, out_shape, n, matmul=layer.op != "Conv")
        patches.append(_layer_patches(layer, x, pos))
        if ys is not None:
            t = _rows_at(layer, ys[i], pos)
            t = t if out_keep is None else t[:, out_keep]
            if minus is not None:
                r = _rows_at(layer, minus[i], pos) if minus[i].shape[:1] == ys[i].shape[:1] else None
                if r is None or r.shape != t.shape:
                    raise ValueError(f"residual of shape {minus[i].shape} does not match the targets")
                t = t - r
            targets.append(t)
    p = np.concatenate(patches)
    return p, (np.concatenate(targets) if targets else None)


def _rows_at(layer: layers.Layer, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """y's channel vectors (n, n_out) at the sampled output positions."""
    if layer.op == "Conv":  # y[b, :, *spatial] for each sampled position
        return y[(pos[:, 0], slice(None), *(pos[:, j] for j in range(1, pos.shape[1])))]
    return y.reshape(-1, y.shape[-1])[pos[:, 0]]


def _out_shape(layer: layers.Layer, x: np.ndarray) -> tuple[int, ...]:
    if layer.op != "Conv":
        return (*x.shape[:-1], layer.matrix_shape()[1])
    return layer.out_shape if layer.out_shape else x.shape


# ------------------------------------------------------------------------------ driver
@dataclass
class _State:
    model: onnx.ModelProto  # the latest snapshot of the graph (unchecked), for sampling
    analysis: layers.Analysis  # the one graph of the step, with layers as last refreshed
    out_keep: dict[str, np.ndarray]  # layer name -> original output channels still present
    pruned_with: dict[str, str]  # layer name -> root of the group that pruned its inputs


def prune(proto: onnx.ModelProto, ratios: dict[str, Fraction], settings: Settings,
          input_dims, multiplicity: int, named: bool = True, progress=None, *, activations,
          analysis: layers.Analysis | None = None) -> tuple[onnx.ModelProto, list[LayerStats], list[SkippedLayer]]:
    """Prune the input channels of the layers in `ratios` (layer name -> ratio), in graph order.

    `named`: the user named these layers (a ratio that cannot apply is an error) rather than
    asking for one ratio everywhere (such layers are skipped with the reason). `analysis`:
    `proto`'s, when the caller has it (its graph is then edited in place).
    """
    criteria.check_selection(settings.selection)
    if settings.num_reconstruction_samples < 1:
        raise ParameterError(f"num_reconstruction_samples must be >= 1, got {settings.num_reconstruction_samples}")
    sampler = activations.sampler(proto, settings)
    rng = np.random.default_rng(settings.seed)
    first = analysis or layers.analyze(proto, input_dims)  # the step's one graph, edited in place
    state = _State(model=proto, analysis=first, out_keep={}, pruned_with={})
    order = [l.name for l in first.layers if l.name in ratios]
    stats, skipped = [], []
    for step, name in enumerate(order):
        if progress:
            progress(step, len(order), name)
        progress_mod.update("compressing layers", step, len(order))
        log.info("channel pruning: layer %d/%d %s", step + 1, len(order), name)
        result = _prune_one(state, sampler, name, ratios[name], settings, input_dims, multiplicity, rng, named)
        if isinstance(result, SkippedLayer):
            skipped.append(result)
        else:
            stats.append(result)
    progress_mod.update("compressing layers", len(order), len(order))
    if state.model is proto:
        return proto, stats, skipped
    return ir.export(state.analysis.graph, proto), stats, skipped  # exported and checked once


def _prune_one(state: _State, sampler, name: str, ratio: Fraction, settings: Settings,
               input_dims, multiplicity: int, rng, named: bool):
    analysis = state.analysis
    layer = analysis.find(name)
    if name in state.pruned_with:
        return SkippedLayer(name, layer.op, f"input channels already pruned with the group of "
                                            f"'{state.pruned_with[name]}'")
    group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
    choice = _choose(state, sampler, layer, group, ratio, settings, multiplicity, rng, named)
    if isinstance(choice, SkippedLayer):
        return choice
    kept, note = choice
    size = group.size
    removed = np.setdiff1d(np.arange(size), kept)
    downsampled = removed[group.locked[removed]]  # only with a custom downsample op
    removed = removed[~group.locked[removed]]
    in_layers = group.in_layers()
    for other in in_layers:
        if other != name:
            state.pruned_with.setdefault(other, name)
    before = {l.name: l for l in analysis.compressible}
    taken = ir.all_names(analysis.graph)
    removed_out = depgraph.winnow(group, removed, taken)
    if len(downsampled):
        _downsample(analysis.graph, group, layer, removed, downsampled, taken)
        notes_gather = f"channel Gather inserted for {len(downsampled)} locked channel(s)"
        note = f"{note}; {notes_gather}" if note else notes_gather
    for lname, idx in removed_out.items():
        keep_idx = state.out_keep.get(lname)
        if keep_idx is None:
            keep_idx = np.arange(_n_out(before[lname]))
        state.out_keep[lname] = np.delete(keep_idx, idx)
    _snapshot(state, refresh=True)
    refits = []
    if settings.reconstruct:  # in graph order: each refit sees the refit layers upstream of it
        for lname in sorted(in_layers, key=list(before).index) if all(n in before for n in in_layers) else in_layers:
            if lname in before and not before[lname].in_subgraph:
                refits.append(_refit(state, sampler, lname, settings, input_dims, rng))
    notes = [note] if note else []
    if not group.exact:
        notes.append(f"inexact: {group.inexact_summary()}, mean and variance over the kept channels")
    if extra := ", ".join(n for n in in_layers if n != name):
        notes.append(f"same group: {extra}")
    if any(r for r in refits):
        notes.append("fewer samples than unknowns: refit regularised toward the weights")
    return _stats(layer, ratio, len(kept), size, "; ".join(notes))


def _choose(state: _State, sampler, layer: layers.Layer, group, ratio: Fraction, settings: Settings,
            multiplicity: int, rng, named: bool):
    """(kept root channels, note), or the SkippedLayer when the layer keeps them all."""
    name, size = layer.name, group.size
    n_locked = int(group.locked.sum())
    if group.all_locked and not settings.allow_custom_downsample_ops:
        return SkippedLayer(name, layer.op, f"no channel can be removed: {group.lock_summary()}")
    if ratio.numerator * size < ratio.denominator:
        why = (f"ratio {float(ratio):g} would remove every one of its {size} input channels; "
               f"the smallest ratio that keeps one is {1 / size:.4f}")
        if named:
            raise ParameterError(f"layer '{name}': {why}")
        return SkippedLayer(name, layer.op, why)
    keep = kept_count(size, ratio, multiplicity)
    note = ""
    gather = settings.allow_custom_downsample_ops and n_locked > 0
    if keep < n_locked and not gather:
        note = f"kept {n_locked} (not {keep}): locked by {group.lock_summary()}"
        keep = n_locked
    if keep >= size:
        return SkippedLayer(name, layer.op, f"ratio {float(ratio):g} keeps all {size} channels")
    # choose the channels on the root layer's own input
    root_index = group.positions[layer.node.inputs[0].name].index
    weight_view = root_view(layer_weight(layer), root_index)
    patches_view = None
    if settings.selection != "magnitude":
        patches, _ = sample_layer(sampler, state.model, layer, rng, settings.num_reconstruction_samples,
                                  False, "", None)
        patches_view = root_view(patches.astype(np.float64), root_index)
    locked = None if gather else group.locked
    kept = select_kept(group, settings.selection, patches_view, weight_view, keep, locked, multiplicity)
    if len(kept) > keep:
        note = "; ".join(filter(None, [note, f"kept {len(kept)} (not {keep}): every Concat segment / "
                                             "branch of the group keeps a channel"]))
        if len(kept) >= size:
            return SkippedLayer(name, layer.op, f"ratio {float(ratio):g} keeps all {size} channels once every "
                                                "branch of its group keeps a channel")
    return kept, note


def _stats(layer: layers.Layer, ratio: Fraction, keep: int, size: int, note: str) -> LayerStats:
    mac_before = layer.mac
    return LayerStats(
        name=layer.name, op=layer.op, scheme="channel_pruning", requested_ratio=float(ratio),
        achieved_ratio=float(Fraction(keep, size)), rank=keep, full_rank=size,
        mac_before=mac_before, mac_after=None if mac_before is None else mac_before * keep // size,
        memory_before=layer.memory, memory_after=layer.memory * keep // size, note=note,
    )


def _downsample(graph, group, layer: layers.Layer, removed: np.ndarray, downsampled: np.ndarray,
                taken: set[str]) -> None:
    """Drop the locked root channels `downsampled` from `layer` alone, through a Gather
    in front of it (AIMET's "custom downsample op"); the upstream keeps them."""
    node = layer.node
    pos = group.positions[node.inputs[0].name]
    gone = pos.removed(removed)  # already winnowed from the tensor
    drop = pos.removed(downsampled)  # to drop now, numbered before winnowing
    width = int(pos.index.max()) + 1 + len(gone)  # upper bound on the tensor's channel count
    old = np.setdiff1d(np.arange(max(width, int(drop.max()) + 1)), gone)
    current = {int(c): i for i, c in enumerate(old)}
    drop_now = np.array([current[int(c)] for c in drop], dtype=np.int64)
    channels = _input_width(node, pos.axis)
    keep_now = np.setdiff1d(np.arange(channels), drop_now)
    ir.insert_gather(graph, node, 0, keep_now, pos.axis, f"{layer.name}.downsample", taken)
    weight = ir.constant_value(node.inputs[1])
    if node.op == "Conv":
        axis = 1
    else:
        axis = 1 if (node.op == "Gemm" and int(node.attrs.get("transB", 0))) else 0
    ir.set_input(node, 1, np.delete(weight, drop_now, axis=axis), ir.unique_name(f"{layer.name}.weight", taken))


def _input_width(node, axis: int) -> int:
    """The layer's current input channel count, read from its (already winnowed) weight."""
    weight = ir.constant_value(node.inputs[1])
    if node.op == "Conv":
        return int(weight.shape[1])
    trans = node.op == "Gemm" and int(node.attrs.get("transB", 0))
    return int(weight.shape[1] if trans else weight.shape[0])


def _n_out(layer: layers.Layer) -> int:
    return layer.weight.shape[0] if layer.op == "Conv" else layer.matrix_shape()[1]


def _refit(state: _State, sampler, name: str, settings: Settings, input_dims, rng) -> bool:
    """Least-squares refit of layer `name`'s weight (and bias) on the current model."""
    analysis = state.analysis
    layer = analysis.find(name)
    node = layer.node
    fit_bias = layer.op != "MatMul"
    # Targets come from the original model, whose output tensor has the same name.
    patches, targets = _refit_samples(state, sampler, layer, settings, rng)
    if not (np.isfinite(patches).all() and np.isfinite(targets).all()):
        log.warning("layer '%s': its calibration inputs or outputs hold NaN or Inf values; not refit", name)
        return False
    w0 = layer_weight(layer).astype(np.float64)
    w, bias_fit, _alpha = lstsq.reconstruct_toward(patches, targets, w0, fit_bias, seed=settings.seed)
    dtype = layer.weight.dtype
    underdetermined = len(patches) < w0[0].size + int(fit_bias)
    taken = ir.all_names(analysis.graph)
    if layer.op == "Conv":
        new_w = w.reshape(layer.weight.shape).astype(dtype)
    else:
        mat = w[:, :, 0]  # (N, K)
        trans = layer.op == "Gemm" and int(layer.attrs.get("transB", 0))
        new_w = (mat if trans else mat.T).astype(dtype)
        if layer.op == "Gemm":
            node.attrs["alpha"] = 1.0
            node.attrs["beta"] = 1.0
    ir.set_input(node, 1, new_w, ir.unique_name(f"{name}.weight", taken))
    if fit_bias:
        bias = bias_fit.astype(dtype)
        if len(node.inputs) > 2 and node.inputs[2].name:
            ir.set_input(node, 2, bias, ir.unique_name(f"{name}.bias", taken))
        else:
            ir.append_input(node, bias, ir.unique_name(f"{name}.bias", taken))
    _snapshot(state)
    return underdetermined


def _refit_samples(state: _State, sampler, layer: layers.Layer, settings: Settings, rng):
    """Patches and targets for `layer`'s refit: toward the original residual stream less the
    current residual when the layer writes into one (stream.py), else its own outputs."""
    node, keep, n = layer.node, state.out_keep.get(layer.name), settings.num_reconstruction_samples
    target = stream.stream_target(state.analysis.graph, node)
    if target is not None:
        state_rng = rng.bit_generator.state
        try:
            residual = sampler.current_tensor(state.model, target.residual)
            patches, targets = sample_layer(sampler, state.model, layer, rng, n, True, target.total, keep,
                                            minus=residual)
        except ValueError as exc:
            log.info("layer '%s': refit toward its own outputs (%s)", layer.name, exc)
            rng.bit_generator.state = state_rng
        else:
            return patches, targets if target.bias is None else targets - target.bias  # bias: current width
    return sample_layer(sampler, state.model, layer, rng, n, True, node.outputs[0].name, keep)


def _snapshot(state: _State, refresh: bool = False) -> None:
    """An unchecked export of the step's graph for ONNX Runtime to sample; with `refresh`
    (channels changed), the shapes and layers are read anew from it."""
    state.model = ir.export(state.analysis.graph, state.model, check=False)
    if refresh:
        state.analysis = layers.refresh(state.analysis, state.model)



def stored_layout(layer: layers.Layer, w3: np.ndarray) -> np.ndarray:
    """(n_out, C, K) -> the layer's stored weight layout."""
    if layer.op == "Conv":
        return w3.reshape(layer.weight.shape)
    mat = w3[:, :, 0]  # (N, K)
    trans = layer.op == "Gemm" and int(layer.attrs.get("transB", 0))
    return mat if trans else mat.T
