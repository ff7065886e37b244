"""Channel pruning kernels: sample a layer's inputs, choose input channels, refit by least squares.

Pure numpy/scipy on arrays; nothing here runs a model (He et al. 2017, "Channel Pruning
for Accelerating Very Deep Neural Networks"; AIMET's channel pruning).

A layer (Conv with group=1, or Gemm/MatMul) loses some *input* channels. Its output at
one position is a sum over input channels c of patch[c, :] @ weight[:, c, :].T, where a
patch is the input window the kernel sees. Everything here uses one layout for both
kinds of layer:

    patches (n, C, K)    n sampled positions, C input channels, K = prod(kernel)
                         (K = 1 for Gemm/MatMul: C is the K input features there)
    weight  (n_out, C, K)  conv weight (n_out, C, *kernel) reshaped; for Gemm/MatMul the
                         (n_out, C) matrix as it multiplies, y = x @ weight.T (+ bias)
    targets (n, n_out)   the original layer's output at those positions

so that output = einsum('ncK,ocK->no', patches, weight) + bias.

Flow: `sample_positions` on the layer's output shape, `conv_patches` / `matmul_rows`
on its input (from the pruned model) and the original output at the same positions as
targets; a selector from `SELECTORS` picks the channels to keep; `reconstruct` (or a
`NormalEquations` fed batch by batch) refits weight and bias on the kept channels.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import scipy.linalg

from .. import blas
from ..cost import check_multiplicity, check_ratio
from ..errors import ParameterError

# ------------------------------------------------------------------------- sampling


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


# ------------------------------------------------------------------- least squares


@dataclass(frozen=True)
class Solution:
    """A least-squares fit: weight (n_out, D) (reshaped by `reconstruct`), bias (n_out,) or None.

    Unpacks as `weight, bias = solution`. `underdetermined`: fewer samples than unknowns,
    or a numerically singular system (solved by minimum-norm least squares).
    """

    weight: np.ndarray
    bias: np.ndarray | None
    underdetermined: bool
    count: int

    def __iter__(self):
        return iter((self.weight, self.bias))


@dataclass
class NormalEquations:
    """Running X^T X and X^T Y in float64 for X (n, dim), Y (n, n_out), batch by batch.

    With `fit_bias`, X carries an implicit ones column as its last column, so `xtx` is
    (dim + 1, dim + 1) and `xty` (dim + 1, n_out); `xtx[:dim, :dim]` is the patches' Gram.
    """

    dim: int
    n_out: int
    fit_bias: bool = False
    count: int = 0
    xtx: np.ndarray = field(init=False, repr=False)
    xty: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.n_out < 1:
            raise ParameterError(f"need dim >= 1 and n_out >= 1, got dim={self.dim}, n_out={self.n_out}")
        unknowns = self.dim + int(self.fit_bias)
        self.xtx = np.zeros((unknowns, unknowns))
        self.xty = np.zeros((unknowns, self.n_out))

    @property
    def unknowns(self) -> int:
        """Unknowns per output: dim, plus one for the bias."""
        return self.dim + int(self.fit_bias)

    def add(self, x: np.ndarray, y: np.ndarray) -> NormalEquations:
        """Accumulate a batch x (n, dim), y (n, n_out); returns self."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape != (len(y), self.dim) or y.shape[1] != self.n_out:
            raise ParameterError(f"batch must be x (n, {self.dim}) and y (n, {self.n_out}), "
                                 f"got x {x.shape} and y {y.shape}")
        d = self.dim
        self.xtx[:d, :d] += x.T @ x
        self.xty[:d] += x.T @ y
        if self.fit_bias:
            sums = x.sum(axis=0)
            self.xtx[:d, d] += sums
            self.xtx[d, :d] += sums
            self.xtx[d, d] += len(x)
            self.xty[d] += y.sum(axis=0)
        self.count += len(x)
        return self

    def solve(self, ridge: float = 1e-6) -> Solution:
        """Weight (n_out, dim) and bias minimising ||X W^T + b - Y||^2 + lambda ||W||^2.

        lambda = ridge * trace(X^T X) / dim (relative; the bias is not penalised). Solved
        by Cholesky when well posed, else by minimum-norm least squares: never raises.
        """
        ridge = _check_ridge(ridge)
        d = self.dim
        a = self.xtx.copy()
        a[np.arange(d), np.arange(d)] += ridge * np.trace(self.xtx[:d, :d]) / d
        solution = None if self.count < self.unknowns else _cholesky_solve(a, self.xty)
        underdetermined = solution is None
        if solution is None:
            solution = scipy.linalg.lstsq(a, self.xty, cond=a.shape[0] * np.finfo(float).eps)[0]
        bias = solution[d].copy() if self.fit_bias else None
        return Solution(np.ascontiguousarray(solution[:d].T), bias, underdetermined, self.count)


