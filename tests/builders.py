"""Tiny ONNX model builders used by the test-suite (seeded, deterministic)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEFAULT_OPSET = 17
DEFAULT_IR_VERSION = 8  # what _ir_version_for(17) returns; onnxruntime 1.31 loads IR 3..12.


def _ir_version_for(opset: int) -> int:
    """Smallest IR version that officially supports the default-domain opset (IR >= 4: initializers need not be inputs)."""
    return max(4, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


def _make_model(graph: onnx.GraphProto, opset: int = DEFAULT_OPSET, ir_version: int | None = None) -> onnx.ModelProto:
    """Wrap a graph in a ModelProto with an explicit opset and IR version."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="onnx_compress-tests",
    )
    model.ir_version = ir_version if ir_version is not None else _ir_version_for(opset)
    return model


def _elem_type(dtype: np.dtype | type) -> int:
    """Map a numpy dtype to the ONNX TensorProto element type."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _randn(rng: np.random.Generator, shape: Sequence[int], dtype=np.float32, scale: float = 0.5) -> np.ndarray:
    """Standard-normal random array scaled and cast to dtype."""
    return (rng.standard_normal(tuple(shape)) * scale).astype(dtype)


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    """Create an initializer tensor from a numpy array."""
    return numpy_helper.from_array(np.ascontiguousarray(arr), name=name)


def _const_node(name: str, arr: np.ndarray, node_name: str | None = None) -> onnx.NodeProto:
    """Constant node producing `name` with attribute `value` = arr."""
    return helper.make_node(
        "Constant",
        [],
        [name],
        name=node_name if node_name is not None else f"{name}_const",
        value=numpy_helper.from_array(np.ascontiguousarray(arr), name=f"{name}_value"),
    )


def _conv_out_dim(size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    """Spatial output size of a convolution along one axis."""
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def conv_model(
    n_in: int = 4,
    n_out: int = 6,
    kernel: Sequence[int] = (3, 3),
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    group: int = 1,
    bias: bool = True,
    auto_pad: str | None = None,
    in_spatial: Sequence[int] = (9, 10),
    batch: int = 2,
    dtype: np.dtype | type = np.float32,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """Single Conv node `conv` (1-D or 2-D), initializer weight `W`, optional bias `B` (ORT CPU: float32/float16 only)."""
    kernel = tuple(int(k) for k in kernel)
    in_spatial = tuple(int(s) for s in in_spatial)
    nd = len(kernel)
    if len(in_spatial) != nd:
        raise ValueError(f"in_spatial {in_spatial} must have {nd} element(s) to match kernel {kernel}")
    if n_in % group or n_out % group:
        raise ValueError("n_in and n_out must be divisible by group")
    rng = np.random.default_rng(seed)
    w = _randn(rng, (n_out, n_in // group, *kernel), dtype)
    inits = [_init("W", w)]
    inputs = ["x", "W"]
    if bias:
        inits.append(_init("B", _randn(rng, (n_out,), dtype)))
        inputs.append("B")

    attrs: dict = {"kernel_shape": list(kernel), "group": int(group)}
    if strides is not None:
        attrs["strides"] = [int(s) for s in strides]
    if dilations is not None:
        attrs["dilations"] = [int(d) for d in dilations]
    if pads is not None:
        attrs["pads"] = [int(p) for p in pads]
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    node = helper.make_node("Conv", inputs, ["y"], name="conv", **attrs)

    et = _elem_type(dtype)
    batch_dim: int | str = "N" if dynamic_batch else batch
    x_info = helper.make_tensor_value_info("x", et, [batch_dim, n_in, *in_spatial])
    # Output shape: computed for explicit pads; left symbolic for SAME_* / VALID auto_pad.
    if auto_pad in (None, "NOTSET"):
        s = list(strides) if strides is not None else [1] * nd
        d = list(dilations) if dilations is not None else [1] * nd
        p = list(pads) if pads is not None else [0] * (2 * nd)
        out_sp: list[int | str] = [
            _conv_out_dim(in_spatial[i], kernel[i], s[i], d[i], p[i], p[i + nd]) for i in range(nd)
        ]
    else:
        out_sp = [f"o{i}" for i in range(nd)]
    y_info = helper.make_tensor_value_info("y", et, [batch_dim, n_out, *out_sp])
    graph = helper.make_graph([node], "conv_graph", [x_info], [y_info], initializer=inits)
    return _make_model(graph, opset)


def gemm_model(
    k: int = 12,
    n: int = 7,
    m: int = 5,
    trans_a: int = 0,
    trans_b: int = 0,
    alpha: float = 1.0,
    beta: float = 1.0,
    bias: bool = True,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
) -> onnx.ModelProto:
    """Single Gemm node `gemm`: y = alpha * A' @ B' + beta * C with constant B and optional C of shape (n,)."""
    rng = np.random.default_rng(seed)
    b = _randn(rng, (n, k) if trans_b else (k, n))
    inits = [_init("B", b)]
    inputs = ["x", "B"]
    if bias:
        inits.append(_init("C", _randn(rng, (n,))))
        inputs.append("C")
    node = helper.make_node(
        "Gemm", inputs, ["y"], name="gemm",
        alpha=float(alpha), beta=float(beta), transA=int(trans_a), transB=int(trans_b),
    )
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, m] if trans_a else [m, k])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([node], "gemm_graph", [x_info], [y_info], initializer=inits)
    return _make_model(graph, opset)


def matmul_model(k: int = 12, n: int = 7, lead: Sequence[int] = (2, 3), seed: int = 0) -> onnx.ModelProto:
    """Single MatMul node `matmul`: x (*lead, k) @ constant W (k, n)."""
    rng = np.random.default_rng(seed)
    w = _randn(rng, (k, n))
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")
    lead = [int(v) for v in lead]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, k])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, n])
    graph = helper.make_graph([node], "matmul_graph", [x_info], [y_info], initializer=[_init("W", w)])
    return _make_model(graph, DEFAULT_OPSET)


def cnn_model(seed: int = 0, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Small CNN: conv1-relu-conv2(s2)-relu-conv3(1x1)-relu-dw(depthwise)-GAP-Flatten-fc, input (N,1,12,12)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv1.weight", _randn(rng, (8, 1, 3, 3))),
        _init("conv1.bias", _randn(rng, (8,))),
        _init("conv2.weight", _randn(rng, (16, 8, 3, 3))),
        _init("conv2.bias", _randn(rng, (16,))),
        _init("conv3.weight", _randn(rng, (16, 16, 1, 1))),
        _init("conv3.bias", _randn(rng, (16,))),
        _init("dw.weight", _randn(rng, (16, 1, 3, 3))),
        _init("dw.bias", _randn(rng, (16,))),
        _init("fc.weight", _randn(rng, (10, 16))),
        _init("fc.bias", _randn(rng, (10,))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "conv3.weight", "conv3.bias"], ["c3"], name="conv3",
                         kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "dw.weight", "dw.bias"], ["c4"], name="dw",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16),
        helper.make_node("GlobalAveragePool", ["c4"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "cnn_graph", [x_info], [y_info], initializer=inits)
    return _make_model(graph, opset)


def constant_node_weights_model(seed: int = 0) -> onnx.ModelProto:
    """conv1-relu-conv2-GAP-Flatten-fc where every weight/bias is a Constant node output; no initializers."""
    rng = np.random.default_rng(seed)
    nodes = [
        _const_node("conv1.weight", _randn(rng, (8, 3, 3, 3))),
        _const_node("conv1.bias", _randn(rng, (8,))),
        _const_node("conv2.weight", _randn(rng, (16, 8, 3, 3))),
        _const_node("conv2.bias", _randn(rng, (16,))),
        _const_node("fc.weight", _randn(rng, (16, 10))),
        _const_node("fc.bias", _randn(rng, (10,))),
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "const_weights_graph", [x_info], [y_info])
    return _make_model(graph, DEFAULT_OPSET)


def if_branch_model(seed: int = 0) -> onnx.ModelProto:
    """If `branch` on bool `cond`: then_conv uses an outer-scope weight, else_conv a subgraph initializer; then Relu."""
    rng = np.random.default_rng(seed)
    w_outer = _randn(rng, (8, 3, 3, 3))
    b_outer = _randn(rng, (8,))
    w_inner = _randn(rng, (8, 3, 3, 3))
    b_inner = _randn(rng, (8,))
    out_shape = [1, 8, 8, 8]

    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "then_conv.weight", "then_conv.bias"], ["then_out"],
                          name="then_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "then_graph",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, out_shape)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "else_conv.weight", "else_conv.bias"], ["else_out"],
                          name="else_conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "else_graph",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, out_shape)],
        initializer=[_init("else_conv.weight", w_inner), _init("else_conv.bias", b_inner)],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["branch_out"], name="branch",
                         then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Relu", ["branch_out"], ["y"], name="relu"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
        helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
    ]
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(
        nodes, "if_graph", inputs, [y_info],
        initializer=[_init("then_conv.weight", w_outer), _init("then_conv.bias", b_outer)],
    )
    return _make_model(graph, DEFAULT_OPSET)


def empty_names_model(seed: int = 0) -> onnx.ModelProto:
    """conv-relu-conv-GAP-Flatten-Gemm chain where every node name is the empty string."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", _randn(rng, (8, 3, 3, 3))),
        _init("b1", _randn(rng, (8,))),
        _init("w2", _randn(rng, (16, 8, 3, 3))),
        _init("b2", _randn(rng, (16,))),
        _init("wfc", _randn(rng, (10, 16))),
        _init("bfc", _randn(rng, (10,))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name=""),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name=""),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name=""),
        helper.make_node("Flatten", ["gap"], ["flat"], name="", axis=1),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["y"], name="", transB=1),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "empty_names_graph", [x_info], [y_info], initializer=inits)
    return _make_model(graph, DEFAULT_OPSET)


