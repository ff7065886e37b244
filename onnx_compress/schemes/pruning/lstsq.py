"""Least-squares refits of a pruned layer (He et al. 2017; AIMET's channel pruning):
plain (`reconstruct`, `NormalEquations` fed batch by batch) and regularised toward the
current weights (`reconstruct_toward`, `GramFit` for many channel subsets of one layer).
Layouts: see `schemes.patches`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from ... import blas
from ...errors import ParameterError


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
