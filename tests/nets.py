"""Small CNN graphs with the patterns channel pruning must winnow through, built in code."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A tiny graph builder: each method adds nodes and returns the output tensor name."""

    def __init__(self, seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.opset, self.n = [], [], opset, 0

    def _name(self, op: str) -> str:
        self.n += 1
        return f"{op.lower()}{self.n}"

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("k")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or self._name(op)
        self.nodes.append(helper.make_node(op, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def conv(self, x, c_in, c_out, k=3, stride=1, group=1, name=None, bias=True) -> str:
        name = name or self._name("conv")
        w = self.rng.normal(0, (2 / (c_in // group * k * k)) ** 0.5, (c_out, c_in // group, k, k))
        ins = [x, self.const(w.astype(np.float32), name + ".w")]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, c_out).astype(np.float32), name + ".b"))
        return self.node("Conv", ins, name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2,
                         group=group)

    def bn(self, x, c) -> str:
        name = self._name("bn")
        p = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c), self.rng.normal(0, 0.1, c),
             self.rng.uniform(0.5, 1.5, c)]
        ins = [x] + [self.const(v.astype(np.float32), f"{name}.{i}") for i, v in enumerate(p)]
        return self.node("BatchNormalization", ins, name)

    def gemm(self, x, k, n, name=None) -> str:
        name = name or self._name("gemm")
        w = self.rng.normal(0, (1 / k) ** 0.5, (n, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, n).astype(np.float32)
        return self.node("Gemm", [x, self.const(w, name + ".w"), self.const(b, name + ".b")], name, transB=1)

    def head(self, x, c, classes=10) -> str:
        x = self.node("GlobalAveragePool", [x])
        x = self.node("Flatten", [x], axis=1)
        return self.gemm(x, c, classes, name="fc")

    def model(self, out: str, in_shape=("N", 3, 16, 16)) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [in_shape[0], 10])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def concat_net(seed=0) -> onnx.ModelProto:
    """DenseNet/Inception-style: two branches concatenated, then a dense concat with the input."""
    n = Net(seed)
    x = n.node("Relu", [n.conv("x", 3, 8, name="stem")])
    a = n.node("Relu", [n.conv(x, 8, 6, name="branch_a")])
    b = n.node("Relu", [n.conv(x, 8, 4, k=1, name="branch_b")])
    cat = n.node("Concat", [a, b], axis=1)
    y = n.node("Relu", [n.conv(cat, 10, 8, name="mix")])
    dense = n.node("Concat", [x, y], axis=1)  # 16 channels
    z = n.node("Relu", [n.conv(dense, 16, 12, name="after_dense")])
    return n.model(n.head(z, 12))


def resize_net(seed=0) -> onnx.ModelProto:
    """U-Net/FPN-style: downsample, upsample with Resize, concat with the skip."""
    n = Net(seed)
    skip = n.node("Relu", [n.conv("x", 3, 8, name="enc1")])
    down = n.node("MaxPool", [skip], kernel_shape=[2, 2], strides=[2, 2])
    deep = n.node("Relu", [n.conv(down, 8, 12, name="enc2")])
    scales = n.const(np.array([1, 1, 2, 2], np.float32), "up.scales")
    up = n.node("Resize", [deep, "", scales], mode="nearest")
    cat = n.node("Concat", [up, skip], axis=1)  # 20 channels
    y = n.node("Relu", [n.conv(cat, 20, 8, name="dec")])
    pad = n.node("Pad", [y, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pad.pads")])
    z = n.node("Relu", [n.conv(pad, 8, 8, name="post")])
    return n.model(n.head(z, 8))


def silu_se_net(seed=0) -> onnx.ModelProto:
    """Depthwise + squeeze-excite with SiLU (x * sigmoid(x)) and HardSigmoid gates, residual."""
    n = Net(seed)
    x = n.bn(n.conv("x", 3, 8, name="stem"), 8)
    x = n.node("Mul", [x, n.node("Sigmoid", [x])])  # SiLU
    e = n.node("HardSwish", [n.bn(n.conv(x, 8, 16, k=1, name="expand"), 16)])
    d = n.node("HardSwish", [n.bn(n.conv(e, 16, 16, group=16, name="dw"), 16)])
    s = n.node("GlobalAveragePool", [d])
    s = n.node("Relu", [n.conv(s, 16, 4, k=1, name="se_fc1")])
    s = n.node("HardSigmoid", [n.conv(s, 4, 16, k=1, name="se_fc2")])
    d = n.node("Mul", [d, s])
    p = n.bn(n.conv(d, 16, 8, k=1, name="project"), 8)
    y = n.node("Add", [x, p])
    z = n.node("Relu", [n.conv(y, 8, 8, name="last")])
    return n.model(n.head(z, 8))


def grouped_net(seed=0) -> onnx.ModelProto:
    """A grouped conv (group=2) between ordinary convs."""
    n = Net(seed)
    x = n.node("Relu", [n.conv("x", 3, 8, name="c1")])
    g = n.node("Relu", [n.conv(x, 8, 8, group=2, name="grouped")])
    y = n.node("Relu", [n.conv(g, 8, 8, name="c3")])
    return n.model(n.head(y, 8))


def calib(model: onnx.ModelProto, n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


def zero_removed_inputs(group, roots, graph) -> None:
    """Zero the weights through which the removed root channels `roots` of a channel group
    reach every consumer layer, so that winnowing them must leave the outputs unchanged."""
    from onnx_compress import ir

    taken = ir.all_names(graph)
    for act in group.actions:
        if act.kind != "in":
            continue
        idx = group.positions[act.tensor].removed(roots)
        w = ir.constant_value(act.node.inputs[1]).copy()
        if act.node.op == "Conv" or (act.node.op == "Gemm" and act.node.attrs.get("transB", 0)):
            w[:, idx] = 0
        else:
            w[idx] = 0
        ir.set_input(act.node, 1, w, ir.unique_name("zeroed", taken))