def opset9_model(seed: int = 0, ir_version: int = 4) -> onnx.ModelProto:
    """Opset-9 model: (conv_a-bn-relu-conv_b) + conv_c summed, Flatten, Gemm with C; input (1,3,8,8)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv_a.weight", _randn(rng, (4, 3, 3, 3))),
        _init("conv_a.bias", _randn(rng, (4,))),
        _init("bn.scale", (1.0 + 0.1 * rng.standard_normal(4)).astype(np.float32)),
        _init("bn.bias", _randn(rng, (4,), scale=0.1)),
        _init("bn.mean", _randn(rng, (4,), scale=0.1)),
        _init("bn.var", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        _init("conv_b.weight", _randn(rng, (6, 4, 3, 3))),
        _init("conv_b.bias", _randn(rng, (6,))),
        _init("conv_c.weight", _randn(rng, (6, 3, 1, 1))),
        _init("conv_c.bias", _randn(rng, (6,))),
        _init("fc.weight", _randn(rng, (6 * 8 * 8, 5), scale=0.05)),
        _init("fc.bias", _randn(rng, (5,))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_a.weight", "conv_a.bias"], ["ca"], name="conv_a",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        # Opset-9 BatchNormalization: no spatial / is_test attributes, single output in inference.
        helper.make_node("BatchNormalization", ["ca", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn_out"],
                         name="bn", epsilon=1e-5),
        helper.make_node("Relu", ["bn_out"], ["ra"], name="relu"),
        helper.make_node("Conv", ["ra", "conv_b.weight", "conv_b.bias"], ["cb"], name="conv_b",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "conv_c.weight", "conv_c.bias"], ["cc"], name="conv_c",
                         kernel_shape=[1, 1]),
        helper.make_node("Sum", ["cb", "cc"], ["s"], name="sum"),
        helper.make_node("Flatten", ["s"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])
    graph = helper.make_graph(nodes, "opset9_graph", [x_info], [y_info], initializer=inits)
    return _make_model(graph, 9, ir_version=ir_version)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a ModelProto on the onnxruntime CPU provider and return all outputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_input(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Random feeds for every non-initializer graph input (symbolic dims -> batch, bool -> True)."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype == np.bool_:
            feeds[vi.name] = np.full(shape, True, dtype=np.bool_)
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
