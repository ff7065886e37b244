"""The knapsack at scale (search/milp.py): reduced-cost fixing, the pruned DP and the MILP,
against brute force on small cases, the plain DP on medium ones and an independent
scipy.optimize.milp call at 500 units x 11 options."""
from __future__ import annotations

import importlib.util
import itertools
import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from onnx_compress.errors import ParameterError
from onnx_compress.search import milp, solve
from onnx_compress.search.knapsack import _table
from onnx_compress.search.solve import LayerOptions, Option, smallest_ratio, solve_knapsack

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_selection", ROOT / "tools" / "bench_selection.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
budget_of, realistic, random_layers = bench.budget_of, bench.monotone, bench.random_data  # one copy of the data
BASELINE = bench.BASELINE  # the data's baseline score


def small_instance(rng: np.random.Generator, ties: bool):
    """4-6 layers x 1-4 options; scores on a grid of 1/8 where `ties`; fixed cost may be negative."""
    layers = []
    for k in range(int(rng.integers(4, 7))):
        m = int(rng.integers(1, 5)) if k % 3 == 0 else int(rng.integers(3, 5))
        ratios = [1.0] + sorted(rng.choice(np.arange(1, 10), m - 1, replace=False) / 10, reverse=True)
        costs = [int(c) for c in rng.integers(0, 60, m)]
        scores = rng.integers(0, 9, m) / 8 if ties else rng.uniform(0.2, 1.0, m)  # above the baseline too
        layers.append(LayerOptions(f"l{k}", tuple(Option(r, c, float(s)) for r, c, s in zip(ratios, costs, scores))))
    uncompressed = sum(next(o.cost for o in la.options if o.ratio == 1.0) for la in layers)
    fixed = int(rng.integers(-uncompressed, 40)) if rng.integers(2) else int(rng.integers(0, 40))
    total = max(1, fixed + sum(max(o.cost for o in la.options) for la in layers) + int(rng.integers(0, 20)))
    return layers, fixed, total


def brute(layers, fixed: int, total: int, target) -> tuple[float, int]:
    """(least loss, highest cost among selections of that loss) over every selection."""
    budget = budget_of(total, target)
    best = (math.inf, -1)
    for combo in itertools.product(*[la.options for la in layers]):
        cost = fixed + sum(o.cost for o in combo)
        if cost <= budget:
            loss = math.fsum(BASELINE - o.score for o in combo)
            if loss < best[0] - 1e-12 or (abs(loss - best[0]) <= 1e-12 and cost > best[1]):
                best = (loss, cost)
    return best


def random_target(rng, layers, fixed: int, total: int):
    low = max(float(smallest_ratio(layers, fixed, total)), 0.001)  # below 0 with a negative fixed cost
    if low >= 0.999:
        return 1.0
    return max(round(float(rng.uniform(low, 1.0)), 3), math.ceil(low * 1000) / 1000)


@pytest.fixture(params=["dp", "large", "milp", "bounded"])
def path(request, monkeypatch):
    """Which solver solve_knapsack reaches: the plain DP, reduced-cost fixing + pruned DP, the
    MILP, or the plain DP past its state bound (it hands over to the MILP, ties kept)."""
    if request.param == "bounded":
        monkeypatch.setattr(solve, "DEFAULT_MAX_STATES", 2)
    elif request.param != "dp":
        monkeypatch.setattr(solve, "DP_MAX_OPTIONS", 0)
    if request.param == "milp":
        monkeypatch.setattr(solve, "large_picks", lambda tables, budget, tol, states: milp.milp_picks(tables, budget, tol))
    return request.param


@pytest.mark.parametrize("ties", [False, True])
def test_small_cases_match_brute_force(path, ties):
    rng = np.random.default_rng(7 + ties)
    for _ in range(60):
        layers, fixed, total = small_instance(rng, ties)
        target = random_target(rng, layers, fixed, total)
        if Fraction(repr(target)) < smallest_ratio(layers, fixed, total):
            continue
        sel = solve_knapsack(layers, fixed, total, target, BASELINE)
        loss, cost = brute(layers, fixed, total, target)
        assert sel.exact and sel.method == "knapsack"
        assert sel.cost <= budget_of(total, target) and sel.cost == fixed + sum(o.cost for o in sel.choices.values())
        assert BASELINE - sel.expected_score == pytest.approx(loss, abs=1e-9)
        if ties:
            assert sel.cost == cost  # ties in loss go to the higher cost


