"""Structural checks of a loaded model, before anything else reads it.

`check_model(proto, where)` runs on every model `ir.load` returns (files and ModelProtos
alike, before normalizing) and raises ModelLoadError, one line naming the file and the
tensor or node, for a malformed proto that would otherwise fail later with a misleading
message, or pass and give a wrong answer:

* an opset (or IR version) newer than the installed onnx, or than ONNX Runtime, supports;
* an initializer whose data does not match its declared dims and type (raw_data length,
  float_data/int32_data/... count; for external data its declared length), a negative
  dim in an initializer, or in a graph input or output (-1 as the batch dim, older
  paddle2onnx's dynamic batch, is accepted), a zero or -1 dim past a graph input's batch;
* a tensor written twice (two nodes, or a node writing a graph input or an initializer),
  a node reading a tensor nothing provides, a graph output nothing produces;
* a cycle.

Subgraphs (If/Loop/Scan bodies) are checked too, with the outer scope's names visible
in them; a node's dependencies include the outer names its subgraphs read.

Cheap: one pass over nodes and tensors, no copy of the weights made into arrays (the
protobuf gives raw_data's length only through a transient bytes object per tensor).
Imports only onnx, numpy and errors; ONNX Runtime is imported lazily, and only for a
model stamped with an opset above what every supported ONNX Runtime (>= 1.17) knows.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto

from .errors import ModelLoadError

_SUBGRAPH_TYPES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
#: Opsets of the default domain that ONNX Runtime 1.17, the oldest supported, already loads.
_ORT_SAFE_OPSET = 20
_ORT_SAFE_IR = 9


# ----------------------------------------------------------------------------- entry point
def check_model(proto: onnx.ModelProto, where: str) -> None:
    """ModelLoadError naming `where` (the file, or "the given ModelProto") and the problem."""
    _check_versions(proto, where)
    _check_graph(proto.graph, where, outer=frozenset(), scope="")


# ----------------------------------------------------------------------------- versions
def _onnx_limits() -> dict[str, int]:
    limits = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version()}
    table = getattr(onnx.helper, "VERSION_TABLE", None)
    if table:
        limits["ai.onnx.ml"] = max(row[3] for row in table)
    return limits


def _check_versions(proto: onnx.ModelProto, where: str) -> None:
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(f"{where}: IR version {proto.ir_version} is newer than the installed onnx "
                             f"{onnx.__version__} supports (up to IR version {onnx.IR_VERSION}); "
                             "upgrade onnx and onnxruntime, or export with an older IR version")
    limits = _onnx_limits()
    default = None
    for entry in proto.opset_import:
        domain = entry.domain
        if domain in limits and entry.version > limits[domain]:
            raise ModelLoadError(
                f"{where}: opset {entry.version} of domain {domain or 'ai.onnx'} is newer than the installed "
                f"onnx {onnx.__version__} supports (up to opset {limits[domain]}); upgrade onnx and "
                "onnxruntime, or export with an older opset")
        if entry.version < 1 and domain in limits:
            raise ModelLoadError(f"{where}: opset version {entry.version} of domain {domain or 'ai.onnx'} "
                                 "is not a valid opset (must be >= 1)")
        if domain in ("", "ai.onnx"):
            default = entry.version
    if default is not None and (default > _ORT_SAFE_OPSET or proto.ir_version > _ORT_SAFE_IR):
        problem = _ort_refuses(max(proto.ir_version, 3), default)
        if problem is not None:
            raise ModelLoadError(f"{where}: opset {default} (IR version {proto.ir_version}) is newer than "
                                 f"{problem}; upgrade onnxruntime, or export with an older opset")


#: How the runtime room answers "does ONNX Runtime load this IR version / opset?": set by
#: `onnx_compress.runtime` when it is imported (validate sits below it and never imports
#: onnxruntime); None answers "yes".
RUNTIME_PROBE = None


def _ort_refuses(ir_version: int, opset: int) -> str | None:
    return None if RUNTIME_PROBE is None else RUNTIME_PROBE(ir_version, opset)


# ----------------------------------------------------------------------------- tensors
#: Element type -> bits per element of its packed raw_data (sub-byte types pack).
_SUB_BYTE_BITS = {getattr(TensorProto, n): b for n, b in
                  (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
                  if hasattr(TensorProto, n)}
#: Typed fields and how many of their entries one element takes (complex: two).
_FIELD_OF = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
}
_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _itemsize(data_type: int) -> int | None:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:  # undefined, string or unknown types
        return None


def _raw_bytes(data_type: int, count: int) -> int | None:
    """Bytes of `count` elements of `data_type` as raw_data (None: no fixed size)."""
    if data_type in _SUB_BYTE_BITS:
        return (count * _SUB_BYTE_BITS[data_type] + 7) // 8
    size = _itemsize(data_type)
    return None if size is None or data_type == TensorProto.STRING else count * size


def _field_entries(data_type: int, count: int) -> tuple[str, int]:
    """(typed field, entries it must hold) for `count` elements; int32_data by default."""
    if data_type in _FIELD_OF:
        field, per = _FIELD_OF[data_type]
        return field, count * per
    if data_type in _SUB_BYTE_BITS:  # packed into int32_data, 8 // bits elements each
        per = 8 // _SUB_BYTE_BITS[data_type]
        return "int32_data", (count + per - 1) // per
    return "int32_data", count


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def check_tensor(tensor: TensorProto, where: str, what: str = "initializer") -> None:
    """ModelLoadError unless `tensor`'s stored data matches its declared dims and type."""
    name = tensor.name or "(unnamed)"
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: {what} '{name}' declares a negative dim {dims}")
    if tensor.data_type == TensorProto.UNDEFINED:
        raise ModelLoadError(f"{where}: {what} '{name}' has no data type")
    count = math.prod(dims)
    shape = "x".join(map(str, dims)) or "scalar"
    kind = _type_name(tensor.data_type)
    if tensor.data_location == TensorProto.EXTERNAL:
        length = next((e.value for e in tensor.external_data if e.key == "length"), None)
        want = _raw_bytes(tensor.data_type, count)
        if length is not None and want is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ModelLoadError(f"{where}: {what} '{name}' has an invalid external data length "
                                     f"{length!r}") from None
            if declared != want:
                raise ModelLoadError(f"{where}: {what} '{name}' declares {shape} {kind} ({want} bytes) but its "
                                     f"external data length is {declared} bytes")
        return
    used = [f for f in _VALUE_FIELDS if len(getattr(tensor, f))]
    has_raw = tensor.HasField("raw_data")
    if has_raw and used:
        raise ModelLoadError(f"{where}: {what} '{name}' stores its data both in raw_data and in {used[0]}")
    if len(used) > 1:
        raise ModelLoadError(f"{where}: {what} '{name}' stores its data in several fields ({', '.join(used)})")
    if has_raw:
        want = _raw_bytes(tensor.data_type, count)
        got = len(tensor.raw_data)  # protobuf hands out a transient bytes object: no array is made
        if want is not None and got != want:
            raise ModelLoadError(f"{where}: {what} '{name}' declares {shape} {kind} ({want} bytes) but holds "
                                 f"{got} bytes of data; the file is damaged or was written wrongly")
        return
    field, want = _field_entries(tensor.data_type, count)
    got = len(getattr(tensor, used[0])) if used else 0
    if used and used[0] != field:
        raise ModelLoadError(f"{where}: {what} '{name}' of type {kind} stores its data in {used[0]}, "
                             f"expected {field}")
    if got != want:
        raise ModelLoadError(f"{where}: {what} '{name}' declares {shape} {kind} ({want} values) but holds "
                             f"{got} values")


