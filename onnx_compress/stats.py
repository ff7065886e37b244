"""Compression statistics: what was asked, what was achieved, per layer and in total.

Plain frozen dataclasses; `str()` gives a readable table, `to_dict()`/`to_json()` the
same content for tools. All "after" figures are measured on the compressed model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LayerStats:
    """One compressed layer. Ratios are cost after / cost before of this layer."""

    name: str
    op: str
    scheme: str
    requested_ratio: float
    achieved_ratio: float  # under the run's cost metric
    rank: int  # rank of the split
    full_rank: int
    mac_before: int | None
    mac_after: int | None
    memory_before: int
    memory_after: int
    new_nodes: tuple[str, ...] = ()
    note: str = ""

    @property
    def compression_ratio(self) -> float:
        """AIMET's name: the achieved ratio under the run's cost metric."""
        return self.achieved_ratio


@dataclass(frozen=True)
class SkippedLayer:
    name: str
    op: str
    reason: str


@dataclass(frozen=True)
class CompressionStats:
    """Totals are over the model's layers (Conv, Gemm, MatMul with constant weights)."""

    scheme: str
    cost_metric: str
    mac_before: int | None
    mac_after: int | None
    memory_before: int
    memory_after: int
    layers: tuple[LayerStats, ...] = ()
    skipped: tuple[SkippedLayer, ...] = ()
    baseline_score: float | None = None
    final_score: float | None = None
    input_dims: dict = field(default_factory=dict)
    selection: dict | None = None
    # every layer of the original model in graph order: costs before/after (measured on the
    # compressed model, upstream channel savings included), status and reason
    per_layer: tuple[dict, ...] = ()
    # the call's parameters, to reproduce the run (values that are not JSON shown by repr)
    parameters: dict = field(default_factory=dict)
    # auto mode when layers were timed (cost_metric "latency" or the slower-split check):
    # batch size, provider, per-layer-sum and end-to-end latency (ns) before/after, per-unit
    # timings, dropped candidates (onnx_compress.search.latency.summary)
    latency: dict | None = None
    # channel pruning: how many of the model's channel groups (one per layer it could take)
    # are locked whole, and why (onnx_compress.schemes.pruning.prune.lock_census)
    channel_groups: dict | None = None

    @property
    def mac_ratio(self) -> float | None:
        if not self.mac_before or self.mac_after is None:
            return None
        return self.mac_after / self.mac_before

    @property
    def memory_ratio(self) -> float:
        return self.memory_after / self.memory_before if self.memory_before else 1.0

    # AIMET's CompressionStats names, with AIMET's meaning (ratios: compressed / original)
    @property
    def baseline_model_accuracy(self) -> float | None:
        return self.baseline_score

    @property
    def compressed_model_accuracy(self) -> float | None:
        return self.final_score

    @property
    def mac_compression_ratio(self) -> float | None:
        return self.mac_ratio

    @property
    def memory_compression_ratio(self) -> float:
        return self.memory_ratio

    @property
    def per_layer_stats(self) -> tuple[LayerStats, ...]:
        """AIMET's per-layer list: each has `.name` and `.compression_ratio` (achieved)."""
        return self.layers

    @property
    def compression_ratio_selection_stats(self) -> dict | None:
        """Auto mode: the eval-score dictionary {layer: {ratio: score}} (AIMET's
        eval_scores_dictionary); None in manual mode."""
        return None if not self.selection else self.selection.get("scores")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mac_ratio"] = self.mac_ratio
        d["memory_ratio"] = self.memory_ratio
        d["input_dims"] = {k: list(v) for k, v in self.input_dims.items()}
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return format_stats(self)


def format_count(x) -> str:
    """A count with a k/M/G suffix ("?" when unknown)."""
    if x is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.2f}{unit}"
    return str(x)


