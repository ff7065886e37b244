"""ONNX Runtime: sessions, execution providers, evaluation. The only onnxruntime user.

`use_cuda=True` selects CUDAExecutionProvider when the installed onnxruntime (the
onnxruntime-gpu package) offers it; otherwise evaluation runs on the CPU with a warning.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from .. import ir, validate
from ..errors import CompressionError, ParameterError

log = logging.getLogger(__name__)

EvalCallback = Callable[[ort.InferenceSession, "int | None", bool], float]


CUDA_MISSING = ("use_cuda=True but this onnxruntime has no CUDAExecutionProvider (install "
                "onnxruntime-gpu instead of onnxruntime, and check the CUDA libraries); using the CPU")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def providers(use_cuda: bool = False) -> list[str]:
    """Execution providers for a session: CUDA first when asked for and available.

    Without a CUDA provider, one warning (logged once per process) and the CPU.
    """
    if use_cuda:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        _warn_once(CUDA_MISSING)
    return ["CPUExecutionProvider"]


def check_providers(sess: ort.InferenceSession, use_cuda: bool) -> ort.InferenceSession:
    """Warn once when CUDA was asked for and available but the session did not get it
    (onnxruntime-gpu installed, but no GPU or CUDA/cuDNN libraries at run time)."""
    if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers() \
            and "CUDAExecutionProvider" not in sess.get_providers():
        _warn_once("use_cuda=True: CUDAExecutionProvider is installed but could not start (no GPU, or "
                   "CUDA/cuDNN libraries missing); using the CPU")
    return sess


@functools.cache
def channel_block(use_cuda: bool = False) -> int:
    """The channel multiple this ONNX Runtime build runs convolutions fastest at.

    CPU: the channel block of ORT's NCHWc layout (8 with AVX2, 16 with AVX-512), read from
    the filter ORT builds for a probe Conv with one output channel (it pads the output
    channels to the block). A conv whose input channels are not aligned to the layout
    falls back to im2col + GEMM with layout reorders around it, and output channels off
    the block are computed padded; on the anchor, weight-SVD splits with ranks off the
    block ran 0.90 of the original's time at batch 64 for 0.49 of its MACs, on the block
    0.42 for 0.39. 1 where ORT has no blocked layout (nothing to align to). CUDA: 8
    (cuDNN's tensor-core kernels want channel counts in multiples of 8).
    """
    if use_cuda:
        return 8
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [weight])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    probe.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        opts = options(1)
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        try:
            ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(opts.optimized_model_filepath)
        except Exception:  # noqa: BLE001 - a build that cannot say: assume no blocked layout
            return 1
    shapes = {t.name: list(t.dims) for t in optimized.graph.initializer}
    for node in optimized.graph.node:
        if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv" and node.input[1] in shapes:
            return max(1, int(shapes[node.input[1]][0]))
    return 1


def options(threads: int | None = None) -> ort.SessionOptions:
    """Session options for the library's own sessions: quiet, `threads` intra-op threads."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def session(model: onnx.ModelProto | str, use_cuda: bool = False, threads: int | None = None,
            extra_outputs: list[str] | None = None, config: dict[str, str] | None = None) -> ort.InferenceSession:
    """An InferenceSession for a ModelProto or a path (`config`: session config entries)."""
    opts = options(threads)
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    if isinstance(model, onnx.ModelProto) and extra_outputs:
        model = with_outputs(model, extra_outputs)
    try:
        if isinstance(model, onnx.ModelProto):
            if ir.is_file_backed(model) or ir.too_big(model):  # ORT needs a file (relative locations)
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "model.onnx")
                    ir.save(model, path, external=True, check=False)
                    return check_providers(ort.InferenceSession(path, opts, providers=providers(use_cuda)), use_cuda)
            return check_providers(ort.InferenceSession(model.SerializeToString(), opts, providers=providers(use_cuda)),
                                   use_cuda)
        return check_providers(ort.InferenceSession(str(model), opts, providers=providers(use_cuda)), use_cuda)
    except Exception as exc:
        raise CompressionError(f"ONNX Runtime cannot load the model: {exc}") from None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the intermediate tensors `names`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def shapes_by_execution(model: onnx.ModelProto, feed: dict[str, np.ndarray],
                        wanted: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors `wanted` (name -> ONNX elem type), subgraph tensors included,
    found by running `model` once on `feed` on the CPU (`ir.expose_tensors`). A tensor in an
    If branch that did not run, or in a loop that ran no iteration, is left out."""
    exposed, where = ir.expose_tensors(model, wanted)
    if not where:
        return {}
    names = list(dict.fromkeys(out for out, _ in where.values()))
    sess = session(exposed, threads=1)
    values = dict(zip(names, sess.run(names, feed)))
    shapes = {}
    for name, (out, drop) in where.items():
        if not isinstance(values[out], np.ndarray):  # a sequence or map: no tensor shape
            continue
        shape = tuple(int(d) for d in values[out].shape)
        if len(shape) >= drop and 0 not in shape:
            shapes[name] = shape[drop:]
    return shapes


def evaluate(model: onnx.ModelProto, eval_callback: EvalCallback, iterations: int | None,
             use_cuda: bool) -> float:
    """Score `model` with the user's callback: eval_callback(session, iterations, use_cuda)."""
    check_iterations(iterations)
    sess = session(model, use_cuda)
    return score_of(eval_callback(sess, iterations, use_cuda))


def check_iterations(iterations) -> None:
    """`eval_iterations`: None (all the data) or an integer >= 1 (ParameterError otherwise)."""
    if iterations is None:
        return
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ParameterError(f"eval_iterations must be None (all the data) or an integer >= 1, got {iterations!r}")


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) > 0:
        return f"an array of shape {tuple(shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def score_of(value) -> float:
    """The eval callback's return as a float: one finite real number (a Python or numpy
    number, or a 0-d array/tensor); ParameterError naming what it returned otherwise."""
    bad = value is None or isinstance(value, (str, bytes, bool, np.bool_))
    shape = getattr(value, "shape", None)
    if not bad and shape is not None and len(shape) > 0:
        bad = True  # an array of one or several values: say which one is the score
    score = None
    if not bad:
        try:
            score = float(value)
        except (TypeError, ValueError):
            bad = True
    if bad:
        raise ParameterError(f"eval_callback returned {_describe(value)}; it must return one number "
                             "(higher is better), e.g. float(accuracy)")
    if not np.isfinite(score):
        raise ParameterError(f"eval_callback returned {score}; it must return a finite number "
                             "(higher is better)")
    return score


