"""Graph IR: loading, saving, traversal and rewriting of ONNX graphs.

This is the only module that imports onnx-graphsurgeon. Everything above it sees
`gs.Graph`/`gs.Node` objects through the small vocabulary defined here: load a model,
walk its nodes (subgraphs included), read a constant weight wherever the exporter put it,
replace a node by a chain of new nodes, export a checked and shape-inferred ModelProto,
and save it atomically (with external data for large models).

Models too big for one protobuf (2 GiB) are *file-backed*: `load` leaves their external
weights on disk, with absolute locations; their values are read through memory maps and
`save` copies them into the new data file in chunks, so memory stays far below the
model's size. The protos stay valid ONNX (onnx.checker, shape inference); ONNX Runtime
needs them saved first (`runtime.session` does that), since it refuses absolute paths.

Import direction: ir imports only onnx, onnx-graphsurgeon, numpy, errors and progress.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx import shape_inference
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.logger import G_LOGGER

from . import progress, validate
from .errors import ModelLoadError, ParameterError, ShapeError

log = logging.getLogger(__name__)

#: Protobuf cannot serialise a message over 2 GiB; above this we go through files.
PROTO_LIMIT = 2**31 - 2**20
#: Models whose tensor data reaches this are loaded file-backed (weights left on disk).
FILE_BACKED_LIMIT = PROTO_LIMIT
#: Chunk size for copying file-backed weights into a saved model's data file.
COPY_CHUNK = 64 * 2**20
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
            proto = onnx.load(str(path), load_external_data=False)
            _check_external_locations(proto, path)
            stored = sum(_nbytes(t) for t in _all_tensors(proto) if _is_external(t))
            if stored and stored + path.stat().st_size >= FILE_BACKED_LIMIT:
                log.info("%s: %.2f GB of external weights stay on disk (file-backed)", path, stored / 1e9)
                _anchor_external_data(proto, path)
            else:
                onnx.load_external_data_for_model(proto, str(path.parent))
        except ModelLoadError:
            raise
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
    validate.check_model(proto, where)
    return normalize(proto)


# ------------------------------------------------------------------------ normalizing
#: Ops never folded into constants: quantized weights stay quantized (a DequantizeLinear
#: of an int8 weight is what a QDQ model is made of), random ops stay random.
_NO_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal",
                      "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})
#: A folded tensor larger than this stays computed (an Expand or Tile of a small constant).
FOLD_LIMIT = 64 * 2**20


def normalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model in the form every later step expects, with the same outputs for every input.

    * IR version 3 and older (every initializer also listed in `graph.input`, as older
      exporters and the ONNX model zoo write them): initializers are taken out of the
      inputs and the IR version raised to what the opsets need (at least 4), so that new
      initializers written by a rewrite keep the model valid.
    * Constants reaching layers indirectly: `Constant` nodes (paddle2onnx stores every
      weight there) and every tensor computed only from constants (Reshape, Unsqueeze,
      Cast, Transpose, Concat ... of constants, e.g. paddle2onnx's conv bias
      `Add(Conv(x), Reshape(Constant[C], Constant[4]))` or a Caffe-era
      `Mul(x, Unsqueeze(b[C]))`) are folded into initializers by onnx-graphsurgeon, and
      `Shape` of a statically known shape into its value. Node names are kept, so layer
      names stay stable. Quantize/Dequantize nodes are not folded.
    * Initializers of If/Loop/Scan subgraphs move to the main graph (the subgraph reads
      them by their outer-scope names), so auto mode swaps them like any other weight.
    Models whose weights stay on disk (file-backed) are only given the IR change.
    """
    _raise_ir_version(proto)
    if is_file_backed(proto):
        return proto
    if _foldable(proto.graph):
        proto = _folded(proto)
    _hoist_subgraph_initializers(proto)
    return proto


