"""Sequential least-squares refit of weight-SVD factors on calibration data.

After a step has split its layers, each split Gemm/MatMul's *second* factor B is refit,
in graph order, so that the split layer's outputs on its inputs from the *compressed*
model (earlier layers already split and refit) match the *original* layer's outputs on
the original inputs:

    B' = argmin_B || X_cur A B - X_orig W ||^2 + ridge ||B||^2

with the first factor A fixed. A layer alone (inputs unchanged) is already optimal under
data-aware SVD, so the refit only corrects the errors that upstream splits pass down;
this is why the eval-score dictionary (one layer at a time) needs no refit. Convs are
not refit (their second factor acts on spatial patches of the intermediate tensor).
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

log = logging.getLogger(__name__)

REFIT_OPS = ("MatMul", "Gemm")


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
        b_old = ir.to_array(inits[second.input[1]])
        w = layer.weight
        if layer.op == "Gemm" and int(layer.attrs.get("transB", 0)):
            w = w.T
        w = np.asarray(w, dtype=np.float64)  # (K, N)
        rows = max(settings.num_reconstruction_samples, 20 * a.shape[1])
        xo, xc = _paired_rows(_as_rows(layer, x_orig), _as_rows(layer, x_cur), rows, rng)
        z = xc @ a
        target = xo @ w
        gram = z.T @ z
        ridge = 1e-6 * max(np.trace(gram) / len(gram), 1e-12)
        b_new = np.linalg.solve(gram + ridge * np.eye(len(gram)), z.T @ target)
        before = np.linalg.norm(z @ b_old.astype(np.float64) - target)
        after = np.linalg.norm(z @ b_new - target)
        if not np.isfinite(after) or after >= before:
            gains[layer.name] = 1.0
            continue
        gains[layer.name] = float(after / before) if before > 0 else 1.0
        ir.set_initializer(inits[second.input[1]], b_new.astype(b_old.dtype))
        log.info("refit %s: output error x%.3f", layer.name, gains[layer.name])
    progress_mod.update("refitting SVD factors", len(todo), len(todo))
    return current, gains


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
