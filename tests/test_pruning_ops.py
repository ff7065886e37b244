"""The open registry of per-op channel rules (`schemes/pruning/ops.py`): each op type's
propagate and shrink side by side, and `register_op` for an op the registry does not know."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from nets import Net
from onnx_compress import ir, layers
from onnx_compress.schemes.pruning import depgraph, ops


@pytest.fixture
def registry():
    """The registry, restored in place after the test."""
    saved = dict(ops.OPS)
    yield ops.OPS
    ops.OPS.clear()
    ops.OPS.update(saved)


def channel_scale_net():
    """conv1 -> com.example::ChannelScale(x, scale[1, C, 1, 1]) -> conv2 -> head."""
    n = Net()
    x = n.conv("x", 3, 8, name="conv1")
    scale = n.const(np.linspace(0.5, 1.5, 8).astype(np.float32).reshape(1, 8, 1, 1), "scale")
    n.nodes.append(helper.make_node("ChannelScale", [x, scale], ["cs_out"], name="cs", domain="com.example"))
    out = n.head(n.conv("cs_out", 8, 8, name="conv2"), 8)
    graph = helper.make_graph(
        n.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])], n.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model


def _channel_scale_propagate(walk, node, pos):
    """Input 0 and output 0 carry the same channels; input 1 holds one scale per channel."""
    if pos.tensor is node.inputs[1]:
        return "ChannelScale uses the tensor as its scale"
    walk.act("param", node, pos, slot=1, axis=1)
    other = node.inputs[0] if pos.tensor is node.outputs[0] else node.outputs[0]
    walk.visit(other, pos.axis, pos.index)
    return None


def test_a_registered_rule_lets_a_group_through_a_custom_op(registry):
    proto = channel_scale_net()
    a = layers.analyze(proto, input_shape=(1, 3, 16, 16))
    group = depgraph.build_group(a.find("conv2"), a.graph, a.shapes)
    assert group.all_locked
    assert group.reasons == {"ChannelScale node 'cs' does not propagate channels": 8}

    shrunk = []

    def shrink(cut, action, pos, idx):
        shrunk.append((action.kind, ir.node_name(action.node), idx.tolist()))
        ops.shrink_params(cut, action, pos, idx)

    assert depgraph.register_op("ChannelScale", ops.OpRule(_channel_scale_propagate, shrink)) is None
    a = layers.analyze(proto, input_shape=(1, 3, 16, 16))
    group = depgraph.build_group(a.find("conv2"), a.graph, a.shapes)
    assert not group.locked.any() and group.reasons == {}
    assert group.out_layers() == ["conv1"] and group.in_layers() == ["conv2"]

    removed = depgraph.winnow(group, np.array([1, 3]), ir.all_names(a.graph))
    assert shrunk == [("param", "cs", [1, 3])]
    assert removed["conv1"].tolist() == [1, 3]
    conv1, conv2 = a.find("conv1").node, a.find("conv2").node
    scale = next(act.node for act in group.actions if act.kind == "param").inputs[1]
    assert ir.constant_value(conv1.inputs[1]).shape == (6, 3, 3, 3)
    assert ir.constant_value(conv1.inputs[2]).shape == (6,)
    assert np.allclose(ir.constant_value(scale).reshape(-1), np.delete(np.linspace(0.5, 1.5, 8), [1, 3]))
    assert ir.constant_value(conv2.inputs[1]).shape == (8, 6, 3, 3)


def test_an_unregistered_op_locks_and_reregistering_restores_it(registry):
    n = Net()
    x = n.node("Relu", [n.conv("x", 3, 8, name="conv1")], "relu")
    proto = n.model(n.head(n.conv(x, 8, 8, name="conv2"), 8))
    relu = registry.pop("Relu")
    a = layers.analyze(proto)
    assert depgraph.build_group(a.find("conv2"), a.graph, a.shapes).reasons == {
        "Relu node 'relu' does not propagate channels": 8}
    assert depgraph.register_op("Relu", relu) is None
    group = depgraph.build_group(a.find("conv2"), a.graph, a.shapes)
    assert not group.locked.any() and group.out_layers() == ["conv1"]


def test_every_registered_op_has_both_behaviours():
    assert ops.UNARY | ops.BROADCAST | ops.REDUCE | set(ops.ALONG_AXIS) <= set(ops.OPS)
    for op_type, rule in ops.OPS.items():
        assert isinstance(rule, ops.OpRule), op_type
        assert callable(rule.propagate) and callable(rule.shrink), op_type
    # the ops whose nodes store a channel count or per-channel constants shrink them
    for op_type in ("Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Mul", "Resize", "Split",
                    "Slice", "Gather", "Reshape", "GroupNormalization"):
        assert ops.OPS[op_type].shrink is not ops.shrink_none, op_type


def test_register_op_checks_its_arguments(registry):
    with pytest.raises(TypeError, match="'rule' parameter of register_op"):
        depgraph.register_op("X", lambda w, node, pos: None)
    with pytest.raises(TypeError, match="'op_type' parameter of register_op"):
        depgraph.register_op("", ops.OPS["Relu"])
    assert depgraph.register_op("Relu", ops.OPS["Relu"]) is ops.OPS["Relu"]
