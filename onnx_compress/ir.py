"""Graph IR: loading, saving, traversal and rewriting of ONNX graphs.

This is the only module that imports onnx-graphsurgeon. Everything above it sees
`gs.Graph`/`gs.Node` objects through the small vocabulary defined here: load a model,
walk its nodes (subgraphs included), read a constant weight wherever the exporter put it,
replace a node by a chain of new nodes, export a checked and shape-inferred ModelProto,
and save it atomically (with external data for large models).

Import direction: ir imports only onnx, onnx-graphsurgeon, numpy and errors.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from .errors import ModelLoadError, ShapeError

log = logging.getLogger(__name__)

#: Protobuf cannot serialise a message over 2 GiB; above this we go through files.
PROTO_LIMIT = 2**31 - 2**20
_SUBGRAPH_ATTRS = ("then_branch", "else_branch", "body")

Graph = gs.Graph
Node = gs.Node


# ----------------------------------------------------------------------------- loading
def load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Return a private copy of `model` (a path or a ModelProto), external data loaded.

    Raises ModelLoadError naming the file when it is missing, not ONNX or truncated.
    """
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        where = "the given ModelProto"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        where = str(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such model file")
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except Exception as exc:  # protobuf DecodeError, missing external data, ...
            raise ModelLoadError(
                f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
                "is the file complete and an .onnx model?"
            ) from None
    else:
        raise ModelLoadError(
            f"model must be a path or an onnx.ModelProto, got {type(model).__name__}"
        )
    if not proto.opset_import or not proto.graph.node:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph nodes or no opset import)")
    return proto


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at `path` keeps any tensor in external data files."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def import_graph(proto: onnx.ModelProto) -> gs.Graph:
    """Import a ModelProto into a graph-surgeon Graph (a new object graph)."""
    try:
        return gs.import_onnx(proto)
    except Exception as exc:
        raise ModelLoadError(f"cannot import the ONNX graph: {type(exc).__name__}: {exc}") from None


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


# --------------------------------------------------------------------------- traversal
def subgraphs(node: gs.Node) -> list[gs.Graph]:
    """Graphs held by a node's attributes (If branches, Loop/Scan bodies)."""
    out = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, gs.Graph))
    return out


def iter_nodes(graph: gs.Graph) -> Iterator[tuple[gs.Node, gs.Graph]]:
    """Every node with its owning graph, in graph order, descending into subgraphs."""
    for node in graph.nodes:
        yield node, graph
        for sub in subgraphs(node):
            yield from iter_nodes(sub)


def node_name(node: gs.Node) -> str:
    """A node's name, or its first output's name when the exporter left it empty."""
    if node.name:
        return node.name
    return node.outputs[0].name if node.outputs else ""


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of `tensor` when it is constant, wherever the exporter put it.

    Handles initializers, outputs of Constant nodes (attribute `value`, `value_float(s)`,
    `value_int(s)`) and chains of Identity over either. Returns None otherwise.
    """
    seen = 0
    while tensor is not None and seen < 16:
        seen += 1
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        if len(tensor.inputs) != 1:
            return None
        producer = tensor.inputs[0]
        if producer.op == "Identity":
            tensor = producer.inputs[0] if producer.inputs else None
            continue
        if producer.op != "Constant":
            return None
        attrs = producer.attrs
        if "value" in attrs:
            val = attrs["value"]
            return np.asarray(val.values if isinstance(val, gs.Constant) else val)
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        return None
    return None


# --------------------------------------------------------------------------- rewriting
@dataclass(frozen=True)
class NodeSpec:
    """One node of a replacement chain.

    The chain's data flows through input 0 of each node; `params` are constant inputs
    that follow it (None leaves an optional input empty). `attrs` are ONNX attributes.
    """

    op: str
    params: tuple[np.ndarray | None, ...] = ()
    attrs: dict = field(default_factory=dict)
    extra_inputs: tuple[int, ...] = ()  # indices of the original node's inputs to append


def unique_name(base: str, taken: set[str]) -> str:
    """A node/tensor name derived from `base` that is not in `taken` (which it updates)."""
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def all_names(graph: gs.Graph) -> set[str]:
    """Every node and tensor name in `graph` and its subgraphs."""
    names: set[str] = set()
    for node, _ in iter_nodes(graph):
        names.add(node.name)
        names.update(t.name for t in node.inputs + node.outputs)
    return names


def replace_with_chain(graph: gs.Graph, node: gs.Node, specs: list[NodeSpec], base: str,
                       taken: set[str]) -> list[str]:
    """Replace `node` in `graph` by the chain `specs`; return the new node names.

    The chain reads `node`'s first input and writes `node`'s outputs, so consumers are
    untouched. New nodes are named `base.0`, `base.1`, ...; their constants and the
    intermediate tensors get unique names derived from them.
    """
    data = node.inputs[0]
    original_inputs = list(node.inputs)
    outputs = list(node.outputs)
    node.outputs.clear()
    node.inputs.clear()
    names = []
    for i, spec in enumerate(specs):
        name = unique_name(f"{base}.{i}", taken)
        names.append(name)
        inputs = [data]
        for j, p in enumerate(spec.params):
            if p is None:
                inputs.append(gs.Variable.empty())
            else:
                inputs.append(gs.Constant(unique_name(f"{name}.param{j}", taken),
                                          np.ascontiguousarray(p)))
        inputs.extend(original_inputs[k] for k in spec.extra_inputs)
        last = i == len(specs) - 1
        outs = outputs if last else [gs.Variable(unique_name(f"{name}.out", taken),
                                                 dtype=outputs[0].dtype)]
        new = gs.Node(op=spec.op, name=name, attrs=dict(spec.attrs), inputs=inputs, outputs=outs)
        graph.nodes.append(new)
        data = outs[0]
    return names


def set_input(node: gs.Node, index: int, value: np.ndarray, name: str) -> None:
    """Make input `index` of `node` the constant `value` (a new tensor named `name`)."""
    node.inputs[index] = gs.Constant(name, np.ascontiguousarray(value))


def append_input(node: gs.Node, value: np.ndarray, name: str) -> None:
    """Append the constant `value` as a new last input of `node`."""
    node.inputs.append(gs.Constant(name, np.ascontiguousarray(value)))


def insert_gather(graph: gs.Graph, node: gs.Node, slot: int, indices: np.ndarray, axis: int,
                  name: str, taken: set[str]) -> str:
    """Feed input `slot` of `node` through Gather(indices, axis); return the Gather's name.

    Only `node` sees the gathered tensor; other consumers keep the original.
    """
    src = node.inputs[slot]
    name = unique_name(name, taken)
    out = gs.Variable(unique_name(f"{name}.out", taken), dtype=src.dtype)
    idx = gs.Constant(unique_name(f"{name}.indices", taken), np.asarray(indices, dtype=np.int64))
    graph.nodes.append(gs.Node("Gather", name=name, attrs={"axis": int(axis)}, inputs=[src, idx], outputs=[out]))
    node.inputs[slot] = out
    return name


def forget_shape(tensor: gs.Tensor) -> None:
    """Drop a variable's recorded shape (it changed); export re-infers it."""
    if isinstance(tensor, gs.Variable):
        tensor.shape = None


