"""Dependency-graph rules real graphs need: normalisations, Slice, Gather, axis ops,
Conv1D lowerings, Shape consumers, Split/Concat re-cuts (YOLO C2f) and U-Net skips.

Each graph used to lock its channel groups. Every group that is free now must winnow
exactly: with the removed channels' contribution zeroed first, the pruned model
reproduces the zeroed model's outputs.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import builders as b
from nets import Net, zero_removed_inputs
import onnx_compress as oc
from onnx_compress import ir, layers
from onnx_compress.schemes.pruning import depgraph

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


class G(Net):
    """A tiny graph builder: each call adds a node and returns its output name(s)."""

    def ints(self, *values) -> str:
        return self.const(np.array(values, np.int64))

    def op(self, op: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        name = name or self._name(op)
        outs = [f"{name}_out"] + [f"{name}_out{i}" for i in range(1, n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, c_in, c_out, k=3, name=None, kernel=None, bias=True) -> str:
        name = name or self._name("conv")
        kernel = tuple(kernel or (k, k))
        w = self.rng.normal(0, (2 / (c_in * math.prod(kernel))) ** 0.5, (c_out, c_in, *kernel))
        ins = [x, self.const(w.astype(np.float32), name + ".w")]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, c_out).astype(np.float32), name + ".b"))
        return self.op("Conv", ins, name=name, kernel_shape=list(kernel), pads=[q // 2 for q in kernel] * 2)

    def matmul(self, x, k, n, name=None) -> str:
        name = name or self._name("matmul")
        w = self.rng.normal(0, (1 / k) ** 0.5, (k, n)).astype(np.float32)
        y = self.op("MatMul", [x, self.const(w, name + ".w")], name=name)
        return self.op("Add", [y, self.const(self.rng.normal(0, 0.1, n).astype(np.float32), name + ".b")])

    def param(self, shape, low=0.5, high=1.5) -> str:
        return self.const(self.rng.uniform(low, high, shape).astype(np.float32))

    def model(self, inputs: dict, outputs, extra_inputs=()) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()]
            + list(extra_inputs),
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = onnx.shape_inference.infer_shapes(b._make_model(graph, self.opset))
        if any(not o.type.tensor_type.HasField("shape") for o in model.graph.output):
            # function ops (GroupNormalization) defeat ONNX shape inference: ask ONNX Runtime
            got = b.run(model, b.random_input(model, batch=2))
            for o, value in zip(model.graph.output, got):
                o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, list(value.shape)))
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------------------- helpers
def group_of(model, name):
    a = layers.analyze(model)
    return depgraph.build_group(a.find(name), a.graph, a.shapes)


def check_exact(model, name, seeds=(0, 1, 2), frac=0.5):
    """Winnow random sets of free root channels of `name`'s group, each after zeroing their
    contribution; the pruned model must compute the zeroed model's outputs. Returns the group."""
    group = group_of(model, name)
    free = np.flatnonzero(~group.locked)
    assert len(free) >= 1, group.describe()
    feeds = b.random_input(model, seed=3)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        n = max(1, min(len(free) - (len(free) > 1), int(round(len(free) * frac))))
        roots = np.sort(rng.choice(free, n, replace=False))
        a = layers.analyze(model)
        g = depgraph.build_group(a.find(name), a.graph, a.shapes)
        zero_removed_inputs(g, roots, a.graph)
        zeroed = ir.export(a.graph, model)
        a2 = layers.analyze(zeroed)
        g2 = depgraph.build_group(a2.find(name), a2.graph, a2.shapes)
        assert g2.size == group.size and np.array_equal(g2.locked, group.locked)
        depgraph.winnow(g2, roots, ir.all_names(a2.graph))
        pruned = ir.export(a2.graph, zeroed)
        refs, gots = b.run(zeroed, feeds), b.run(pruned, feeds)
        for ref, got in zip(refs, gots):
            assert ref.shape == got.shape, (name, seed)
            assert np.abs(ref - got).max() <= 1e-5 * max(1.0, np.abs(ref).max()), (name, seed)
        before = sum(l.mac for l in layers.analyze(zeroed).compressible)
        after = sum(l.mac for l in layers.analyze(pruned).compressible)
        assert after < before, (name, seed)
    return group