@pytest.mark.parametrize("seed", range(4))
def test_medium_cases_match_the_plain_dp(seed, monkeypatch):
    layers, fixed, total = (realistic(24, seed, big=False) if seed % 2 else random_layers(30, seed, 300))
    for target in (0.4, 0.6, 0.85):
        if Fraction(repr(target)) < smallest_ratio(layers, fixed, total):
            continue
        dp = solve_knapsack(layers, fixed, total, target, BASELINE, max_states=10 ** 7)
        assert dp.exact
        large = solve_knapsack(layers, fixed, total, target, BASELINE)
        monkeypatch.setattr(solve, "DP_MAX_OPTIONS", 0)
        monkeypatch.setattr(solve, "DEFAULT_MAX_STATES", 1)  # the pruned DP gives up: the MILP solves it
        forced = solve_knapsack(layers, fixed, total, target, BASELINE)
        monkeypatch.undo()
        for sel in (large, forced):
            assert sel.exact and sel.cost <= budget_of(total, target)
            assert BASELINE - sel.expected_score == pytest.approx(BASELINE - dp.expected_score, rel=1e-9, abs=1e-12)
        assert large.choices == dp.choices  # the same DP over fewer layers: the same tie rules


def independent_milp(layers, fixed: int, total: int, target) -> tuple[float, float]:
    """(loss, proven lower bound) of the plain MILP over every option (the benchmark's)."""
    return bench.independent(layers, fixed, total, target)[:2]


@pytest.mark.parametrize("kind,target", [("realistic", 0.5), ("realistic", 0.3), ("random", 0.5)])
def test_500_units_exact_within_budget_and_at_the_milp_optimum(kind, target):
    layers, fixed, total = realistic(500, 0) if kind == "realistic" else random_layers(500, 0)
    start = time.perf_counter()
    sel = solve_knapsack(layers, fixed, total, target, BASELINE)
    assert time.perf_counter() - start < 20  # a sanity bound; the measured figures are in the commit
    assert sel.exact and len(sel.choices) == 500
    assert sel.cost <= budget_of(total, target)
    loss = BASELINE - sel.expected_score
    other, bound = independent_milp(layers, fixed, total, target)
    scale = sum(max(abs(BASELINE - o.score) for o in la.options) for la in layers)
    assert loss <= other + 1e-9 * scale and loss >= bound - 1e-9 * scale
    assert loss == pytest.approx(other, rel=1e-9)


def test_pure_milp_at_500_units_proves_the_same_optimum():
    layers, fixed, total = realistic(500, 1)
    tables = [_table(la, BASELINE) for la in layers]
    budget = budget_of(total, 0.5) - fixed
    picks, exact = milp.milp_picks(tables, budget, 1e-12 * 500)
    assert exact and sum(int(t.cost[j]) for t, j in zip(tables, picks)) <= budget
    sel = solve_knapsack(layers, fixed, total, 0.5, BASELINE)
    assert math.fsum(t.loss[j] for t, j in zip(tables, picks)) == pytest.approx(BASELINE - sel.expected_score,
                                                                               rel=1e-9)


def huge_cost_layers():
    """Both layers uncompressed cost 2**61 + 1, one over the budget 2**61, which float64 cannot tell."""
    a = LayerOptions("a", (Option(1.0, 2 ** 60 + 1, BASELINE), Option(0.5, 0, BASELINE - 1.0)))
    b = LayerOptions("b", (Option(1.0, 2 ** 60, BASELINE), Option(0.5, 0, BASELINE - 1.5)))
    return [a, b], 0, 2 ** 61 + 1, Fraction(2 ** 61, 2 ** 61 + 1)


def test_float_costs_over_the_budget_are_cut_off(path):
    layers, fixed, total, target = huge_cost_layers()
    assert float(2 ** 60 + 1) + float(2 ** 60) == float(2 ** 61)  # the MILP's rows see a fit
    sel = solve_knapsack(layers, fixed, total, target, BASELINE)
    assert sel.exact and sel.cost == 2 ** 60 and sel.cost <= budget_of(total, target)
    assert sel.choices["a"].ratio == 0.5 and sel.choices["b"].ratio == 1.0
    tables = [_table(la, BASELINE) for la in layers]
    model = milp._model(tables, 2 ** 61)
    cost_row, rhs, unit = milp._rows(model)
    pos, proven = milp._verified(model, model.loss / unit, [cost_row], [rhs])
    assert proven and sorted(pos.tolist()) == [1, 2]  # a at 0.5, b at 1.0: the float optimum was cut off