def _score(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_stats(s: CompressionStats) -> str:
    mac_ratio = "?" if s.mac_ratio is None else f"{s.mac_ratio:.4f}"
    lines = [
        f"scheme: {s.scheme}   cost metric: {s.cost_metric}",
        f"MACs:   {format_count(s.mac_before)} -> {format_count(s.mac_after)}  (ratio {mac_ratio})",
        f"memory: {format_count(s.memory_before)} -> {format_count(s.memory_after)} weights  (ratio {s.memory_ratio:.4f})",
    ]
    if s.latency:
        lines.extend(_latency_lines(s.latency))
    if s.channel_groups:
        g = s.channel_groups
        lines.append(f"channel groups: {g['locked']} of {g['groups']} locked "
                     f"({100 * g['locked_fraction']:.1f}%)")
    if s.baseline_score is not None or s.final_score is not None:
        lines.append(f"eval score: {_score(s.baseline_score)} -> {_score(s.final_score)}")
    if s.layers:
        width = max(len(layer.name) for layer in s.layers)
        lines.append("")
        lines.append(f"{'layer':<{width}}  {'scheme':<15} {'asked':>6} {'got':>7} {'rank':>9}  "
                     f"{'MACs before -> after':>22}  note")
        for layer in s.layers:
            lines.append(
                f"{layer.name:<{width}}  {layer.scheme:<15} {layer.requested_ratio:>6.3f} "
                f"{layer.achieved_ratio:>7.4f} {layer.rank:>4}/{layer.full_rank:<4}  "
                f"{format_count(layer.mac_before):>10} -> {format_count(layer.mac_after):<9}  {layer.note}"
            )
    if s.skipped:
        lines.append("")
        lines.append("skipped:")
        lines.extend(f"  {k.name} ({k.op}): {k.reason}" for k in s.skipped)
    return "\n".join(lines)


def _latency_lines(lat: dict) -> list[str]:
    where = f"batch {lat['batch_size']}, {lat['provider']}"
    lines = []
    for label, key in (("layers", "layers"), ("model", "model")):
        before, after = lat.get(f"{key}_before"), lat.get(f"{key}_after")
        if before and after is not None:
            what = "sum of layers timed alone" if key == "layers" else "end to end"
            lines.append(f"latency {label}: {before / 1e3:.1f} -> {after / 1e3:.1f} us  (ratio "
                         f"{after / before:.4f}; {what}, {where})")
    dropped = sum(len(v) for v in lat.get("dropped", {}).values())
    if dropped:
        lines.append(f"latency check: {dropped} candidate(s) measured slower than their layer were dropped ({where})")
    return lines


def per_layer_rows(before, after, layer_stats, skipped) -> tuple[dict, ...]:
    """One row per layer of `before` (an Analysis) in graph order.

    A layer's "after" cost sums the layers of `after` that descend from it: itself (kept
    name) and the nodes its splits created (`LayerStats.new_nodes`, followed through a
    pipeline's later steps). `ratio` is its MACs after / before (memory where MACs are
    unknown); pruning upstream makes it fall below 1.0 for layers not compressed themselves.
    """
    created: dict[str, list[str]] = {}
    compressed: dict[str, list] = {}
    for ls in layer_stats:
        created.setdefault(ls.name, []).extend(n for n in ls.new_nodes if n != ls.name)
        compressed.setdefault(ls.name, []).append(ls)
    reasons = {k.name: k.reason for k in skipped}
    found = {layer.name: layer for layer in after.layers}

    def descendants(name: str, seen: set) -> list[str]:
        out = [name]
        for child in created.get(name, ()):
            if child not in seen:
                seen.add(child)
                out += descendants(child, seen)
        return out

    rows = []
    for layer in before.layers:
        names = descendants(layer.name, {layer.name})
        parts = [found[n] for n in names if n in found]
        mac_after = sum(p.mac or 0 for p in parts) if layer.mac is not None and all(p.mac is not None for p in parts) else None
        mem_after = sum(p.memory for p in parts)
        steps = []
        for n in names:
            steps += compressed.get(n, [])
        if layer.mac:
            ratio = mac_after / layer.mac if mac_after is not None else None
        else:
            ratio = mem_after / layer.memory if layer.memory else None
        if steps:
            status = "compressed"
        elif ratio is not None and ratio < 1.0:
            status = "reduced"  # pruned through a neighbour: a consumer or its channel group
        elif layer.name in reasons or layer.reason:
            status = "skipped"
        else:
            status = "unchanged"
        rows.append({
            "name": layer.name, "op": layer.op,
            "mac_before": layer.mac, "mac_after": mac_after,
            "memory_before": layer.memory, "memory_after": mem_after,
            "ratio": ratio,
            "status": status,
            "schemes": [ls.scheme for ls in steps],
            "requested": [ls.requested_ratio for ls in steps],
            "reason": reasons.get(layer.name) or layer.reason,
        })
    return tuple(rows)


def describe_parameters(values: dict) -> dict:
    """JSON-safe copy of a call's parameters: paths and numbers as they are, others by repr."""
    import enum
    import numbers
    import os

    out = {}
    for key, value in values.items():
        if isinstance(value, enum.Enum):
            value = value.name
        if isinstance(value, numbers.Rational) and not isinstance(value, (bool, int)):
            value = float(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, os.PathLike):
            out[key] = os.fspath(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            out[key] = list(value)
        elif isinstance(value, dict) and all(isinstance(v, (bool, int, float, str)) for v in value.values()):
            out[key] = {str(k): v for k, v in value.items()}
        elif callable(value):
            out[key] = getattr(value, "__qualname__", None) or repr(value)
        else:
            text = repr(value)
            out[key] = text if len(text) <= 200 else f"<{type(value).__name__}>"
    return out
