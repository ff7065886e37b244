"""Ratio -> rank arithmetic: exact, closed form, rounding rules."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from onnx_compress.cost import RankCost, as_fraction, check_ratio, rank_for_ratio
from onnx_compress.errors import ParameterError


def brute_force(rc: RankCost, ratio: Fraction) -> int:
    best = 0
    for r in range(1, rc.full_rank + 1):
        if rc.at(r) <= ratio * rc.before and rc.at(r) < rc.before:
            best = r
    return best


def test_rank_matches_brute_force_on_many_layers():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        per = int(rng.integers(1, 500))
        full = int(rng.integers(1, 300))
        before = int(rng.integers(per, per * 400))
        hundredths = int(rng.integers(1, 100))
        ratio = hundredths / 100
        rc = RankCost(before, per, full)
        assert rank_for_ratio(rc, ratio) == brute_force(rc, Fraction(hundredths, 100)), (rc, ratio)


@pytest.mark.parametrize("ratio,before,per,want", [
    (0.3, 1000, 100, 3),  # 0.3 * 1000 / 100 is exactly 3: no rank lost to float round-off
    (0.7, 1000, 100, 7),
    (0.29, 100, 1, 29),
    (0.57, 100, 1, 57),  # 0.57 * 100 == 56.99999999999999 in floats
    (0.1, 10, 1, 1),
])
def test_decimal_ratios_are_read_exactly(ratio, before, per, want):
    assert rank_for_ratio(RankCost(before, per, 10**6), ratio) == want


def test_rank_never_reaches_break_even_or_full_rank():
    rc = RankCost(before=100, per_rank=10, full_rank=50)
    assert rc.max_rank == 9  # rank 10 costs as much as the layer
    assert rank_for_ratio(rc, 0.999) == 9
    assert rank_for_ratio(RankCost(1000, 10, 4), 0.9) == 4  # capped at full rank


@pytest.mark.parametrize("m", [2, 4, 8, 16])
def test_multiplicity_rounds_down_to_multiples(m):
    rc = RankCost(before=10**6, per_rank=100, full_rank=10**4)
    for hundredths in range(1, 100):
        r = rank_for_ratio(rc, hundredths / 100, m)
        assert r % m == 0 and r > 0
        assert rc.at(r) <= Fraction(hundredths, 100) * rc.before


def test_multiplicity_never_rounds_to_zero_nor_past_break_even():
    rc = RankCost(before=1000, per_rank=100, full_rank=100)  # max rank 9
    assert rank_for_ratio(rc, 0.35, 8) == 8  # 3 rounds down to 0: one multiple instead
    assert rank_for_ratio(rc, 0.35, 16) == 9  # but not past break-even
    assert rank_for_ratio(rc, 0.05, 8) == 0  # rank 1 does not fit: caller reports it


def test_ratio_validation():
    assert check_ratio(0.5, "x") == Fraction(1, 2)
    assert as_fraction(0.1) == Fraction(1, 10)
    for bad in (0, -0.5, 1.5, "abc", None):
        with pytest.raises(ParameterError):
            check_ratio(bad, "layer 'a'")