def test_single_option_layers_negative_losses_and_fixed_layers(path):
    rng = np.random.default_rng(3)
    layers = []
    for k in range(40):
        if k % 4 == 0:
            layers.append(LayerOptions(f"s{k}", (Option(1.0, int(rng.integers(1, 50)), BASELINE),)))
            continue
        costs = sorted(rng.integers(0, 50, 3).tolist()) + [50]
        scores = [BASELINE + 0.05, BASELINE - 0.1, BASELINE, BASELINE]  # above the baseline: negative loss
        layers.append(LayerOptions(f"l{k}", tuple(Option(r, c, s) for r, c, s in
                                                  zip((0.2, 0.4, 0.7, 1.0), costs, scores))))
    fixed = -10
    total = fixed + sum(max(o.cost for o in la.options) for la in layers)
    sel = solve_knapsack(layers, fixed, total, 0.6, BASELINE)
    dp = solve_knapsack(layers, fixed, total, 0.6, BASELINE, max_states=10 ** 7)
    assert sel.exact and sel.cost <= budget_of(total, 0.6)
    assert sel.expected_score == pytest.approx(dp.expected_score, abs=1e-12)


def test_unreachable_target_at_scale_raises_the_same_error(path):
    layers, fixed, total = realistic(200, 2)
    low = float(smallest_ratio(layers, fixed, total))
    with pytest.raises(ParameterError, match=rf"cannot be reached: the smallest achievable cost ratio is {low:.4f}"):
        solve_knapsack(layers, fixed, total, round(low - 0.01, 3), BASELINE)


def test_the_milp_is_deterministic_and_shared_ties_go_to_the_higher_cost(monkeypatch):
    """Equal scores in different layers: many selections tie; the MILP's second solve picks the dearest."""
    monkeypatch.setattr(solve, "DP_MAX_OPTIONS", 0)
    monkeypatch.setattr(solve, "large_picks", lambda tables, budget, tol, states: milp.milp_picks(tables, budget, tol))
    layers = [LayerOptions(f"l{k}", (Option(1.0, 10 + k, BASELINE), Option(0.5, 5, BASELINE - 0.25),
                                     Option(0.3, 3, BASELINE - 0.5))) for k in range(12)]
    total = sum(10 + k for k in range(12))
    first = solve_knapsack(layers, 0, total, 0.7, BASELINE)
    assert solve_knapsack(layers, 0, total, 0.7, BASELINE) == first
    monkeypatch.undo()
    dp = solve_knapsack(layers, 0, total, 0.7, BASELINE, max_states=10 ** 7)
    assert first.expected_score == pytest.approx(dp.expected_score, abs=1e-12)
    assert first.cost == dp.cost


def test_an_unproven_milp_keeps_a_verified_selection_and_says_so(monkeypatch):
    from scipy.optimize import OptimizeResult

    monkeypatch.setattr(milp, "_highs", lambda *a: OptimizeResult(status=1, x=None))  # e.g. the time limit
    layers, fixed, total = realistic(60, 4)
    tables = [_table(la, BASELINE) for la in layers]
    budget = budget_of(total, 0.5) - fixed
    picks, exact = milp.milp_picks(tables, budget, 1e-12)
    assert not exact and sum(int(t.cost[j]) for t, j in zip(tables, picks)) <= budget
    monkeypatch.setattr(solve, "DP_MAX_OPTIONS", 0)
    monkeypatch.setattr(solve, "DEFAULT_MAX_STATES", 1)
    sel = solve_knapsack(layers, fixed, total, 0.5, BASELINE)
    assert not sel.exact and sel.cost <= budget_of(total, 0.5)
    monkeypatch.undo()
    best = solve_knapsack(layers, fixed, total, 0.5, BASELINE)
    assert best.exact and best.expected_score >= sel.expected_score - 1e-12


def test_highs_prints_nothing_on_stdout(capfd):
    """HiGHS writes stray lines to file descriptor 1 from C++ (on this instance,
    'HighsMipSolverData::transformNewIntegerFeasibleSolution ...'): silenced, and the
    process's own output before and after still comes out."""
    layers, fixed, total = realistic(500, 0)
    tables = [_table(la, BASELINE) for la in layers]
    print("before", flush=True)
    picks, exact = milp.milp_picks(tables, budget_of(total, 0.3) - fixed, 1e-12 * 500)
    print("after", flush=True)
    assert exact
    assert capfd.readouterr().out == "before\nafter\n"