def assert_free(model, name):
    group = group_of(model, name)
    assert not group.locked.any(), group.describe()
    return check_exact(model, name)


def assert_locked(model, name, *words):
    group = group_of(model, name)
    assert group.locked.all(), group.describe()
    summary = group.lock_summary()
    for word in words:
        assert word in summary, summary
    return group


X = {"x": (2, 3, 8, 8)}


def conv_op_conv(op, *extra, c=8, opset=17, outputs=1, **attrs):
    """conv1 -> op(...) -> conv2, on an NCHW feature map."""
    g = G(opset=opset)
    y = g.op(op, [g.conv("x", 3, c, name="conv1")] + [g.const(e) if isinstance(e, np.ndarray) else e for e in extra],
             n_out=outputs, **attrs)
    y = y if outputs == 1 else y[0]
    return g.model(X, [g.conv(y, c, 4, name="conv2")])


# ----------------------------------------------------------------------- normalisation
def test_layernorm_over_spatial_axes_passes_channels():
    g = G()
    y = g.op("LayerNormalization", [g.conv("x", 3, 8, name="conv1"), g.param((8, 8)), g.param((8, 8), -1, 1)], axis=2)
    model = g.model(X, [g.conv(y, 8, 4, name="conv2")])
    assert_free(model, "conv2")


def test_layernorm_over_the_channel_axis_alone_frees_the_group_inexactly():
    """Over the last axis alone (a hidden size) the channels go with their scale and bias
    entries, the statistics then over the kept ones (tests/test_hidden_stream.py); over C, H
    and W together it still locks."""
    g = G()
    y = g.op("LayerNormalization", [g.matmul("x", 8, 12, name="fc1"), g.param(12), g.param(12)], axis=-1)
    model = g.model({"x": (2, 5, 8)}, [g.matmul(y, 12, 4, name="fc2")])
    group = group_of(model, "fc2")
    assert not group.locked.any() and not group.exact and "LayerNormalization" in group.inexact[0]
    g = G()  # NCHW, normalised over C, H and W
    y = g.op("LayerNormalization", [g.conv("x", 3, 8, name="conv1"), g.param((8, 8, 8)), g.param((8, 8, 8))], axis=1)
    assert_locked(g.model(X, [g.conv(y, 8, 4, name="conv2")]), "conv2", "normalises over the channel axis")


def _decomposed_layernorm(g, x, axes, shape):
    mean = g.op("ReduceMean", [x, g.ints(*axes)], keepdims=1)
    d = g.op("Sub", [x, mean])
    var = g.op("ReduceMean", [g.op("Pow", [d, g.const(np.float32(2))]), g.ints(*axes)], keepdims=1)
    y = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(1e-5))])])])
    return g.op("Add", [g.op("Mul", [y, g.param(shape)]), g.param(shape, -1, 1)])


def test_decomposed_layernorm_over_a_non_channel_axis_passes_and_over_channels_is_inexact():
    g = G(opset=18)
    y = _decomposed_layernorm(g, g.conv("x", 3, 8, name="conv1"), [2, 3], (8, 8))
    assert_free(g.model(X, [g.conv(y, 8, 4, name="conv2")]), "conv2")
    g = G(opset=18)
    y = _decomposed_layernorm(g, g.matmul("x", 8, 12, name="fc1"), [-1], (12,))
    model = g.model({"x": (2, 5, 8)}, [g.matmul(y, 12, 4, name="fc2")])
    group = group_of(model, "fc2")
    assert not group.locked.any() and len(group.inexact) == 1 and "ReduceMean" in group.inexact[0]
    g = G(opset=18)  # a mean over the channels that no normalisation subtracts still locks
    y = g.op("Mul", [g.matmul("x", 8, 12, name="fc1"), g.op("ReduceMean", [g.matmul("x", 8, 12), g.ints(-1)])])
    y = g.op("Add", [y, g.op("ReduceMean", [y, g.ints(-1)], keepdims=1)])
    assert_locked(g.model({"x": (2, 5, 8)}, [g.matmul(y, 12, 4, name="fc2")]), "fc2", "reduces over the channel axis")


