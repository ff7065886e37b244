"""Compression schemes: a registry keyed by scheme name.

A rank scheme says whether a layer can take it (`check` returns the reason it cannot),
what the split costs as a function of rank (`rank_cost`), and which nodes replace the
layer at a given rank (`specs`). `apply` performs the planned rewrites on the graph.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from .. import ir, progress
from ..cost import RankCost
from ..layers import Analysis, Layer
from . import svd


@dataclass(frozen=True)
class RankScheme:
    name: str
    check: Callable[[Layer], str | None]
    rank_cost: Callable[[Layer, str], RankCost]
    specs: Callable[[Layer, int, int], list[ir.NodeSpec]]


SCHEMES: dict[str, RankScheme] = {
    "weight_svd": RankScheme("weight_svd", svd.check_weight_svd, svd.weight_svd_cost, svd.weight_svd_specs),
    "spatial_svd": RankScheme("spatial_svd", svd.check_spatial_svd, svd.spatial_svd_cost, svd.spatial_svd_specs),
}


@dataclass(frozen=True, eq=False)
class RankPlan:
    """Split `layer` at `rank`; `requested` is the ratio the user or selection asked for."""

    layer: Layer
    requested: Fraction
    rank: int
    note: str = ""


def apply(analysis: Analysis, scheme: RankScheme, plans: list[RankPlan],
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
