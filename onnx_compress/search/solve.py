"""Auto mode: choose one compression option per layer to meet a model-wide cost target.

The input is an eval-score dictionary: for each selected layer, candidate options
(ratio, cost, score), ratio 1.0 being the uncompressed layer. `cost` is the exact integer
cost (MACs or parameters) of that layer at that option, `score` the model's score with
only that layer compressed. The rest of the model costs `fixed_cost`; the original model
costs `total`. A target ratio t is met when

    fixed_cost + sum of chosen costs <= t * total        (exactly: t read by as_fraction)

and selections are ranked by the additive model of the model's score:

    expected = baseline - sum over layers of (baseline - score of the chosen option).

Two solvers:

* `solve_knapsack`: exact multiple-choice knapsack (dynamic programming over a Pareto
  frontier of (cost, loss) states; at scale after reduced-cost fixing, with a MILP where
  the frontier would grow too large); optimal for the additive model.
* `solve_threshold`: AIMET's greedy method, kept for comparison: bisection on one global
  score threshold; it often stops well below the target.

This module checks the problem and the budget; the solvers' array internals (the
knapsack's frontier, the threshold's per-layer rule) are in search/knapsack.py, the
knapsack at scale in search/milp.py.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

from ..cost import as_fraction, check_ratio
from ..errors import ParameterError
from .knapsack import _fill_ties, _pick_at_threshold, _Table, _table, frontier_picks
from .milp import large_picks

DEFAULT_MAX_STATES = 20000  # the frontier DP's states before the exact solve moves to the MILP
DP_MAX_OPTIONS = 128  # problems with more options (all layers together) go to search/milp.py first
THRESHOLD_ITERATIONS = 50
TIE_TOLERANCE = 1e-12  # losses closer than this (times the loss scale) tie: float sums differ in the last bits
_INT64_LIMIT = 2 ** 62  # costs, sums and budgets stay below this: exact in int64 arithmetic
_METRIC_LABELS = {"mac": "MAC", "memory": "memory"}


@dataclass(frozen=True)
class Option:
    """One candidate for a layer: compression `ratio`, exact integer `cost`, model `score`."""

    ratio: float
    cost: int
    score: float


@dataclass(frozen=True)
class LayerOptions:
    """A layer's candidates; one of them has ratio 1.0 (the uncompressed layer)."""

    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Selection:
    """The chosen option per layer and what it achieves.

    `cost`: the whole model's cost after compression (fixed cost included); `total`: the
    original model's cost. `expected_score`: the additive model's score. `exact`: False
    when the knapsack bounded its frontier by merging states (an explicit max_states) or
    its MILP could not prove the optimum (see `solve_knapsack`).
    """

    choices: dict[str, Option]
    cost: int
    total: int
    expected_score: float
    method: str
    exact: bool = True

    @property
    def ratio(self) -> float:
        """Model cost ratio after compression, fixed cost included: cost / total."""
        return self.cost / self.total


# ---------------------------------------------------------------------------- monotonic fit

