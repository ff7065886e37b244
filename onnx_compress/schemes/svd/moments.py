"""Second moments of layer inputs on calibration data, for data-aware SVD.

For each layer, E[x x^T] over sampled input vectors: the input-channel vector at a
position (weight SVD of a conv), the vertical kh x 1 patch (spatial SVD), or the input
row (Gemm/MatMul). Activations come from ONNX Runtime with the layers' inputs exposed.
"""
from __future__ import annotations

import logging
import math
import zlib

import numpy as np
import onnx

from ... import layers as layers_mod
from ...options import Settings
from ..patches import positions_per_batch
from .. import patches
from . import factor as svd

log = logging.getLogger(__name__)


def layer_rows(layer: layers_mod.Layer, x: np.ndarray) -> np.ndarray:
    """The input rows (n, K) a Gemm/MatMul multiplies by its weight: y = rows @ W. A Gemm
    with transA=1 stores A as (K, M) and multiplies A^T, whose rows are A's columns."""
    if layer.op == "Gemm" and int(layer.attrs.get("transA", 0)):
        return x.reshape(x.shape[0], -1).T
    return x.reshape(-1, x.shape[-1])


def input_moments(proto: onnx.ModelProto, targets: list[layers_mod.Layer], scheme: str, activations,
                  samples: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Layer name -> (D, D) second moment of the inputs its split factors act on;
    `activations`: the calibration service (runtime.activations.Activations)."""
    settings = Settings(data=activations.settings.data, num_reconstruction_samples=samples, seed=seed,
                        use_cuda=activations.settings.use_cuda)
    sampler = activations.sampler(proto, settings)
    sampler.prefetch([layer.node.inputs[0].name for layer in targets if not layer.in_subgraph])
    out = {}
    for layer in targets:
        if layer.in_subgraph:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(layer.name.encode())])  # same samples in any layer set
        xs = sampler.original_tensor(layer.node.inputs[0].name)
        spec = svd.moment_kernel(layer, scheme)
        dim = layer.matrix_shape()[0] if spec is None else layer.weight.shape[1] * math.prod(spec[0])
        total = max(samples, 8 * dim)
        counts = positions_per_batch(total, len(xs))
        parts = []
        for x, count in zip(xs, counts):
            if count == 0:
                continue
            if spec is None:
                rows = layer_rows(layer, x)
                p = rows[rng.integers(0, len(rows), count)].astype(np.float64)
            else:
                kernel, strides, pads, dilations = spec
                spatial = patches.conv_out_spatial(x.shape[2:], kernel, strides, pads, dilations)
                pos = patches.sample_positions(rng, (x.shape[0], 1, *spatial), count)
                p = patches.conv_patches(x, pos, kernel, strides, pads, dilations)
                p = p.reshape(len(p), -1).astype(np.float64)
            parts.append(p)
        p = np.concatenate(parts) if parts else np.zeros((0, dim))
        moment = (p.T @ p) / max(len(p), 1)  # one product: many small batches stay fast
        if not np.isfinite(moment).all():  # e.g. downstream of a layer with NaN weights
            log.warning("layer '%s': its calibration inputs hold NaN or Inf values; plain SVD for it", layer.name)
            continue
        out[layer.name] = moment
    return out
