"""Several schemes under one auto-mode target: the dictionary chooses, unit by unit, which
scheme compresses what (e.g. channel pruning of some attention heads and FFN dims, weight
SVD of some projections, or both on the same layer).

    compress_auto(model, ["channel_pruning", "weight_svd"], 0.7, eval_callback, data=...)
    onnx-compress compress m.onnx -o out.onnx --scheme channel_pruning,weight_svd --target 0.7 ...

`Mix(parts)` is a `Scheme` whose units are every part's units, each named
'<part>:<unit>' (a pruning group and an SVD split of a layer of that group are two
units). Every unit is scored alone, as for its own scheme; the selection is one knapsack
over all of them. Where two units touch one layer their footprints multiply (pruned to
k of its channels, then split at ratio r of the pruned layer's cost: k x r of its cost),
which the search's exact cost (`base.exact_cost`) uses to aim at the target; the additive
unit costs over-count such savings, so the budget is bisected on the exact cost.

`apply` runs the parts in order on one model (channel pruning first: an SVD split's two
factors are not a prunable group), each with its own units' ratios: {'<part>:<name>':
ratio}, or one ratio for every layer each part takes (a pipeline at that ratio).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CompressionError, ParameterError
from ..layers import Analysis, Layer
from .base import Context, Scheme, StepResult, Unit

SEP = ":"


class Mix(Scheme):
    """`parts` (registered schemes, applied in this order) under one target."""

    rank_selects = ("greedy",)
    overlapping_units = True

    def __init__(self, parts: list[Scheme], name: str | None = None):
        if len(parts) < 2:
            raise ParameterError("a mix of schemes needs at least two schemes")
        if len({p.name for p in parts}) != len(parts):
            raise ParameterError(f"a mix of schemes names each scheme once, got {[p.name for p in parts]}")
        nested = [p.name for p in parts if isinstance(p, Mix)]
        if nested:
            raise ParameterError(f"a mix of schemes cannot contain another mix ({nested})")
        self.parts = list(parts)
        self.name = name or "+".join(p.name for p in parts)
        self.needs_data = any(p.needs_data for p in parts)
        self.exact_costs = all(p.exact_costs for p in parts)
        self.pipeline_reference = any(p.pipeline_reference for p in parts)

    # ---------------------------------------------------------------- eligibility
    def check(self, layer: Layer) -> str | None:
        return self._joined([p.check(layer) for p in self.parts])

    def reason(self, layer: Layer, analysis: Analysis | None = None, metric: str = "mac") -> str | None:
        return self._joined([p.reason(layer, analysis, metric) for p in self.parts])

    def _joined(self, found: list[str | None]) -> str | None:
        if any(r is None for r in found):
            return None
        return "; ".join(f"{p.name}: {r}" for p, r in zip(self.parts, found))

    def table_key(self, ctx: Context) -> str:
        return "mix(" + ",".join(p.table_key(ctx) for p in self.parts) + ")"

    def quick(self, settings):
        """Each part's quick settings in turn; a part that samples nothing when quick (SVD)
        turns data-aware factors and refits off for the others."""
        for part in self.parts:
            quick = part.quick(settings)
            settings = (dataclasses.replace(settings, data_aware=False, svd_refit=False)
                        if quick is None and settings is not None else quick)
        return settings

    def census(self, analysis: Analysis):
        return next((c for c in (p.census(analysis) for p in self.parts) if c is not None), None)

    # ---------------------------------------------------------------- manual mode
    def split(self, ratios: dict) -> list[dict]:
        """{'<part>:<name>': ratio} -> one {name: ratio} per part, in the parts' order."""
        by_part = {p.name: {} for p in self.parts}
        for key, ratio in ratios.items():
            part, sep, name = str(key).partition(SEP)
            if not sep or part not in by_part or not name:
                raise ParameterError(
                    f"scheme {self.name} names each ratio '<scheme>:<layer>' with scheme one of "
                    f"{list(by_part)} (e.g. '{self.parts[0].name}:{key}'); got {key!r}")
            by_part[part][name] = ratio
        return [by_part[p.name] for p in self.parts]

    def apply(self, model, ratios, ctx: Context, ignored=None) -> StepResult:
        steps = self.split(ratios) if isinstance(ratios, dict) else [ratios] * len(self.parts)
        current, stats, skipped = model, [], []
        for index, (part, step_ratios) in enumerate(zip(self.parts, steps)):
            if isinstance(step_ratios, dict) and not step_ratios:
                continue
            if isinstance(step_ratios, dict) and index > 0:
                step = _apply_reachable(part, current, step_ratios, ctx, skipped)
            else:
                step = part.apply(current, step_ratios, ctx, None if isinstance(ratios, dict) else ignored)
            current = step.model
            stats += step.layers
            skipped += step.skipped
        if isinstance(ratios, dict):
            return StepResult(current, stats, skipped)
        done = {s.name for s in stats}  # one ratio for all: a layer one part took is not skipped
        return StepResult(current, stats, [s for s in _dedupe(skipped) if s.name not in done])

    # ------------------------------------------------------------------ auto mode
    def units(self, model, analysis: Analysis, names: list[str], keys: list[float], ctx: Context):
        units: list[Unit] = []
        left: dict[str, dict[str, str]] = {}
        taken: set[str] = set()
        for part in self.parts:
            mine = [n for n in names if part.check(analysis.find(n)) is None]
            found, why = part.units(model, analysis, mine, keys, ctx) if mine else ([], {})
            for unit in found:
                units.append(dataclasses.replace(unit, name=f"{part.name}{SEP}{unit.name}"))
                taken.update(unit.layers or (unit.name,))
            for name, reason in why.items():
                left.setdefault(name, {})[part.name] = reason
        skipped = {name: "; ".join(f"{p}: {r}" for p, r in reasons.items())
                   for name, reasons in left.items() if name not in taken}
        return units, skipped

    def families(self, units: list[Unit]) -> tuple:
        """Each part's own units: one scheme alone is a finalist beside the mix."""
        return tuple(frozenset(u.name for u in units if u.name.startswith(p.name + SEP)) for p in self.parts)

    def part_of(self, unit: Unit) -> tuple[Scheme, Unit]:
        """The part a unit belongs to, and the unit under its own scheme's name."""
        part, _, name = unit.name.partition(SEP)
        scheme = next(p for p in self.parts if p.name == part)
        return scheme, dataclasses.replace(unit, name=name)

    def variants(self, analysis: Analysis, unit: Unit, opset: int):
        part, own = self.part_of(unit)
        return part.variants(analysis, own, opset)


