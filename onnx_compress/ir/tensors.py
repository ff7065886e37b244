"""TensorProtos: every tensor of a model, external data, file-backed tensors, values.

A *file-backed* tensor (left on disk by `ir.model.load`) has an absolute external data
location: its values are read through memory maps (`to_array`) and `ir.model.save`
copies them in chunks. The protos stay valid ONNX (onnx.checker, shape inference); ONNX
Runtime needs them saved first (`runtime.session` does that), since it refuses absolute
paths.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import ModelLoadError

#: Protobuf cannot serialise a message over 2 GiB; above this we go through files.
PROTO_LIMIT = 2**31 - 2**20


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


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at `path` keeps any tensor in external data files."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def set_initializer(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Make the initializer `tensor` (edited in place, its name kept) hold `value`: dims,
    type and data, in memory (a file-backed tensor no longer reads its file)."""
    tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))