def _pav(y: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: least-squares non-decreasing fit of y (N,) -> (N,)."""
    means: list[float] = []
    sizes: list[int] = []
    for value in np.asarray(y, dtype=np.float64):
        means.append(float(value))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            n = sizes[-2] + sizes[-1]
            means[-2] = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / n
            sizes[-2] = n
            means.pop()
            sizes.pop()
    return np.repeat(np.array(means, dtype=np.float64), sizes)


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of y (N,): scipy's PAVA when it has one (>= 1.12)."""
    try:
        from scipy.optimize import isotonic_regression
    except ImportError:  # scipy < 1.12
        return _pav(y)
    return np.asarray(isotonic_regression(y).x, dtype=np.float64)


def monotonic_fit(ratios: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Isotonic fit: scores (N,) made non-decreasing in ratios (N,), least squares.

    Returns the fitted scores (N,) in the input order. Already non-decreasing scores come
    back unchanged; a violating run is replaced by its mean (pool-adjacent-violators).
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if ratios.shape != scores.shape or ratios.ndim != 1:
        raise ParameterError(f"monotonic_fit: ratios and scores must be 1-D of equal length, "
                             f"got shapes {ratios.shape} and {scores.shape}")
    order = np.argsort(ratios, kind="stable")
    fitted = np.empty_like(scores)
    fitted[order] = _isotonic(scores[order])
    return fitted


def _fit_layer(layer: LayerOptions) -> LayerOptions:
    """The layer with its scores replaced by their monotonic fit."""
    ratios = np.array([o.ratio for o in layer.options])
    fitted = monotonic_fit(ratios, np.array([o.score for o in layer.options]))
    return LayerOptions(layer.name, tuple(replace(o, score=float(s)) for o, s in zip(layer.options, fitted)))


# ---------------------------------------------------------------------------- validation

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_count(value, what: str, positive: bool) -> int:
    low = 1 if positive else 0
    if not _is_int(value) or not low <= value < _INT64_LIMIT:
        raise ParameterError(f"{what} must be an integer in [{low}, 2**62), got {value!r}; "
                             f"costs are exact MAC or parameter counts")
    return int(value)


def _check_option(name: str, option) -> None:
    if not isinstance(option, Option):
        raise ParameterError(f"layer '{name}': options must be Option(ratio, cost, score), got {option!r}")
    r = option.ratio
    if not _is_real(r) or not 0 < r <= 1:
        raise ParameterError(f"layer '{name}': option ratio must be a number in (0, 1], got {r!r}")
    _check_count(option.cost, f"layer '{name}': cost of option {float(r):g}", positive=False)
    s = option.score
    if not _is_real(s) or not math.isfinite(s):
        raise ParameterError(f"layer '{name}': score of option {float(r):g} must be a finite number, got {s!r}; "
                             f"re-run the evaluation for this candidate")


def _check_layer(layer) -> None:
    if not isinstance(layer, LayerOptions):
        raise ParameterError(f"expected LayerOptions(name, options), got {type(layer).__name__}")
    if not layer.options:
        raise ParameterError(f"layer '{layer.name}' has no options; expected at least the ratio 1.0 option")
    for option in layer.options:
        _check_option(layer.name, option)
    ratios = [float(o.ratio) for o in layer.options]
    if 1.0 not in ratios:
        raise ParameterError(f"layer '{layer.name}' has no ratio 1.0 option, got ratios {sorted(ratios)}; "
                             f"add the uncompressed layer (ratio 1.0, its original cost, the baseline score)")


def _check_problem(layers: Sequence[LayerOptions], fixed_cost: int, total: int, baseline: float) -> None:
    """Validate a selection problem; raise ParameterError on the first defect."""
    if not _is_int(fixed_cost) or not -_INT64_LIMIT < fixed_cost < _INT64_LIMIT:
        raise ParameterError(f"fixed_cost must be an integer in (-2**62, 2**62), got {fixed_cost!r}; "
                             f"costs are exact MAC or parameter counts (negative where units share layers)")
    fixed = int(fixed_cost)
    if _is_int(total) and total == 0:
        raise ParameterError("the model has no measurable cost (total 0): no layer with MACs or weights to "
                             "compress, so no ratio of it can be chosen")
    _check_count(total, "total", positive=True)
    if not _is_real(baseline) or not math.isfinite(baseline):
        raise ParameterError(f"baseline score must be a finite number, got {baseline!r}")
    names = set()
    for layer in layers:
        _check_layer(layer)
        if layer.name in names:
            raise ParameterError(f"layer '{layer.name}' appears twice; give each layer one LayerOptions")
        names.add(layer.name)
    whole = fixed + sum(int(next(o.cost for o in layer.options if o.ratio == 1.0)) for layer in layers)
    if fixed < 0 and whole < 0:
        raise ParameterError(f"fixed_cost {fixed} is below minus the layers' uncompressed costs (the uncompressed "
                             f"model would cost {whole}); a negative fixed cost only offsets layers counted twice")
    largest = fixed + sum(max(int(o.cost) for o in layer.options) for layer in layers)
    if largest >= _INT64_LIMIT:
        raise ParameterError(f"costs sum to {largest}, over 2**62; express costs in coarser units")


# ---------------------------------------------------------------------------- budget

def _cheapest(layers: Sequence[LayerOptions]) -> int:
    return sum(min(int(o.cost) for o in layer.options) for layer in layers)


def smallest_ratio(layers: Sequence[LayerOptions], fixed_cost: int, total: int) -> Fraction:
    """The smallest achievable model ratio: every layer at its cheapest option, exactly."""
    return Fraction(int(fixed_cost) + _cheapest(layers), int(total))


def _budget(layers: Sequence[LayerOptions], fixed_cost: int, total: int, target, metric: str | None) -> int:
    """Largest integer cost the selected layers may add up to; ParameterError if below reach.

    The model's cost must be <= target * total, read exactly (0.3 means 3/10).
    """
    q = check_ratio(target, "target")
    allowed = (q.numerator * int(total)) // q.denominator  # floor(q * total), exact
    if int(fixed_cost) + _cheapest(layers) > allowed:
        label = _METRIC_LABELS.get(str(metric).lower(), "cost") if metric else "cost"
        smallest = float(smallest_ratio(layers, fixed_cost, total))
        raise ParameterError(
            f"target {float(q):g} cannot be reached: the smallest achievable {label} ratio is "
            f"{smallest:.4f} (every selected layer at its cheapest candidate, the other layers "
            f"unchanged); raise the target or select more layers"
        )
    return allowed - int(fixed_cost)


def _selection(layers: Sequence[LayerOptions], picks: Sequence[int], fixed_cost: int, total: int,
               baseline: float, method: str, exact: bool = True) -> Selection:
    chosen = [layer.options[j] for layer, j in zip(layers, picks)]
    expected = float(baseline) - math.fsum(float(baseline) - float(o.score) for o in chosen)
    return Selection(
        choices={layer.name: o for layer, o in zip(layers, chosen)},
        cost=int(fixed_cost) + sum(int(o.cost) for o in chosen),
        total=int(total),
        expected_score=expected,
        method=method,
        exact=exact,
    )


# ---------------------------------------------------------------------------- knapsack

def _exact_picks(tables: Sequence[_Table], budget: int, tol: float) -> tuple[list[int], bool]:
    """Picks by the plain frontier DP on small problems, else (or where it would have to
    bound its frontier) by reduced-cost fixing, a pruned DP and the MILP (search/milp.py)."""
    if sum(len(t.cost) for t in tables) <= DP_MAX_OPTIONS:
        found = frontier_picks(tables, budget, DEFAULT_MAX_STATES, tol, merge=False)
        if found is not None:
            return found
    return large_picks(tables, budget, tol, DEFAULT_MAX_STATES)


def solve_knapsack(layers: Sequence[LayerOptions], fixed_cost: int, total: int, target, baseline: float,
                   *, max_states: int | None = None, metric: str | None = None) -> Selection:
    """Best selection under the budget by exact multiple-choice knapsack.

    Dynamic programming over the layers keeps the Pareto frontier of (cost, loss) states,
    loss = sum of (baseline - score). A state is dropped when another costs no more and
    loses strictly less (see knapsack._extend), or when even the cheapest options of the remaining
    layers would take it over the budget. Choices are rebuilt from back-pointers.

    Ties in loss (within TIE_TOLERANCE times the loss scale) go to the higher cost, closer
    to the target, then to the higher sum of per-layer ratios; for that, states of equal
    loss and higher cost are kept on the frontier.

    Past DEFAULT_MAX_STATES states the exact solve hands the problem to search/milp.py, whose
    second MILP keeps the tie rule (higher cost); at the end equal-loss options are swapped
    in, greedily in layer order, while budget is left.

    With `max_states` None (the default) the result is exact at any size: problems of
    more than DP_MAX_OPTIONS options, and any whose frontier would still pass
    DEFAULT_MAX_STATES, go to search/milp.py (reduced-cost fixing from the LP relaxation,
    the same DP over the layers left, and a MILP solved by HiGHS where that DP too would
    have to bound). Selection.exact is then False only if HiGHS cannot prove the optimum.

    An integer `max_states` bounds the plain DP instead (an approximation on request):
    past it, ties are first given up (equal-loss states of higher cost dropped; the score
    stays optimal), then states are merged into cost buckets of width
    w = ceil((cap + 1) / max_states) (about budget / max_states), keeping the lowest-loss
    state of each, and Selection.exact is False: the result is then at least as good as
    the exact optimum for the budget less one bucket width for each layer at which states
    were merged. The budget is never exceeded.

    `metric` ("mac" or "memory") only names the cost in error messages.
    """
    _check_problem(layers, fixed_cost, total, baseline)
    if max_states is not None and (not _is_int(max_states) or max_states < 1):
        raise ParameterError(f"max_states must be an integer >= 1 or None, got {max_states!r}")
    budget = _budget(layers, fixed_cost, total, target, metric)
    tables = [_table(layer, baseline) for layer in layers]
    tol = TIE_TOLERANCE * max(1.0, sum(float(np.abs(t.loss).max()) for t in tables))
    if max_states is None:
        picks, exact = _exact_picks(tables, budget, tol)
    else:
        picks, exact = frontier_picks(tables, budget, max_states, tol)
    picks = _fill_ties(tables, picks, budget - sum(int(t.cost[j]) for t, j in zip(tables, picks)))
    return _selection(layers, picks, fixed_cost, total, baseline, "knapsack", exact)


# ---------------------------------------------------------------------------- threshold

def solve_threshold(layers: Sequence[LayerOptions], fixed_cost: int, total: int, target, baseline: float,
                    *, iterations: int = THRESHOLD_ITERATIONS, metric: str | None = None) -> Selection:
    """AIMET's greedy selection: one global score threshold, found by bisection.

    Each layer takes the option `_pick_at_threshold` gives; a higher threshold leaves
    layers less compressed (higher cost). Bisection between the lowest and highest score
    (`iterations` halvings, or until the window stops shrinking) finds the highest
    threshold whose selection fits the budget. Because all layers share one threshold, the
    cost jumps in steps and the result often lands well below the target. Unlike AIMET,
    the result never exceeds the target (AIMET accepts a ratio within 0.001 above it).
    """
    _check_problem(layers, fixed_cost, total, baseline)
    budget = _budget(layers, fixed_cost, total, target, metric)
    orders = [sorted(range(len(la.options)), key=lambda j, la=la: -la.options[j].ratio) for la in layers]

    def picks_at(threshold: float) -> list[int]:
        return [_pick_at_threshold(la, order, threshold) for la, order in zip(layers, orders)]

    def cost(picks: list[int]) -> int:
        return sum(int(la.options[j].cost) for la, j in zip(layers, picks))

    def done(picks: list[int]) -> Selection:
        return _selection(layers, picks, fixed_cost, total, baseline, "threshold")

    scores = [float(o.score) for la in layers for o in la.options] or [float(baseline)]
    low, high = min(scores), max(scores)
    for threshold in (math.inf, high):
        if cost(picks := picks_at(threshold)) <= budget:
            return done(picks)
    lowest = cost(picks_at(low))
    if lowest > budget:
        raise ParameterError(
            f"threshold selection cannot reach target {float(as_fraction(target)):g}: even its lowest "
            f"threshold gives ratio {(int(fixed_cost) + lowest) / int(total):.4f} (some layer's smallest "
            f"ratio is not its cheapest option); use method='knapsack'"
        )
    for _ in range(iterations):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        if cost(picks_at(mid)) <= budget:
            low = mid
        else:
            high = mid
    return done(picks_at(low))


# ---------------------------------------------------------------------------- entry point

METHODS: dict[str, Callable[..., Selection]] = {"knapsack": solve_knapsack, "threshold": solve_threshold}


def select(layers: Sequence[LayerOptions], fixed_cost: int, total: int, target, baseline: float,
           method: str = "knapsack", use_monotonic_fit: bool = False, *, metric: str | None = None) -> Selection:
    """Choose one option per layer so the model's cost ratio is <= target; see the module doc.

    `target` in (0, 1], read exactly. With `use_monotonic_fit`, each layer's scores are
    first replaced by their non-decreasing fit in ratio, and the solver (and the returned
    choices and expected score) use the fitted scores. `method`: a key of METHODS.
    """
    if method not in METHODS:
        raise ParameterError(f"selection method must be one of {sorted(METHODS)}, got {method!r}")
    layers = list(layers)
    check_ratio(target, "target")
    _check_problem(layers, fixed_cost, total, baseline)
    if use_monotonic_fit:
        layers = [_fit_layer(layer) for layer in layers]
    return METHODS[method](layers, fixed_cost, total, target, baseline, metric=metric)
