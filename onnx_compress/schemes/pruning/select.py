"""Channel-selection criteria: which input channels of a layer to keep.

A criterion is `(patches or None, weight (n_out, C, K), keep, locked or None) -> kept
channel indices`; `SELECTORS` holds the built-in "magnitude" (AIMET's: the weight's L1 norm
per input channel) and "greedy" (least-squares contribution, needs sampled patches). A
user's criterion is any callable `importance(weight, patches) -> (C,) scores` passed as
`selection=`: `criterion(fn)` wraps it (the `keep` highest-scoring channels, locked ones
always kept).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

import scipy.linalg

from ...errors import ParameterError
from .lstsq import _check_ridge


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


class Criterion:
    """A user's channel importance as a selector: `importance(weight, patches) -> (C,)`.

    weight: the root layer's weight as (n_out, C, K); patches: its sampled input patches
    (n, C, K) from the calibration data (float64). The `keep` channels with the highest
    scores are kept (ties: the lower index), locked channels always.
    """

    def __init__(self, importance: Callable):
        self.importance = importance
        self.name = getattr(importance, "__name__", type(importance).__name__)

    def __repr__(self) -> str:
        return f"Criterion({self.name})"

    def __call__(self, patches: np.ndarray | None, weight: np.ndarray, keep: int, locked: np.ndarray | None):
        weight = _as_3d(weight)
        locked = _check_keep(keep, weight.shape[1], locked)
        try:
            scores = np.asarray(self.importance(weight, patches), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"channel criterion {self.name}: {exc}") from None
        if scores.shape != (weight.shape[1],) or not np.isfinite(scores).all():
            raise ParameterError(f"channel criterion {self.name} must return {weight.shape[1]} finite scores "
                                 f"(one per input channel), got shape {scores.shape}")
        order = np.lexsort((np.arange(len(scores)), -scores))
        return _kept_from_order(order, keep, locked)


def check_selection(selection):
    """A built-in criterion's name, or a callable wrapped as a `Criterion`."""
    if isinstance(selection, Criterion):
        return selection
    if callable(selection):
        return Criterion(selection)
    if selection not in SELECTORS:
        raise ParameterError(f"channel selection must be one of {tuple(SELECTORS)} or a callable "
                             f"importance(weight, patches), got {selection!r}")
    return selection


def selector(selection) -> Callable:
    """The selector for a checked `selection`."""
    return selection if callable(selection) else SELECTORS[selection]
