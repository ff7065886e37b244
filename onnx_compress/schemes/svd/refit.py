"""Sequential least-squares refit of weight-SVD factors on calibration data.

After a step has split its layers, each split Gemm/MatMul (and LSTM/GRU input projection:
MatMul(A), then the op whose W is the second factor) is refit, in graph order, so
that the split layer's outputs on its inputs from the *compressed* model (earlier layers
already split and refit) match the *original* layer's outputs on the original inputs:
either the second factor alone (A fixed),

    B' = argmin_B || X_cur A B - X_orig W ||^2 + ridge ||B||^2,

or both factors by reduced-rank regression (the rank-r least-squares map from X_cur to
X_orig W), whichever has the lower error on held-out sampled rows (`refit_factors`). A Conv
split's second factor (and its bias) is refit on patches of its input, with channel
pruning's regularised least squares (`_refit_conv`). A layer alone (inputs unchanged) is
already optimal under data-aware SVD, so the refit only corrects the errors that upstream
splits pass down; this is why the eval-score dictionary (one layer at a time) needs no refit.
"""
from __future__ import annotations

import logging
import zlib

import numpy as np
import onnx

from ... import ir
from ...options import Settings
from ..patches import positions_per_batch
from ... import progress as progress_mod
from . import recurrent

log = logging.getLogger(__name__)

REFIT_OPS = ("MatMul", "Gemm", "Conv", "LSTM", "GRU")


def refittable(layer) -> bool:
    return layer.op in REFIT_OPS and not layer.in_subgraph