def _apply_reachable(part: Scheme, model, ratios: dict, ctx: Context, skipped: list) -> StepResult:
    """`part.apply` on `model`, which earlier parts changed: a ratio chosen for a layer's
    original size can fall below what the smaller layer reaches (an SVD split of a pruned
    layer below rank 1). Such layers keep the earlier parts' result and are skipped with
    the reason (found with the part's quick settings); the search measures what is achieved."""
    from ..stats import SkippedLayer

    try:
        return part.apply(model, ratios, ctx)
    except CompressionError:
        pass
    quick = dataclasses.replace(ctx, settings=part.quick(ctx.settings) if part.needs_data else None)
    kept = {}
    for name, ratio in ratios.items():
        try:
            part.apply(model, {name: ratio}, quick)
            kept[name] = ratio
        except CompressionError as exc:
            skipped.append(SkippedLayer(name, "", f"{part.name} after the earlier schemes: {exc}"))
    return part.apply(model, kept, ctx) if kept else StepResult(model, [], [])


def merge_previews(overrides: dict[str, np.ndarray], more: dict[str, np.ndarray]) -> None:
    """Add `more` (a later unit's preview) to `overrides`: a weight both previews replace
    takes the later one's values with the earlier one's removed (zeroed) entries kept
    zero (a pruned group's zeroed channels, then the split of what is left)."""
    for name, value in more.items():
        old = overrides.get(name)
        if old is not None and old.shape == value.shape:
            value = np.where(old == 0, np.zeros_like(value), value)
        overrides[name] = value


def _dedupe(skipped):
    seen, out = set(), []
    for s in skipped:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out
