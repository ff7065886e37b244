"""Graph IR: loading, saving, traversal and rewriting of ONNX graphs.

This is the only package that imports onnx-graphsurgeon or builds and edits protobuf
messages for the rooms above it. Everything above it sees `gs.Graph`/`gs.Node` objects
and ModelProtos through the small vocabulary re-exported here:

* `model`: load a model (checked, normalized: IR 3 raised, constants folded) and save it
  atomically (with external data for large models);
* `tensors`: every TensorProto of a model, external data, file-backed tensors (weights
  left on disk for models over 2 GiB, read through memory maps), values;
* `graph`: import into graph-surgeon, walk the nodes (subgraphs included), read a constant
  weight wherever the exporter put it, replace a node by a chain of new nodes, export a
  checked and shape-inferred ModelProto;
* `shapes`: static shapes, inputs fixed to dims, inner tensors exposed as outputs;
* `build`: small models built from scratch (a layer timed alone, an empty Identity).

The settings are read where they are defined, so set them there: `model.FILE_BACKED_LIMIT`,
`model.COPY_CHUNK`, `model.RUNTIME_QUIET` (runtime.sessions sets it), `tensors.PROTO_LIMIT`.

Import direction: ir imports only onnx, onnx-graphsurgeon, numpy, errors, progress and
validate; inside it, build, shapes and tensors import nothing of the IR, graph imports
tensors, and model imports graph, shapes and tensors.
"""
from __future__ import annotations

from .build import chain_model, identity_model
from .graph import (
    Graph,
    Node,
    NodeSpec,
    all_names,
    append_input,
    checked,
    constant_value,
    export,
    forget_shape,
    import_graph,
    insert_gather,
    iter_nodes,
    node_name,
    private_producer,
    replace_with_chain,
    set_input,
    subgraphs,
    unique_name,
)
from .model import COPY_CHUNK, FILE_BACKED_LIMIT, FOLD_LIMIT, load, normalize, save
from .shapes import (
    Shape,
    all_graphs,
    concrete_shapes,
    expose_tensors,
    graph_inputs,
    opset,
    static_shapes,
    with_input_dims,
)
from .tensors import (
    PROTO_LIMIT,
    external_files,
    file_source,
    is_file_backed,
    model_bytes,
    set_initializer,
    to_array,
    too_big,
    uses_external_data,
)

__all__ = [
    "COPY_CHUNK", "FILE_BACKED_LIMIT", "FOLD_LIMIT", "PROTO_LIMIT", "Graph", "Node", "NodeSpec", "Shape",
    "all_graphs", "all_names", "append_input", "chain_model", "checked", "concrete_shapes", "constant_value",
    "export", "expose_tensors", "external_files", "file_source", "forget_shape", "graph_inputs", "identity_model",
    "import_graph", "insert_gather", "is_file_backed", "iter_nodes", "load", "model_bytes", "node_name",
    "normalize", "opset", "private_producer", "replace_with_chain", "save", "set_initializer", "set_input", "static_shapes",
    "subgraphs", "to_array", "too_big", "unique_name", "uses_external_data", "with_input_dims",
]
