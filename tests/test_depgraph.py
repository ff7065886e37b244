"""Channel dependency graph and winnowing: exact on the reference models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import builders as b
from nets import zero_removed_inputs
from onnx_compress import ir, layers
from onnx_compress.schemes.pruning import depgraph

MODELS = Path(__file__).resolve().parents[1] / "models"


def zero_then_winnow(proto, name, frac=0.5, seed=0):
    """Zero the contribution of random free channels in every consumer, then winnow them.

    Returns (zeroed model, winnowed model, group); the two must compute the same outputs.
    """
    a = layers.analyze(proto)
    group = depgraph.build_group(a.find(name), a.graph, a.shapes)
    free = np.flatnonzero(~group.locked)
    if len(free) < 2:
        return None
    roots = np.sort(np.random.default_rng(seed).choice(free, max(1, int(len(free) * frac)), replace=False))
    zero_removed_inputs(group, roots, a.graph)
    zeroed = ir.export(a.graph, proto)
    a2 = layers.analyze(zeroed)
    group2 = depgraph.build_group(a2.find(name), a2.graph, a2.shapes)
    depgraph.winnow(group2, roots, ir.all_names(a2.graph))
    return zeroed, ir.export(a2.graph, zeroed), group


@pytest.mark.parametrize("model", ["resnet_small", "mobilenet_small", "vgg_small"])
def test_winnowing_is_exact_for_every_group(model):
    proto = ir.load(MODELS / f"{model}.onnx")
    feeds = {"input": np.load(MODELS / "digits32_test.npz")["input"][:4]}
    pruned_any = 0
    for layer in layers.analyze(proto).compressible:
        result = zero_then_winnow(proto, layer.name)
        if result is None:
            continue
        zeroed, pruned, group = result
        ref, got = b.run(zeroed, feeds)[0], b.run(pruned, feeds)[0]
        assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max(), layer.name
        before = sum(l.mac for l in layers.analyze(zeroed).compressible)
        after = sum(l.mac for l in layers.analyze(pruned).compressible)
        assert after < before
        pruned_any += 1
    assert pruned_any >= 6


def test_residual_group_ties_the_whole_stream():
    proto = ir.load(MODELS / "resnet_small.onnx")
    a = layers.analyze(proto)
    group = depgraph.build_group(a.find("/layer2/conv1/Conv"), a.graph, a.shapes)
    assert set(group.in_layers()) == {"/layer1/conv1/Conv", "/layer2/conv1/Conv", "/layer2/shortcut/shortcut.0/Conv"}
    assert set(group.out_layers()) == {"/stem/stem.0/Conv", "/layer1/conv2/Conv"}
    assert not group.locked.any()
    assert "channel group of '/layer2/conv1/Conv'" in group.describe()


def test_graph_input_locks_channels_with_reason():
    a = layers.analyze(b.cnn_model())
    group = depgraph.build_group(a.find("conv1"), a.graph, a.shapes)
    assert group.locked.all() and "graph input" in group.lock_summary()


def test_unknown_op_locks_its_group():
    model = b.cnn_model()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "LRN"  # mixes channels: not in the table
    relu.attribute.add().CopyFrom(__import__("onnx").helper.make_attribute("size", 3))
    a = layers.analyze(model)
    group = depgraph.build_group(a.find("conv2"), a.graph, a.shapes)
    assert group.locked.all()
    assert "LRN node" in group.lock_summary() and "does not propagate channels" in group.lock_summary()
