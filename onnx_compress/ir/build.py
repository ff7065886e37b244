"""Small models built from scratch: a chain of nodes with seeded random constants (a layer
as the latency metric times it alone) and the Identity of one number (a session's cost)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


def chain_model(nodes: Sequence[tuple[str, Sequence, Iterable]], input_shape: Sequence[int], dtype: str,
                opset: int, *, producer: str, seed: int = 0) -> onnx.ModelProto:
    """`nodes` run in a chain from input "x" (`input_shape`, `dtype`) to output "y".

    Each node: (op type, shapes of its constant inputs after the data input (None: an
    empty optional input), attributes as (name, value) pairs). The constants are random
    (normal, times 0.1, drawn in order from a generator seeded with `seed`), named
    `n<i>.p<j>`; the nodes are `n<i>`, their outputs `n<i>.out`.
    """
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    made, inits, data = [], [], "x"
    for i, (op, shapes, attrs) in enumerate(nodes):
        inputs = [data]
        for j, shape in enumerate(shapes):
            if shape is None:
                inputs.append("")
                continue
            name = f"n{i}.p{j}"
            value = (rng.standard_normal(shape) * 0.1).astype(dtype)
            inits.append(numpy_helper.from_array(value, name))
            inputs.append(name)
        data = "y" if i == len(nodes) - 1 else f"n{i}.out"
        made.append(helper.make_node(op, inputs, [data], name=f"n{i}", **dict(attrs)))
    graph = helper.make_graph(made, "layer", [helper.make_tensor_value_info("x", elem, input_shape)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
    model.ir_version = max(4, helper.find_min_ir_version_for(opsets))
    return model


def identity_model() -> onnx.ModelProto:
    """Identity of one float: "x" -> "y", both of shape (1,); opset 13, IR version 7."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (1,))
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, (1,))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model
