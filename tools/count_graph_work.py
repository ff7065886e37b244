"""Count the whole-model analyses (graph imports) and exports a manual compression does:
`python tools/count_graph_work.py [model] [scheme] [ratio]` (default: the bundled ResNet,
channel pruning at 0.5 and weight SVD at 0.5). Issue 14's "one graph per step" measure;
tests/test_graph_work.py asserts on `count`."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import onnx_compress as oc
from onnx_compress import ir

ROOT = Path(__file__).resolve().parents[1]


def count(model, scheme: str, ratio: float, **options) -> tuple[Counter, oc.CompressionStats]:
    """(graph imports, checked exports and unchecked snapshots, the statistics) of one
    `oc.compress(model, scheme, ratio, data=the bundled calibration data, **options)`."""
    counts = Counter()
    real_import, real_export = ir.import_graph, ir.export

    def import_graph(proto):
        counts["graph imports"] += 1
        return real_import(proto)

    def export(graph, template, *, check=True):
        counts["checked exports" if check else "unchecked snapshots"] += 1
        return real_export(graph, template, check=check)

    ir.import_graph, ir.export = import_graph, export  # every caller reads them as ir.X
    try:
        options.setdefault("num_reconstruction_samples", 200)
        _, stats = oc.compress(model, scheme, ratio, data=ROOT / "models" / "digits32_calib.npz", **options)
    finally:
        ir.import_graph, ir.export = real_import, real_export
    return counts, stats


def main(argv: list[str]) -> None:
    model = argv[0] if argv else str(ROOT / "models" / "resnet_small.onnx")
    runs = [(argv[1], float(argv[2]))] if len(argv) > 2 else [("channel_pruning", 0.5), ("weight_svd", 0.5)]
    for scheme, ratio in runs:
        counts, stats = count(model, scheme, ratio)
        print(f"{Path(model).name} {scheme} {ratio}: {dict(counts)}, {len(stats.layers)} layers compressed")


if __name__ == "__main__":
    main(sys.argv[1:])
