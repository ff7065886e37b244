"""Cost arithmetic: from a requested ratio to a rank (or channel count), exactly.

The one place ranks and kept channel counts are rounded to a multiplicity
(`rank_for_ratio`, `kept_count`). A split layer's cost is linear in its rank r:
cost(r) = fixed + per_rank * r (biases are not counted: memory is weight parameters;
`fixed` is the part the split leaves as it is, an LSTM/GRU's recurrent weights R, 0 for
Conv/Gemm/MatMul). A ratio maps to the largest rank whose cost is at most ratio *
cost_before, in closed form with integer arithmetic on the ratio's exact decimal value,
so 0.3 means 3/10, not 0.29999999999999998.
"""
from __future__ import annotations

from enum import Enum

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import ParameterError

METRICS = ("mac", "memory", "latency")  # latency: measured (onnx_compress.search.latency), auto mode only


def as_fraction(ratio: float | int | str | Fraction) -> Fraction:
    """The exact rational the user meant: a float is read through its shortest repr."""
    if isinstance(ratio, Fraction):
        return ratio
    if isinstance(ratio, float):
        return Fraction(repr(ratio))
    return Fraction(ratio)


def check_ratio(ratio, where: str) -> Fraction:
    """Validate a compression ratio in (0, 1]; return it as an exact fraction."""
    try:
        q = as_fraction(ratio)
    except (TypeError, ValueError):
        raise ParameterError(f"{where}: ratio must be a number in (0, 1], got {ratio!r}") from None
    if not 0 < q <= 1:
        raise ParameterError(f"{where}: ratio must be in (0, 1], got {ratio}")
    return q


def check_metric(metric: str) -> str:
    metric = str(metric.name if isinstance(metric, Enum) else metric).lower()
    if metric not in METRICS:
        raise ParameterError(f"cost metric must be one of {METRICS}, got {metric!r}")
    return metric


def check_multiplicity(multiplicity) -> int:
    """An integer >= 1 ("auto" is resolved to one before it gets here: api.resolve_multiplicity)."""
    if not isinstance(multiplicity, int) or isinstance(multiplicity, bool) or multiplicity < 1:
        raise ParameterError(f"multiplicity must be an integer >= 1 or 'auto', got {multiplicity!r}")
    return multiplicity


@dataclass(frozen=True)
class RankCost:
    """Cost of a layer split at rank r: `fixed + per_rank * r`, against `before` unsplit.

    `full_rank` is the rank at which the split is exact (min of the factored matrix's dims);
    `fixed`: the cost the split does not change (an LSTM/GRU's recurrent MACs or weights R).
    """

    before: int
    per_rank: int
    full_rank: int
    fixed: int = 0

    def at(self, rank: int) -> int:
        return self.fixed + self.per_rank * rank

    @property
    def max_rank(self) -> int:
        """Largest useful rank: at most full rank and strictly cheaper than no split (0: none)."""
        return max(0, min(self.full_rank, (self.before - 1 - self.fixed) // self.per_rank))

    def ratio(self, rank: int) -> Fraction:
        return Fraction(self.at(rank), self.before)


def round_up_rank(rc: RankCost, rank: int, multiplicity: int = 1) -> int:
    """`rank` rounded *up* to a multiple of `multiplicity`, capped at the break-even rank (TAR
    levels: the smallest rank meeting an error level, so rounding may only add rank)."""
    if multiplicity <= 1:
        return rank
    return min(rc.max_rank, max(multiplicity, -(-rank // multiplicity) * multiplicity))


def rank_for_ratio(rc: RankCost, ratio, multiplicity: int = 1) -> int:
    """Largest rank with cost <= ratio * before, rounded down to a multiple of `multiplicity`.

    Returns 0 when not even rank 1 fits. When rounding down would give 0, the rank rounds
    up to one multiple instead (never 0), but never past the break-even rank (`max_rank`).
    """
    q = as_fraction(ratio)
    rank = min((q.numerator * rc.before - q.denominator * rc.fixed) // (q.denominator * rc.per_rank), rc.max_rank)
    if rank < 1:
        return 0
    if multiplicity > 1:
        rounded = (rank // multiplicity) * multiplicity
        rank = rounded if rounded > 0 else min(multiplicity, rc.max_rank)
    return rank


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
