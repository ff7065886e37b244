"""One graph per step: a manual compression imports the model once for the step (plus once
before and once after, for the statistics), edits that graph in place and exports it checked
once; unchecked snapshots only where ONNX Runtime samples the partly compressed model.
(Before: channel pruning of the bundled ResNet made 23 imports and 15 checked exports.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("count_graph_work", ROOT / "tools" / "count_graph_work.py")
count_graph_work = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(count_graph_work)


@pytest.mark.parametrize("scheme", ["channel_pruning", "weight_svd", "spatial_svd"])
def test_one_import_and_one_checked_export_per_step(scheme):
    counts, stats = count_graph_work.count(ROOT / "models" / "resnet_small.onnx", scheme, 0.5,
                                           num_reconstruction_samples=100, data_aware=False)
    assert len(stats.layers) >= 5
    assert counts["graph imports"] == 3, counts  # before, the step, after
    assert counts["checked exports"] == 1, counts
    if scheme == "channel_pruning":  # one snapshot per pruned layer and per refit, for sampling
        assert len(stats.layers) <= counts["unchecked snapshots"] <= 4 * len(stats.layers), counts
    else:
        assert counts["unchecked snapshots"] == 0, counts
