"""AIMET's TensorFlow compression API (aimet_tensorflow.compress / aimet_tensorflow.defs) on
ONNX models exported by tf2onnx.

`ModelCompressor.compress_model(sess, working_dir, ...)` takes the ONNX model (a path or a
ModelProto) where AIMET takes a tf.Session, checks the TensorFlow-shaped parameters
against the graph and runs `onnx_compress.aimet.ModelCompressor.compress_model`:

- input_op_names / output_op_names name the graph's inputs and outputs, with or without
  TensorFlow's ':0' (tf2onnx keeps TF tensor names such as 'input_1:0'); an output may also
  be named by the op that produces it ('predictions/Softmax'). The whole graph is compressed.
- layers (ModuleCompRatioPair.module, modules_to_ignore) are ONNX node names, NodeProtos,
  objects with a `.name` (a tf.Operation), or TF op names such as 'block1_conv1/Conv2D':
  tf2onnx names a Conv after the TF op, under a prefix ('model/',
  'StatefulPartitionedCall/...'), and its weights after the layer, so a unique '/'-suffix
  of a node's or weight's name, or the layer's scope ('block1_conv1') as '/'-segments,
  names the node; failing that, the same with the '_N' Keras 3 appends to op scopes
  ('vgg/block1_conv1_1/BiasAdd'). Ambiguous and unknown names are refused with candidates.
- input_shape is the input as the ONNX graph declares it (channels-last for Keras, e.g.
  (32, 224, 224, 3)); it fixes dynamic dims for the cost model (a batch other than the
  model's scales MACs, never ratios). The NCHW permutation of an NHWC input (AIMET's own
  example passes (1, 3, 224, 224)) is accepted with a warning.
- ChannelPruningParameters.data_set: any iterable of batches (arrays, tf tensors or
  anything with __array__, (inputs, labels) tuples, feed dicts), rebatched to batch_size.
- working_dir: a folder that receives `compressed_model.onnx` (written atomically once the
  compression has succeeded; an existing file of that name is replaced); None writes nothing.

Returns (compressed onnx.ModelProto, statistics) where AIMET returns (session, stats).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import onnx

from . import aimet, ir
from .aimet import CompressionScheme, CostMetric, GreedySelectionParameters  # noqa: F401  (AIMET's names)
from .data import model_inputs
from .errors import ParameterError
from .files import check_writable

log = logging.getLogger(__name__)
#: The file `compress_model` writes into `working_dir`.
OUTPUT_NAME = "compressed_model.onnx"
#: Node types that can be compressed layers (the candidates listed for a layer name).
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

__all__ = ["ModelCompressor", "SpatialSvdParameters", "WeightSvdParameters", "ChannelPruningParameters",
           "ModuleCompRatioPair", "GreedySelectionParameters", "CompressionScheme", "CostMetric", "OUTPUT_NAME"]


@dataclasses.dataclass(frozen=True)
class ModuleCompRatioPair:
    """A layer (an ONNX node name, NodeProto, tf.Operation-like `.name` or TF op name) and its ratio."""

    module: object
    comp_ratio: float


class _Parameters:
    """input_op_names, output_op_names, mode and its params (AIMET TF's shape)."""

    def __init__(self, input_op_names, output_op_names, mode, params, multiplicity: int | str = 1):
        self.input_op_names = _names_list(input_op_names, "input_op_names")
        self.output_op_names = _names_list(output_op_names, "output_op_names")
        self.mode = mode
        self.mode_params = params
        self.multiplicity = multiplicity

    params = property(lambda self: self.mode_params, doc="mode_params (onnx_compress.aimet's name)")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_op_names={self.input_op_names}, output_op_names="
                f"{self.output_op_names}, mode={self.mode}, params={self.mode_params}, "
                f"multiplicity={self.multiplicity})")


class SpatialSvdParameters(_Parameters):
    """Spatial SVD settings: input/output op names, mode (Mode.manual/auto), its params
    (ManualModeParams(list_of_module_comp_ratio_pairs) or AutoModeParams(greedy_select_params,
    modules_to_ignore)), rank multiplicity."""

    _torch = aimet.SpatialSvdParameters
    Mode = aimet.SpatialSvdParameters.Mode
    ManualModeParams = aimet.SpatialSvdParameters.ManualModeParams
    AutoModeParams = aimet.SpatialSvdParameters.AutoModeParams