def test_groupnorm_removes_whole_groups():
    g = G(opset=21)  # opset 18's GroupNormalization (per-group scale) is deprecated: the checker refuses it
    y = g.op("GroupNormalization", [g.conv("x", 3, 8, name="conv1"), g.param(8), g.param(8, -1, 1)], num_groups=4)
    model = g.model(X, [g.conv(y, 8, 4, name="conv2")])
    group = assert_free(model, "conv2")
    assert group.size == 4  # four groups of two channels, removed together
    assert sorted(group.positions[group.layer.node.inputs[0].name].index.tolist()) == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_groupnorm_locks_groups_cut_by_a_split():
    g = G(opset=21)
    y = g.op("GroupNormalization", [g.conv("x", 3, 12, name="conv1"), g.param(12), g.param(12)], num_groups=3)
    s0, s1 = g.op("Split", [y, g.ints(6, 6)], n_out=2, axis=1)
    model = g.model(X, [g.conv(s0, 6, 4, name="conv2"), g.conv(s1, 6, 4, name="conv3")])
    group = group_of(model, "conv2")
    # channels 0-3 are a whole norm group (one unit); 4 and 5 share theirs with conv3's channels
    assert group.size == 3 and group.locked.tolist() == [False, True, True]
    assert "GroupNormalization" in group.lock_summary()


def test_instancenorm_passes_channels_and_slices_its_parameters():
    model = conv_op_conv("InstanceNormalization", np.ones(8, np.float32) * 1.5, np.full(8, 0.2, np.float32))
    assert_free(model, "conv2")


# ----------------------------------------------------------------------------- Slice
def test_slice_on_the_channel_axis_maps_a_segment():
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 10, name="conv1")])
    s = g.op("Slice", [r, g.ints(2), g.ints(8), g.ints(1)])
    model = g.model(X, [g.conv(s, 6, 4, name="conv2"), g.conv(r, 10, 4, name="conv3")])
    group = assert_free(model, "conv2")
    assert set(group.out_layers()) == {"conv1"} and set(group.in_layers()) == {"conv2", "conv3"}
    check_exact(model, "conv3")  # removing channels before the slice moves its bounds


def test_c2f_cut_by_slices_winnows_consistently():
    g = G()
    y = g.conv(g.conv("x", 3, 8, name="stem"), 8, 8, k=1, name="cv1")
    a = g.op("Slice", [y, g.ints(0), g.ints(4), g.ints(1)])
    c = g.op("Slice", [y, g.ints(4), g.ints(INT64_MAX), g.ints(1)])
    m = g.conv(g.op("Relu", [c]), 4, 4, name="m")
    cat = g.op("Concat", [a, c, m], axis=1)
    model = g.model(X, [g.conv(cat, 12, 4, name="cv2")])
    for name in ("cv1", "m", "cv2"):
        assert_free(model, name)


@pytest.mark.parametrize("starts,ends,steps", [([-1], [INT64_MIN], [-1]), ([6], [1], [-1]), ([-7], [-1], [1])])
def test_slice_reversed_or_negative_bounds(starts, ends, steps):
    g = G()
    s = g.op("Slice", [g.conv("x", 3, 8, name="conv1"), g.ints(*starts), g.ints(*ends), g.ints(1), g.ints(*steps)])
    width = len(range(8)[slice(starts[0], ends[0], steps[0])])
    assert_free(g.model(X, [g.conv(s, width, 4, name="conv2")]), "conv2")


def test_slice_on_a_spatial_axis_passes_channels():
    g = G()
    s = g.op("Slice", [g.conv("x", 3, 8, name="conv1"), g.ints(1, 0), g.ints(-1, 6), g.ints(2, 3)])
    assert_free(g.model(X, [g.conv(s, 8, 4, name="conv2")]), "conv2")


def test_slice_with_attributes_opset9():
    g = G(opset=9)
    s = g.op("Slice", [g.conv("x", 3, 10, name="conv1")], starts=[1], ends=[7], axes=[1])
    assert_free(g.model(X, [g.conv(s, 6, 4, name="conv2")]), "conv2")