def checked_callback(eval_callback):
    """`eval_callback` with its return checked (score_of) wherever it is called."""
    if eval_callback is None or getattr(eval_callback, "_score_checked", False):
        return eval_callback
    if not callable(eval_callback):
        raise ParameterError(f"eval_callback must be callable as eval_callback(session, iterations, use_cuda), "
                             f"got {type(eval_callback).__name__}")

    @functools.wraps(eval_callback)
    def checked(session, iterations, use_cuda):
        return score_of(eval_callback(session, iterations, use_cuda))

    checked._score_checked = True
    return checked


class WeightSwapper:
    """Sessions of one model with some initializers replaced, without rebuilding it.

    The named main-graph initializers are marked as external data in a prepared copy
    serialised once; each `session(overrides)` then hands ONNX Runtime the current or
    overridden arrays from memory (`add_external_initializers`), so the candidate keeps
    every graph optimisation of a normal session (constant folding, fusions, prepacking).
    """

    def __init__(self, model: onnx.ModelProto, names: list[str], use_cuda: bool = False,
                 threads: int | None = None):
        inits = {t.name: t for t in model.graph.initializer}
        missing = [n for n in names if n not in inits]
        if missing:
            raise CompressionError(f"cannot swap {missing}: not initializers of the main graph")
        self.values = {n: ir.to_array(inits[n]) for n in names}
        prepared = onnx.ModelProto()
        prepared.CopyFrom(model)
        for t in prepared.graph.initializer:
            if t.name in self.values:
                nbytes = self.values[t.name].nbytes
                for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
                    t.ClearField(field)
                del t.external_data[:]
                for key, value in (("location", "onnx_compress.swap"), ("offset", "0"), ("length", str(nbytes))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                t.data_location = onnx.TensorProto.EXTERNAL
        self._folder = None  # file-backed models (over 2 GB): ORT reads a saved copy
        if ir.is_file_backed(prepared):
            self._folder = tempfile.TemporaryDirectory(prefix="onnx_compress_swap_")
            self.model_bytes = os.path.join(self._folder.name, "model.onnx")
            ir.save(prepared, self.model_bytes, external=True, check=False)
        else:
            self.model_bytes = prepared.SerializeToString()
        self.use_cuda = use_cuda
        self.threads = threads

    def session(self, overrides: dict | None = None) -> ort.InferenceSession:
        """A session of the model with `overrides` (name -> same-shaped array) swapped in."""
        overrides = overrides or {}
        opts = options(self.threads)
        names = list(self.values)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(overrides.get(n, self.values[n])))
                  for n in names]
        opts.add_external_initializers(names, values)
        sess = ort.InferenceSession(self.model_bytes, opts, providers=providers(self.use_cuda))
        sess._onnx_compress_keepalive = values  # the session reads these buffers
        return check_providers(sess, self.use_cuda)


