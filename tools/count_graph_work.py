"""Count the whole-model analyses (graph imports) and exports a manual compression does:
`python tools/count_graph_work.py [model] [scheme] [ratio]` (default: the bundled ResNet,
channel pruning at 0.5 and weight SVD at 0.5). Issue 14's "one graph per step" measure."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import onnx_compress as oc
from onnx_compress import ir, layers

ROOT = Path(__file__).resolve().parents[1]


def count(model, scheme, ratio) -> Counter:
    counts = Counter()
    real_import, real_export = ir.import_graph, ir.graph.export
    real_checked = ir.graph.checked

    def import_graph(proto):
        counts["graph imports"] += 1
        return real_import(proto)

    def export(graph, template, *, check=True):
        counts["checked exports" if check else "unchecked snapshots"] += 1
        return real_export(graph, template, check=check)

    ir.import_graph, layers.ir.import_graph = import_graph, import_graph
    ir.export = export
    try:
        _, stats = oc.compress(model, scheme, ratio, data=ROOT / "models" / "digits32_calib.npz",
                               num_reconstruction_samples=200)
    finally:
        ir.import_graph = real_import
        ir.export = real_export
    counts["layers compressed"] = len(stats.layers)
    del real_checked
    return counts


def main(argv: list[str]) -> None:
    model = argv[0] if argv else str(ROOT / "models" / "resnet_small.onnx")
    runs = [(argv[1], float(argv[2]))] if len(argv) > 2 else [("channel_pruning", 0.5), ("weight_svd", 0.5)]
    for scheme, ratio in runs:
        print(f"{Path(model).name} {scheme} {ratio}: {dict(count(model, scheme, ratio))}")


if __name__ == "__main__":
    main(sys.argv[1:])