def test_slice_with_a_step_on_the_channel_axis_locks():
    g = G()
    s = g.op("Slice", [g.conv("x", 3, 8, name="conv1"), g.ints(0), g.ints(8), g.ints(1), g.ints(2)])
    assert_locked(g.model(X, [g.conv(s, 4, 4, name="conv2")]), "conv2", "Slice", "step 2")


# ---------------------------------------------------------------------------- Gather
def test_gather_on_the_channel_axis_maps_indices():
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 8, name="conv1")])
    s = g.op("Gather", [r, g.ints(7, 0, 2, 5, 3)], axis=1)
    model = g.model(X, [g.conv(s, 5, 4, name="conv2"), g.conv(r, 8, 4, name="conv3")])
    assert_free(model, "conv2")
    assert_free(model, "conv3")


def test_gather_picking_one_channel_locks_only_that_channel():
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 8, name="conv1")])
    gate = g.op("Unsqueeze", [g.op("Gather", [r, g.const(np.array(5, np.int64))], axis=1), g.ints(1)])
    model = g.model(X, [g.conv(g.op("Mul", [r, gate]), 8, 4, name="conv2")])
    group = group_of(model, "conv2")
    assert group.locked.tolist() == [False] * 5 + [True] + [False] * 2
    assert "Gather" in group.lock_summary()
    check_exact(model, "conv2")


def test_gather_repeating_a_channel_locks_it():
    g = G()
    s = g.op("Gather", [g.conv("x", 3, 6, name="conv1"), g.ints(0, 1, 1, 4)], axis=1)
    model = g.model(X, [g.conv(s, 4, 4, name="conv2")])
    group = group_of(model, "conv2")
    assert group.locked.tolist() == [False, True, True, False], group.describe()
    check_exact(model, "conv2")


def test_gather_on_a_spatial_axis_passes_channels():
    model = conv_op_conv("Gather", np.array([0, 2, 5, 7], np.int64), axis=3)
    assert_free(model, "conv2")


def test_embedding_table_columns_are_sliced():
    g = G()
    table = g.param((11, 8), -1, 1)
    e = g.op("Gather", [table, "ids"], axis=0)
    graph_in = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])
    model = g.model({}, [g.matmul(g.op("Relu", [e]), 8, 4, name="fc")], [graph_in])
    group = group_of(model, "fc")
    assert not group.locked.any(), group.describe()
    rng = np.random.default_rng(0)
    a = layers.analyze(model)
    grp = depgraph.build_group(a.find("fc"), a.graph, a.shapes)
    zero_removed_inputs(grp, np.array([1, 4, 6]), a.graph)
    zeroed = ir.export(a.graph, model)
    a2 = layers.analyze(zeroed)
    depgraph.winnow(depgraph.build_group(a2.find("fc"), a2.graph, a2.shapes), np.array([1, 4, 6]),
                    ir.all_names(a2.graph))
    pruned = ir.export(a2.graph, zeroed)
    feeds = {"ids": rng.integers(0, 11, (2, 5)).astype(np.int64)}
    np.testing.assert_allclose(b.run(pruned, feeds)[0], b.run(zeroed, feeds)[0], atol=1e-5)


# ------------------------------------------------------------------ ops along an axis
AXIS_OPS = [
    ("Softmax", (), {"axis": 3}, 17),
    ("Softmax", (), {"axis": 2}, 11),  # opset < 13: over axes 2 and 3
    ("LogSoftmax", (), {"axis": -2}, 17),
    ("Hardmax", (), {"axis": -1}, 17),
    ("LpNormalization", (), {"axis": 2}, 17),
    ("CumSum", (np.array(2, np.int64),), {}, 17),
    ("ReduceMax", (np.array([3], np.int64),), {"keepdims": 1}, 18),
    ("ReduceSum", (np.array([2, 3], np.int64),), {"keepdims": 1}, 13),
    ("ArgMax", (), {"axis": 2, "keepdims": 1}, 17),
    ("TopK", (np.array([3], np.int64),), {"axis": 3}, 17),
]


