"""Weight SVD and spatial SVD as schemes: a layer is one unit, its candidates are ranks.

A rank scheme says whether a layer can take it (`check` returns the reason it cannot),
what the split costs as a function of rank (`rank_cost`), and which nodes replace the
layer at a given rank (`specs`); `plan` resolves ratios to ranks (multiplicity through
`cost.rank_for_ratio`), `apply_plans` performs the planned rewrites on the graph.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ... import ir, layers, progress
from ...cost import RankCost, check_ratio, rank_for_ratio, round_up_rank
from ...errors import LayerError, ParameterError
from ...layers import Analysis, Layer
from ...stats import LayerStats, SkippedLayer
from .. import variants as variants_mod
from ..base import UNCHANGED, Candidate, Context, Scheme, StepResult, Unit, check_ignored
from . import factor as svd

@dataclass(frozen=True, eq=False)
class RankPlan:
    """Split `layer` at `rank`; `requested` is the ratio the user or selection asked for."""

    layer: Layer
    requested: Fraction
    rank: int
    note: str = ""


class SvdScheme(Scheme):
    """A rank scheme: `check`, `rank_cost(layer, metric)`, `specs(layer, rank, opset, cov)`."""

    rank_selects = ("greedy", "tar")

    def __init__(self, name: str, check: Callable[[Layer], str | None],
                 rank_cost: Callable[[Layer, str], RankCost], specs: Callable, refits: bool = False):
        self.name = name
        self.check = check
        self.rank_cost = rank_cost
        self.specs = specs
        self.refits = refits  # --svd-refit applies (the second factor of a split is refit)

    # ---------------------------------------------------------------- eligibility
    def reason(self, layer: Layer, analysis: Analysis | None = None, metric: str = "mac") -> str | None:
        why = self.check(layer)
        if why is None and (metric == "memory" or layer.mac is not None):
            rc = self.rank_cost(layer, metric)
            if rc.max_rank == 0:
                why = f"{self.name} is never cheaper than this layer ({metric} at rank 1: {rc.at(1)} >= {rc.before})"
        return why

    def quick(self, settings):
        return None  # the dry run splits plainly: same validity, no sampling

    def table_key(self, ctx: Context) -> str:
        key = self.name if ctx.rank_select == "greedy" else f"{self.name}/{ctx.rank_select}"
        if ctx.data_aware:
            key += "/data-aware"
        if ctx.multiplicity > 1:
            key += f"/multiplicity-{ctx.multiplicity}"
        return key

    # ---------------------------------------------------------------- manual mode
    def plan(self, analysis: Analysis, ratios, metric: str, multiplicity: int,
             ignored: dict[str, str] | None = None) -> tuple[list[RankPlan], list[SkippedLayer]]:
        """Plans for the requested layers, and the layers left out with their reasons."""
        ignored = ignored or {}
        check_ignored(ratios, ignored)
        skipped = [SkippedLayer(layer.name, layer.op, layer.reason) for layer in analysis.layers if layer.reason]
        if isinstance(ratios, dict):
            requests = [(analysis.find(name), check_ratio(r, f"layer '{name}'"), True) for name, r in ratios.items()]
            for layer in analysis.compressible:
                if layer.name not in ratios and (reason := self.check(layer)):
                    skipped.append(SkippedLayer(layer.name, layer.op, reason))
        else:
            q = check_ratio(ratios, "ratio")
            requests = []
            for layer in analysis.compressible:
                reason = ignored.get(layer.name) or self.check(layer)
                if reason:
                    skipped.append(SkippedLayer(layer.name, layer.op, reason))
                else:
                    requests.append((layer, q, False))
        plans = []
        for layer, q, named in requests:
            plan = self._plan_one(layer, q, named, metric, multiplicity)
            (plans if isinstance(plan, RankPlan) else skipped).append(plan)
        return plans, skipped

    def _plan_one(self, layer: Layer, q: Fraction, named: bool, metric: str, multiplicity: int):
        if reason := self.check(layer):
            raise LayerError(f"layer '{layer.name}' cannot take {self.name}: {reason}")
        if q == 1:
            return SkippedLayer(layer.name, layer.op, UNCHANGED)
        rc = self.rank_cost(layer, metric)
        if rc.max_rank == 0:
            why = f"{self.name} is never cheaper than this layer ({metric} at rank 1: {rc.at(1)} >= {rc.before})"
            if named:
                raise LayerError(f"layer '{layer.name}': {why}")
            return SkippedLayer(layer.name, layer.op, why)
        rank = rank_for_ratio(rc, q, multiplicity)
        if rank == 0:
            smallest = float(rc.ratio(1))
            if named:
                raise ParameterError(f"layer '{layer.name}': ratio {float(q):g} is below the smallest achievable "
                                     f"{smallest:.4f} ({self.name} at rank 1, {metric})")
            return SkippedLayer(layer.name, layer.op, f"ratio {float(q):g} below rank 1's {smallest:.4f}")
        note = f"rank rounded up to multiplicity {multiplicity}" if rc.ratio(rank) > q else ""
        return RankPlan(layer, Fraction(q), rank, note)

    def apply(self, model, ratios, ctx: Context, ignored=None) -> StepResult:
        analysis = layers.analyze(model, ctx.dims)
        plans, skipped = self.plan(analysis, ratios, ctx.metric, ctx.multiplicity, ignored)
        moments = None
        if ctx.data_aware and plans:
            from .moments import input_moments

            moments = input_moments(model, [p.layer for p in plans], self.name, ctx.activations,
                                    ctx.settings.num_reconstruction_samples, ctx.settings.seed)
        new_nodes = apply_plans(analysis, self, plans, moments)
        out = ir.export(analysis.graph, model)
        gains = {}
        if self.refits and plans and ctx.data_aware and ctx.settings.svd_refit:
            from .refit import refit_second_factors

            out, gains = refit_second_factors(out, model, plans, new_nodes, ctx.settings, ctx.activations)
        return StepResult(out, [self._stats(p, new_nodes, gains, ctx.metric) for p in plans], skipped)

    def _stats(self, plan: RankPlan, new_nodes: dict, gains: dict, metric: str) -> LayerStats:
        layer = plan.layer
        mac_rc = self.rank_cost(layer, "mac") if layer.mac is not None else None
        mem_rc = self.rank_cost(layer, "memory")
        rc = mac_rc if metric == "mac" else mem_rc
        refit = f"refit: output error x{gains[layer.name]:.3f}" if layer.name in gains else ""
        return LayerStats(
            name=layer.name, op=layer.op, scheme=self.name,
            requested_ratio=float(plan.requested), achieved_ratio=float(rc.ratio(plan.rank)),
            rank=plan.rank, full_rank=rc.full_rank,
            mac_before=layer.mac, mac_after=mac_rc.at(plan.rank) if mac_rc else None,
            memory_before=layer.memory, memory_after=mem_rc.at(plan.rank),
            new_nodes=tuple(new_nodes[layer.name]), note="; ".join(filter(None, [plan.note, refit])))

    # ------------------------------------------------------------------ auto mode
    def units(self, model, analysis: Analysis, names: list[str], keys: list[float], ctx: Context):
        moments = None
        if ctx.data_aware:
            from .moments import input_moments

            targets = [analysis.find(n) for n in names]
            moments = input_moments(model, targets, self.name, ctx.activations,
                                    ctx.settings.num_reconstruction_samples, ctx.settings.seed)
        inits = {t.name for t in analysis.proto.graph.initializer}
        units, skipped = [], {}
        for name in names:
            unit = self._unit(analysis.find(name), keys, ctx, inits, (moments or {}).get(name))
            if isinstance(unit, str):
                skipped[name] = unit
            else:
                units.append(unit)
        return units, skipped

    def _unit(self, layer: Layer, keys: list[float], ctx: Context, inits: set[str], cov) -> Unit | str:
        if reason := self.check(layer):
            return reason
        if layer.node.inputs[1].name not in inits:
            return "weight is not a main-graph initializer (scored by rebuilding: not supported in auto mode yet)"
        rc = self.rank_cost(layer, ctx.metric)
        if rc.max_rank == 0:
            return f"{self.name} is never cheaper than this layer"
        tar = ctx.rank_select == "tar"
        errors = svd.relative_errors(layer, self.name) if tar else None
        cands = []
        for key in keys:
            rank = _tar_rank(errors, key, rc) if tar else rank_for_ratio(rc, key, ctx.multiplicity)
            if rank == 0:
                continue
            if tar:
                rank = round_up_rank(rc, rank, ctx.multiplicity)
            if any(c.size == rank for c in cands):  # rounding made it a repeat: one evaluation is enough
                continue
            cands.append(Candidate(key, rank, rc.at(rank), rc.ratio(rank), {layer.name: rc.ratio(rank)}))
        if not cands:
            return "no candidate rank fits (layer too small for these ratios)"
        return Unit(layer.name, cands, _preview(layer, self.name, cov, len(cands)), rc.before,
                    (layer.node.inputs[1].name,), (layer.name,), size=rc.full_rank)

    def variants(self, analysis: Analysis, unit: Unit, opset: int):
        layer = analysis.find(unit.name)
        by_rank = variants_mod.split_variants(layer, self, sorted({c.size for c in unit.candidates}), opset)
        ref = variants_mod.original_variant(layer, opset)
        return [(layer.name, ref, {c.key: by_rank[c.size] for c in unit.candidates})]


def _tar_rank(errors: np.ndarray, level: float, rc: RankCost) -> int:
    """Smallest rank whose relative error is at most `level` (0 when past break-even)."""
    rank = int(np.argmax(errors <= level + 1e-12))
    return rank if 1 <= rank <= rc.max_rank else 0


def _preview(layer: Layer, scheme: str, cov: np.ndarray | None = None, n_candidates: int = 1):
    """Candidate -> the layer's same-shaped low-rank weight. The layer is factored once and
    truncated per candidate; the factors are let go after `n_candidates` calls (the
    dictionary asks for each candidate once), so at most a few layers' factors are held."""
    name = layer.node.inputs[1].name
    factors: dict = {}
    calls = [0]

    def preview(c: Candidate) -> dict[str, np.ndarray]:
        weight = svd.low_rank_weight(layer, scheme, c.size, cov, factors)
        calls[0] += 1
        if calls[0] % max(1, n_candidates) == 0:
            factors.clear()
        return {name: weight}

    return preview


def apply_plans(analysis: Analysis, scheme: SvdScheme, plans: list[RankPlan],
                moments: dict | None = None) -> dict[str, list[str]]:
    """Rewrite every planned layer in `analysis.graph`; return layer name -> new node names.

    `moments`: layer name -> second moment of its inputs, for data-aware factors.
    """
    opset = ir.opset(analysis.proto)
    taken = ir.all_names(analysis.graph)
    new_nodes = {}
    for step, plan in enumerate(plans):
        progress.update("compressing layers", step, len(plans))
        layer = plan.layer
        specs = scheme.specs(layer, plan.rank, opset, (moments or {}).get(layer.name))
        new_nodes[layer.name] = ir.replace_with_chain(layer.graph, layer.node, specs, layer.name, taken)
    progress.update("compressing layers", len(plans), len(plans))
    return new_nodes


WEIGHT_SVD = SvdScheme("weight_svd", svd.check_weight_svd, svd.weight_svd_cost, svd.weight_svd_specs, refits=True)
SPATIAL_SVD = SvdScheme("spatial_svd", svd.check_spatial_svd, svd.spatial_svd_cost, svd.spatial_svd_specs,
                        refits=True)
