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
            extra_outputs: list[str] | None = None, config: dict[str, str] | None = None,
            arena: bool = True) -> ort.InferenceSession:
    """An InferenceSession for a ModelProto or a path (`config`: session config entries;
    `arena` False: no CPU memory arena, so a run's memory is freed when it ends)."""
    opts = options(threads)
    opts.enable_cpu_mem_arena = arena
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


_ITEM_BYTES = {"float": 4, "float16": 2, "double": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1,
               "int16": 2, "uint16": 2, "bfloat16": 2, "uint32": 4, "uint64": 8}


def output_bytes(sess: ort.InferenceSession, feed: dict) -> dict[str, int | None]:
    """Each output's bytes on `feed` from the shapes ONNX Runtime infers, its symbolic
    dimensions bound by the feed's (None where a dimension or the type is unknown)."""
    dims = {}
    for arg in sess.get_inputs():
        shape = np.shape(feed[arg.name]) if arg.name in feed else ()
        for axis, dim in enumerate(arg.shape or ()):
            if isinstance(dim, str) and axis < len(shape):
                dims[dim] = shape[axis]
    sizes = {}
    for arg in sess.get_outputs():
        item = _ITEM_BYTES.get(arg.type[len("tensor("):-1]) if arg.type.startswith("tensor(") else None
        count = 1
        for dim in arg.shape or [None]:
            dim = dims.get(dim) if isinstance(dim, str) else dim
            count = None if count is None or dim is None else count * int(dim)
        sizes[arg.name] = None if item is None or count is None else count * item
    return sizes


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
    model = _infer_symbolic(SymbolicShapeInference, model)
    return ir.concrete_shapes(list(model.graph.value_info) + list(model.graph.output))


def _infer_symbolic(cls, model: onnx.ModelProto) -> onnx.ModelProto:
    """`cls.infer_shapes(model, auto_merge=True)` without its debugging side effect: when
    inference is incomplete, ORT's infer_shapes saves "sym_shape_infer_temp.onnx" and
    uuid-named .data files into the *current directory* before raising. The same steps are
    run here and only the exception is kept (the public call where ORT changed its steps)."""
    steps = ("_preprocess", "_infer_impl", "_update_output_from_vi")
    if not all(hasattr(cls, step) for step in steps):
        return cls.infer_shapes(model, auto_merge=True)
    if ir.opset(model) < 7:
        raise CompressionError("symbolic shape inference needs opset 7 or above")
    inference = cls(2**31 - 1, True, False, 0)
    inference._preprocess(model)
    done = False
    while inference.run_:
        done = inference._infer_impl()
    inference._update_output_from_vi()
    if not done:
        raise CompressionError("incomplete symbolic shape inference")
    return inference.out_mp_


validate.RUNTIME_PROBE = ort_refuses


class _QuietRuntime:
    """(ir.model.RUNTIME_QUIET) ONNX Runtime's logger at errors only while graph-surgeon folds
    constants with it (its optimizer's warnings are not the user's), then back to ORT's default."""

    def __enter__(self):
        ort.set_default_logger_severity(3)

    def __exit__(self, *exc) -> bool:
        ort.set_default_logger_severity(2)  # ORT's default
        return False


ir.model.RUNTIME_QUIET = _QuietRuntime
