"""The multiple-choice knapsack at scale (see search/solve.py): exact reduced-cost fixing
from the LP relaxation, then the frontier DP over the layers left, and where even that DP
would have to bound its frontier, a MILP solved by HiGHS through scipy.optimize.milp.

The problem: choose one option o per layer l (binary x[l,o], sum_o x[l,o] = 1) with
sum cost * x <= budget, minimising sum loss * x. Steps:

1. LP relaxation (`_relaxation`): each layer's lower convex hull of (cost, loss), its
   steps taken greedily by efficiency (loss saved per unit of cost). The first step that
   does not fit gives the budget's price lam; the steps that still fit after it, then a
   per-layer fill, give a feasible selection (the incumbent), in exact integer costs.
2. Reduced-cost fixing (`_reduced`): for lam >= 0, every selection within the budget
   loses at least LB + the sum of its options' reduced costs, LB = sum_l min_o(loss +
   lam * cost) - lam * budget and rc = loss + lam * cost - min_o(loss + lam * cost) of its
   layer. An option whose rc exceeds (incumbent - LB) + the tie tolerance + a float
   margin is in no optimal or tied selection and is dropped; a layer left with one option
   is fixed. On realistic data (500 layers x 11 options) 50-250 layers stay free.
3. The frontier DP (knapsack.frontier_picks, with the DP's own tie rules) over the free
   layers, its states pruned by the same bound (partial rc sums over the limit).
4. Only where that DP would pass max_states: the MILP over the free layers (`_milp`),
   costs less each layer's cheapest option and scaled to at most 1, losses less each
   layer's least and scaled so HiGHS's absolute gap (1e-6) is 1e-10 of the free layers'
   loss range; mip_rel_gap=0. Float costs can accept a selection over the budget by a
   few units: every solution is checked in exact integers, one over the budget is cut off
   (no-good cut: not all of these options again) and the MILP solved again. Ties: a
   second MILP keeps the loss within the tie tolerance of the first optimum and maximises
   the cost (closer to the target); it is kept only if, in exact integer cost and fsum
   loss, it is within the budget and the tolerance. solve.py then swaps in equal-loss
   options of higher cost, then higher ratio (knapsack._fill_ties). Ratio sums do not
   break ties here, unlike the DP.

`exact` is True when the DP stayed exact or HiGHS proved the first MILP's optimum (status
0); a time limit, a numerical failure or too many cuts give the best verified selection
(the incumbent at worst) with `exact` False.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .knapsack import _Table, frontier_picks

MILP_TIME_LIMIT = 60.0  # seconds per HiGHS solve; past it the best verified selection, exact False
OBJECTIVE_SCALE = 1e4  # any selection's scaled loss is <= this: HiGHS's absolute gap 1e-6 is 1e-10 of it
MAX_CUTS = 16  # selections over the budget cut off before giving up exactness
FLOAT_MARGIN = 1e-9  # relative margin on the reduced-cost limit: float error never drops an optimal option
_INT64_SAFE = 2 ** 62  # every cost difference of one layer's options is below this
_STDOUT_LOCK = threading.Lock()  # one redirection of file descriptor 1 at a time


# ---------------------------------------------------------------------------- LP relaxation

def _hull(cost: np.ndarray, loss: np.ndarray) -> list[int]:
    """Option indices on the lower convex hull of a layer's (cost, loss), cost ascending.

    Starts at the cheapest option of least loss; each next point costs more and loses
    strictly less, with strictly decreasing loss saved per unit of cost.
    """
    points: list[int] = []
    for j in np.lexsort((loss, cost)):
        if points and loss[j] >= loss[points[-1]]:
            continue
        while len(points) >= 2:
            a, b = points[-2], points[-1]
            if (loss[b] - loss[a]) * float(cost[j] - cost[a]) >= (loss[j] - loss[a]) * float(cost[b] - cost[a]):
                points.pop()  # b on or above the segment a-j
            else:
                break
        points.append(int(j))
    return points


def _relaxation(tables: Sequence[_Table], budget: int) -> tuple[float, list[int]]:
    """The LP relaxation's budget price lam >= 0 and a feasible selection (the incumbent).

    Hull steps are taken by efficiency while they fit; the first that does not is the
    LP's fractional step and its efficiency is lam (0 when every step fits). Later steps
    that still fit are taken too, then each layer in turn moves to its least-loss option
    that the budget left allows. Costs are exact integers throughout.
    """
    picks, steps = [], []
    for k, t in enumerate(tables):
        h = _hull(t.cost, t.loss)
        picks.append(h[0])
        steps += [(-(t.loss[a] - t.loss[b]) / float(t.cost[b] - t.cost[a]), k, a, b) for a, b in zip(h, h[1:])]
    left = budget - sum(int(t.cost[j]) for t, j in zip(tables, picks))
    lam = None
    for neg, k, a, b in sorted(steps):
        if picks[k] != a:
            continue
        dc = int(tables[k].cost[b]) - int(tables[k].cost[a])
        if dc <= left:
            left -= dc
            picks[k] = b
        elif lam is None:
            lam = -neg
    for k, t in enumerate(tables):
        extra = t.cost - t.cost[picks[k]]
        fits = np.flatnonzero(extra <= min(left, _INT64_SAFE))
        j = int(fits[np.lexsort((-t.cost[fits], t.loss[fits]))[0]])
        if t.loss[j] < t.loss[picks[k]]:
            left -= int(extra[j])
            picks[k] = j
    return (lam or 0.0), picks


# ---------------------------------------------------------------------------- reduced-cost fixing

@dataclass(frozen=True)
class _Reduced:
    """What reduced-cost fixing leaves: the `free` layers (numbers) with more than one
    option, their `tables` restricted to the options `kept` (indices into the full
    tables), the `incumbent`'s index into each restricted table, the `fixed` picks of the
    other layers, the `budget` left for the free layers, and the DP's `prune` bound
    (lam, floors, limit; see knapsack.frontier_picks)."""

    free: list[int]
    tables: list[_Table]
    kept: list[np.ndarray]
    incumbent: list[int]
    fixed: dict[int, int]
    budget: int
    prune: tuple[float, np.ndarray, float]


def _reduced(tables: Sequence[_Table], budget: int, tol: float) -> _Reduced:
    """Reduced-cost fixing: keep the options that can be in a selection within `tol` of
    the optimum (see the module doc, step 2)."""
    lam, incumbent = _relaxation(tables, budget)
    values = [t.loss + lam * t.cost.astype(np.float64) for t in tables]
    least = np.array([float(v.min()) for v in values])
    lower = math.fsum(least) - lam * float(budget)
    scale = float(np.abs(least).sum()) + abs(lam * float(budget)) + sum(float(np.abs(t.loss).max()) for t in tables)
    gap = math.fsum(float(t.loss[j]) for t, j in zip(tables, incumbent)) - lower
    limit = gap + tol + FLOAT_MARGIN * max(1.0, scale)
    free, sub, kept, inc, fixed, left = [], [], [], [], {}, budget
    for k, (t, v) in enumerate(zip(tables, values)):
        idx = np.union1d(np.flatnonzero(v - least[k] <= limit), [incumbent[k]]).astype(np.int64)
        if len(idx) == 1:
            fixed[k] = int(idx[0])
            left -= int(t.cost[idx[0]])
            continue
        free.append(k)
        kept.append(idx)
        inc.append(int(np.searchsorted(idx, incumbent[k])))
        sub.append(_Table(cost=t.cost[idx], loss=t.loss[idx], ratio=t.ratio[idx]))
    floors = np.cumsum(least[free]) if free else np.zeros(0)
    return _Reduced(free, sub, kept, inc, fixed, left, (lam, floors, limit))


# ---------------------------------------------------------------------------- the MILP

@dataclass(frozen=True)
class _Model:
    """The MILP over all options (n,) of the free layers: `row` the layer's number,
    `start` (L + 1,) each layer's first option, reduced costs `cost` (int64: cost less the
    layer's cheapest option) and losses `loss` (less the layer's least loss), and the
    reduced `budget` (exact int)."""

    row: np.ndarray
    start: np.ndarray
    cost: np.ndarray
    loss: np.ndarray
    budget: int
    layers: int


def _model(tables: Sequence[_Table], budget: int) -> _Model:
    sizes = np.array([len(t.cost) for t in tables], dtype=np.int64)
    low = [int(t.cost.min()) for t in tables]
    return _Model(
        row=np.repeat(np.arange(len(tables)), sizes),
        start=np.concatenate([[0], np.cumsum(sizes)]),
        cost=np.concatenate([t.cost - c for t, c in zip(tables, low)]).astype(np.int64),
        loss=np.concatenate([t.loss - t.loss.min() for t in tables]).astype(np.float64),
        budget=budget - sum(low),
        layers=len(tables),
    )


def _highs(model: _Model, objective: np.ndarray, rows: list[np.ndarray], rhs: list[float]):
    """One HiGHS solve: binary x (n,), one option per layer, rows @ x <= rhs."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    n = len(model.row)
    one = csr_array((np.ones(n), (model.row, np.arange(n))), shape=(model.layers, n))
    constraints = [LinearConstraint(one, 1, 1), LinearConstraint(np.vstack(rows), -np.inf, np.array(rhs))]
    with _quiet_stdout():
        return milp(objective, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=constraints,
                    options={"mip_rel_gap": 0.0, "time_limit": MILP_TIME_LIMIT})


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _quiet_stdout():
    """File descriptor 1 to /dev/null for the block: HiGHS prints lines such as
    'HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();' from C++
    whatever its options say. Python's and C's buffers are flushed on the way in and out
    (so nothing written before is lost, and nothing HiGHS buffered comes out later); the
    lock keeps threads from interleaving redirections. Where fd 1 cannot be duplicated
    (closed), the block runs as is."""
    with _STDOUT_LOCK:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        try:
            saved = os.dup(1)
        except OSError:
            yield
            return
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                _flush_c_stdio()
                os.dup2(null, 1)
            finally:
                os.close(null)
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


