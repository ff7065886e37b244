"""Models as a whole: loading, normalizing and saving.

`load` returns a private, checked (`validate`) and normalized copy of a model: IR version
3 raised, constant subgraphs folded by onnx-graphsurgeon, subgraph initializers hoisted.
`save` writes a model atomically, with external data for large models.

Models too big for one protobuf (2 GiB) are *file-backed*: `load` leaves their external
weights on disk, with absolute locations (`ir.tensors`); `save` copies them into the new
data file in chunks, so memory stays far below the model's size.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference
from onnx_graphsurgeon.logger import G_LOGGER

from .. import progress, validate
from ..errors import ModelLoadError, ParameterError
from .graph import export
from .shapes import all_graphs
from .tensors import (PROTO_LIMIT, _all_tensors, _anchor_external_data, _check_external_locations, _is_external,
                      _nbytes, _set_external, file_source, is_file_backed, too_big)

log = logging.getLogger(__name__)

#: Models whose tensor data reaches this are loaded file-backed (weights left on disk).
FILE_BACKED_LIMIT = PROTO_LIMIT
#: Chunk size for copying file-backed weights into a saved model's data file.
COPY_CHUNK = 64 * 2**20
#: A zero-argument context-manager factory entered around graph-surgeon's constant folding,
#: which runs ONNX Runtime: the runtime sets it (runtime.sessions) to quiet ORT's logger,
#: whose optimizer warnings are not the user's. The IR never imports onnxruntime.
RUNTIME_QUIET: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


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
        try:
            with RUNTIME_QUIET():  # what graph-surgeon folds with (ONNX Runtime), quietened
                graph.fold_constants(fold_shapes=True, recurse_subgraphs=True, partitioning="basic",
                                     size_threshold=FOLD_LIMIT, should_exclude_node=exclude)
        finally:
            G_LOGGER.severity = severity
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