def _as_rows(layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Batches of the layer's input as the weight sees them: a Gemm with transA=1 reads
    A^T, so its batches are transposed (features on the last axis)."""
    if layer.op == "Gemm" and int(layer.attrs.get("transA", 0)):
        return [x.reshape(x.shape[0], -1).T for x in xs]
    return xs


def refit_second_factors(current: onnx.ModelProto, original: onnx.ModelProto, plans, new_nodes: dict,
                         settings: Settings, activations) -> tuple[onnx.ModelProto, dict[str, float]]:
    """Refit every planned Gemm/MatMul's second factor; returns (model, layer -> error ratio).

    The error ratio is the relative output error after / before the refit on the sampled
    rows (below 1.0: the refit helped).
    """
    todo = [p for p in plans if refittable(p.layer) and len(new_nodes.get(p.layer.name, ())) == 2]
    if not todo:
        return current, {}
    nodes = {n.name: n for n in current.graph.node}
    inits = {t.name: t for t in current.graph.initializer}
    # the split's first node reads the tensor the original layer read (its node is gone)
    todo = [p for p in todo if all(n in nodes for n in new_nodes[p.layer.name])]
    inputs = {p.layer.name: nodes[new_nodes[p.layer.name][0]].input[0] for p in todo}
    sampler = activations.sampler(original, settings)
    sampler.prefetch(list(inputs.values()))
    gains = {}
    # Inputs of the current model, fetched once per tensor: layers in graph (topological)
    # order, so every layer upstream of a tensor is refit before the tensor is first read,
    # and no later refit changes it (Q/K/V projections share one pass).
    current_inputs: dict[str, list[np.ndarray]] = {}
    for step, plan in enumerate(todo):
        progress_mod.update("refitting SVD factors", step, len(todo))
        layer = plan.layer
        if layer.op == "Conv":
            gains[layer.name] = _refit_conv(current, plan, new_nodes[layer.name][1], inits, sampler, settings)
            continue
        first, second = (nodes.get(n) for n in new_nodes[layer.name])
        if first is None or second is None or second.input[1] not in inits or first.input[1] not in inits:
            continue
        name = inputs[layer.name]
        x_orig = sampler.original_tensor(name)
        if name not in current_inputs:
            current_inputs[name] = sampler.current_tensor(current, name)
        x_cur = current_inputs[name]
        rng = np.random.default_rng([settings.seed, zlib.crc32(layer.name.encode())])
        a = ir.to_array(inits[first.input[1]]).astype(np.float64)  # (K, r)
        stored = ir.to_array(inits[second.input[1]])
        b_old = recurrent.x_matrix(stored) if layer.recurrent else stored  # (r, N)
        w = layer.weight
        if layer.recurrent:  # the op's input projection, every direction: (input, dirs*gates*hidden)
            w = recurrent.x_matrix(w)
        elif layer.op == "Gemm" and int(layer.attrs.get("transB", 0)):
            w = w.T
        w = np.asarray(w, dtype=np.float64)  # (K, N)
        rows = max(settings.num_reconstruction_samples, 20 * a.shape[1])
        xo, xc = _paired_rows(_as_rows(layer, x_orig), _as_rows(layer, x_cur), rows, rng)
        a_new, b_new, gain = refit_factors(xc, xo @ w, a, b_old.astype(np.float64), rng)
        gains[layer.name] = gain
        if gain >= 1.0:
            continue
        ir.set_initializer(inits[first.input[1]], a_new.astype(b_old.dtype))
        b_new = recurrent.stored_weight(b_new, stored.shape) if layer.recurrent else b_new
        ir.set_initializer(inits[second.input[1]], b_new.astype(b_old.dtype))
        log.info("refit %s: output error x%.3f", layer.name, gains[layer.name])
    progress_mod.update("refitting SVD factors", len(todo), len(todo))
    return current, gains


def _refit_conv(current: onnx.ModelProto, plan, second_name: str, inits: dict, sampler, settings: Settings) -> float:
    """A Conv split's second factor (the (n_out, r, kh, kw) conv of weight SVD, the
    (n_out, r, 1, kw) one of spatial SVD) and its bias, refit by regularised least squares
    on patches of its input in the *compressed* model toward the original layer's outputs
    at the same positions (channel pruning's refit: the ridge chosen on held-out samples).
    Returns the error ratio after / before on the samples (1.0: left as it was)."""
    from ... import layers
    from ..pruning import lstsq, prune

    layer = next((l for l in layers.analyze(current).layers if l.name == second_name), None)
    if layer is None or layer.weight is None or layer.node.inputs[1].name not in inits:
        return 1.0
    rng = np.random.default_rng([settings.seed, zlib.crc32(plan.layer.name.encode())])
    out_name = layer.node.outputs[0].name  # the split's second node writes the original layer's output
    patches, targets = prune.sample_layer(sampler, current, layer, rng, settings.num_reconstruction_samples,
                                          True, out_name, None)
    bias_slot = layer.node.inputs[2].name if len(layer.node.inputs) > 2 else ""
    has_bias = bool(bias_slot) and bias_slot in inits
    w3 = prune.layer_weight(layer).astype(np.float64)
    fit = lstsq.GramFit(patches, targets, has_bias, seed=settings.seed)
    new_w, new_b, _ = fit.fit(np.arange(w3.shape[1]), w3)
    x = patches.reshape(len(patches), -1).astype(np.float64)
    old_b = ir.to_array(inits[bias_slot]).astype(np.float64).reshape(-1) if has_bias else 0.0
    before = np.linalg.norm(x @ w3.reshape(len(w3), -1).T + old_b - targets)
    b_new = new_b if (has_bias and new_b is not None) else old_b
    after = np.linalg.norm(x @ new_w.reshape(len(new_w), -1).T + b_new - targets)
    if not np.isfinite(after) or before == 0 or after >= before:
        return 1.0
    dtype = layer.weight.dtype
    ir.set_initializer(inits[layer.node.inputs[1].name], prune.stored_layout(layer, new_w).astype(dtype))
    if has_bias and new_b is not None:
        stored = ir.to_array(inits[bias_slot])
        ir.set_initializer(inits[bias_slot], np.asarray(new_b).reshape(stored.shape).astype(stored.dtype))
    return float(after / before)


def _ridge_solve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    gram = x.T @ x
    ridge = 1e-6 * max(np.trace(gram) / len(gram), 1e-12)
    return np.linalg.solve(gram + ridge * np.eye(len(gram)), x.T @ y)


def refit_factors(x: np.ndarray, target: np.ndarray, a: np.ndarray, b: np.ndarray, rng):
    """(A', B', held-out error ratio) for the split x -> x A B toward `target` (n, N).

    Two refits are fitted on four fifths of the rows and compared with the current factors
    on the rest: B alone by least squares (A fixed), and both factors by reduced-rank
    regression (the least-squares map W = argmin ||x W - target||, then its fitted values'
    top-r right singular vectors V_r: A' = W V_r, B' = V_r^T). The best on the held-out
    rows is refit on every row and returned; the ratio is its held-out error over the
    current factors' (1.0 and the inputs back when neither helps).
    """
    n, r = len(x), a.shape[1]
    order = rng.permutation(n)
    fit, held = order[: max(n - n // 5, 1)], order[max(n - n // 5, 1):]
    if len(held) == 0:
        held = fit

    def second(rows):
        return a, _ridge_solve(x[rows] @ a, target[rows])

    def both(rows):
        full = _ridge_solve(x[rows], target[rows])
        fitted = x[rows] @ full
        _, _, vt = np.linalg.svd(fitted, full_matrices=False)
        v = vt[:r].T
        return full @ v, v.T

    def error(f):
        return float(np.linalg.norm(x[held] @ f[0] @ f[1] - target[held]))

    before = error((a, b))
    best, best_err = None, before
    for method in (second, both):
        try:
            err = error(method(fit))
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(err) and err < best_err:
            best, best_err = method, err
    if best is None or before == 0:
        return a, b, 1.0
    a_new, b_new = best(np.arange(n))
    return a_new, b_new, best_err / before


def _paired_rows(x_orig: list[np.ndarray], x_cur: list[np.ndarray], rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """The same randomly chosen rows (last axis = features) of both lists of batches."""
    counts = positions_per_batch(rows, len(x_orig))
    xo, xc = [], []
    for o, c, count in zip(x_orig, x_cur, counts):
        o = o.reshape(-1, o.shape[-1])
        c = c.reshape(-1, c.shape[-1])
        if count == 0 or len(o) == 0:
            continue
        pick = rng.choice(len(o), min(count, len(o)), replace=False)
        xo.append(o[pick])
        xc.append(c[pick])
    return np.concatenate(xo).astype(np.float64), np.concatenate(xc).astype(np.float64)