def _folded(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with its constant subgraphs folded (unchanged, with a warning, when folding fails)."""
    try:
        graph = gs.import_onnx(_with_inferred_shapes(proto))
        outputs = {t.name for t in graph.outputs}

        def exclude(node: gs.Node) -> bool:
            return (node.op in _NO_FOLD or (node.domain or "") not in ("", "ai.onnx")
                    or any(t.name in outputs for t in node.outputs))

        graph.toposort(recurse_subgraphs=True)
        severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.ERROR  # its per-node notes are not ours
        import onnxruntime  # what graph-surgeon folds with: its optimizer's warnings are not the user's

        onnxruntime.set_default_logger_severity(3)
        try:
            graph.fold_constants(fold_shapes=True, recurse_subgraphs=True, partitioning="basic",
                                 size_threshold=FOLD_LIMIT, should_exclude_node=exclude)
        finally:
            G_LOGGER.severity = severity
            onnxruntime.set_default_logger_severity(2)  # ORT's default
        folded = export(graph, proto, check=False)
        declared = {vi.name for vi in proto.graph.value_info}  # keep only the exporter's own
        kept = [vi for vi in folded.graph.value_info if vi.name in declared]
        del folded.graph.value_info[:]
        folded.graph.value_info.extend(kept)
        if not too_big(folded):
            onnx.checker.check_model(folded)
    except Exception as exc:  # the unfolded model is still right; folding only helps
        log.warning("constant folding skipped (%s: %s); layers fed through computed constants "
                    "may be refused", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return proto
    return folded


def _hoist_subgraph_initializers(proto: onnx.ModelProto) -> None:
    """Move the initializers of If/Loop/Scan subgraphs into the main graph, where the
    subgraph still reads them (outer-scope names) and auto mode can swap them like any
    other weight. Only names used once in the whole model move."""
    defined = Counter(name for g in all_graphs(proto.graph)
                      for name in ([t.name for t in g.initializer] + [v.name for v in g.input]
                                   + [o for node in g.node for o in node.output]))
    for g in all_graphs(proto.graph):
        if g is proto.graph:
            continue
        outputs = {o.name for o in g.output}  # ORT refuses a subgraph returning an outer-scope value
        stay = [t for t in g.initializer if defined[t.name] != 1 or t.name in outputs]
        move = [t for t in g.initializer if defined[t.name] == 1 and t.name not in outputs]
        if move:
            proto.graph.initializer.extend(move)
            del g.initializer[:]
            g.initializer.extend(stay)


def _with_inferred_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with ONNX's inferred shapes as value_info, so that graph-surgeon can fold
    `Shape` (and Shape -> Gather/Slice of the static dims of a dynamic shape: TorchScript's
    chunk bounds) of tensors whose shapes the exporter did not record."""
    try:
        return shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - folding still works where shapes are declared
        log.debug("shape inference before folding failed: %s", exc)
        return proto


def _raise_ir_version(proto: onnx.ModelProto) -> None:
    if proto.ir_version >= 4:
        return

    for g in all_graphs(proto.graph):
        inits = {t.name for t in g.initializer}
        keep = [i for i in g.input if i.name not in inits]
        if len(keep) != len(g.input):
            del g.input[:]
            g.input.extend(keep)
    try:
        need = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    except Exception:
        need = 4
    log.info("IR version %d model: initializers taken out of the graph inputs, IR version raised to %d",
             proto.ir_version, max(4, need))
    proto.ir_version = max(4, need)


def _foldable(graph: onnx.GraphProto) -> bool:
    """Whether the graph (or a subgraph) has a Constant node, a Shape node, or a node whose
    inputs are all constants: anything `normalize` would fold."""
    for g in all_graphs(graph):
        const = {t.name for t in g.initializer}
        for node in g.node:
            if node.op_type in ("Constant", "Shape"):
                return True
            if (node.op_type not in _NO_FOLD and node.input and node.domain in ("", "ai.onnx")
                    and all(not n or n in const for n in node.input)):
                return True
    return False


# ----------------------------------------------------------------- file-backed tensors
def _graph_tensors(graph: onnx.GraphProto, attributes: bool = True) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        yield from _node_tensors(node, attributes)


def _node_tensors(node: onnx.NodeProto, attributes: bool) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attributes and attr.HasField("t"):
            yield attr.t
        if attributes:
            yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g, attributes)
        for sub in attr.graphs:
            yield from _graph_tensors(sub, attributes)


