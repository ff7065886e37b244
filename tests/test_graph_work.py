"""One graph per step: a manual compression imports the model once for the step (plus once
before and once after, for the statistics), edits that graph in place and exports it checked
once; unchecked snapshots only where ONNX Runtime samples the partly compressed model.
(Before: channel pruning of the bundled ResNet made 23 imports and 15 checked exports.)"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import onnx_compress as oc
from onnx_compress import ir

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("scheme", ["channel_pruning", "weight_svd", "spatial_svd"])
def test_one_import_and_one_checked_export_per_step(monkeypatch, scheme):
    counts = Counter()
    real_import, real_export = ir.import_graph, ir.export

    def import_graph(proto):
        counts["imports"] += 1
        return real_import(proto)

    def export(graph, template, *, check=True):
        counts["checked" if check else "snapshots"] += 1
        return real_export(graph, template, check=check)

    monkeypatch.setattr(ir, "import_graph", import_graph)
    monkeypatch.setattr(ir, "export", export)
    _, stats = oc.compress(MODELS / "resnet_small.onnx", scheme, 0.5, data=MODELS / "digits32_calib.npz",
                           num_reconstruction_samples=100, data_aware=False)
    assert len(stats.layers) >= 5
    assert counts["imports"] == 3, counts  # before, the step, after
    assert counts["checked"] == 1, counts
    if scheme == "channel_pruning":  # one snapshot per pruned layer and per refit, for sampling
        assert len(stats.layers) <= counts["snapshots"] <= 4 * len(stats.layers), counts
    else:
        assert counts["snapshots"] == 0, counts