def _check_ridge(ridge: float) -> float:
    try:
        value = float(ridge)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ParameterError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return value


def _cholesky_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Solve a x = b for symmetric a by Cholesky; None when a is not safely positive definite."""
    try:
        factor = scipy.linalg.cho_factor(a, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    pivots = np.abs(np.diag(factor[0]))
    if pivots.min() ** 2 <= a.shape[0] * np.finfo(float).eps * pivots.max() ** 2:
        return None
    return scipy.linalg.cho_solve(factor, b, check_finite=False)


def reconstruct(
    patches: np.ndarray, targets: np.ndarray, fit_bias: bool, ridge: float = 1e-6
) -> tuple[np.ndarray, np.ndarray | None]:
    """Refit a layer on its kept channels: weight (n_out, C_keep, K) and bias (n_out,) or None.

    patches (n, C_keep, K) from the pruned model's input; targets (n, n_out) the original
    layer's output (minus its bias when `fit_bias` is False and the caller keeps it).
    Float64 results. For the underdetermined flag, or batch-by-batch data, use
    `NormalEquations` directly.
    """
    patches = np.asarray(patches)
    if patches.ndim != 3:
        raise ParameterError(f"patches must be (n, C, K), got shape {patches.shape}")
    n, c, k = patches.shape
    targets = np.asarray(targets)
    if targets.ndim != 2 or len(targets) != n:
        raise ParameterError(f"targets must be ({n}, n_out) to match patches {patches.shape}, "
                             f"got {targets.shape}")
    equations = NormalEquations(c * k, targets.shape[1], fit_bias).add(patches.reshape(n, -1), targets)
    weight, bias = equations.solve(ridge)
    return weight.reshape(-1, c, k), bias


# -------------------------------------------------------------- channel selection


def _as_3d(weight: np.ndarray) -> np.ndarray:
    """Weight (n_out, C, *kernel) or (n_out, C) as (n_out, C, K)."""
    weight = np.asarray(weight)
    if weight.ndim < 2:
        raise ParameterError(f"weight must be (n_out, C, ...), got shape {weight.shape}")
    return weight.reshape(weight.shape[0], weight.shape[1], -1)


def _check_keep(keep: int, channels: int, locked: np.ndarray | None) -> np.ndarray:
    """Validate `keep` against C and the locked mask; return the mask as bool (C,)."""
    if locked is None:
        locked = np.zeros(channels, dtype=bool)
    locked = np.asarray(locked)
    if locked.shape != (channels,) or locked.dtype != np.bool_:
        raise ParameterError(f"locked must be a bool mask of shape ({channels},), "
                             f"got {locked.dtype} {locked.shape}")
    n_locked = int(locked.sum())
    is_int = isinstance(keep, (int, np.integer)) and not isinstance(keep, bool)
    if not is_int or not max(1, n_locked) <= keep <= channels:
        raise ParameterError(
            f"keep must be an integer in [max(1, locked={n_locked}), C={channels}], got {keep!r}")
    return locked


def _kept_from_order(order: np.ndarray, keep: int, locked: np.ndarray) -> np.ndarray:
    """Locked channels plus the first unlocked ones of `order` (best first), sorted int64."""
    free = order[~locked[order]][: keep - int(locked.sum())]
    return np.sort(np.concatenate([np.flatnonzero(locked), free])).astype(np.int64)


def select_by_magnitude(weight: np.ndarray, keep: int, locked: np.ndarray | None = None) -> np.ndarray:
    """Keep the `keep` channels with the largest L1 norm of weight[:, c, :] (ties: lower index).

    weight (n_out, C, K) (or (n_out, C, *kernel)); locked: bool (C,) of channels that must
    stay. Returns the sorted int64 indices kept.
    """
    weight = _as_3d(weight)
    locked = _check_keep(keep, weight.shape[1], locked)
    norms = np.abs(weight).sum(axis=(0, 2), dtype=np.float64)
    order = np.lexsort((np.arange(len(norms)), -norms))
    return _kept_from_order(order, keep, locked)


def _check_xtx(xtx: np.ndarray, weight: np.ndarray) -> None:
    side = weight.shape[1] * weight.shape[2]
    if np.shape(xtx) != (side, side):
        raise ParameterError(f"xtx must be ({side}, {side}) for weight {weight.shape}, got {np.shape(xtx)}")


def contribution_gram(xtx: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """G (C, C), G[c, d] = <Z_c, Z_d> with Z_c = patches[:, c, :] @ weight[:, c, :].T (n, n_out).

    xtx: the patches' Gram X^T X (C*K, C*K), X = patches.reshape(n, C*K) (so G never
    materialises the Z_c); weight (n_out, C, K). G = sum_{k,l} xtx[ck, dl] * (W^T W)[ck, dl].
    """
    weight = _as_3d(weight).astype(np.float64)
    n_out, c, k = weight.shape
    _check_xtx(xtx, weight)
    flat = weight.reshape(n_out, c * k)
    wtw = flat.T @ flat
    return np.einsum("ikjl,ikjl->ij", np.reshape(xtx, (c, k, c, k)), wtw.reshape(c, k, c, k))


def _greedy_removal(gram: np.ndarray, keep: int, locked: np.ndarray) -> np.ndarray:
    """Kept channels after greedily removing the one that least grows ||sum_removed Z_c||^2.

    error(R + {c}) = error(R) + 2 sum_{d in R} G[c, d] + G[c, c]: O(C) per step.
    """
    c = len(gram)
    available = ~locked
    cross = np.zeros(c)  # sum_{d in removed} G[:, d]
    for _ in range(c - keep):
        score = np.where(available, 2 * cross + np.diag(gram), np.inf)
        best = int(np.argmin(score))
        available[best] = False
        cross += gram[:, best]
    return np.flatnonzero(available | locked).astype(np.int64)


def _obs_removal(
    xtx: np.ndarray, weight: np.ndarray, keep: int, locked: np.ndarray, ridge: float
) -> np.ndarray:
    """Kept channels after greedy removal scored by the error *after* least-squares refit.

    Backward elimination with group optimal-brain-surgeon updates: with
    H = (X^T X + lambda I)^-1 and B the current refit weights (n_out, C*K), removing channel g costs
    tr(B_g H_gg^-1 B_g^T); then B -= B_g H_gg^-1 H_g,: and H -= H_:,g H_gg^-1 H_g,:.
    """
    weight = _as_3d(weight).astype(np.float64)
    n_out, c, k = weight.shape
    a = np.array(xtx, dtype=np.float64)
    a[np.diag_indices_from(a)] += max(ridge * np.trace(a) / len(a), np.finfo(float).tiny)
    h = _inverse(a)
    b = weight.reshape(n_out, c * k).copy()
    available = ~locked
    for _ in range(c - keep):
        cand = np.flatnonzero(available)
        blocks = np.einsum("ikil->ikl", h.reshape(c, k, c, k))[cand]  # (m, K, K)
        bg = b.reshape(n_out, c, k)[:, cand].transpose(1, 2, 0)  # (m, K, n_out)
        score = np.einsum("mko,mko->m", bg, np.linalg.solve(blocks, bg))
        g = int(cand[np.argmin(score)])
        cols = slice(g * k, (g + 1) * k)
        step = np.linalg.solve(h[cols, cols], h[cols])  # H_gg^-1 H_g,: (K, C*K)
        b -= b[:, cols] @ step
        h -= h[:, cols] @ step
        available[g] = False
    return np.flatnonzero(available | locked).astype(np.int64)


def _inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive semi-definite matrix: Cholesky, else pseudo-inverse."""
    try:
        factor = scipy.linalg.cho_factor(a, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.pinvh(a)
    return scipy.linalg.cho_solve(factor, np.eye(len(a)), check_finite=False)


def select_greedy_gram(
    xtx: np.ndarray, weight: np.ndarray, keep: int, locked: np.ndarray | None = None,
    *, refine: bool = False, ridge: float = 1e-6,
) -> np.ndarray:
    """`select_greedy_lsq` from the patches' Gram xtx (C*K, C*K), e.g. NormalEquations.xtx[:D, :D]."""
    weight = _as_3d(weight)
    locked = _check_keep(keep, weight.shape[1], locked)
    if refine:
        _check_xtx(xtx, weight)
        return _obs_removal(xtx, weight, keep, locked, _check_ridge(ridge))
    return _greedy_removal(contribution_gram(xtx, weight), keep, locked)


def select_greedy_lsq(
    patches: np.ndarray, weight: np.ndarray, keep: int, locked: np.ndarray | None = None,
    *, refine: bool = False, ridge: float = 1e-6,
) -> np.ndarray:
    """Keep `keep` channels, removing greedily the one that least grows the output error.

    patches (n, C, K), weight (n_out, C, K). The output is sum_c Z_c with
    Z_c = patches[:, c, :] @ weight[:, c, :].T; each step removes the unlocked channel that
    minimises ||sum_{removed} Z_c||_F^2 (error without refit), from the C x C Gram of the Z_c.
    `refine=True` scores instead by the error after a least-squares refit of the kept
    channels (ridge as in `NormalEquations.solve`); it costs O((C*K)^2 * K) per removed
    channel. Returns the sorted int64 indices kept.
    """
    patches = np.asarray(patches)
    weight = _as_3d(weight)
    if patches.ndim != 3 or patches.shape[1:] != weight.shape[1:]:
        raise ParameterError(f"patches must be (n, {weight.shape[1]}, {weight.shape[2]}) to match "
                             f"weight {weight.shape}, got {patches.shape}")
    flat = patches.reshape(len(patches), -1).astype(np.float64)
    return select_greedy_gram(flat.T @ flat, weight, keep, locked, refine=refine, ridge=ridge)


def _magnitude(patches: np.ndarray | None, weight: np.ndarray, keep: int, locked: np.ndarray | None):
    return select_by_magnitude(weight, keep, locked)


def _greedy(patches: np.ndarray | None, weight: np.ndarray, keep: int, locked: np.ndarray | None):
    if patches is None:
        raise ParameterError("greedy channel selection needs sampled input patches, got None")
    return select_greedy_lsq(patches, weight, keep, locked)


Selector = Callable[[np.ndarray | None, np.ndarray, int, np.ndarray | None], np.ndarray]

SELECTORS: dict[str, Selector] = {
    "magnitude": _magnitude,
    "greedy": _greedy,
}


# ---------------------------------------------------------------------- kept count


def kept_count(total: int, ratio: Fraction | float, multiplicity: int = 1, minimum: int = 1) -> int:
    """Input channels to keep so that kept / total <= ratio, in exact arithmetic.

    Rules, in order:
    1. floor(ratio * total), with the ratio read exactly (0.3 is 3/10; ratio in (0, 1]);
    2. if that is `total`, return it: keeping every channel leaves the layer unchanged;
    3. round down to a multiple of `multiplicity`;
    4. raise to at least `minimum` rounded up to a multiple of `multiplicity`, capped at
       `total` (with minimum=1: never 0, at least one multiple or every channel).
    Only rule 4 can make kept / total exceed the ratio.
    """
    q = check_ratio(ratio, "kept_count")
    check_multiplicity(multiplicity)
    for name, value in (("total", total), ("minimum", minimum)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    kept = q.numerator * total // q.denominator
    if kept == total:
        return int(total)
    kept = kept // multiplicity * multiplicity
    lower = min(total, -(-minimum // multiplicity) * multiplicity)
    return int(min(total, max(kept, lower)))


# ------------------------------------------------------- regularised toward the weights
ALPHAS = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)


def _solve_toward(xtx: np.ndarray, xty: np.ndarray, w0: np.ndarray, lam: float, fit_bias: bool) -> np.ndarray:
    """argmin ||X T - Y||^2 + lam ||T_w - W0^T||^2 (bias row, if any, unpenalised). T: (D[+1], n_out)."""
    d = w0.shape[1]
    a = xtx.copy()
    b = xty.copy()
    a[np.arange(d), np.arange(d)] += lam
    b[:d] += lam * w0.T
    a[np.arange(len(a)), np.arange(len(a))] += 1e-10 * max(np.trace(a) / len(a), 1e-30)
    try:
        return scipy.linalg.solve(a, b, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return scipy.linalg.lstsq(a, b, check_finite=False)[0]


def reconstruct_toward(patches: np.ndarray, targets: np.ndarray, weight0: np.ndarray, fit_bias: bool,
                       holdout: float = 0.2, alphas=ALPHAS, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Refit a pruned layer, regularised toward its current weights on the kept channels.

    Minimises ||patches . W + b - targets||^2 + lam ||W - weight0||^2 (the bias is not
    penalised). lam = alpha * trace(X^T X) / D, with alpha chosen from `alphas` by the error
    on a held-out `holdout` fraction of the samples, then refit on all of them. With few
    samples (fewer than unknowns) this stays near the trained weights instead of
    overfitting; with many, the data wins (alpha -> 0).

    patches (n, C, K), targets (n, n_out), weight0 (n_out, C, K).
    Returns weight (n_out, C, K), bias (n_out,) or None, and the chosen alpha.
    """
    gram = GramFit(patches, targets, fit_bias, holdout=holdout, seed=seed)
    return gram.fit(np.arange(patches.shape[1]), weight0, alphas)


class GramFit:
    """Regularised refits (see `reconstruct_toward`) for many channel subsets of one layer.

    Two exact forms of the same solve, whichever is smaller:
    * primal (more samples than unknowns): the samples are reduced once to X^T X, X^T Y
      and Y^T Y on a fit split, a held-out split and all samples; each `fit(keep, w0)`
      slices the kept channels' rows and columns and solves D x D systems (D unknowns);
    * dual (fewer samples than unknowns, the usual case for wide convs with a few hundred
      samples): with t = W0^T + X^T u, the n x n system (X X^T + lam I) u = Y - X W0^T
      gives the same minimiser; an unpenalised bias is handled by centring X and Y.
      On the anchor's 128 x 1152 convs with 500 samples this is several times faster.
    """

    def __init__(self, patches: np.ndarray, targets: np.ndarray, fit_bias: bool, holdout: float = 0.2,
                 seed: int = 0):
        n, self.c, self.k = patches.shape
        x = patches.reshape(n, self.c * self.k).astype(np.float64)
        y = targets.astype(np.float64)
        self.fit_bias = fit_bias
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * holdout)) if n >= 25 else 0  # a split of 5 rows or more
        val, fit = order[:n_val], order[n_val:]
        self.has_val = n_val > 0
        self.n = n
        self.parts = None  # primal Grams, made on first use
        self._x, self._y, self._idx = x, y, {"fit": fit, "val": val, "all": order}

    def _grams(self) -> dict:
        if self.parts is None:
            x = self._x
            if self.fit_bias:
                x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
            self.parts = {}
            for name, idx in self._idx.items():
                xs, ys = x[idx], self._y[idx]
                self.parts[name] = (xs.T @ xs, xs.T @ ys, float((ys * ys).sum()))
        return self.parts

    def _default_alpha(self, alphas, unknowns: int) -> float:
        """The strength without a held-out split (fewer than 25 samples): moderate, or the
        strongest pull toward the trained weights when the samples do not even determine
        the fit (a Gemm after global pooling sees one row per image: with a handful of
        images the refit interpolated them and lost the held-out outputs)."""
        if self.n < unknowns:
            return max(alphas)
        return alphas[min(3, len(alphas) - 1)]

    def _cols(self, keep: np.ndarray) -> np.ndarray:
        """Columns of X for the kept channels (each channel's K patch entries)."""
        return (np.asarray(keep)[:, None] * self.k + np.arange(self.k)).reshape(-1)

    def _index(self, keep: np.ndarray) -> np.ndarray:
        """Rows/columns of the primal Grams: the kept channels' columns, then the bias."""
        cols = self._cols(keep)
        return np.concatenate([cols, [self.c * self.k]]) if self.fit_bias else cols

    def fit(self, keep: np.ndarray, weight0: np.ndarray, alphas=ALPHAS, form: str = "auto"):
        """Weight (n_out, len(keep), K), bias or None, alpha: refit on channels `keep`.

        `form`: "auto" (dual when there are fewer samples than unknowns), "primal", "dual".
        """
        w0 = weight0.reshape(len(weight0), -1).astype(np.float64)
        d = w0.shape[1]
        if form == "auto":
            form = "dual" if self.n < d else "primal"
        solver = self._fit_dual if form == "dual" else self._fit_primal
        with blas.single_thread(max(min(self.n, d), self.c * self.k)):
            t, bias, best = solver(keep, w0, alphas)
        weight = t.T.reshape(len(w0), len(keep), self.k)
        return weight, bias, float(best)

    def _fit_primal(self, keep, w0, alphas):
        parts = self._grams()
        idx = self._index(keep)
        d = w0.shape[1]
        best = self._default_alpha(alphas, d)
        if self.has_val:
            gf, bf, _ = parts["fit"]
            gv, bv, yv = parts["val"]
            a, b = gf[np.ix_(idx, idx)], bf[idx]
            av, bvv = gv[np.ix_(idx, idx)], bv[idx]
            scale = max(np.trace(a[:d, :d]) / d, 1e-30)
            errors = []
            for alpha in alphas:
                t = _solve_toward(a, b, w0, alpha * scale, self.fit_bias)
                # ||X_v t - Y_v||^2 = tr(t' A_v t) - 2 tr(t' B_v) + ||Y_v||^2; A_v @ t by BLAS
                # (a three-operand einsum ran this as an unblocked triple loop)
                errors.append(float((t * (av @ t)).sum() - 2 * (t * bvv).sum() + yv))
            best = alphas[int(np.argmin(errors))]
        g, gy, _ = parts["all"]
        a, b = g[np.ix_(idx, idx)], gy[idx]
        t = _solve_toward(a, b, w0, best * max(np.trace(a[:d, :d]) / d, 1e-30), self.fit_bias)
        return t[:d], (t[d] if self.fit_bias else None), best

    def _dual_solver(self, split: str, cols: np.ndarray, w0: np.ndarray):
        """(solve(lam) -> (t (D, n_out), bias or None), scale) for one split's rows."""
        rows = self._idx[split]
        x, y = self._x[np.ix_(rows, cols)], self._y[rows]
        scale = max(float((x * x).sum()) / x.shape[1], 1e-30)  # trace(X^T X) / D, as in the primal
        if self.fit_bias:
            mx, my = x.mean(axis=0), y.mean(axis=0)
            x, y = x - mx, y - my
        r = y - x @ w0.T
        k = x @ x.T
        jitter = 1e-10 * max(np.trace(k) / len(k), 1e-30)

        def solve(lam: float):
            a = k + (lam + jitter) * np.eye(len(k))
            try:
                u = scipy.linalg.solve(a, r, assume_a="pos", check_finite=False)
            except (np.linalg.LinAlgError, ValueError):
                u = scipy.linalg.lstsq(a, r, check_finite=False)[0]
            t = w0.T + x.T @ u
            return t, ((my - mx @ t) if self.fit_bias else None)

        return solve, scale

    def _fit_dual(self, keep, w0, alphas):
        cols = self._cols(keep)
        best = self._default_alpha(alphas, w0.shape[1])
        if self.has_val:
            solve, scale = self._dual_solver("fit", cols, w0)
            rows = self._idx["val"]
            xv, yv = self._x[np.ix_(rows, cols)], self._y[rows]
            errors = []
            for alpha in alphas:
                t, b = solve(alpha * scale)
                pred = xv @ t + (b if b is not None else 0.0)
                errors.append(float(((pred - yv) ** 2).sum()))
            best = alphas[int(np.argmin(errors))]
        solve, scale = self._dual_solver("all", cols, w0)
        t, b = solve(best * scale)
        return t, b, best
