"""The solvers' internals (see search/solve.py): the multiple-choice knapsack over a
Pareto frontier of (cost, loss) states, with its tie rules and frontier bounds, and the
threshold method's per-layer rule. Arrays only; the problem is checked by solve.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from .solve import LayerOptions


@dataclass(frozen=True)
class _Table:
    """A layer's options as arrays (M,): cost int64, loss = baseline - score, ratio."""

    cost: np.ndarray
    loss: np.ndarray
    ratio: np.ndarray


def _table(layer: LayerOptions, baseline: float) -> _Table:
    return _Table(
        cost=np.array([int(o.cost) for o in layer.options], dtype=np.int64),
        loss=np.array([float(baseline) - float(o.score) for o in layer.options], dtype=np.float64),
        ratio=np.array([float(o.ratio) for o in layer.options], dtype=np.float64),
    )


def _cost_order(c: np.ndarray, lo: np.ndarray, ratio_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Indices sorting states (N,) by cost, then loss, then ratio sum descending.

    `c` is made of already-sorted runs, which a stable sort merges quickly; only groups of
    equal cost are sorted again on the other keys. `ratio_of(indices)` gives ratio sums.
    """
    order = np.argsort(c, kind="stable")
    sc = c[order]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = sc[1:] == sc[:-1]
    dup[:-1] |= dup[1:]
    if dup.any():
        sub = order[dup]
        order[dup] = sub[np.lexsort((-ratio_of(sub), lo[sub], c[sub]))]
    return order


def _extend(cost: np.ndarray, loss: np.ndarray, rsum: np.ndarray, table: _Table, cap: int, tol: float):
    """One DP step: frontier states (N,) x the layer's options (M,) -> the new frontier.

    Keeps states with cost <= cap that no other state dominates. B is dominated by A when
    cost_A <= cost_B and loss_A < loss_B - tol (equal-loss states of higher cost stay: ties
    go to the higher cost), or when both costs are equal and A comes first by lower loss,
    then higher sum of ratios. Returns (cost, loss, rsum, parent, option), each (K,),
    sorted by cost ascending with distinct costs.
    """
    n = len(cost)
    c = (table.cost[:, None] + cost[None, :]).ravel()  # option-major: M runs sorted by cost
    ok = np.flatnonzero(c <= cap)
    c = c[ok]
    lo = (table.loss[:, None] + loss[None, :]).ravel()[ok]

    def ratio_of(i: np.ndarray) -> np.ndarray:
        return rsum[ok[i] % n] + table.ratio[ok[i] // n]

    order = _cost_order(c, lo, ratio_of)
    c, lo = c[order], lo[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = (c[1:] != c[:-1]) & (lo[1:] <= np.minimum.accumulate(lo)[:-1] + tol)
    order = order[keep]
    flat = ok[order]
    return c[keep], lo[keep], ratio_of(order), flat % n, flat // n


def _strict(loss: np.ndarray, tol: float) -> np.ndarray:
    """Indices of a frontier sorted by cost (N,) left when ties go to the cheaper state.

    A state is kept only when its loss is below every cheaper state's by more than tol.
    """
    keep = np.ones(len(loss), dtype=bool)
    keep[1:] = loss[1:] < np.minimum.accumulate(loss)[:-1] - tol
    return np.flatnonzero(keep)


def _merge(cost: np.ndarray, cap: int, max_states: int) -> np.ndarray:
    """Indices kept when a frontier sorted by cost (N,) is merged into cost buckets.

    Buckets of width ceil((cap + 1) / max_states) over [0, cap]; each keeps its last state
    (the lowest loss, within the tie tolerance; ties to the higher cost), and the cheapest
    state is always kept, so a feasible completion always survives. At most
    max_states + 1 states remain.
    """
    width = -(-(cap + 1) // max_states)
    bucket = cost // width
    keep = np.ones(len(cost), dtype=bool)
    keep[:-1] = bucket[1:] != bucket[:-1]
    keep[0] = True
    return np.flatnonzero(keep)


def _fill_ties(tables: Sequence[_Table], picks: list[int], slack: int) -> list[int]:
    """Spend leftover budget on options of equal loss: higher cost, then higher ratio.

    Greedy, in layer order; the modelled score is unchanged and the budget still holds.
    """
    picks = list(picks)
    for k, table in enumerate(tables):
        j = picks[k]
        same = np.flatnonzero((table.loss == table.loss[j]) & (table.cost - table.cost[j] <= slack))
        best = int(same[np.lexsort((table.ratio[same], table.cost[same]))[-1]])
        slack -= int(table.cost[best] - table.cost[j])
        picks[k] = best
    return picks


def frontier_picks(tables: Sequence[_Table], budget: int, max_states: int, tol: float, merge: bool = True,
                   prune: tuple[float, np.ndarray, float] | None = None) -> tuple[list[int], bool] | None:
    """The option index per layer of the least-loss state within `budget`, and whether the
    frontier stayed exact (see solve.solve_knapsack for the tie rules and the bound).

    Layer by layer, the frontier is extended (`_extend`) up to the budget less the cheapest
    options of the layers still to come; past `max_states` ties are given up first
    (`_strict`), then states merged into cost buckets (`_merge`), or, with `merge` False,
    None is returned at once, ties kept (the caller solves the problem another way). Choices are
    rebuilt from back-pointers.

    `prune` = (lam, floors (L,), limit): after layer k, states with
    loss + lam * cost - floors[k] > limit are dropped (a Lagrangian bound that the caller
    has shown no optimal or tied selection exceeds; see search/milp.py).
    """
    mins = [int(t.cost.min()) for t in tables]
    rest = [sum(mins[k + 1:]) for k in range(len(tables))]
    cost, loss, rsum = np.zeros(1, np.int64), np.zeros(1), np.zeros(1)
    trail: list[tuple[np.ndarray, np.ndarray]] = []
    exact = True
    for k, table in enumerate(tables):
        cap = budget - rest[k]
        cost, loss, rsum, parent, option = _extend(cost, loss, rsum, table, cap, tol)
        if prune is not None:
            bound = loss + prune[0] * cost.astype(np.float64) - prune[1][k]
            kept = np.flatnonzero((bound <= prune[2]) | (bound == bound.min()))
            cost, loss, rsum, parent, option = cost[kept], loss[kept], rsum[kept], parent[kept], option[kept]
        if len(cost) > max_states:  # first give up ties, then exactness
            if not merge:  # exact on request: the MILP, which keeps the tie rule (search/milp.py)
                return None
            kept = _strict(loss, tol)
            if len(kept) > max_states:
                kept = kept[_merge(cost[kept], cap, max_states)]
                exact = False
            cost, loss, rsum, parent, option = cost[kept], loss[kept], rsum[kept], parent[kept], option[kept]
        trail.append((parent, option))
    state = int(np.flatnonzero(loss <= loss.min() + tol)[-1])  # least loss; ties: highest cost
    picks = [0] * len(tables)
    for k in reversed(range(len(tables))):
        parent, option = trail[k]
        picks[k] = int(option[state])
        state = int(parent[state])
    return picks, exact


# ---------------------------------------------------------------------------- threshold

def _pick_at_threshold(layer: LayerOptions, order: Sequence[int], threshold: float) -> int:
    """AIMET's per-layer rule: from ratio 1.0 down, compress while the score stays >= threshold.

    `order`: option indices by ratio descending (order[0] is ratio 1.0). Returns the index
    of the last option of the leading run scoring >= threshold (ratio 1.0 if that run is
    empty). On non-decreasing scores this is the smallest ratio scoring >= threshold.
    """
    pick = order[0]
    if layer.options[pick].score < threshold:
        return pick
    for j in order[1:]:
        if layer.options[j].score < threshold:
            break
        pick = j
    return pick
