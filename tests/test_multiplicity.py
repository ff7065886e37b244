"""Scores above the baseline in the eval-score dictionary."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from onnx_compress.select import greedy

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


# ------------------------------------------------------------------ scores above baseline
def _unit(name, options):
    """A unit of base cost 100 with candidates {key: cost}."""
    cands = [greedy.Candidate(k, int(c), int(c), Fraction(int(c), 100)) for k, c in options.items()]
    return greedy.Unit(name, cands, lambda c: {}, 100)


@pytest.mark.parametrize("objective", ["product", "sum"])
def test_a_score_above_baseline_is_not_spent_on_another_layers_loss(objective):
    # A alone at 0.5 scores *above* the baseline (1.03), B at 0.7 loses 0.02. Crediting
    # A's gain makes (A 0.5, B 0.7) look better than the model (1.01); clamped, the lossless
    # (A 0.2, B uncompressed) of the same cost wins.
    units = [_unit("A", {0.2: 20, 0.5: 50}), _unit("B", {0.7: 70})]
    dictionary = greedy.Dictionary(baseline=1.0, scores={"A": {0.2: 1.0, 0.5: 1.03}, "B": {0.7: 0.98}})
    chosen = greedy.choose(units, dictionary, 200, 200, Fraction(3, 5), "knapsack", False, objective=objective)
    assert chosen.choices["A"].ratio == 0.2
    assert chosen.choices["B"].ratio == 1.0
    assert chosen.expected_score == pytest.approx(1.0, abs=1e-12)  # never expected above the baseline
    assert chosen.cost == 120


def test_scores_below_baseline_still_rank_candidates():
    # nothing above the baseline: the clamp changes nothing, the smaller loss wins
    units = [_unit("A", {0.5: 50}), _unit("B", {0.5: 50})]
    dictionary = greedy.Dictionary(baseline=1.0, scores={"A": {0.5: 0.99}, "B": {0.5: 0.90}})
    chosen = greedy.choose(units, dictionary, 200, 200, Fraction(3, 4), "knapsack", False)
    assert (chosen.choices["A"].ratio, chosen.choices["B"].ratio) == (0.5, 1.0)
    assert chosen.expected_score == pytest.approx(0.99, abs=1e-9)
