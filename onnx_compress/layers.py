"""Find the compressible layers of a model, with their shapes, costs and skip reasons.

A *layer* is a Conv, Gemm or MatMul node whose weight is constant (an initializer, a
Constant node, or Identity of either), or an LSTM/GRU whose input weight W and recurrent
weight R are, in the main graph or any If/Loop/Scan subgraph.
Nodes of those types whose weight is not constant are listed too, with the reason, but
they do not count in the model's cost. A layer is named by its node name, or by its
first output's name when the exporter left the node name empty.

An LSTM/GRU layer's weight is W [num_directions, gates*hidden, input] (gates: LSTM 4, GRU 3);
its cost counts the input projection and the recurrence at every time step: MACs
seq*batch*dirs*gates*hidden*(input + hidden) (seq, batch from X's shape, either layout),
memory W + R. Weight SVD splits W alone (R's part is the split's fixed cost).
"""
from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx

from . import ir
from .dims import resolve_input_dims  # noqa: F401  (layers.resolve_input_dims, as before)
from .errors import LayerError, ShapeError

log = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "Gemm", "MatMul", "LSTM", "GRU")
#: The recurrent layers and their gate blocks of `hidden` rows in W and R.
RECURRENT = {"LSTM": 4, "GRU": 3}
#: Why a shape is unknown when no step failed with a reason of its own.
UNRESOLVED = "shape inference could not resolve them"
Shape = ir.Shape


@dataclass(frozen=True, eq=False)
class Layer:
    """One compressible (or refused) layer of a model.

    `weight` is the stored weight: Conv (n_out, n_in/group, *kernel); Gemm B as stored
    (transB decides its layout); MatMul (K, N); LSTM/GRU W (dirs, gates*hidden, input).
    `mac` is None when unknown. `out_shape` of an LSTM/GRU: its first present output's.
    """

    name: str
    op: str
    node: ir.Node
    graph: ir.Graph
    weight: np.ndarray | None
    in_shape: Shape | None
    out_shape: Shape | None
    mac: int | None
    memory: int
    reason: str | None  # why it is not a layer at all (None: it is one)
    in_subgraph: bool = False
    shape_note: str | None = None  # why its input/output shape is unknown, when it is

    @property
    def attrs(self) -> dict:
        return self.node.attrs

    @property
    def group(self) -> int:
        return int(self.node.attrs.get("group", 1))

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:]) if self.op == "Conv" else ()

    @property
    def recurrent(self) -> bool:
        return self.op in RECURRENT

    def matrix_shape(self) -> tuple[int, int]:
        """(K, N) of a Gemm/MatMul weight as it multiplies: y = x @ W; an LSTM/GRU's W of
        every direction stacked, as it projects X: (input, dirs*gates*hidden)."""
        w = self.weight
        if self.op in RECURRENT:
            return int(w.shape[2]), int(w.shape[0] * w.shape[1])
        if self.op == "Gemm" and int(self.node.attrs.get("transB", 0)):
            return int(w.shape[1]), int(w.shape[0])
        return int(w.shape[0]), int(w.shape[1])

    def describe(self) -> str:
        """A short description of the weight, e.g. 'Conv 64x32x3x3' or 'Gemm 128x10'."""
        if self.weight is None:
            return self.op
        return f"{self.op} " + "x".join(str(d) for d in self.weight.shape)


@dataclass(eq=False)
class Analysis:
    """A model imported for rewriting: its graph, the template proto, its layers."""

    proto: onnx.ModelProto
    graph: ir.Graph
    layers: list[Layer]
    input_dims: dict[str, Shape]
    shapes: dict[str, Shape]

    @property
    def compressible(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.reason is None]

    def total(self, metric: str) -> int:
        """Total cost of the model's layers under `metric` ('mac' or 'memory')."""
        return sum(cost_of(layer, metric) for layer in self.compressible)

    def find(self, name: str) -> Layer:
        """The layer called `name`; LayerError with close matches when there is none."""
        for layer in self.layers:
            if layer.name == name:
                if layer.reason is not None:
                    raise LayerError(f"layer '{name}' cannot be compressed: {layer.reason}")
                return layer
        names = [layer.name for layer in self.layers]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LayerError(f"unknown layer '{name}'{hint} (`onnx-compress inspect MODEL` lists the layers)")