def _all_tensors(proto: onnx.ModelProto, attributes: bool = True) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of `proto`: initializers and (with `attributes`) attribute tensors,
    in subgraphs and functions too (the tensors onnx's external-data helpers visit)."""
    yield from _graph_tensors(proto.graph, attributes)
    for func in proto.functions:
        for node in func.node:
            yield from _node_tensors(node, attributes)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Point `tensor` at `length` bytes at `offset` of `location` (other keys kept)."""
    kept = [(k, v) for k, v in _external_entries(tensor).items() if k not in ("location", "offset", "length")]
    del tensor.external_data[:]
    for key, value in [("location", location), ("offset", str(offset)), ("length", str(length))] + kept:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's data, from its dims (no copy of the data is made)."""
    if _is_external(tensor):
        length = _external_entries(tensor).get("length")
        if length:
            return int(length)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # string, undefined or unknown types
        itemsize = 1
    return math.prod(tensor.dims) * itemsize


def _external_target(tensor: onnx.TensorProto, path: Path, base: Path) -> Path:
    """The file holding external tensor `tensor` of the model at `path` (`base`: its folder,
    resolved); ModelLoadError unless it is a plain file location inside that folder."""
    location = _external_entries(tensor).get("location", "")
    rel = Path(location)
    if not location or rel.is_absolute() or ".." in rel.parts or "\0" in location:
        raise ModelLoadError(f"{path}: tensor '{tensor.name}' has an invalid external data location "
                             f"{location!r} (must be a relative path inside the model's folder)")
    target = base / rel
    real = Path(os.path.realpath(target))
    if real != target:  # a symbolic link at the file or at a folder on the way
        raise ModelLoadError(f"{path}: external data location {location!r} of tensor '{tensor.name}' is or "
                             "passes through a symbolic link; external data must be a plain file inside "
                             "the model's folder")
    return target


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data that would be read from outside the model's folder: absolute
    locations, `..`, and symbolic links anywhere on the way (resolved, then compared)."""
    base = Path(os.path.realpath(path.parent if str(path.parent) else "."))
    for tensor in _all_tensors(proto):
        if _is_external(tensor):
            _external_target(tensor, path, base)


def external_files(path: str | os.PathLike) -> list[Path]:
    """The external data files the model at `path` reads (resolved; [] when it has none or
    cannot be read): the files a run must never write to."""
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    base = Path(os.path.realpath(path.parent if str(path.parent) else "."))
    found = set()
    for tensor in _all_tensors(proto):
        if _is_external(tensor):
            try:
                found.add(_external_target(tensor, path, base))
            except ModelLoadError:
                continue
    return sorted(found)


def _anchor_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Make `proto`'s external locations absolute (file-backed), after checking them."""
    base = Path(os.path.realpath(path.parent if str(path.parent) else "."))
    sizes: dict[Path, int] = {}
    for tensor in _all_tensors(proto):
        if not _is_external(tensor):
            continue
        entries = _external_entries(tensor)
        location = entries.get("location", "")
        target = _external_target(tensor, path, base)
        if target not in sizes:
            if not target.is_file():
                raise ModelLoadError(f"{path}: external data file {location} (tensor '{tensor.name}') is missing")
            sizes[target] = target.stat().st_size
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else _nbytes(tensor)
        if offset + length > sizes[target]:
            raise ModelLoadError(f"{path}: external data of tensor '{tensor.name}' runs past the end of "
                                 f"{location}; is the file complete?")
        _set_external(tensor, str(target), offset, length)


def file_source(tensor: onnx.TensorProto) -> tuple[str, int, int] | None:
    """(absolute path, offset, length) of a file-backed tensor's data; None otherwise."""
    if not _is_external(tensor):
        return None
    entries = _external_entries(tensor)
    location = entries.get("location", "")
    if not os.path.isabs(location):
        return None
    length = int(entries["length"]) if entries.get("length") else _nbytes(tensor)
    return location, int(entries.get("offset") or 0), length


def is_file_backed(proto: onnx.ModelProto) -> bool:
    """Whether some tensor of `proto` still lives in a file (see `load`)."""
    return any(file_source(t) is not None for t in _all_tensors(proto))


def model_bytes(proto: onnx.ModelProto) -> int:
    """Size of `proto` as files: the protobuf plus the tensor data kept in external files."""
    return proto.ByteSize() + sum(_nbytes(t) for t in _all_tensors(proto) if _is_external(t))


def too_big(proto: onnx.ModelProto) -> bool:
    """Whether `proto` is too big to serialise as one protobuf (2 GiB).

    Counts the tensor data held in memory first, so a huge model is recognised without
    serialising it (ByteSize does).
    """
    inline = sum(_nbytes(t) for t in _all_tensors(proto) if not _is_external(t))
    return inline >= PROTO_LIMIT or proto.ByteSize() >= PROTO_LIMIT


_MAPPABLE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
             onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
             onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _mapped(tensor: onnx.TensorProto) -> np.ndarray | None:
    """A file-backed tensor's values as a copy-on-write memory map; None when it cannot be."""
    src = file_source(tensor)
    if src is None or tensor.data_type not in _MAPPABLE:
        return None
    location, offset, length = src
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    shape = tuple(int(d) for d in tensor.dims)
    count = math.prod(shape)
    if count * dtype.itemsize != length:
        return None
    if count * dtype.itemsize < 2**20:  # small: read it
        return np.fromfile(location, dtype=dtype, count=count, offset=offset).reshape(shape)
    # A plain ndarray view of the map; writes stay private to this process.
    return np.asarray(np.memmap(location, dtype=dtype, mode="c", offset=offset, shape=shape))


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of `tensor`, file-backed ones included (memory-mapped where they can be;
    onnx.numpy_helper.to_array refuses their absolute locations)."""
    src = file_source(tensor)
    if src is None:
        return onnx.numpy_helper.to_array(tensor)
    mapped = _mapped(tensor)
    if mapped is not None:
        return mapped
    location, offset, length = src
    with open(location, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    loaded = onnx.TensorProto()
    loaded.CopyFrom(tensor)  # no data: it is in the file
    del loaded.external_data[:]
    loaded.data_location = onnx.TensorProto.DEFAULT
    loaded.raw_data = data
    return onnx.numpy_helper.to_array(loaded)


def _values(const: gs.Constant) -> np.ndarray:
    """A Constant's values; file-backed ones are read from their file each time and not
    kept (so they are exported as the same file reference and copied when saved)."""
    lazy = const._values
    if type(lazy) is LazyValues and file_source(lazy.tensor) is not None:
        return to_array(lazy.tensor)
    return np.asarray(const.values)


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
    taken = {n for g in all_graphs(model.graph) for node in g.node for n in list(node.output) + list(node.input)}
    taken |= {v.name for g in all_graphs(model.graph) for v in list(g.input) + list(g.output)}
    counter = [0]

    def fresh(base: str) -> str:
        while True:
            counter[0] += 1
            name = f"{base}__probe{counter[0]}"
            if name not in taken:
                taken.add(name)
                return name

    def typed(name: str, elem: int) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, elem, None)

    def expose(g: onnx.GraphProto) -> dict[str, tuple[str, int]]:
        """Tensors of `wanted` in `g` or below, as names available in `g` (with dims to drop)."""
        local = {n for node in g.node for n in node.output} | {v.name for v in g.input} | \
            {t.name for t in g.initializer}
        found = {name: (name, 0) for name in wanted if name in local}
        for node in g.node:
            for attr in node.attribute:
                if node.op_type == "If" and attr.name in ("then_branch", "else_branch"):
                    inner = expose(attr.g)
                    other = next(a.g for a in node.attribute
                                 if a.name == ("else_branch" if attr.name == "then_branch" else "then_branch"))
                    for name, (sub_out, drop) in inner.items():
                        if name in found:
                            continue
                        attr.g.output.append(typed(sub_out, wanted[name]))
                        dummy = fresh(name)
                        empty = onnx.helper.make_tensor(dummy, wanted[name], [0], [])
                        other.node.append(onnx.helper.make_node("Constant", [], [dummy], value=empty))
                        other.output.append(typed(dummy, wanted[name]))
                        out = fresh(name)
                        node.output.append(out)
                        found[name] = (out, drop)
                elif node.op_type in ("Loop", "Scan") and attr.name == "body":
                    inner = expose(attr.g)
                    for name, (sub_out, drop) in inner.items():
                        if name in found:
                            continue
                        attr.g.output.append(typed(sub_out, wanted[name]))
                        out = fresh(name)
                        node.output.append(out)
                        if node.op_type == "Scan":
                            for a in node.attribute:
                                if a.name == "scan_output_axes":
                                    a.ints.append(0)
                        found[name] = (out, drop + 1)
        return found

    found = expose(model.graph)
    have = {o.name for o in model.graph.output}
    for name, (out, _) in found.items():
        if out not in have:
            model.graph.output.append(typed(out, wanted[name]) if wanted[name] else onnx.ValueInfoProto(name=out))
            have.add(out)
    return model, found


def all_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`g` and every If/Loop/Scan subgraph below it, outermost first."""
    yield g
    for node in g.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_graphs(attr.g)
            for sub in attr.graphs:
                yield from all_graphs(sub)


# ------------------------------------------------------------------------------ saving
def save(proto: onnx.ModelProto, path: str | os.PathLike, *, external: bool | None = None,
         check: bool = True) -> None:
    """Write `proto` to `path` atomically: all files appear together or none does.

    Models over 2 GiB, file-backed models (see `load`) and `external=True` are written
    with their weights (tensors of 1 KiB or more) in one external data file
    `<name>.data` beside the model; file-backed weights are copied into it in chunks.
    Such models are checked by path before they are moved into place (unless `check` is
    False), so nothing invalid or partial is ever left at `path`. `proto` is not modified.
    """
    path = Path(path)
    big = too_big(proto)
    backed = is_file_backed(proto)
    if external is None or backed:  # file-backed weights are never inlined
        external = bool(external) or big or backed
    parent = path.parent if str(path.parent) else Path(".")
    data_name = path.name + ".data"
    if backed and any(Path(src[0]).resolve() == (parent / data_name).resolve()
                      for t in _all_tensors(proto) if (src := file_source(t))):
        raise ParameterError(f"{path}: its data file {data_name} is where this model's weights are read "
                             "from (the model was loaded file-backed); save it under another name")
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnx_compress_", dir=parent))
    try:
        tmp = tmpdir / path.name
        if external:
            _save_external(proto, tmp, data_name)
        else:
            onnx.save_model(proto, str(tmp))
        if check:  # nothing invalid is ever moved into place
            _check_written(tmp if (big or backed) else proto, path)
        if (tmpdir / data_name).exists():
            os.replace(tmpdir / data_name, parent / data_name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _check_written(model: onnx.ModelProto | Path, path: Path) -> None:
    """onnx.checker on a model about to be written to `path` (by its file when it is too
    big for memory); ModelLoadError naming `path` when it fails."""
    try:
        onnx.checker.check_model(str(model) if isinstance(model, Path) else model)
    except Exception as exc:
        head = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: the model to be written is not valid ONNX ({head}); nothing was "
                             "written (please report this)") from None


def _save_external(proto: onnx.ModelProto, model_path: Path, data_name: str) -> None:
    """Write `proto` to `model_path` with its weights in `data_name` beside it.

    In-memory tensors of 1 KiB or more (initializers, as onnx.save_model does) are moved
    to the data file in a copy of the model; file-backed tensors (any kind) are copied
    from their files in chunks of COPY_CHUNK bytes, reporting progress.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)  # copies only the data held in memory
    sources = [(t, src) for t in _all_tensors(out) if (src := file_source(t)) is not None]
    inline = [t for t in _all_tensors(out, attributes=False)
              if not _is_external(t) and t.HasField("raw_data") and _nbytes(t) >= 1024]
    total = sum(src[2] for _, src in sources)
    report = total >= COPY_CHUNK
    with open(model_path.parent / data_name, "wb") as dst:
        for tensor in inline:
            offset = dst.tell()
            dst.write(tensor.raw_data)
            tensor.ClearField("raw_data")
            _set_external(tensor, data_name, offset, dst.tell() - offset)
        done = 0
        buffer = bytearray(min(COPY_CHUNK, max(total, 1)))
        for tensor, (location, offset, length) in sources:
            dst.write(b"\0" * (-dst.tell() % 4096))  # page-aligned, for memory-mapping readers
            start = dst.tell()
            with open(location, "rb") as src:
                src.seek(offset)
                left = length
                while left:
                    n = src.readinto(memoryview(buffer)[:min(left, len(buffer))])
                    if not n:
                        raise ModelLoadError(f"{location}: ended before the data of tensor '{tensor.name}'; "
                                             "was the model's data file changed after loading?")
                    dst.write(memoryview(buffer)[:n])
                    left -= n
                    done += n
                    if report:
                        progress.update("writing weights (MiB)", -(-done // 2**20), -(-total // 2**20))
            _set_external(tensor, data_name, start, length)
        empty = dst.tell() == 0
    if empty:
        os.remove(model_path.parent / data_name)
    onnx.save_model(out, str(model_path))
