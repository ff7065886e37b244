"""Input patches of a layer at sampled output positions: the shared sampling kernels of
channel pruning (selection, refit) and data-aware SVD (second moments).

Layouts (pure numpy; nothing here runs a model):

    patches (n, C, K)    n sampled positions, C input channels, K = prod(kernel)
                         (K = 1 for Gemm/MatMul: C is the K input features there)
    weight  (n_out, C, K)  conv weight (n_out, C, *kernel) reshaped; for Gemm/MatMul the
                         (n_out, C) matrix as it multiplies, y = x @ weight.T (+ bias)
    targets (n, n_out)   the original layer's output at those positions

so that output = einsum('ncK,ocK->no', patches, weight) + bias.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ParameterError


def sample_positions(
    rng: np.random.Generator, out_shape: tuple[int, ...], n: int, *, matmul: bool = False
) -> np.ndarray:
    """`n` output positions drawn uniformly with replacement.

    Conv output (N, C_out, *spatial): int64 (n, 1 + nd) rows of (batch, *spatial coords).
    Gemm/MatMul output (..., N_out): int64 (n, 1) row indices into the output flattened
    to (prod(...), N_out). A 2-D shape is always read as Gemm/MatMul; pass `matmul=True`
    for a MatMul output with 3 or more dims (it would otherwise be read as a conv's).
    """
    highs = _position_ranges(out_shape, n, matmul)
    return rng.integers(0, np.asarray(highs, dtype=np.int64), size=(int(n), len(highs)), dtype=np.int64)


def distinct_positions(
    rng: np.random.Generator, out_shape: tuple[int, ...], n: int, *, matmul: bool = False
) -> np.ndarray:
    """`sample_positions`, except that every position comes once when `n` reaches their
    number: a Gemm after global pooling has one row per sample, and drawing 2000 rows from
    16 repeated each ~125 times, so the refit's held-out split held copies of its fit rows
    and chose no regularisation (held-out error 11.9 where no refit gave 0.46)."""
    highs = _position_ranges(out_shape, n, matmul)
    if n >= math.prod(highs):
        return np.indices(highs, dtype=np.int64).reshape(len(highs), -1).T.copy()
    return sample_positions(rng, out_shape, n, matmul=matmul)


def _position_ranges(out_shape, n, matmul: bool) -> list[int]:
    """The range of each coordinate of an output position (ParameterError on bad input):
    [rows] for Gemm/MatMul, [batch, *spatial] for a conv."""
    shape = tuple(int(d) for d in out_shape)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ParameterError(f"sample count must be an integer >= 0, got {n!r}")
    if len(shape) < 2 or min(shape) < 1:
        raise ParameterError(f"output shape must have >= 2 dims, all >= 1, got {shape}")
    if matmul or len(shape) == 2:
        return [math.prod(shape[:-1])]
    return [shape[0], *shape[2:]]


def conv_out_spatial(
    in_spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    pads: Sequence[int], dilations: Sequence[int],
) -> tuple[int, ...]:
    """Output spatial size of a conv with explicit ONNX pads (begin..., end...)."""
    nd = len(kernel)
    return tuple(
        (in_spatial[i] + pads[i] + pads[i + nd] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(nd)
    )


def _conv_params(x: np.ndarray, kernel, strides, pads, dilations):
    """Validated (kernel, strides, pads, dilations) as int tuples; defaults 1 / 0."""
    kernel = tuple(int(k) for k in kernel)
    nd = len(kernel)
    strides = tuple(int(s) for s in (strides if strides is not None else [1] * nd))
    dilations = tuple(int(d) for d in (dilations if dilations is not None else [1] * nd))
    pads = tuple(int(p) for p in (pads if pads is not None else [0] * (2 * nd)))
    if nd < 1 or x.ndim != nd + 2:
        raise ParameterError(f"conv input must be (N, C, *spatial) with {nd} spatial dim(s) "
                             f"for kernel {kernel}, got shape {x.shape}")
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd:
        raise ParameterError(f"{nd}-D conv needs {nd} strides, {nd} dilations and {2 * nd} pads, "
                             f"got strides={strides}, dilations={dilations}, pads={pads}")
    if min(kernel + strides + dilations) < 1 or min(pads) < 0:
        raise ParameterError(f"kernel, strides, dilations must be >= 1 and pads >= 0, got "
                             f"kernel={kernel}, strides={strides}, dilations={dilations}, pads={pads}")
    return kernel, strides, pads, dilations


def _check_positions(positions: np.ndarray, highs: Sequence[int]) -> np.ndarray:
    positions = np.asarray(positions)
    integer = np.issubdtype(positions.dtype, np.integer)
    if positions.ndim != 2 or positions.shape[1] != len(highs) or not integer:
        raise ParameterError(f"positions must be an integer array (n, {len(highs)}), "
                             f"got {positions.dtype} {positions.shape}")
    if positions.size and ((positions < 0).any() or (positions >= np.asarray(highs)).any()):
        raise ParameterError(f"positions out of range: every row must be within {tuple(highs)}")
    return positions


def conv_patches(
    x: np.ndarray,
    positions: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> np.ndarray:
    """Input windows of a conv at sampled output positions: (n, C, prod(kernel)).

    x: conv input (N, C, *spatial); positions: (n, 1 + nd) from `sample_positions` on the
    conv's output; pads in ONNX layout (begin..., end...), auto_pad already resolved.
    patch[j, c, :] is x[b, c, window] flattened like `weight[o, c].reshape(-1)`, zero where
    the window lies in the padding. Same dtype as x. One gather, no loop over samples.
    """
    x = np.asarray(x)
    kernel, strides, pads, dilations = _conv_params(x, kernel, strides, pads, dilations)
    nd = len(kernel)
    out = conv_out_spatial(x.shape[2:], kernel, strides, pads, dilations)
    if min(out) < 1:
        raise ParameterError(f"conv output would be empty: input {x.shape}, kernel {kernel}, "
                             f"strides {strides}, pads {pads}, dilations {dilations}")
    positions = _check_positions(positions, (x.shape[0], *out))
    offsets = np.indices(kernel).reshape(nd, -1).T  # (K, nd), C order like weight[o, c]
    start = positions[:, 1:] * np.asarray(strides) - np.asarray(pads[:nd])  # (n, nd)
    coords = start[:, None, :] + offsets[None] * np.asarray(dilations)  # (n, K, nd)
    size = np.asarray(x.shape[2:])
    inside = ((coords >= 0) & (coords < size)).all(axis=-1)  # (n, K)
    coords = np.clip(coords, 0, size - 1)
    channels_last = np.moveaxis(x, 1, -1)  # (N, *spatial, C) view
    index = (positions[:, :1], *np.moveaxis(coords, -1, 0))  # batch (n, 1), coords (n, K) each
    gathered = channels_last[index] * inside[..., None].astype(x.dtype)  # (n, K, C)
    return np.ascontiguousarray(gathered.transpose(0, 2, 1))


def matmul_rows(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of a Gemm/MatMul input (..., K) at sampled positions, as patches (n, K, 1).

    positions: (n, 1) row indices from `sample_positions` on the layer's output (same
    leading dims as the input). The K input features play the role of channels.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ParameterError(f"Gemm/MatMul input must have >= 2 dims, got shape {x.shape}")
    flat = x.reshape(-1, x.shape[-1])
    positions = _check_positions(positions, (flat.shape[0],))
    return flat[positions[:, 0]][:, :, None]


def positions_per_batch(total: int, batches: int) -> list[int]:
    """`total` samples spread over `batches` as evenly as possible (the first get one more)."""
    base, extra = divmod(total, batches)
    return [base + (1 if i < extra else 0) for i in range(batches)]