# ----------------------------------------------------------------------------- export
def export(graph: gs.Graph, template: onnx.ModelProto, *, check: bool = True) -> onnx.ModelProto:
    """Clean up, sort and export `graph`; restore `template`'s model-level fields.

    Keeps the template's IR version, opset imports, producer, metadata and docs, then runs
    onnx.checker and shape inference (models over 2 GiB are checked when saved instead).
    """
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
    graph.toposort(recurse_subgraphs=True)
    proto = gs.export_onnx(graph, do_type_check=False)
    proto.ir_version = template.ir_version
    del proto.opset_import[:]
    proto.opset_import.extend(template.opset_import)
    for key in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(proto, key, getattr(template, key))
    del proto.metadata_props[:]
    proto.metadata_props.extend(template.metadata_props)
    if not proto.functions and template.functions:
        proto.functions.extend(template.functions)
    if check and proto.ByteSize() < PROTO_LIMIT:
        proto = checked(proto)
    return proto


def checked(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnx.checker and return the shape-inferred model."""
    onnx.checker.check_model(proto)
    try:
        return shape_inference.infer_shapes(proto)
    except Exception as exc:  # custom domains can defeat inference; the model is still valid
        log.debug("shape inference skipped: %s", exc)
        return proto


# ---------------------------------------------------------------------------- shapes
Shape = tuple[int, ...]


def static_shapes(proto: onnx.ModelProto, input_dims: dict[str, Shape]) -> dict[str, Shape]:
    """Concrete shapes of every tensor that shape inference can resolve.

    `input_dims` fixes the main graph's inputs. Subgraph tensors are included.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for inp in model.graph.input:
        if inp.name in input_dims:
            dims = inp.type.tensor_type.shape.dim
            want = input_dims[inp.name]
            del dims[:]
            for d in want:
                dims.add().dim_value = int(d)
    del model.graph.value_info[:]
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ShapeError(f"ONNX shape inference failed on the model: {exc}") from None
    shapes: dict[str, Shape] = {}

    def collect(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
        for init in g.initializer:
            shapes[init.name] = tuple(init.dims)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        collect(sub)

    collect(model.graph)
    return shapes


# ------------------------------------------------------------------------------ saving
def save(proto: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None) -> None:
    """Write `proto` to `path` atomically: all files appear together or none does.

    Models over 2 GiB (or `external=True`) are written with their weights in one external
    data file `<name>.data` beside the model. The model is checked by path before it is
    moved into place, so nothing invalid or partial is ever left at `path`.
    """
    path = Path(path)
    big = proto.ByteSize() >= PROTO_LIMIT
    if external is None:
        external = big
    parent = path.parent if str(path.parent) else Path(".")
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnx_compress_", dir=parent))
    try:
        tmp = tmpdir / path.name
        data_name = path.name + ".data"
        if external:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(proto, str(tmp))
        if big:
            onnx.checker.check_model(str(tmp))
        if external:
            os.replace(tmpdir / data_name, parent / data_name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