def _chosen(model: _Model, x) -> np.ndarray | None:
    """Positions of the chosen options, one per layer, or None if x is not that."""
    if x is None:
        return None
    pos = np.flatnonzero(np.asarray(x) > 0.5)
    if len(pos) != model.layers or len(np.unique(model.row[pos])) != model.layers:
        return None
    return pos


def _verified(model: _Model, objective: np.ndarray, rows: list[np.ndarray], rhs: list[float]):
    """Solve, cutting off selections over the exact budget: (positions or None, proven)."""
    rows, rhs = list(rows), list(rhs)
    for _ in range(MAX_CUTS + 1):
        result = _highs(model, objective, rows, rhs)
        pos = _chosen(model, result.x)
        if pos is None:
            return None, False
        if sum(int(c) for c in model.cost[pos]) <= model.budget:
            return pos, result.status == 0
        cut = np.zeros((1, len(model.row)))
        cut[0, pos] = 1.0
        rows.append(cut)
        rhs.append(model.layers - 1.0)
    return None, False


def _rows(model: _Model) -> tuple[np.ndarray, float, float]:
    """The scaled cost row (1, n), its right-hand side, and the loss unit: the layers'
    largest losses sum to OBJECTIVE_SCALE units."""
    scale = float(max(int(model.cost.max()), 1))
    reach = float(np.sum(np.maximum.reduceat(model.loss, model.start[:-1])))
    unit = reach / OBJECTIVE_SCALE if reach > 0 else 1.0
    return (model.cost / scale)[None, :], model.budget / scale, unit


