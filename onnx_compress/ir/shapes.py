"""Shapes and other questions asked of a ModelProto: static and concrete tensor shapes,
inputs fixed to given dims, inner tensors exposed as outputs (for sampling), every
(sub)graph, the default opset and the real graph inputs."""
from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import shape_inference

from ..errors import ShapeError


# ---------------------------------------------------------------------------- shapes
Shape = tuple[int, ...]


def static_shapes(proto: onnx.ModelProto, input_dims: dict[str, Shape]) -> dict[str, Shape]:
    """Concrete shapes of every tensor that shape inference can resolve.

    `input_dims` fixes the main graph's inputs. Subgraph tensors are included.
    """
    model = with_input_dims(proto, input_dims)
    del model.graph.value_info[:]
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ShapeError(f"ONNX shape inference failed on the model: {exc}") from None
    shapes: dict[str, Shape] = {}
    for g in all_graphs(model.graph):
        shapes.update(concrete_shapes(list(g.input) + list(g.output) + list(g.value_info)))
        for init in g.initializer:
            shapes[init.name] = tuple(init.dims)
    return shapes


def concrete_shapes(values) -> dict[str, Shape]:
    """{name: shape} of the ValueInfos whose every dim is a number."""
    out = {}
    for vi in values:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    return out


def with_input_dims(proto: onnx.ModelProto, input_dims: dict[str, Shape]) -> onnx.ModelProto:
    """A copy of `proto` whose main-graph inputs named in `input_dims` have those dims."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for inp in model.graph.input:
        if inp.name in input_dims:
            dims = inp.type.tensor_type.shape.dim
            del dims[:]
            for d in input_dims[inp.name]:
                dims.add().dim_value = int(d)
    return model


def expose_tensors(proto: onnx.ModelProto, wanted: dict[str, int]) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]]:
    """A copy of `proto` whose main graph also outputs the tensors `wanted` (name -> ONNX
    elem type), including tensors inside If branches and Loop/Scan bodies.

    Returns the copy and {tensor: (output name, leading dims to drop)}: a tensor inside a
    Loop/Scan body comes out stacked over the iterations (one leading dim per level); one
    inside an If branch comes out of the If when that branch ran (the other branch yields an
    empty tensor of the same type). Tensors it cannot reach are left out.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    found = _Exposer(model, wanted).expose(model.graph)
    have = {o.name for o in model.graph.output}
    for name, (out, _) in found.items():
        if out not in have:
            model.graph.output.append(_typed(out, wanted[name]) if wanted[name] else onnx.ValueInfoProto(name=out))
            have.add(out)
    return model, found


def _typed(name: str, elem: int) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, elem, None)


class _Exposer:
    """The walk of `expose_tensors` over `model` (edited in place): fresh probe names, and
    tensors brought out of If branches and Loop/Scan bodies into the graph around them."""

    def __init__(self, model: onnx.ModelProto, wanted: dict[str, int]):
        self.wanted = wanted
        graphs = list(all_graphs(model.graph))
        self.taken = {n for g in graphs for node in g.node for n in list(node.output) + list(node.input)}
        self.taken |= {v.name for g in graphs for v in list(g.input) + list(g.output)}
        self.counter = 0

    def fresh(self, base: str) -> str:
        while True:
            self.counter += 1
            name = f"{base}__probe{self.counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def expose(self, g: onnx.GraphProto) -> dict[str, tuple[str, int]]:
        """Tensors of `wanted` in `g` or below, as names available in `g` (with dims to drop)."""
        local = {n for node in g.node for n in node.output} | {v.name for v in g.input} | \
            {t.name for t in g.initializer}
        found = {name: (name, 0) for name in self.wanted if name in local}
        for node in g.node:
            for attr in node.attribute:
                if node.op_type == "If" and attr.name in ("then_branch", "else_branch"):
                    self._out_of_branch(node, attr, found)
                elif node.op_type in ("Loop", "Scan") and attr.name == "body":
                    self._out_of_body(node, attr, found)
        return found

    def _out_of_branch(self, node: onnx.NodeProto, attr: onnx.AttributeProto, found: dict) -> None:
        """Tensors of If branch `attr` as new outputs of the If; the other branch gives empty ones."""
        inner = self.expose(attr.g)
        other = next(a.g for a in node.attribute
                     if a.name == ("else_branch" if attr.name == "then_branch" else "then_branch"))
        for name, (sub_out, drop) in inner.items():
            if name in found:
                continue
            attr.g.output.append(_typed(sub_out, self.wanted[name]))
            dummy = self.fresh(name)
            empty = onnx.helper.make_tensor(dummy, self.wanted[name], [0], [])
            other.node.append(onnx.helper.make_node("Constant", [], [dummy], value=empty))
            other.output.append(_typed(dummy, self.wanted[name]))
            out = self.fresh(name)
            node.output.append(out)
            found[name] = (out, drop)

    def _out_of_body(self, node: onnx.NodeProto, attr: onnx.AttributeProto, found: dict) -> None:
        """Tensors of a Loop/Scan body as new (stacked) outputs of the node."""
        inner = self.expose(attr.g)
        for name, (sub_out, drop) in inner.items():
            if name in found:
                continue
            attr.g.output.append(_typed(sub_out, self.wanted[name]))
            out = self.fresh(name)
            node.output.append(out)
            if node.op_type == "Scan":
                for a in node.attribute:
                    if a.name == "scan_output_axes":
                        a.ints.append(0)
            found[name] = (out, drop + 1)


def all_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`g` and every If/Loop/Scan subgraph below it, outermost first."""
    yield g
    for node in g.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_graphs(attr.g)
            for sub in attr.graphs:
                yield from all_graphs(sub)



def opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset version of `proto`."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the main graph (old IR versions also list initializers)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]