# ------------------------------------------------------------------ prefix caching
def _feed_key(feed: dict) -> tuple:
    """A cheap fingerprint of a feed: names, shapes, dtypes and a strided sample of values.

    Equal feeds have equal keys; feeds with equal keys are told apart by `_same_feed`.
    Hashing every byte of every batch cost as much as a fifth of a small model's
    suffix run, for each candidate.
    """
    parts = []
    for name in sorted(feed):
        arr = np.asarray(feed[name])
        flat = arr.reshape(-1)
        step = max(1, flat.size // 256)
        parts.append((name, arr.shape, str(arr.dtype), flat[::step].tobytes()))
    return tuple(parts)


def _same_feed(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        x, y = np.asarray(x), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not np.array_equal(x, y) and not (x.dtype.kind in "fc" and np.array_equal(x, y, equal_nan=True)):
            return False
    return True


def suffix_model(model: onnx.ModelProto, start_nodes: set[str]) -> tuple[onnx.ModelProto, list[str]] | None:
    """The part of `model` that depends on the nodes `start_nodes`, and its boundary inputs.

    Boundary: tensors the suffix reads that the rest of the graph (or the graph inputs)
    computes, plus graph outputs the suffix does not reach. None when the graph has
    subgraph nodes in the suffix or the extraction fails (callers use the full model).
    """
    import onnx.utils

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    suffix, stack = set(), [n for n in graph.node if n.name in start_nodes]
    while stack:
        node = stack.pop()
        if id(node) in suffix:
            continue
        suffix.add(id(node))
        for out in node.output:
            stack.extend(consumers.get(out, []))
    nodes = [n for n in graph.node if id(n) in suffix]
    if not nodes or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for n in nodes for a in n.attribute):
        return None
    produced = {o for n in nodes for o in n.output}
    inits = {t.name for t in graph.initializer}
    boundary = sorted({i for n in nodes for i in n.input if i and i not in produced and i not in inits})
    boundary += [o.name for o in graph.output if o.name not in produced and o.name not in boundary]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        sub = onnx.utils.Extractor(inferred).extract_model(boundary, [o.name for o in graph.output])
    except Exception:
        return None
    return sub, boundary


class _FullModelView:
    """Presents the full model's inputs and outputs; everything else from `_session`."""

    _cache: PrefixCache
    _session: ort.InferenceSession

    def get_inputs(self):
        return self._cache.inputs

    def get_outputs(self):
        return self._cache.outputs

    def __getattr__(self, name):
        return getattr(self._session, name)


class _Recorder(_FullModelView):
    """Runs the full model and stores the boundary tensors of every unit per feed."""

    def __init__(self, cache: PrefixCache, session: ort.InferenceSession):
        self._cache, self._session = cache, session

    def run(self, output_names, input_feed, run_options=None):
        names = [o.name for o in self._session.get_outputs()]
        wanted = list(dict.fromkeys(list(self._cache.model_outputs) + self._cache.needed))
        values = self._session.run(wanted, input_feed, run_options)
        by_name = dict(zip(wanted, values))
        self._cache.store(input_feed, by_name)
        keys = names if output_names is None else list(output_names)
        return [by_name[k] for k in keys]


class _SuffixSession(_FullModelView):
    """Looks like a session of the candidate model; runs only the suffix on cached inputs."""

    def __init__(self, cache: PrefixCache, unit: str, session: ort.InferenceSession, fallback):
        self._cache, self._unit, self._session, self._fallback = cache, unit, session, fallback
        self._full = None

    def run(self, output_names, input_feed, run_options=None):
        boundary = self._cache.lookup(self._unit, input_feed)
        if boundary is None:  # data the baseline did not see: run the whole candidate model
            if self._full is None:
                self._full = self._fallback()
            return self._full.run(output_names, input_feed, run_options)
        keys = [o.name for o in self._cache.outputs] if output_names is None else list(output_names)
        return self._session.run(keys, boundary, run_options)


class PrefixCache:
    """Scores candidates by running only the part of the model after the changed layers.

    The baseline evaluation goes through `recording_session()`, which stores, for each
    feed the evaluator uses, every unit's boundary tensors (the activations its suffix
    reads). A candidate session then runs the unit's suffix model with the candidate
    weights swapped in, fed from that cache; outputs are those of the full candidate
    model. Feeds the baseline did not see fall back to the full model. Units whose
    cached activations would pass `max_bytes` in total are not cached.
    """

    def __init__(self, model: onnx.ModelProto, units: dict[str, list[str]], use_cuda: bool = False,
                 threads: int | None = None, max_bytes: int = 2 * 2**30):
        self.use_cuda, self.threads = use_cuda, threads
        self.model_outputs = [o.name for o in model.graph.output]
        consumers = {}
        for node in model.graph.node:
            for i in node.input:
                consumers.setdefault(i, set()).add(node.name)
        self.plans: dict[str, tuple] = {}
        for unit, weights in units.items():
            starts = set().union(*(consumers.get(w, set()) for w in weights)) if weights else set()
            plan = suffix_model(model, starts) if starts else None
            if plan is not None:
                self.plans[unit] = plan
        self.needed = sorted({b for _, boundary in self.plans.values() for b in boundary})
        self.recorder_session = session(model, use_cuda, threads, extra_outputs=self.needed)
        # the model's own outputs come first; the recorded extras follow them
        self.inputs = self.recorder_session.get_inputs()
        self.outputs = self.recorder_session.get_outputs()[:len(self.model_outputs)]
        self.max_bytes, self.used = max_bytes, 0
        self.store_by_feed: dict[tuple, list[tuple[dict, dict]]] = {}
        self.swappers: dict[str, WeightSwapper] = {}

    def recording_session(self) -> _Recorder:
        return _Recorder(self, self.recorder_session)

    def store(self, feed: dict, values: dict[str, np.ndarray]) -> None:
        size = sum(v.nbytes for k, v in values.items() if k in self.needed)
        if self.used + size > self.max_bytes:
            return
        self.used += size
        entries = self.store_by_feed.setdefault(_feed_key(feed), [])
        copy = {k: np.array(v, copy=True) for k, v in feed.items()}  # the caller may reuse its buffers
        entries.append((copy, {k: values[k] for k in self.needed}))

    def lookup(self, unit: str, feed: dict) -> dict | None:
        for stored, values in self.store_by_feed.get(_feed_key(feed), ()):
            if _same_feed(stored, feed):
                return {k: values[k] for k in self.plans[unit][1]}
        return None

    def candidate(self, unit: str, overrides: dict, fallback) -> object:
        """A session-like object for the model with `overrides` swapped in at `unit`."""
        if unit not in self.plans:
            return fallback()
        if unit not in self.swappers:
            sub = self.plans[unit][0]
            names = [n for n in overrides if n in {t.name for t in sub.graph.initializer}]
            self.swappers[unit] = WeightSwapper(sub, names, self.use_cuda, self.threads)
        swapper = self.swappers[unit]
        sess = swapper.session({k: v for k, v in overrides.items() if k in swapper.values})
        return _SuffixSession(self, unit, sess, fallback)


# ------------------------------------------------------------------------------ timing
def runner(model: onnx.ModelProto, feeds: dict[str, np.ndarray], use_cuda: bool = False,
           threads: int | None = None) -> Callable[[], None]:
    """A zero-argument callable that runs `model` once on `feeds`, for timing.

    Inputs and outputs are bound once (I/O binding) to buffers that live as long as the
    callable, on the device with CUDAExecutionProvider: a run's time is the model's, not
    output allocation or host<->device copies. The intra-op threads stop spinning when a
    run returns, so sessions timed in turn do not take the cores from each other
    (spinning within a run is kept).
    """
    sess = session(model, use_cuda, threads, config={"session.force_spinning_stop": "1"})
    names = [o.name for o in sess.get_outputs()]
    shapes = [np.asarray(v) for v in sess.run(names, feeds)]  # output shapes and dtypes
    device = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    binding = sess.io_binding()
    keep = []
    for name, value in feeds.items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
        binding.bind_ortvalue_input(name, keep[-1])
    for name, out in zip(names, shapes):
        keep.append(ort.OrtValue.ortvalue_from_shape_and_type(out.shape, out.dtype, device, 0))
        binding.bind_ortvalue_output(name, keep[-1])

    def run() -> None:
        sess.run_with_iobinding(binding)

    run.keepalive = (sess, binding, keep)  # the binding reads and writes these buffers
    return run


# ------------------------------------------------------------ what this ORT loads
@functools.lru_cache(maxsize=None)
def ort_refuses(ir_version: int, opset: int) -> str | None:
    """(validate.RUNTIME_PROBE) None when this ONNX Runtime loads a one-node model of `opset` / `ir_version`; else
    a phrase naming its version and the newest opset it loads. A few ms, once per pair."""
    def loads(ir: int, version: int) -> bool:
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)],
                                       ir_version=ir)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:
            return False

    if loads(ir_version, opset):
        return None
    newest = next((v for v in range(opset - 1, validate._ORT_SAFE_OPSET - 1, -1) if loads(min(ir_version, 10), v)), None)
    upto = f" (up to opset {newest})" if newest is not None else ""
    return f"the installed ONNX Runtime {getattr(ort, '__version__', '?')} supports{upto}"


def symbolic_shapes(proto: onnx.ModelProto, dims: dict) -> dict:
    """Tensor name -> concrete shape, by ONNX Runtime's symbolic shape inference on `proto`
    with its inputs fixed to `dims` (layers: where onnx's inference leaves shapes unknown)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = ir.with_input_dims(proto, dims)
    del model.graph.value_info[:]
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    return ir.concrete_shapes(list(model.graph.value_info) + list(model.graph.output))


validate.RUNTIME_PROBE = ort_refuses