def cost_of(layer: Layer, metric: str) -> int:
    """The layer's cost under `metric`; ShapeError when MACs are needed but unknown."""
    if metric == "memory":
        return layer.memory
    if layer.mac is None:
        raise ShapeError(f"layer '{layer.name}': its input/output shapes are unknown, so its MACs cannot be "
                         f"counted: {layer.shape_note}")
    return layer.mac


# ----------------------------------------------------------------------- input shapes
def analyze(proto: onnx.ModelProto, input_shape=None,
            data_shapes: dict[str, Shape] | None = None) -> Analysis:
    """Import `proto` and list its layers with shapes and costs."""
    dims = resolve_input_dims(proto, input_shape, data_shapes)
    try:
        inferred = ir.static_shapes(proto, dims)
    except ShapeError as exc:  # e.g. an op ONNX cannot infer: execution may still find the shapes
        log.info("%s; finding layer shapes by execution", exc)
        inferred = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    shapes, shape_note = _complete_shapes(proto, dims, inferred)
    graph = ir.import_graph(proto)
    layers: list[Layer] = []
    seen: dict[str, int] = {}
    for node, owner in ir.iter_nodes(graph):
        if node.op not in LAYER_OPS:
            continue
        layer = _make_layer(node, owner, owner is not graph, shapes, shape_note)
        if layer.name in seen:
            raise LayerError(
                f"two layers are both named '{layer.name}'; give the model unique node names "
                "(e.g. with onnx.helper or onnx-graphsurgeon) so layers can be addressed"
            )
        seen[layer.name] = 1
        layers.append(layer)
    return Analysis(proto=proto, graph=graph, layers=layers, input_dims=dims, shapes=shapes)


def _complete_shapes(proto: onnx.ModelProto, dims: dict[str, Shape],
                     shapes: dict[str, Shape]) -> tuple[dict[str, Shape], str | None]:
    """`shapes` plus what later steps resolve for the layers' inputs and outputs that ONNX
    shape inference left unknown, and a note saying why some still are (None when none).

    1. ONNX Runtime's symbolic shape inference (exported transformers: position ids sliced
       from a constant by a Shape-derived bound lose the sequence length for the rest of
       the graph);
    2. running the model once in ONNX Runtime on a probe input built from the resolved
       input dims, with the missing tensors exposed as outputs, those inside If/Loop/Scan
       subgraphs included (shapes computed by Shape/Gather/Concat/Reshape, STFT front ends).
    Both need every graph input's dims; without them the note says which are dynamic.
    """
    missing = _missing(proto, shapes)
    if not missing:
        return shapes, None
    inputs = ir.graph_inputs(proto)
    free = [i.name for i in inputs if i.name not in dims]
    if free:
        return shapes, (f"input(s) {', '.join(repr(n) for n in free)} have dynamic dimensions; pass "
                        "input_shape (CLI: --input-shape NAME=d0,d1,...) or calibration data to fix them")
    notes = []
    out = dict(shapes)
    if any(name in _main_tensors(proto) for name in missing):
        try:
            for name, shape in _symbolic_shapes(proto, dims).items():  # ONNX's own shapes first
                out.setdefault(name, shape)
        except ImportError as exc:
            notes.append(f"symbolic shape inference is unavailable ({exc})")
        except Exception as exc:  # noqa: BLE001 - the next step may still find the shapes
            notes.append(f"symbolic shape inference failed ({type(exc).__name__}: {_first_line(exc)})")
        missing = _missing(proto, out)
    if missing:
        try:
            from . import runtime

            out.update(runtime.shapes_by_execution(proto, _probe_feed(proto, dims), missing))
        except Exception as exc:  # noqa: BLE001 - the layers keep unknown shapes, with the reason
            notes.append(f"running the model on a probe input to find them failed "
                         f"({type(exc).__name__}: {_first_line(exc)})")
        else:
            if _missing(proto, out):
                notes.append("running the model on a probe input did not reach them (a branch or loop "
                             "that did not run)")
    return out, "; ".join(notes) or UNRESOLVED


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _main_tensors(proto: onnx.ModelProto) -> set[str]:
    return {n for node in proto.graph.node for n in node.output}


