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

    @property
    def mac_ratio(self) -> float | None:
        if not self.mac_before or self.mac_after is None:
            return None
        return self.mac_after / self.mac_before

    @property
    def memory_ratio(self) -> float:
        return self.memory_after / self.memory_before if self.memory_before else 1.0

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


def _num(x) -> str:
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
        f"MACs:   {_num(s.mac_before)} -> {_num(s.mac_after)}  (ratio {mac_ratio})",
        f"memory: {_num(s.memory_before)} -> {_num(s.memory_after)} weights  (ratio {s.memory_ratio:.4f})",
    ]
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
                f"{_num(layer.mac_before):>10} -> {_num(layer.mac_after):<9}  {layer.note}"
            )
    if s.skipped:
        lines.append("")
        lines.append("skipped:")
        lines.extend(f"  {k.name} ({k.op}): {k.reason}" for k in s.skipped)
    return "\n".join(lines)
