"""Graphs as onnx-graphsurgeon objects: import, traversal, constants, rewriting, export.

Everything above the IR sees `gs.Graph`/`gs.Node` objects through the small vocabulary
defined here: import a model, walk its nodes (subgraphs included), read a constant weight
wherever the exporter put it, replace a node by a chain of new nodes, and export a
checked and shape-inferred ModelProto.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import ModelLoadError
from .tensors import _all_tensors, file_source, to_array, too_big

log = logging.getLogger(__name__)

Graph = gs.Graph
Node = gs.Node


# ----------------------------------------------------------------------------- import
def import_graph(proto: onnx.ModelProto) -> gs.Graph:
    """Import a ModelProto into a graph-surgeon Graph (a new object graph)."""
    try:
        return gs.import_onnx(proto)
    except Exception as exc:
        raise ModelLoadError(f"cannot import the ONNX graph: {type(exc).__name__}: {exc}") from None


def _values(const: gs.Constant) -> np.ndarray:
    """A Constant's values; file-backed ones are read from their file each time and not
    kept (so they are exported as the same file reference and copied when saved)."""
    lazy = const._values
    if type(lazy) is LazyValues and file_source(lazy.tensor) is not None:
        return to_array(lazy.tensor)
    return np.asarray(const.values)


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
            return _values(tensor)
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
            return _values(val) if isinstance(val, gs.Constant) else np.asarray(val)
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
    """Make input `index` of `node` the constant `value` (a new tensor named `name`; a 0-D
    value stays 0-D, which np.ascontiguousarray would make 1-D)."""
    node.inputs[index] = gs.Constant(name, np.require(value, requirements="C"))


def append_input(node: gs.Node, value: np.ndarray, name: str) -> None:
    """Append the constant `value` as a new last input of `node`."""
    node.inputs.append(gs.Constant(name, np.require(value, requirements="C")))


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


def private_producer(graph: gs.Graph, consumer: gs.Node, slot: int, taken: set[str],
                     through: tuple[str, ...] = ("Cast", "Identity")) -> gs.Node:
    """Give `consumer` its own copy of the node that computes its input `slot` (and of the
    `through` nodes in between), so that editing the copy changes no other consumer (a
    Reshape target Concat an exporter shares between layers). Returns the copied node."""
    chain, t = [], consumer.inputs[slot]
    while t.inputs and t.inputs[0].op in through:
        chain.append(t.inputs[0])
        t = t.inputs[0].inputs[0]
    chain.append(t.inputs[0])
    prev, base = None, None
    for node in reversed(chain):
        inputs = list(node.inputs)
        if prev is not None:
            inputs[0] = prev
        name = unique_name(f"{node_name(node)}.copy", taken)
        prev = gs.Variable(unique_name(f"{name}.out", taken), dtype=node.outputs[0].dtype)
        copy = gs.Node(node.op, name=name, attrs=dict(node.attrs), inputs=inputs, outputs=[prev])
        graph.nodes.append(copy)
        base = base or copy
    consumer.inputs[slot] = prev
    return base


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
    if check and not too_big(proto):
        proto = checked(proto)
    return proto


def checked(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnx.checker and return the shape-inferred model."""
    # The checker refuses absolute locations and looks for relative ones from the current
    # folder: file-backed tensors pass as empty ones here; `save` checks them by path.
    backed = [(t, list(t.dims), [(e.key, e.value) for e in t.external_data])
              for t in _all_tensors(proto) if file_source(t)]
    try:
        for tensor, _, _ in backed:
            del tensor.external_data[:]
            del tensor.dims[:]
            tensor.dims.append(0)
            tensor.data_location = onnx.TensorProto.DEFAULT
        onnx.checker.check_model(proto)
    finally:
        for tensor, dims, entries in backed:
            del tensor.dims[:]
            tensor.dims.extend(dims)
            del tensor.external_data[:]
            for key, value in entries:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
    try:
        return shape_inference.infer_shapes(proto)
    except Exception as exc:  # custom domains can defeat inference; the model is still valid
        log.debug("shape inference skipped: %s", exc)
        return proto
