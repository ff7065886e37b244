"""Auto-mode selection: exact knapsack against brute force, AIMET's threshold method, fits."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from onnx_compress.errors import ParameterError
from onnx_compress.search.solve import (
    METHODS, LayerOptions, Option, Selection, _pav, _pick_at_threshold, monotonic_fit, select, smallest_ratio,
    solve_knapsack, solve_threshold,
)

BASELINE = 0.8


def random_instance(rng: np.random.Generator, n_layers: int, n_options: int, monotone: bool = False):
    """Layers with random options (ratio 1.0 included), fixed cost and total."""
    layers = []
    for k in range(n_layers):
        ratios = [1.0] + sorted(rng.choice(np.arange(1, 10), n_options - 1, replace=False) / 10, reverse=True)
        if monotone:
            full = int(rng.integers(10, 200))
            costs = [int(round(r * full)) for r in ratios]
            drops = np.sort(rng.uniform(0, 0.3, n_options - 1))
            scores = [BASELINE] + list(BASELINE - drops)
        else:
            costs = [int(c) for c in rng.integers(0, 200, n_options)]
            scores = list(rng.uniform(0.2, 0.85, n_options))
        layers.append(LayerOptions(f"l{k}", tuple(Option(r, c, float(s)) for r, c, s in zip(ratios, costs, scores))))
    fixed = int(rng.integers(0, 100))
    total = fixed + sum(max(o.cost for o in la.options) for la in layers) + int(rng.integers(0, 50))
    return layers, fixed, total


def random_target(rng: np.random.Generator, layers, fixed: int, total: int) -> float:
    low = float(smallest_ratio(layers, fixed, total))
    return round(float(rng.uniform(low, 1.0)), 3) if low < 0.999 else 1.0


def brute_force(layers, fixed: int, total: int, target) -> float:
    """Best expected score over every combination within the budget (-inf if none)."""
    q = Fraction(repr(target)) if isinstance(target, float) else Fraction(target)
    grids = np.ix_(*[np.arange(len(la.options)) for la in layers])
    cost = sum(np.array([o.cost for o in la.options])[g] for la, g in zip(layers, grids)) + fixed
    loss = sum(np.array([BASELINE - o.score for o in la.options])[g] for la, g in zip(layers, grids))
    feasible = cost * q.denominator <= q.numerator * total
    return BASELINE - float(loss[feasible].min()) if feasible.any() else -math.inf


def budget_of(total: int, target) -> int:
    q = Fraction(repr(target)) if isinstance(target, float) else Fraction(target)
    return q.numerator * total // q.denominator


def test_knapsack_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(150):
        layers, fixed, total = random_instance(rng, int(rng.integers(3, 6)), int(rng.integers(3, 6)),
                                               monotone=bool(rng.integers(2)))
        target = random_target(rng, layers, fixed, total)
        sel = solve_knapsack(layers, fixed, total, target, BASELINE)
        assert sel.cost <= budget_of(total, target)
        assert sel.expected_score == pytest.approx(brute_force(layers, fixed, total, target), abs=1e-9)
        assert sel.cost == fixed + sum(o.cost for o in sel.choices.values())
        assert sel.exact and sel.method == "knapsack"


def realistic_instance(seed: int = 1):
    """10 layers x 10 options, cost_i(r) = r * c_i, scores strictly increasing in r."""
    rng = np.random.default_rng(seed)
    layers, full = [], []
    for k in range(10):
        c = int(rng.integers(100, 10000)) * 10
        sens = float(rng.uniform(0.01, 0.3))
        opts = tuple(Option(i / 10, i * c // 10, BASELINE - sens * (1 - i / 10) ** 2) for i in range(1, 11))
        layers.append(LayerOptions(f"conv{k}", opts))
        full.append(c)
    fixed = 12345
    return layers, fixed, fixed + sum(full), full


@pytest.mark.parametrize("target", [0.35, 0.5, 0.62, 0.8, 0.95])
def test_knapsack_spends_the_budget_to_within_one_step(target):
    layers, fixed, total, full = realistic_instance()
    sel = solve_knapsack(layers, fixed, total, target, BASELINE)
    budget = budget_of(total, target)
    assert sel.cost <= budget
    assert budget - sel.cost < max(full) // 10  # one candidate step of the largest layer
    assert sel.ratio <= target


def test_knapsack_beats_or_ties_threshold_at_equal_cost():
    rng = np.random.default_rng(2)
    for i in range(60):
        layers, fixed, total = random_instance(rng, int(rng.integers(3, 8)), int(rng.integers(3, 8)),
                                               monotone=i % 3 != 0)
        target = random_target(rng, layers, fixed, total)
        try:
            thr = solve_threshold(layers, fixed, total, target, BASELINE)
        except ParameterError as e:  # non-monotone costs: smallest ratios need not be cheapest
            assert "knapsack" in str(e)
            continue
        assert thr.method == "threshold" and thr.cost <= budget_of(total, target) and thr.ratio <= target
        same = solve_knapsack(layers, fixed, total, Fraction(thr.cost, total), BASELINE)
        assert same.cost <= thr.cost
        assert same.expected_score >= thr.expected_score - 1e-12
        full = solve_knapsack(layers, fixed, total, target, BASELINE)
        assert full.expected_score >= same.expected_score - 1e-12


def test_threshold_overshoots_where_knapsack_does_not():
    layers, fixed, total, _ = realistic_instance()
    thr = select(layers, fixed, total, 0.5, BASELINE, method="threshold")
    kn = select(layers, fixed, total, 0.5, BASELINE)
    assert thr.ratio <= kn.ratio <= 0.5
    assert kn.expected_score >= thr.expected_score


def test_threshold_takes_highest_feasible_threshold():
    # Two layers, monotone scores: at threshold 0.7 layer a stays at 0.5 and b at 1.0.
    a = LayerOptions("a", (Option(1.0, 100, 0.8), Option(0.5, 50, 0.7), Option(0.2, 20, 0.1)))
    b = LayerOptions("b", (Option(1.0, 100, 0.8), Option(0.5, 50, 0.6), Option(0.2, 20, 0.5)))
    sel = solve_threshold([a, b], 0, 200, 0.75, 0.8)
    assert {k: o.ratio for k, o in sel.choices.items()} == {"a": 0.5, "b": 1.0}
    assert sel.cost == 150
    assert solve_threshold([a, b], 0, 200, 1.0, 0.8).cost == 200  # all uncompressed fits


def test_threshold_rule_walks_down_from_uncompressed_like_aimet():
    la = LayerOptions("a", (Option(0.2, 20, 0.75), Option(1.0, 100, 0.8), Option(0.5, 50, 0.5)))
    order = [1, 2, 0]  # ratios 1.0, 0.5, 0.2
    assert _pick_at_threshold(la, order, 0.7) == 1  # 0.5 scores below 0.7: stop at 1.0
    assert _pick_at_threshold(la, order, 0.5) == 0  # every score >= 0.5: down to 0.2
    assert _pick_at_threshold(la, order, 0.9) == 1  # nothing reaches 0.9: uncompressed


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unreachable_target_names_smallest_ratio(method):
    layers, fixed, total, _ = realistic_instance()
    smallest = smallest_ratio(layers, fixed, total)
    assert smallest == Fraction(fixed + sum(min(o.cost for o in la.options) for la in layers), total)
    with pytest.raises(ParameterError) as err:
        select(layers, fixed, total, float(smallest) / 2, BASELINE, method=method, metric="mac")
    assert f"{float(smallest):.4f}" in str(err.value)
    assert "MAC ratio" in str(err.value) and "raise the target" in str(err.value)


def test_monotonic_fit_hand_example_and_pav():
    ratios = np.array([0.25, 0.5, 0.75, 1.0])
    scores = np.array([0.5, 0.7, 0.6, 0.9])
    want = np.array([0.5, 0.65, 0.65, 0.9])
    np.testing.assert_allclose(monotonic_fit(ratios, scores), want)
    np.testing.assert_allclose(_pav(scores), want)
    # unsorted ratios: the fit follows ratio order and comes back in input order
    perm = np.array([3, 1, 0, 2])
    np.testing.assert_allclose(monotonic_fit(ratios[perm], scores[perm]), want[perm])
    np.testing.assert_allclose(_pav([3.0, 1.0, 2.0, 0.0, 5.0]), [1.5, 1.5, 1.5, 1.5, 5.0])


def test_monotonic_fit_properties():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        ratios, scores = rng.permutation(np.arange(1, n + 1) / n), rng.uniform(0, 1, n)
        fitted = monotonic_fit(ratios, scores)
        order = np.argsort(ratios)
        assert np.all(np.diff(fitted[order]) >= -1e-15)
        np.testing.assert_allclose(fitted[order], _pav(scores[order]), atol=1e-12)
        assert math.isclose(fitted.sum(), scores.sum(), abs_tol=1e-12)  # pools keep their means
        mono = np.sort(scores)
        np.testing.assert_array_equal(monotonic_fit(np.sort(ratios), mono), mono)


def test_select_uses_fitted_scores():
    la = LayerOptions("a", (Option(1.0, 100, 0.8), Option(0.5, 50, 0.7), Option(0.25, 25, 0.75)))
    plain = select([la], 0, 100, 0.6, 0.8)
    assert plain.choices["a"].ratio == 0.25  # 0.75 > 0.7: the raw scores favour the smaller ratio
    fitted = select([la], 0, 100, 0.6, 0.8, use_monotonic_fit=True)
    assert fitted.choices["a"].score == pytest.approx(0.725)
    assert fitted.expected_score == pytest.approx(0.725)
    assert fitted.choices["a"].ratio == 0.5  # tie in fitted score: higher cost, closer to target


def test_bucketing_stays_within_budget_and_near_optimum():
    layers, fixed, total, _ = realistic_instance(5)
    for target in (0.3, 0.45, 0.7):
        exact = solve_knapsack(layers, fixed, total, target, BASELINE)
        assert exact.exact
        for max_states in (5, 20, 100):
            approx = solve_knapsack(layers, fixed, total, target, BASELINE, max_states=max_states)
            budget = budget_of(total, target)
            assert approx.cost <= budget
            assert approx.expected_score <= exact.expected_score + 1e-12
            # documented bound: no worse than the exact optimum with one bucket width less per layer
            width = -(-(budget - fixed + 1) // max_states)
            reduced = Fraction(budget - len(layers) * width, total)
            if reduced >= smallest_ratio(layers, fixed, total):
                bound = solve_knapsack(layers, fixed, total, reduced, BASELINE)
                assert approx.expected_score >= bound.expected_score - 1e-12
            if max_states == 100:
                assert approx.expected_score == pytest.approx(exact.expected_score, abs=0.01)
        assert not solve_knapsack(layers, fixed, total, target, BASELINE, max_states=5).exact


def test_bucketing_at_the_smallest_ratio_keeps_the_only_feasible_selection():
    layers, fixed, total, _ = realistic_instance(6)
    smallest = smallest_ratio(layers, fixed, total)
    sel = solve_knapsack(layers, fixed, total, smallest, BASELINE, max_states=2)
    assert Fraction(sel.cost, total) == smallest
    assert all(o.ratio == 0.1 for o in sel.choices.values())


@pytest.mark.parametrize("target,total,cost", [(0.3, 1000, 300), (0.57, 100, 57), (0.7, 1000, 700)])
def test_target_is_read_exactly(target, total, cost):
    la = LayerOptions("a", (Option(1.0, total, 0.9), Option(target, cost, 0.5), Option(0.1, total // 10, 0.1)))
    for method in METHODS:
        sel = select([la], 0, total, target, 0.9, method=method)
        assert sel.cost == cost and sel.choices["a"].ratio == target
        assert sel.ratio <= target
    assert select([la], 0, total, target - 0.001, 0.9).choices["a"].ratio == 0.1


def test_ties_prefer_higher_cost_then_higher_ratio():
    la = LayerOptions("a", (Option(1.0, 100, 0.8), Option(0.6, 60, 0.8), Option(0.5, 60, 0.8), Option(0.2, 20, 0.8)))
    assert select([la], 0, 100, 0.7, 0.8).choices["a"].ratio == 0.6
    assert select([la], 0, 100, 1.0, 0.8).choices["a"].ratio == 1.0
    # two layers: a free option in one layer must not block spending the slack in another
    b = LayerOptions("b", (Option(1.0, 100, 0.8), Option(0.5, 50, 0.7)))
    sel = select([la, b], 0, 200, 0.8, 0.8)
    assert sel.expected_score == pytest.approx(0.8) and sel.cost == 160


def test_selection_ratio_and_fields():
    la = LayerOptions("a", (Option(1.0, 100, 0.8), Option(0.5, 50, 0.7)))
    sel = select([la], 50, 150, 0.7, 0.8)
    assert isinstance(sel, Selection) and sel.cost == 100 and sel.total == 150
    assert sel.ratio == pytest.approx(100 / 150)
    assert sel.expected_score == pytest.approx(0.7)
    empty = select([], 50, 100, 0.5, 0.8)
    assert empty.cost == 50 and empty.choices == {} and empty.expected_score == 0.8


@pytest.mark.parametrize("layers,fixed,total,target,match", [
    ([LayerOptions("a", (Option(0.5, 5, 0.1),))], 0, 10, 0.5, "no ratio 1.0 option"),
    ([LayerOptions("a", (Option(1.0, -1, 0.1),))], 0, 10, 0.5, "cost"),
    ([LayerOptions("a", (Option(1.0, 2.5, 0.1),))], 0, 10, 0.5, "cost"),
    ([LayerOptions("a", (Option(1.0, 5, float("nan")),))], 0, 10, 0.5, "finite"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1), Option(0.0, 4, 0.1)))], 0, 10, 0.5, "ratio"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1), Option(0.5, True, 0.1)))], 0, 10, 0.5, "cost"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1),))] * 2, 0, 10, 0.5, "appears twice"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1),))], 0, 10, 0.0, r"\(0, 1\]"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1),))], 0, 10, 1.5, r"\(0, 1\]"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1),))], 0, 0, 0.5, "total"),
    ([LayerOptions("a", (Option(1.0, 5, 0.1),))], -6, 10, 0.5, "fixed_cost"),
])
def test_select_validates(layers, fixed, total, target, match):
    with pytest.raises(ParameterError, match=match):
        select(layers, fixed, total, target, 0.8)


def test_unknown_method_lists_choices():
    la = LayerOptions("a", (Option(1.0, 5, 0.1),))
    with pytest.raises(ParameterError, match="knapsack.*threshold"):
        select([la], 0, 10, 0.5, 0.8, method="greedy")
    assert issubclass(ParameterError, ValueError)