@pytest.mark.parametrize("op,extra,attrs,opset", AXIS_OPS, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_ops_along_a_non_channel_axis_pass_channels(op, extra, attrs, opset):
    g = G(opset=opset)
    y = g.op(op, [g.conv("x", 3, 8, name="conv1")] + [g.const(e) for e in extra], n_out=2 if op == "TopK" else 1,
             **attrs)
    y = y[0] if op == "TopK" else y
    if op == "ArgMax":
        y = g.op("Cast", [y], to=TensorProto.FLOAT)
    assert_free(g.model(X, [g.conv(y, 8, 4, name="conv2")]), "conv2")


@pytest.mark.parametrize("op,attrs,opset,words", [
    ("Softmax", {"axis": 1}, 17, "normalises over the channel axis"),
    ("Softmax", {"axis": 1}, 11, "normalises over the channel axis"),
    ("LogSoftmax", {"axis": -3}, 17, "normalises over the channel axis"),
    ("ArgMax", {"axis": 1, "keepdims": 1}, 17, "reduces over the channel axis"),
    ("TopK", {"axis": 1}, 17, "along the channel axis"),
])
def test_ops_along_the_channel_axis_lock_with_reason(op, attrs, opset, words):
    g = G(opset=opset)
    r = g.conv("x", 3, 8, name="conv1")
    y = g.op(op, [r] + ([g.ints(8)] if op == "TopK" else []), n_out=2 if op == "TopK" else 1, **attrs)
    y = y[0] if op == "TopK" else y
    if op == "ArgMax":
        y = g.op("Cast", [y], to=TensorProto.FLOAT)
    model = g.model(X, [g.conv(r, 8, 4, name="conv2"), g.op("Relu", [y])])
    assert_locked(model, "conv2", op, words)


# ------------------------------------------------------------ moved channel axes
def test_conv1d_lowered_through_unsqueeze_and_squeeze():
    g = G()
    u = g.op("Unsqueeze", ["x", g.ints(2)])
    y = g.op("Relu", [g.op("Squeeze", [g.conv(u, 3, 8, kernel=(1, 3), name="conv1"), g.ints(2)])])
    y = g.op("Mul", [y, g.param((8, 1))])  # per-channel scale on [N, C, L]
    y = g.op("Squeeze", [g.conv(g.op("Unsqueeze", [y, g.ints(2)]), 8, 6, kernel=(1, 3), name="conv2"), g.ints(2)])
    assert_free(g.model({"x": (2, 3, 16)}, [y]), "conv2")


def test_keras_conv1d_from_tf2onnx():
    """[N, L, C] -> Unsqueeze -> Transpose to NCHW -> Conv -> Transpose back -> Squeeze -> bias on the last axis."""
    g = G()

    def conv1d(x, c_in, c_out, name):
        u = g.op("Transpose", [g.op("Unsqueeze", [x, g.ints(1)])], perm=[0, 3, 1, 2])
        y = g.op("Transpose", [g.conv(u, c_in, c_out, kernel=(1, 3), name=name, bias=False)], perm=[0, 2, 3, 1])
        return g.op("Add", [g.op("Squeeze", [y, g.ints(1)]), g.param(c_out, -1, 1)])

    y = g.op("Relu", [conv1d("x", 3, 8, "conv1")])
    y = g.op("Mul", [y, g.param((1, 1, 8))])
    model = g.model({"x": (2, 16, 3)}, [conv1d(y, 8, 6, "conv2")])
    assert_free(model, "conv2")


def test_nhwc_transposes_around_convs_with_per_channel_constants():
    g = G()
    y = g.op("Transpose", [g.conv(g.op("Transpose", ["x"], perm=[0, 3, 1, 2]), 3, 8, name="conv1")], perm=[0, 2, 3, 1])
    y = g.op("Add", [g.op("Mul", [y, g.param(8)]), g.param((1, 1, 1, 8), -1, 1)])  # [C] and [1,1,1,C] on NHWC
    y = g.op("Transpose", [y], perm=[0, 3, 1, 2])
    y = g.op("Mul", [g.op("Add", [y, g.param((8, 1, 1), -1, 1)]), g.param((1, 8, 1, 1))])  # [C,1,1], [1,C,1,1]
    y = g.op("Add", [y, g.param(8)])  # [C] broadcasts on W (8 wide), not on the channels
    assert_free(g.model({"x": (2, 8, 8, 3)}, [g.conv(y, 8, 4, name="conv2")]), "conv2")


def test_reshape_regrouping_the_axes_before_the_channels():
    """[N, C, H, W] -> [N, H*W, C] (tokens) -> [N, H, W, C] with an explicit C in a constant target."""
    g = G()
    t = g.op("Transpose", [g.op("Reshape", [g.conv("x", 3, 8, name="conv1"), g.ints(2, 8, -1)])], perm=[0, 2, 1])
    t = g.op("Reshape", [t, g.ints(2, 8, 8, 8)])
    assert_free(g.model(X, [g.matmul(t, 8, 4, name="fc")]), "fc")


def test_concat_of_a_tensor_with_itself_makes_units():
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 8, name="conv1")])
    model = g.model(X, [g.conv(g.op("Concat", [r, r], axis=1), 16, 4, name="conv2")])
    group = assert_free(model, "conv2")
    assert group.size == 8 and group.unit_of.tolist() == list(range(8)) * 2