def _check_value_info(info: onnx.ValueInfoProto, where: str, what: str) -> None:
    """Negative declared dims are refused, except -1 (and 0) as the batch dim (axis 0), the
    way older paddle2onnx wrote a dynamic batch (read as dynamic, like a named dim). In a
    graph input, -1 or 0 elsewhere is refused too: the cost model would compute with it."""
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return
    dims = info.type.tensor_type.shape.dim
    for axis, d in enumerate(dims):
        if not d.HasField("dim_value"):
            continue
        v = d.dim_value
        if v < -1 or (what == "graph input" and axis > 0 and v <= 0):
            shown = [x.dim_value if x.HasField("dim_value") else (x.dim_param or "?") for x in dims]
            problem = "a zero" if v == 0 else "a negative"
            raise ModelLoadError(f"{where}: {what} '{info.name}' declares {problem} dim {v} at axis {axis} "
                                 f"{shown}; a dynamic dim needs a name (dim_param, e.g. 'H') or no value")


# ----------------------------------------------------------------------------- graphs
def _node_label(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return f"node '{node.name}' ({node.op_type})"
    first = next((o for o in node.output if o), None)
    return f"{node.op_type} node writing '{first}'" if first else f"{node.op_type} node #{index}"


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _check_graph(graph: onnx.GraphProto, where: str, outer: frozenset[str], scope: str) -> set[str]:
    """Check one graph (and its subgraphs, recursively); return the outer-scope names it reads."""
    inside = f" in subgraph '{graph.name}' of {scope}" if scope else ""
    provided = _provided(graph, where, scope, inside)
    if not scope:
        for info in graph.output:
            _check_value_info(info, where, "graph output")
    producer = _producers(graph, where, inside, provided)
    visible = outer | provided.keys() | producer.keys()
    reads_outer: set[str] = set()
    deps: list[set[int]] = []
    for i, node in enumerate(graph.node):
        mine = set()
        for name in _node_reads(node, i, where, visible):
            if name in producer:
                mine.add(producer[name])
            elif name in provided:
                continue
            elif name in outer:
                reads_outer.add(name)
            else:
                raise ModelLoadError(f"{where}: {_node_label(node, i)}{inside} reads tensor '{name}', which no "
                                     "node, graph input or initializer provides")
        deps.append(mine)
    for info in graph.output:
        if info.name not in producer and info.name not in provided:
            if info.name in outer:
                reads_outer.add(info.name)
            else:
                raise ModelLoadError(f"{where}: graph output '{info.name}'{inside} is not produced by any node, "
                                     "graph input or initializer")
    _check_acyclic(graph, deps, where, inside)
    return reads_outer


def _provided(graph: onnx.GraphProto, where: str, scope: str, inside: str) -> dict[str, str]:
    """Name -> what provides it in this graph (an initializer or a graph input), each
    initializer's tensor checked, each main-graph input's declaration checked."""
    provided: dict[str, str] = {}
    for init in graph.initializer:
        check_tensor(init, where)
        provided[init.name] = f"initializer '{init.name}'"
    for sparse in graph.sparse_initializer:
        provided[sparse.values.name] = f"initializer '{sparse.values.name}'"
    for info in graph.input:
        if not scope:
            _check_value_info(info, where, "graph input")
        if info.name in provided and not provided[info.name].startswith("initializer"):
            raise ModelLoadError(f"{where}: graph input '{info.name}' is declared twice{inside}")
        provided.setdefault(info.name, f"graph input '{info.name}'")
    return provided


def _producers(graph: onnx.GraphProto, where: str, inside: str, provided: dict[str, str]) -> dict[str, int]:
    """Tensor -> index of the node writing it; ModelLoadError for a tensor written twice (by
    two nodes, or by a node and an initializer or graph input)."""
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                raise ModelLoadError(
                    f"{where}: tensor '{out}' is written by two nodes{inside}: "
                    f"{_node_label(graph.node[producer[out]], producer[out])} and {_node_label(node, i)}")
            if out in provided:
                raise ModelLoadError(f"{where}: {_node_label(node, i)}{inside} writes '{out}', which is also "
                                     f"the {provided[out]}")
            producer[out] = i
    return producer


def _node_reads(node: onnx.NodeProto, index: int, where: str, visible: frozenset[str] | set[str]) -> list[str]:
    """The names node `index` reads: its inputs, then what its subgraphs read from outside
    them (each subgraph checked, recursively, seeing `visible`). A Constant's value is
    checked too."""
    names = [n for n in node.input if n]
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                check_tensor(attr.t, where, f"value of {_node_label(node, index)}")
    for sub in _subgraphs(node):
        names += sorted(_check_graph(sub, where, frozenset(visible), _node_label(node, index)))
    return names


def _check_acyclic(graph: onnx.GraphProto, deps: list[set[int]], where: str, inside: str) -> None:
    """Kahn's algorithm over the node dependencies; on a cycle, name the nodes on it."""
    users: list[list[int]] = [[] for _ in deps]
    waiting = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for k in users[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                ready.append(k)
    if done == len(deps):
        return
    # walk back from a node still waiting, through producers still waiting, until one repeats
    left = {i for i, n in enumerate(waiting) if n > 0}
    path, seen, i = [], {}, min(left)
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        i = next(j for j in sorted(deps[i]) if j in left)
    cycle = path[seen[i]:][::-1]
    shown = " -> ".join(_node_label(graph.node[j], j) for j in cycle + cycle[:1])
    raise ModelLoadError(f"{where}: the graph{inside} has a cycle: {shown}")
