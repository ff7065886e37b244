"""Channel pruning as a scheme: a unit is a channel group (named by its first requested
layer), its candidates are kept-channel counts (`cost.kept_count`), its footprint the kept
fractions of every layer the group touches (upstream producers included)."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

from ... import layers
from ...cost import check_ratio
from ...errors import LayerError
from ...layers import Analysis, Layer
from ...stats import SkippedLayer
from .. import variants as variants_mod
from ..base import UNCHANGED, Context, Scheme, StepResult, Unit, check_ignored
from . import depgraph, prune, units as units_mod


class ChannelPruning(Scheme):
    name = "channel_pruning"
    needs_data = True
    exact_costs = False
    pipeline_reference = True
    rank_selects = ("greedy",)

    def check(self, layer: Layer) -> str | None:
        return prune.check_layer(layer)

    def reason(self, layer: Layer, analysis: Analysis | None = None, metric: str = "mac") -> str | None:
        why = self.check(layer)
        if why is None and analysis is not None:
            group = depgraph.build_group(layer, analysis.graph, analysis.shapes)
            if group.all_locked:
                why = f"no channel can be removed: {group.lock_summary()}"
        return why

    def plan(self, analysis: Analysis, ratios, ignored: dict[str, str] | None = None):
        """Requests (layer name -> exact ratio) and the layers left out with their reasons.
        A named layer that cannot be pruned is an error; with one ratio for all, such layers
        are skipped with reasons, as are the `ignored` ones."""
        ignored = ignored or {}
        check_ignored(ratios, ignored)
        skipped = [SkippedLayer(layer.name, layer.op, layer.reason) for layer in analysis.layers if layer.reason]
        plans: dict[str, Fraction] = {}
        if isinstance(ratios, dict):
            for name, r in ratios.items():
                layer = analysis.find(name)
                q = check_ratio(r, f"layer '{name}'")
                if reason := self.check(layer):
                    raise LayerError(f"layer '{name}' cannot take channel_pruning: {reason}")
                if q == 1:
                    skipped.append(SkippedLayer(name, layer.op, UNCHANGED))
                else:
                    plans[name] = q
            return plans, skipped
        q = check_ratio(ratios, "ratio")
        for layer in analysis.compressible:
            if reason := ignored.get(layer.name) or self.check(layer):
                skipped.append(SkippedLayer(layer.name, layer.op, reason))
            elif q < 1:
                plans[layer.name] = q
        return plans, skipped

    def apply(self, model, ratios, ctx: Context, ignored=None) -> StepResult:
        analysis = layers.analyze(model, ctx.dims)
        plans, skipped = self.plan(analysis, ratios, ignored)
        out, stats, more = prune.prune(model, plans, ctx.settings, ctx.dims, ctx.multiplicity,
                                       named=isinstance(ratios, dict), activations=ctx.activations,
                                       analysis=analysis)
        return StepResult(out, stats, skipped + more)

    def units(self, model, analysis: Analysis, names: list[str], keys: list[float], ctx: Context):
        return units_mod.group_units(model, analysis, names, keys, ctx.settings, ctx.metric, ctx.multiplicity,
                                     ctx.activations)

    def variants(self, analysis: Analysis, unit: Unit, opset: int):
        """The layers whose input channels the group removes, each alone with its kept
        inputs (like the unit's MAC cost, the producers' savings show in the model)."""
        first = next(iter(unit.data.values()))
        out = []
        for name in [n for n, side in first if side == "in"]:
            layer = analysis.find(name)
            width = variants_mod.in_width(layer)
            ref = variants_mod.original_variant(layer, opset)
            by_key = {}
            for c in unit.candidates:
                kept = int(Fraction(unit.data[c.key][(name, "in")]) * width)
                by_key[c.key] = ref if kept >= width else variants_mod.pruned_variant(layer, kept, opset)
            out.append((name, ref, by_key))
        return out

    def quick(self, settings):
        return dataclasses.replace(settings, reconstruct=False, selection="magnitude",
                                   num_reconstruction_samples=min(64, settings.num_reconstruction_samples))

    def census(self, analysis: Analysis) -> dict:
        return prune.lock_census(analysis)


CHANNEL_PRUNING = ChannelPruning()