# ------------------------------------------------------------------ Shape consumers
def test_shape_of_the_batch_dim_feeding_a_flatten_does_not_lock():
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 4, name="conv1")])
    n = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [r]), g.const(np.array(0, np.int64))], axis=0), g.ints(0)])
    flat = g.op("Reshape", [r, g.op("Concat", [n, g.ints(-1)], axis=0)])
    w = g.param((10, 4 * 64), -0.1, 0.1)
    y = g.op("Gemm", [flat, w, g.param(10)], name="fc", transB=1)
    model = g.model(X, [y])
    group = assert_free(model, "fc")
    assert group.size == 4


def test_shape_used_for_its_own_reshape_keeps_channels_tied():
    """x.view(x.size(0), x.size(1), -1).transpose(1, 2) @ W: the target reads the channel count itself."""
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 8, name="conv1")])
    shape = g.op("Shape", [r])
    target = g.op("Concat", [g.op("Gather", [shape, g.ints(0, 1)], axis=0), g.ints(-1)], axis=0)
    t = g.op("Transpose", [g.op("Reshape", [r, target])], perm=[0, 2, 1])  # [N, H*W, C]
    nh = g.op("Gather", [shape, g.ints(0, 2)], axis=0)  # N and H: not the channel count
    c = g.op("Gather", [g.op("Shape", [t]), g.ints(2)], axis=0)  # t's own channel count
    t = g.op("Reshape", [t, g.op("Concat", [nh, g.ints(-1), c], axis=0)])  # [N, H, W, C]
    model = g.model(X, [g.matmul(t, 8, 4, name="fc")])
    assert_free(model, "fc")


def test_channel_count_reaching_another_reshape_locks():
    g = G()
    r = g.op("Relu", [g.conv("x", 3, 8, name="conv1")])
    c = g.op("Gather", [g.op("Shape", [r]), g.ints(1)], axis=0)
    z = g.conv("x", 3, 8, name="conv3")
    z = g.op("Reshape", [z, g.op("Concat", [g.ints(2), c, g.ints(-1)], axis=0)])
    model = g.model(X, [g.conv(r, 8, 4, name="conv2"), z])
    assert_locked(model, "conv2", "channel count", "Reshape")


# ------------------------------------------------------------- C2f and U-Net blocks
def c2f_model(n_bottlenecks=2, shortcut=True, c=8):
    """YOLOv8 C2f: cv1 -> Split in halves -> bottlenecks on the second half (residual) ->
    Concat(both halves, every bottleneck output) -> cv2, with SiLU activations."""
    g = G()

    def silu(t):
        return g.op("Mul", [t, g.op("Sigmoid", [t])])

    x = silu(g.conv("x", 3, 2 * c, name="stem"))
    y = silu(g.conv(x, 2 * c, 2 * c, k=1, name="cv1"))
    a, h = g.op("Split", [y, g.ints(c, c)], n_out=2, axis=1)
    parts = [a, h]
    for i in range(n_bottlenecks):
        t = silu(g.conv(parts[-1], c, c, name=f"m{i}.cv1"))
        t = silu(g.conv(t, c, c, name=f"m{i}.cv2"))
        parts.append(g.op("Add", [parts[-1], t]) if shortcut else t)
    cat = g.op("Concat", parts, axis=1)
    out = silu(g.conv(cat, (2 + n_bottlenecks) * c, 2 * c, k=1, name="cv2"))
    return g.model({"x": (2, 3, 8, 8)}, [g.conv(out, 2 * c, 4, name="head")])