class WeightSvdParameters(_Parameters):
    """Weight SVD settings, the same shape as SpatialSvdParameters."""

    _torch = aimet.WeightSvdParameters
    Mode = aimet.WeightSvdParameters.Mode
    ManualModeParams = aimet.WeightSvdParameters.ManualModeParams
    AutoModeParams = aimet.WeightSvdParameters.AutoModeParams


class ChannelPruningParameters(_Parameters):
    """Channel pruning settings (AIMET TF's shape): data_set, any iterable of batches (arrays,
    tensors, (inputs, labels) tuples, feed dicts), is fed rebatched to batch_size; the rest as
    in onnx_compress.aimet.ChannelPruningParameters."""

    Mode = aimet.ChannelPruningParameters.Mode
    ManualModeParams = aimet.ChannelPruningParameters.ManualModeParams
    AutoModeParams = aimet.ChannelPruningParameters.AutoModeParams

    def __init__(self, input_op_names, output_op_names, data_set, batch_size: int, num_reconstruction_samples: int,
                 allow_custom_downsample_ops: bool, mode, params, multiplicity: int | str = 1):
        super().__init__(input_op_names, output_op_names, mode, params, multiplicity)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.data_set = data_set
        self.batch_size = int(batch_size)
        self.num_reconstruction_samples = num_reconstruction_samples
        self.allow_custom_downsample_ops = allow_custom_downsample_ops


class ModelCompressor:
    """AIMET TensorFlow's entry point, on ONNX models exported by tf2onnx."""

    @staticmethod
    def compress_model(sess, working_dir, eval_callback, eval_iterations, input_shape, compress_scheme,
                       cost_metric, parameters, trainer=None, visualization_url=None):
        """Compress `sess` (an ONNX path or onnx.ModelProto, not modified); return
        (compressed ModelProto, statistics).

        working_dir: an existing folder that receives `compressed_model.onnx` (checked before
        any work, written atomically after it; nothing is written when compression fails), or
        None. eval_callback(session, iterations, use_cuda) -> float gets an
        onnxruntime.InferenceSession of each candidate. The other arguments are AIMET's; see
        the module docstring for names, input_shape and data_set.
        """
        if not isinstance(parameters, _Parameters):
            raise ParameterError(
                "parameters must be onnx_compress.aimet_tensorflow SpatialSvdParameters, WeightSvdParameters "
                f"or ChannelPruningParameters, got {type(parameters).__name__} (onnx_compress.aimet's classes "
                "go with onnx_compress.aimet.ModelCompressor)")
        if isinstance(sess, (str, os.PathLike)) and Path(sess).is_dir():
            raise ParameterError(f"sess {sess} is a folder (a SavedModel?): convert it with tf2onnx and pass "
                                 "the .onnx file")
        if not isinstance(sess, (str, os.PathLike, onnx.ModelProto)):
            raise ParameterError(f"sess must be an ONNX path or onnx.ModelProto (convert TensorFlow models with "
                                 f"tf2onnx), got {type(sess).__name__}")
        target = _output_path(working_dir)
        proto = ir.load(sess)
        graph = _Graph(proto)
        feeds = [graph.input_name(n) for n in parameters.input_op_names]
        [graph.output_name(n) for n in parameters.output_op_names]  # checked: the whole graph is compressed
        shape = _checked_input_shape(input_shape, feeds, graph.specs)
        torch_params = _torch_parameters(parameters, graph, feeds)
        model, stats = aimet.ModelCompressor.compress_model(
            proto, eval_callback, eval_iterations, shape, compress_scheme, cost_metric, torch_params,
            trainer=trainer, visualization_url=visualization_url)
        if target is not None:
            ir.save(model, target)
        return model, stats


def _names_list(names, what: str) -> list:
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        names = [names]
    names = [getattr(n, "name", n) for n in names]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ParameterError(f"{what} must be a non-empty list of names, got {names!r}")
    return names


def _output_path(working_dir) -> Path | None:
    """`<working_dir>/compressed_model.onnx`, checked writable before any work; None for None."""
    if working_dir is None:
        return None
    folder = Path(working_dir)
    if not folder.is_dir():
        raise ParameterError(f"working_dir {folder} is not an existing folder (None writes nothing)")
    return check_writable(folder / OUTPUT_NAME, "working_dir output")


