"""Example 1: add a compression scheme of your own.

A scheme is one class (a subclass of `onnx_compress.schemes.Scheme`) and one registry line
(`schemes.register`). This toy scheme, "matmul_lowrank", splits a MatMul `y = x @ W` with a
constant 2-D weight W (K x N) into `y = (x @ A) @ B` with A (K x r) and B (r x N) from W's
truncated SVD. It implements what the API and the search ask of every scheme:
  check     why a layer cannot take it (None when it can)
  apply     compress a model at ratios -> StepResult(model, layer stats, skipped layers)
  units     auto mode: one unit per layer, candidate ranks for a grid of ratio keys, each
            with its cost footprint and a same-shaped preview weight (W_r = A @ B)
and it passes the same contract suite as the built-in schemes (tests/test_schemes.py).

Run it: python examples/01_add_a_scheme.py
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnx_compress as oc
from onnx_compress import cost, evaluators, ir, layers, schemes
from onnx_compress.stats import LayerStats, SkippedLayer


class MatMulLowRank(schemes.Scheme):
    name = "matmul_lowrank"

    # ------------------------------------------------------------------ the layer check
    def check(self, layer) -> str | None:
        if layer.reason:
            return layer.reason
        if layer.op != "MatMul":
            return f"{self.name} takes MatMul layers, not {layer.op}"
        if layer.weight is None or layer.weight.ndim != 2:
            return "the weight is not a constant 2-D matrix"
        if layer.in_subgraph:
            return "inside an If/Loop/Scan subgraph"
        return None

    # ------------------------------------------------------------------ cost of a rank
    @staticmethod
    def rank_cost(layer, metric: str) -> cost.RankCost:
        """Cost at rank r is r * (K + N) per position, against K * N unsplit."""
        k, n = layer.weight.shape
        before = layers.cost_of(layer, metric)
        per_rank = before // (k * n) * (k + n)
        return cost.RankCost(before=before, per_rank=per_rank, full_rank=min(k, n))

    @staticmethod
    def factors(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        return (u[:, :rank] * s[:rank]).astype(w.dtype), vt[:rank].astype(w.dtype)

    # ------------------------------------------------------------------ manual mode
    def apply(self, model, ratios, ctx, ignored=None):
        analysis = layers.analyze(model, ctx.dims)
        ignored = ignored or {}
        schemes.base.check_ignored(ratios, ignored)
        named = isinstance(ratios, dict)
        wanted = ratios if named else {l.name: ratios for l in analysis.compressible}
        taken = ir.all_names(analysis.graph)
        stats, skipped = [], []
        for name, ratio in wanted.items():
            layer = analysis.find(name)
            reason = ignored.get(name) or self.check(layer)
            if reason and named:
                raise oc.LayerError(f"layer '{name}' cannot take {self.name}: {reason}")
            q = cost.check_ratio(ratio, f"layer '{name}'")
            rc = self.rank_cost(layer, ctx.metric) if not reason else None
            rank = cost.rank_for_ratio(rc, q, ctx.multiplicity) if rc and q < 1 else 0
            if reason or rank == 0:
                why = reason or (schemes.base.UNCHANGED if q == 1 else f"ratio {float(q):g} is below rank 1")
                skipped.append(SkippedLayer(name, layer.op, why))
                continue
            a, b = self.factors(layer.weight, rank)
            new = ir.replace_with_chain(layer.graph, layer.node, [ir.NodeSpec("MatMul", (a,)),
                                                                   ir.NodeSpec("MatMul", (b,))], name, taken)
            stats.append(LayerStats(
                name=name, op=layer.op, scheme=self.name, requested_ratio=float(q),
                achieved_ratio=float(rc.ratio(rank)), rank=rank, full_rank=rc.full_rank,
                mac_before=layer.mac, mac_after=None if layer.mac is None else rc.at(rank) if ctx.metric == "mac"
                else self.rank_cost(layer, "mac").at(rank),
                memory_before=layer.memory, memory_after=self.rank_cost(layer, "memory").at(rank),
                new_nodes=tuple(new)))
        return schemes.StepResult(ir.export(analysis.graph, model), stats, skipped)

    # ------------------------------------------------------------------ auto mode
    def units(self, model, analysis, names, keys, ctx):
        inits = {t.name for t in model.graph.initializer}
        units, left = [], {}
        for name in names:
            layer = analysis.find(name)
            if reason := self.check(layer):
                left[name] = reason
                continue
            if layer.node.inputs[1].name not in inits:
                left[name] = "weight is not a main-graph initializer"
                continue
            rc = self.rank_cost(layer, ctx.metric)
            cands = []
            for key in keys:
                rank = cost.rank_for_ratio(rc, key, ctx.multiplicity)
                if rank and all(c.size != rank for c in cands):
                    kept = rc.ratio(rank)
                    cands.append(schemes.Candidate(key, rank, rc.at(rank), kept, {name: kept}))
            if not cands:
                left[name] = "no candidate rank is cheaper than the layer"
                continue
            units.append(schemes.Unit(name, cands, self._preview(layer), rc.before,
                                      (layer.node.inputs[1].name,), (name,), size=rc.full_rank))
        return units, left

    def _preview(self, layer):
        def preview(candidate):
            a, b = self.factors(layer.weight, candidate.size)
            return {layer.node.inputs[1].name: (a @ b).astype(layer.weight.dtype)}
        return preview


SCHEME = schemes.register(MatMulLowRank(), replace=True)


# ---------------------------------------------------------------------- a demonstration
def mlp(seed: int = 0) -> onnx.ModelProto:
    """x (batch, 32) -> MatMul 32x64 -> Relu -> MatMul 64x10, weights of low effective rank
    (as trained layers often are: a few strong directions and some noise)."""
    rng = np.random.default_rng(seed)

    def low_rank(k, n, r):
        return (rng.standard_normal((k, r)) @ rng.standard_normal((r, n)) / r
                + 0.01 * rng.standard_normal((k, n))).astype(np.float32)

    w1, w2 = low_rank(32, 64, 8), low_rank(64, 10, 4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main() -> dict:
    model = mlp()
    x = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    evaluator = evaluators.fidelity({"x": x}, measure="cosine")
    manual, stats = oc.compress(model, "matmul_lowrank", 0.5, eval_callback=evaluator)
    print(f"manual: MACs {stats.mac_before} -> {stats.mac_after}, fidelity {stats.final_score:.4f}")
    auto, astats = oc.compress_auto(model, "matmul_lowrank", 0.6, evaluator, candidates=5)
    print(f"auto:   MACs {astats.mac_before} -> {astats.mac_after} (target 0.6), fidelity "
          f"{astats.final_score:.4f}, chosen {astats.selection['chosen']}")
    return {"manual": stats, "auto": astats}


if __name__ == "__main__":
    main()