@pytest.mark.parametrize("shortcut", [True, False])
def test_c2f_block_groups_are_consistent(shortcut):
    model = c2f_model(shortcut=shortcut)
    a = layers.analyze(model)
    locked = total = 0
    for layer in a.compressible:
        if layer.name == "stem":
            continue  # reads the graph input
        group = check_exact(model, layer.name)
        locked += int(group.locked.sum())
        total += group.size
    assert locked <= 0.1 * total
    group = group_of(model, "cv2")
    if shortcut:  # the second half and the bottleneck outputs add up channel by channel: one unit each
        assert group.size == 16 and not group.locked.any()
        rows = group.positions[group.layer.node.inputs[0].name].index
        assert sorted(rows[8].tolist()) == [8, 16, 24]


def unet_model():
    """Encoder, MaxPool, deeper encoder, Resize to the skip's size (sizes from Shape), Concat skip."""
    g = G()
    e1 = g.op("Relu", [g.conv("x", 3, 8, name="enc1")])
    e2 = g.op("Relu", [g.conv(g.op("MaxPool", [e1], kernel_shape=[2, 2], strides=[2, 2]), 8, 12, name="enc2")])
    e3 = g.op("Relu", [g.conv(g.op("MaxPool", [e2], kernel_shape=[2, 2], strides=[2, 2]), 12, 16, name="enc3")])

    def up(deep, skip):
        sizes = g.op("Concat", [g.op("Slice", [g.op("Shape", [deep]), g.ints(0), g.ints(2)]),
                                g.op("Slice", [g.op("Shape", [skip]), g.ints(2), g.ints(4)])], axis=0)
        return g.op("Resize", [deep, "", "", sizes], mode="nearest")

    d2 = g.op("Relu", [g.conv(g.op("Concat", [up(e3, e2), e2], axis=1), 28, 12, name="dec2")])
    d1 = g.op("Relu", [g.conv(g.op("Concat", [up(d2, e1), e1], axis=1), 20, 8, name="dec1")])
    return g.model({"x": (2, 3, 16, 16)}, [g.conv(d1, 8, 2, k=1, name="head")])


def test_unet_skip_concat_groups_are_free():
    model = unet_model()
    a = layers.analyze(model)
    names = [l.name for l in a.compressible if l.name != "enc1"]
    locked = [n for n in names if group_of(model, n).locked.any()]
    assert len(locked) <= len(names) // 5, locked
    for name in names:
        check_exact(model, name)


@pytest.mark.parametrize("make", [c2f_model, unet_model], ids=["c2f", "unet"])
def test_channel_pruning_api_on_blocks(make):
    model = make()
    x = b.random_input(model, seed=0, batch=8)
    out, stats = oc.compress(model, "channel_pruning", 0.5, data=x, num_reconstruction_samples=200)
    assert stats.mac_after < stats.mac_before
    for skipped in stats.skipped:  # only the first conv (it reads the graph input) or layers pruned with a group
        assert "graph input" in skipped.reason or "already pruned with the group" in skipped.reason, skipped
    assert len(stats.layers) >= 3
    ref = b.run(model, x)[0]
    assert b.run(out, x)[0].shape == ref.shape


def test_a_group_that_still_locks_names_its_reason():
    g = G()
    y = g.op("LRN", [g.conv("x", 3, 8, name="conv1")], size=3)
    assert_locked(g.model(X, [g.conv(y, 8, 4, name="conv2")]), "conv2", "LRN", "does not propagate channels")
