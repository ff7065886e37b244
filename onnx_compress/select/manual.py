"""Manual mode: the user names the layers and their ratios (or one ratio for all)."""
from __future__ import annotations

from fractions import Fraction

from ..cost import check_ratio, rank_for_ratio
from ..errors import LayerError, ParameterError
from ..layers import Analysis
from ..stats import SkippedLayer
from ..transforms import RankPlan, RankScheme


def _check_ignored(ratios, ignored: dict[str, str]) -> None:
    if isinstance(ratios, dict):
        both = [name for name in ratios if name in ignored]
        if both:
            raise ParameterError(f"layer(s) {both} are both given a ratio and ignored; drop one of the two")


def plan(analysis: Analysis, scheme: RankScheme, ratios: dict[str, float] | float, metric: str,
         multiplicity: int, ignored: dict[str, str] | None = None) -> tuple[list[RankPlan], list[SkippedLayer]]:
    """Plans for the requested layers, and the layers left out with their reasons.

    `ratios`: layer name -> ratio, or one ratio for every layer the scheme applies to.
    A named layer the scheme cannot take is an error; in the all-layers form it is skipped.
    `ignored`: layer name -> reason, layers left out of the all-layers form.
    """
    ignored = ignored or {}
    _check_ignored(ratios, ignored)
    plans: list[RankPlan] = []
    skipped = [SkippedLayer(layer.name, layer.op, layer.reason) for layer in analysis.layers if layer.reason]
    if isinstance(ratios, dict):
        requests = [(analysis.find(name), check_ratio(r, f"layer '{name}'"), True) for name, r in ratios.items()]
        for layer in analysis.compressible:
            if layer.name not in ratios and (reason := scheme.check(layer)):
                skipped.append(SkippedLayer(layer.name, layer.op, reason))
    else:
        q = check_ratio(ratios, "ratio")
        requests = []
        for layer in analysis.compressible:
            reason = ignored.get(layer.name) or scheme.check(layer)
            if reason:
                skipped.append(SkippedLayer(layer.name, layer.op, reason))
            else:
                requests.append((layer, q, False))
    for layer, q, named in requests:
        reason = scheme.check(layer)
        if reason:
            raise LayerError(f"layer '{layer.name}' cannot take {scheme.name}: {reason}")
        if q == 1:
            skipped.append(SkippedLayer(layer.name, layer.op, "ratio 1.0: left unchanged"))
            continue
        rc = scheme.rank_cost(layer, metric)
        if rc.max_rank == 0:
            why = f"{scheme.name} is never cheaper than this layer ({metric} at rank 1: {rc.at(1)} >= {rc.before})"
            if named:
                raise LayerError(f"layer '{layer.name}': {why}")
            skipped.append(SkippedLayer(layer.name, layer.op, why))
            continue
        rank = rank_for_ratio(rc, q, multiplicity)
        if rank == 0:
            smallest = float(rc.ratio(1))
            if named:
                raise ParameterError(
                    f"layer '{layer.name}': ratio {float(q):g} is below the smallest achievable "
                    f"{smallest:.4f} ({scheme.name} at rank 1, {metric})"
                )
            skipped.append(SkippedLayer(layer.name, layer.op, f"ratio {float(q):g} below rank 1's {smallest:.4f}"))
            continue
        note = ""
        if rc.ratio(rank) > q:
            note = f"rank rounded up to multiplicity {multiplicity}"
        plans.append(RankPlan(layer, Fraction(q), rank, note))
    return plans, skipped


def plan_channels(analysis: Analysis, check, ratios: dict[str, float] | float,
                  ignored: dict[str, str] | None = None) -> tuple[dict[str, Fraction], list[SkippedLayer]]:
    """Channel pruning requests: layer name -> exact ratio, and the layers left out.

    `check(layer)` gives the reason a layer cannot be pruned. A named layer that cannot
    be pruned is an error; with one ratio for all, such layers are skipped with reasons,
    as are the `ignored` ones.
    """
    ignored = ignored or {}
    _check_ignored(ratios, ignored)
    skipped = [SkippedLayer(layer.name, layer.op, layer.reason) for layer in analysis.layers if layer.reason]
    plans: dict[str, Fraction] = {}
    if isinstance(ratios, dict):
        for name, r in ratios.items():
            layer = analysis.find(name)
            q = check_ratio(r, f"layer '{name}'")
            if reason := check(layer):
                raise LayerError(f"layer '{name}' cannot take channel_pruning: {reason}")
            if q == 1:
                skipped.append(SkippedLayer(name, layer.op, "ratio 1.0: left unchanged"))
            else:
                plans[name] = q
        return plans, skipped
    q = check_ratio(ratios, "ratio")
    for layer in analysis.compressible:
        if reason := ignored.get(layer.name) or check(layer):
            skipped.append(SkippedLayer(layer.name, layer.op, reason))
        elif q < 1:
            plans[layer.name] = q
    return plans, skipped