def _missing(proto: onnx.ModelProto, shapes: dict[str, Shape]) -> dict[str, int]:
    """Tensors with no known shape that the analysis uses: every node output of the main
    graph (the channel dependency graph walks them) and the inputs/outputs of layer nodes
    in subgraphs. Name -> ONNX elem type (0 where not known; a layer's data tensors have its
    weight's type)."""
    out: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in shapes:
                out[name] = 0
    graphs = list(ir.all_graphs(proto.graph))
    inits = {t.name: t.data_type for g in graphs for t in g.initializer}  # subgraph weights live outside
    for g in graphs[1:]:
        for node in g.node:
            if node.op_type in LAYER_OPS and len(node.input) >= 2 and node.output:
                elem = inits.get(node.input[1], onnx.TensorProto.FLOAT)
                for name in (node.input[0], node.output[0]):
                    if name and name not in shapes:
                        out[name] = elem
    return out


def _symbolic_shapes(proto: onnx.ModelProto, dims: dict[str, Shape]) -> dict[str, Shape]:
    from . import runtime

    return runtime.symbolic_shapes(proto, dims)


def _probe_feed(proto: onnx.ModelProto, dims: dict[str, Shape]) -> dict[str, np.ndarray]:
    """A feed of the resolved input dims: small random floats, ones for integers (valid
    token ids and counts), False for booleans."""
    rng = np.random.default_rng(0)
    feed = {}
    for inp in ir.graph_inputs(proto):
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
        shape = dims[inp.name]
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.normal(0.0, 0.5, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feed[inp.name] = np.zeros(shape, dtype=dtype)
        else:
            feed[inp.name] = np.ones(shape, dtype=dtype)
    return feed


def _make_layer(node, owner, in_subgraph: bool, shapes: dict[str, Shape], shape_note: str | None) -> Layer:
    name = ir.node_name(node)
    in_shape = shapes.get(node.inputs[0].name) if node.inputs else None
    out = node.outputs[:1] if node.op not in RECURRENT else [t for t in node.outputs if t.name][:1]
    out_shape = shapes.get(out[0].name) if out else None
    weight, reason = _weight_of(node)
    mac = None
    if reason is None and (in_shape if node.op in RECURRENT else out_shape) is not None:
        mac = _macs(node.op, weight, node, in_shape, out_shape)
    memory = 0
    if reason is None:
        memory = int(weight.size) + (_recurrent_size(node) if node.op in RECURRENT else 0)
    return Layer(
        name=name, op=node.op, node=node, graph=owner, weight=weight, in_shape=in_shape,
        out_shape=out_shape, mac=mac, memory=memory,
        reason=reason, in_subgraph=in_subgraph,
        shape_note=(shape_note or UNRESOLVED) if (in_shape is None or out_shape is None) else None,
    )


def _weight_of(node) -> tuple[np.ndarray | None, str | None]:
    """The layer's constant weight, or the reason it has none."""
    if len(node.inputs) < 2:
        return None, "weight input missing"
    w = ir.constant_value(node.inputs[1])
    if node.op in RECURRENT:
        w, why = _recurrent_weight(node, w)
        if why:
            return None, why
    elif node.op == "Conv":
        if w is None:
            return None, "weight is not constant"
        if w.ndim < 3:
            return None, f"Conv weight has rank {w.ndim}, expected 3 or more"
    elif node.op == "Gemm":
        if w is None:
            a = ir.constant_value(node.inputs[0])
            return None, ("constant is input A, not B" if a is not None else "weight is not constant")
        if int(node.attrs.get("transA", 0)) not in (0, 1):
            return None, "unsupported transA"
    else:  # MatMul
        if w is None:
            a = ir.constant_value(node.inputs[0])
            return None, ("constant is the left operand" if a is not None else "weight is not constant")
        if w.ndim != 2:
            return None, f"weight is {w.ndim}-D (batched MatMul), expected 2-D"
    if not np.issubdtype(w.dtype, np.floating):
        return None, f"weight dtype {w.dtype} is not floating point"
    if not _all_finite(w):
        return None, NOT_FINITE
    slot = 3 if node.op in RECURRENT else 2  # an LSTM/GRU's B
    if node.op != "MatMul" and len(node.inputs) > slot and node.inputs[slot].name:
        bias = ir.constant_value(node.inputs[slot])
        if bias is not None and np.issubdtype(bias.dtype, np.floating) and not _all_finite(bias):
            return None, "bias holds NaN or Inf values"
    return w, None


def _recurrent_weight(node, w: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """An LSTM/GRU's W when W and R are constant 3-D (dirs, gates*hidden, ...) weights,
    or the reason it is not a layer."""
    r = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if w is None:
        return None, "input weight W is not constant"
    if r is None:
        return None, "recurrent weight R is missing or not constant"
    gates = RECURRENT[node.op]
    if w.ndim != 3 or r.ndim != 3 or w.shape[1] % gates or r.shape[:2] != w.shape[:2]:
        return None, f"W {tuple(w.shape)} and R {tuple(r.shape)} are not [dirs, {gates}*hidden, ...] weights"
    if not np.issubdtype(r.dtype, np.floating) or not _all_finite(r):
        return None, "recurrent weight R holds NaN or Inf values or is not floating point"
    return w, None


def _recurrent_size(node) -> int:
    """Parameters of an LSTM/GRU's recurrent weight R (memory counts W and R)."""
    return int(ir.constant_value(node.inputs[2]).size)


#: The reason a layer whose weight holds NaN or Inf is refused (SVD cannot factor it; a
#: channel selection or refit on it is meaningless).
NOT_FINITE = "weight holds NaN or Inf values"


def _all_finite(a: np.ndarray, chunk: int = 1 << 22) -> bool:
    """Whether every value of `a` is finite, checked in slices along axis 0 so a large
    (memory-mapped) weight is read once and no full-size temporary is made."""
    if a.ndim == 0 or a.size <= chunk:
        return bool(np.isfinite(a).all())
    mapped = _memmap_of(a)
    if mapped is not None:  # read the file in chunks: mapped pages touched would stay in RSS
        count, itemsize = a.size, a.dtype.itemsize
        step = max(1, chunk)
        return all(bool(np.isfinite(np.fromfile(mapped.filename, dtype=a.dtype, count=min(step, count - i),
                                                 offset=mapped.offset + i * itemsize)).all())
                   for i in range(0, count, step))
    step = max(1, chunk // max(1, a[0].size))
    return all(bool(np.isfinite(a[i:i + step]).all()) for i in range(0, a.shape[0], step))


def _memmap_of(a: np.ndarray) -> np.memmap | None:
    """The file map `a` is a whole, C-ordered view of (a file-backed weight), else None."""
    base = a
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    if (base is None or not getattr(base, "filename", None) or base.dtype != a.dtype or base.shape != a.shape
            or not a.flags.c_contiguous):
        return None
    return base


def _macs(op: str, w: np.ndarray, node, in_shape, out_shape) -> int | None:
    if op in RECURRENT:  # W and R at every step: X is [seq, batch, input] (layout 1: batch, seq)
        dirs, rows, n_in = (int(d) for d in w.shape)
        return int(in_shape[0]) * int(in_shape[1]) * dirs * rows * (n_in + rows // RECURRENT[op])
    if op == "Conv":
        return math.prod(out_shape) * math.prod(w.shape[1:])
    if op == "Gemm":
        k = w.shape[1] if int(node.attrs.get("transB", 0)) else w.shape[0]
        return math.prod(out_shape) * int(k)
    return math.prod(out_shape) * int(w.shape[0])  # MatMul: (..., N) outputs, K each


def refresh(analysis: Analysis, snapshot: onnx.ModelProto) -> Analysis:
    """`analysis` after its graph was edited in place: the same graph (not imported again),
    shapes inferred anew on `snapshot` (an unchecked export of that graph), layers rebuilt
    from the graph's current nodes and weights. One graph per step: a scheme that edits
    layer by layer refreshes instead of re-analysing an exported model."""
    dims = analysis.input_dims
    try:
        inferred = ir.static_shapes(snapshot, dims)
    except ShapeError as exc:
        log.info("%s; finding layer shapes by execution", exc)
        inferred = {t.name: tuple(t.dims) for t in snapshot.graph.initializer}
    shapes, shape_note = _complete_shapes(snapshot, dims, inferred)
    found = [_make_layer(node, owner, owner is not analysis.graph, shapes, shape_note)
             for node, owner in ir.iter_nodes(analysis.graph) if node.op in LAYER_OPS]
    return Analysis(proto=snapshot, graph=analysis.graph, layers=found, input_dims=dims, shapes=shapes)