def _tie_break(model: _Model, best: np.ndarray, tol: float) -> np.ndarray:
    """Among selections within `tol` of `best`'s loss, the one of highest cost (if verified)."""
    cost_row, cost_rhs, unit = _rows(model)
    limit = (float(np.sum(model.loss[best])) + tol) / unit
    rows = [cost_row, (model.loss / unit)[None, :]]
    pos, _ = _verified(model, -cost_row[0] * (OBJECTIVE_SCALE / model.layers), rows, [cost_rhs, limit])
    if pos is None or math.fsum(model.loss[pos]) > math.fsum(model.loss[best]) + tol:
        return best
    return pos


def _milp(tables: Sequence[_Table], budget: int, tol: float, incumbent: Sequence[int]) -> tuple[list[int], bool]:
    """The MILP's picks (index per table) and whether HiGHS proved them optimal; the
    `incumbent` (feasible) is kept where it is as good or the solve fails."""
    model = _model(tables, budget)
    cost_row, cost_rhs, unit = _rows(model)
    pos, exact = _verified(model, model.loss / unit, [cost_row], [cost_rhs])
    inc_pos = model.start[:-1] + np.asarray(incumbent, dtype=np.int64)
    if pos is None or math.fsum(model.loss[pos]) > math.fsum(model.loss[inc_pos]):
        pos = inc_pos  # the incumbent is as good (within HiGHS's gap), or the solve failed
    pos = _tie_break(model, pos, tol)
    return [int(i - model.start[r]) for i, r in zip(pos, model.row[pos])], exact


# ---------------------------------------------------------------------------- entry points

def _solve(tables: Sequence[_Table], budget: int, tol: float, max_states: int | None) -> tuple[list[int], bool]:
    red = _reduced(tables, budget, tol)
    picks, exact = dict(red.fixed), True
    if red.free:
        found = None
        if max_states is not None:
            found = frontier_picks(red.tables, red.budget, max_states, tol, merge=False, prune=red.prune)
        sub, exact = found if found is not None else _milp(red.tables, red.budget, tol, red.incumbent)
        picks.update({k: int(idx[j]) for k, idx, j in zip(red.free, red.kept, sub)})
    return [picks[k] for k in range(len(tables))], exact


def large_picks(tables: Sequence[_Table], budget: int, tol: float, max_states: int) -> tuple[list[int], bool]:
    """The option index per layer of the least-loss selection within `budget` (exact int),
    and whether it is proven optimal: reduced-cost fixing, then the frontier DP over the
    layers left, pruned by the same bound, and the MILP where that DP would pass
    `max_states` (see the module doc). The cheapest options must fit (solve.py checks)."""
    return _solve(tables, budget, tol, max_states)


def milp_picks(tables: Sequence[_Table], budget: int, tol: float) -> tuple[list[int], bool]:
    """As large_picks, but the layers left after reduced-cost fixing always go to the MILP."""
    return _solve(tables, budget, tol, None)