def _strip0(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _listed(names, limit: int = 20) -> str:
    """Items (already formatted) joined, the first `limit` of them."""
    names = list(names)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


class _Graph:
    """Names of one ONNX graph: inputs, outputs and layer nodes, matched as TF names."""

    def __init__(self, proto: onnx.ModelProto):
        self.inputs = [i.name for i in ir.graph_inputs(proto)]
        self.outputs = [o.name for o in proto.graph.output]
        self.nodes = {n.name: n for n in proto.graph.node if n.name}
        producer = {out: n.name for n in proto.graph.node for out in n.output}
        self.producers = {o: producer.get(o, "") for o in self.outputs}
        self.layers = [n for n in proto.graph.node if n.op_type in LAYER_OPS and n.name]
        self.specs = model_inputs(proto)

    def input_name(self, name: str) -> str:
        found = [i for i in self.inputs if _strip0(i) == _strip0(name)]
        if len(found) != 1:
            raise ParameterError(f"input_op_names: {name!r} is not an input of the ONNX graph (with or without "
                                 f"':0'); its inputs: {_listed(map(repr, self.inputs))}")
        return found[0]

    def output_name(self, name: str) -> str:
        found = [o for o in self.outputs if _strip0(o) == _strip0(name)]
        for loose in (False, True):  # the op producing an output: exact or a '/'-suffix
            found = found or [o for o, p in self.producers.items() if p and _suffix(p, _strip0(name), loose)]
        if len(found) != 1:
            what = "names several outputs" if found else "is not an output of the ONNX graph"
            raise ParameterError(f"output_op_names: {name!r} {what} (tensor names with or without ':0', or the "
                                 f"op producing one); its outputs: "
                                 f"{_listed(f'{o!r} (from {p})' if p else repr(o) for o, p in self.producers.items())}")
        return found[0]

    def layer_name(self, module, what: str) -> str:
        """The ONNX node name `module` names (see the module docstring)."""
        if isinstance(module, onnx.NodeProto):
            module = module.name
        name = getattr(module, "name", module)
        if not isinstance(name, str) or not name:
            raise ParameterError(f"{what}: {module!r} is not a layer name, NodeProto or op")
        if name in self.nodes:
            return name
        query = _strip0(name)
        for match, loose in ((_suffix, False), (_has_scope, False), (_suffix, True), (_has_scope, True)):
            key = query if match is _suffix else _scope(query)
            found = [n for n in self.layers if any(match(a, key, loose) for a in _aliases(n))]
            if len(found) == 1:
                return found[0].name
            if found:
                raise ParameterError(f"{what}: {name!r} is ambiguous: it matches the ONNX nodes "
                                     f"{_listed(repr(n.name) for n in found)}; give one of them")
        raise ParameterError(f"{what}: {name!r} names no layer of the ONNX graph (an exact node name, a "
                             f"'/'-suffix of one or the TF layer scope); its layers: "
                             f"{_listed(f'{n.name!r} ({n.op_type})' for n in self.layers)}")


def _aliases(node: onnx.NodeProto) -> list[str]:
    """A layer node's name and its parameter tensors' names (tf2onnx names them after the layer)."""
    return [node.name, *(_strip0(t) for t in node.input[1:] if t)]


def _same(part: str, query: str, loose: bool) -> bool:
    """One '/'-segment; loose: also with the '_N' Keras 3 appends to op scopes (fc1 -> fc1_1)."""
    return part == query or loose and part.startswith(query + "_") and part[len(query) + 1:].isdigit()


def _suffix(name: str, query: str, loose: bool = False) -> bool:
    """`query`'s segments end `name`'s ('model/fc1/MatMul' ends with 'fc1/MatMul')."""
    parts, want = name.split("/"), query.split("/")
    return len(parts) >= len(want) and all(_same(p, q, loose) for p, q in zip(parts[-len(want):], want))


def _scope(query: str) -> list[str]:
    """The TF layer scope of an op name: 'block1_conv1/Conv2D' -> ['block1_conv1']."""
    parts = query.split("/")
    return parts[:-1] if len(parts) > 1 else parts


def _has_scope(name: str, scope: list[str], loose: bool = False) -> bool:
    """`scope`'s segments appear in a row in `name`."""
    parts, k = name.split("/"), len(scope)
    return any(all(_same(p, q, loose) for p, q in zip(parts[i:i + k], scope)) for i in range(len(parts) - k + 1))


# ------------------------------------------------------------------------- input_shape
def _checked_input_shape(input_shape, feeds: list[str], specs: dict):
    """input_shape as {input name: shape}, each checked against the declared dims (batch
    axis free); the NCHW permutation of an NHWC input is taken with a warning."""
    if input_shape is None:
        return None
    if isinstance(input_shape, dict):
        given = {_known_input(k, specs): v for k, v in input_shape.items()}
    elif all(isinstance(d, (int, np.integer)) for d in input_shape):
        if len(feeds) != 1:
            raise ParameterError(f"input_shape {tuple(input_shape)} is one shape but input_op_names names "
                                 f"{len(feeds)} inputs {feeds}: give one shape per input, in that order")
        given = {feeds[0]: input_shape}
    else:
        shapes = list(input_shape)
        if len(shapes) != len(feeds):
            raise ParameterError(f"input_shape gives {len(shapes)} shapes for the {len(feeds)} inputs {feeds} "
                                 "of input_op_names")
        given = dict(zip(feeds, shapes))
    return {name: _one_shape(name, shape, specs[name].dims) for name, shape in given.items()}


def _known_input(name: str, specs: dict) -> str:
    found = [k for k in specs if _strip0(k) == _strip0(name)]
    if not found:
        raise ParameterError(f"input_shape names {name!r}, not an input of the ONNX graph; its inputs: "
                             f"{_listed(map(repr, specs))}")
    return found[0]


def _one_shape(name: str, shape, declared) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ParameterError(f"input_shape for '{name}' must be a tuple of ints, got {shape!r}") from None
    if declared is None:
        return shape
    shown = tuple(d if isinstance(d, int) else "?" for d in declared)

    def fits(s):
        return len(s) == len(declared) and all(not isinstance(d, int) or d == x for d, x in zip(declared[1:], s[1:]))

    if fits(shape):
        return shape
    nhwc = (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else None
    if nhwc is not None and fits(nhwc):
        log.warning("input_shape %s for '%s' is the NCHW form of the channels-last input %s the ONNX graph "
                    "declares; using %s", shape, name, shown, nhwc)
        return nhwc
    raise ParameterError(f"input_shape {shape} does not fit input '{name}', which the ONNX graph declares as "
                         f"{shown} ('?': any; tf2onnx keeps Keras' channels-last layout, so give "
                         "(batch, height, width, channels))")


# --------------------------------------------------------------------------- parameters
def _torch_parameters(parameters: _Parameters, graph: _Graph, feeds: list[str]):
    """The onnx_compress.aimet parameters for `parameters`, layer names resolved."""
    params = _resolved_mode_params(parameters.mode_params, graph)
    if isinstance(parameters, ChannelPruningParameters):
        loader = _rebatched(parameters.data_set, parameters.batch_size, feeds, graph.specs)
        return aimet.ChannelPruningParameters(loader, parameters.num_reconstruction_samples,
                                              parameters.allow_custom_downsample_ops, parameters.mode, params,
                                              parameters.multiplicity)
    return parameters._torch(parameters.mode, params, parameters.multiplicity)


def _resolved_mode_params(params, graph: _Graph):
    """ManualModeParams / AutoModeParams with their layers as ONNX node names."""
    pairs = getattr(params, "list_of_module_comp_ratio_pairs", None)
    if pairs is not None:
        resolved = []
        for pair in pairs:
            module, ratio = (pair.module, pair.comp_ratio) if hasattr(pair, "comp_ratio") else tuple(pair)
            name = graph.layer_name(module, "ModuleCompRatioPair")
            resolved.append(aimet.ModuleCompRatioPair(name, float(ratio)))
        return _replaced(params, list_of_module_comp_ratio_pairs=resolved)
    if hasattr(params, "greedy_select_params"):
        ignore = getattr(params, "modules_to_ignore", None)
        if ignore is not None:
            ignore = [graph.layer_name(m, "modules_to_ignore") for m in
                      ([ignore] if isinstance(ignore, (str, onnx.NodeProto)) else ignore)]
        return _replaced(params, modules_to_ignore=ignore)
    return params  # onnx_compress.aimet refuses it with its own message


def _replaced(params, **fields):
    """A copy of a (frozen dataclass) params object with `fields` replaced."""
    if dataclasses.is_dataclass(params):
        return dataclasses.replace(params, **fields)
    copy = type(params).__new__(type(params))
    copy.__dict__.update({**vars(params), **fields})
    return copy


# ---------------------------------------------------------------------------- data_set
def _rebatched(data_set, batch_size: int, feeds: list[str], specs: dict) -> list[dict]:
    """data_set as feed dicts {input name: array} of `batch_size` samples (the last may hold
    fewer). A single array, tensor or feed dict is one batch."""
    if data_set is None:
        raise ParameterError("ChannelPruningParameters.data_set is None: channel pruning needs data")
    if isinstance(data_set, dict) or hasattr(data_set, "__array__"):
        data_set = [data_set]
    if not hasattr(data_set, "__iter__"):
        raise ParameterError(f"data_set must be an iterable of batches, got {type(data_set).__name__}")
    out, held, count = [], {f: [] for f in feeds}, 0
    for k, batch in enumerate(data_set):
        arrays = _batch_arrays(batch, feeds, specs, k)
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise ParameterError(f"data_set batch {k}: inputs hold different sample counts "
                                 f"{ {f: len(a) for f, a in arrays.items()} }")
        for f, a in arrays.items():
            held[f].append(a)
        count += sizes.pop()
        while count >= batch_size:
            joined = {f: np.concatenate(v) if len(v) > 1 else v[0] for f, v in held.items()}
            out.append({f: a[:batch_size] for f, a in joined.items()})
            held = {f: [a[batch_size:]] for f, a in joined.items()}
            count -= batch_size
    if count:
        out.append({f: np.concatenate(v) for f, v in held.items()})
    if not out:
        raise ParameterError("data_set holds no samples")
    return out


def _batch_arrays(batch, feeds: list[str], specs: dict, k: int, depth: int = 0) -> dict[str, np.ndarray]:
    """One batch as {input: array}: a feed dict (keys with or without ':0'), an array-like
    for a one-input model, a tuple of one array per input, or (inputs, labels...)."""
    if isinstance(batch, dict):
        named = {_known_input(str(getattr(key, "name", key)), specs): v for key, v in batch.items()}
        missing = [f for f in feeds if f not in named]
        if missing:
            raise ParameterError(f"data_set batch {k}: the feed dict lacks input(s) {missing}")
        return {f: _array(named[f], specs[f], f, k) for f in feeds}
    if isinstance(batch, (tuple, list)) and batch:
        if len(feeds) > 1 and len(batch) == len(feeds) and all(hasattr(b, "__array__") for b in batch):
            return {f: _array(b, specs[f], f, k) for f, b in zip(feeds, batch)}
        if depth == 0:  # (inputs, labels): the labels are not fed
            return _batch_arrays(batch[0], feeds, specs, k, depth + 1)
    if hasattr(batch, "__array__") and len(feeds) == 1:
        return {feeds[0]: _array(batch, specs[feeds[0]], feeds[0], k)}
    raise ParameterError(f"data_set batch {k} is a {type(batch).__name__}: give arrays (one input), "
                         f"(inputs, labels) tuples, tuples of one array per input {feeds}, or feed dicts")


def _array(value, spec, name: str, k: int) -> np.ndarray:
    """An input's batch as numpy, floats in the declared float type; one sample gets a batch axis."""
    arr = np.asarray(value)
    if spec.dims is not None and arr.ndim == len(spec.dims) - 1:
        arr = arr[None]
    if spec.dims is not None and arr.ndim != len(spec.dims):
        raise ParameterError(f"data_set batch {k}: input '{name}' has shape {arr.shape}, the ONNX graph declares "
                             f"rank {len(spec.dims)}")
    if spec.dtype is not None and arr.dtype.kind == "f" and np.dtype(spec.dtype).kind == "f":
        arr = arr.astype(spec.dtype, copy=False)
    return arr
