"""onnx_compress.runtime on its own: sessions, evaluation, score checks, weight swapping,
prefix caching, shapes by execution, timing runners."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
from onnx_compress import runtime
from onnx_compress.errors import CompressionError, ParameterError

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _feed(batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 1, 12, 12)).astype(np.float32)}


def _with_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """A rebuilt copy of `model` with initializer `name` replaced by `value`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name == name:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
    return out


def _loop_model() -> onnx.ModelProto:
    """Loop of M iterations; its body computes t = v + 1 (the tensor probed), carries t and
    scans relu(t)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["t"], name="add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
         helper.make_node("Identity", ["t"], ["v_out"], name="carry"),
         helper.make_node("Relu", ["t"], ["scan"], name="relu")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [2, 3])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "v0"], ["v_final", "scans"], name="loop", body=body)],
        "loop_graph",
        [helper.make_tensor_value_info("M", TensorProto.INT64, []),
         helper.make_tensor_value_info("v0", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("v_final", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("scans", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.float32(1.0), "one")])
    return b._make_model(graph)


# ------------------------------------------------------------------------ sessions
def test_session_from_a_proto_or_a_path_matches_a_plain_session(tmp_path):
    model = b.cnn_model()
    feed = _feed()
    expected = b.run(model, feed)[0]
    sess = runtime.session(model, threads=1)
    assert isinstance(sess, ort.InferenceSession)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(sess.run(None, feed)[0], expected)
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    np.testing.assert_array_equal(runtime.session(str(path)).run(None, feed)[0], expected)
    spin = runtime.session(model, config={"session.force_spinning_stop": "1"})
    np.testing.assert_array_equal(spin.run(None, feed)[0], expected)


def test_session_extra_outputs_and_with_outputs_expose_intermediates():
    model = b.cnn_model()
    feed = _feed()
    sess = runtime.session(model, extra_outputs=["r2", "y"])  # y is an output already: not twice
    assert [o.name for o in sess.get_outputs()] == ["y", "r2"]
    y, r2 = sess.run(None, feed)
    assert r2.shape == (3, 16, 6, 6) and (r2 >= 0).all()
    np.testing.assert_array_equal(y, b.run(model, feed)[0])
    # the rest of the network run on the exposed r2 gives y
    suffix, boundary = runtime.suffix_model(model, {"conv3"})
    assert boundary == ["r2"]
    np.testing.assert_allclose(runtime.session(suffix).run(None, {"r2": r2})[0], y, **TOL)
    extended = runtime.with_outputs(model, ["c1", "y"])
    assert [o.name for o in extended.graph.output] == ["y", "c1"]
    assert [o.name for o in model.graph.output] == ["y"]  # a copy: the original is unchanged


def test_session_refusal_is_a_compression_error():
    model = b.cnn_model()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(CompressionError, match="ONNX Runtime cannot load the model"):
        runtime.session(model)


def test_options_and_providers_on_this_machine(caplog):
    opts = runtime.options(2)
    assert opts.intra_op_num_threads == 2 and opts.log_severity_level == 3
    assert runtime.options().intra_op_num_threads == 0  # ORT's default: all cores
    assert runtime.providers() == ["CPUExecutionProvider"]
    sess = runtime.session(b.gemm_model())
    assert runtime.check_providers(sess, False) is sess
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert runtime.providers(True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        runtime._warned.discard(runtime.CUDA_MISSING)
        with caplog.at_level(logging.WARNING, logger="onnx_compress"):
            assert runtime.providers(True) == ["CPUExecutionProvider"]
            assert runtime.providers(True) == ["CPUExecutionProvider"]
        assert [r.getMessage() for r in caplog.records].count(runtime.CUDA_MISSING) == 1  # once per process
    block = runtime.channel_block()
    assert isinstance(block, int) and block >= 1
    assert runtime.channel_block() == block and runtime.channel_block(use_cuda=True) == 8


# ----------------------------------------------------------------------- evaluation
def test_evaluate_calls_the_callback_with_a_session_of_the_model():
    model = b.cnn_model()
    feed = _feed()
    expected = b.run(model, feed)[0]
    calls = []

    def callback(sess, iterations, use_cuda):
        calls.append((iterations, use_cuda))
        return np.float32(sess.run(None, feed)[0].sum())

    score = runtime.evaluate(model, callback, 3, False)
    assert type(score) is float
    assert score == pytest.approx(float(expected.sum()), rel=1e-6)
    assert calls == [(3, False)]
    with pytest.raises(ParameterError, match="eval_iterations"):
        runtime.evaluate(model, callback, 0, False)
    assert len(calls) == 1  # refused before any evaluation
    with pytest.raises(ParameterError, match=r"an array of shape \(3, 10\)"):
        runtime.evaluate(model, lambda s, i, c: s.run(None, feed)[0], None, False)


@pytest.mark.parametrize("ok", [None, 1, 7, np.int64(3)])
def test_check_iterations_accepts(ok):
    runtime.check_iterations(ok)


@pytest.mark.parametrize("bad", [0, -1, True, np.bool_(True), 2.0, "3"])
def test_check_iterations_refuses(bad):
    with pytest.raises(ParameterError, match="eval_iterations must be None .* or an integer >= 1"):
        runtime.check_iterations(bad)


def test_score_of_accepts_one_finite_number_and_names_anything_else():
    assert runtime.score_of(3) == 3.0 and type(runtime.score_of(3)) is float
    assert runtime.score_of(np.float32(0.25)) == 0.25
    assert runtime.score_of(np.array(0.5)) == 0.5  # a 0-d array
    for bad, said in [(None, "NoneType None"), ("0.9", "str '0.9'"), (True, "bool True"),
                      (np.bool_(False), "bool (np\\.)?False"), (np.array([0.9]), r"an array of shape \(1,\)"),
                      ([0.1, 0.2], r"list \[0.1, 0.2\]"), (object(), "object")]:
        with pytest.raises(ParameterError, match=f"eval_callback returned {said}.*must return one number"):
            runtime.score_of(bad)
    for bad in (float("nan"), np.inf, -np.inf):
        with pytest.raises(ParameterError, match="must return a finite number"):
            runtime.score_of(bad)


def test_checked_callback_wraps_once_and_refuses_what_is_not_callable():
    assert runtime.checked_callback(None) is None
    with pytest.raises(ParameterError, match="eval_callback must be callable.*got int"):
        runtime.checked_callback(5)

    def my_eval(sess, iterations, use_cuda):
        return sess

    checked = runtime.checked_callback(my_eval)
    assert checked.__name__ == "my_eval"
    assert runtime.checked_callback(checked) is checked
    assert checked(np.float64(0.75), None, False) == 0.75
    with pytest.raises(ParameterError, match="eval_callback returned NoneType None"):
        checked(None, None, False)


# -------------------------------------------------------------------- weight swapping
def test_weight_swapper_matches_a_rebuilt_model():
    model = b.cnn_model()
    feed = _feed()
    before = model.SerializeToString()
    swapper = runtime.WeightSwapper(model, ["conv2.weight", "fc.weight"], threads=1)
    assert model.SerializeToString() == before  # the model itself is not touched
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(swapper.values) == {"conv2.weight", "fc.weight"}
    np.testing.assert_array_equal(swapper.values["conv2.weight"], originals["conv2.weight"])
    np.testing.assert_allclose(swapper.session().run(None, feed)[0], b.run(model, feed)[0], **TOL)
    rng = np.random.default_rng(5)
    new = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    swapped = swapper.session({"conv2.weight": new}).run(None, feed)[0]
    rebuilt = b.run(_with_initializer(model, "conv2.weight", new), feed)[0]
    np.testing.assert_allclose(swapped, rebuilt, **TOL)
    assert np.abs(swapped - b.run(model, feed)[0]).max() > 1e-2  # the swap changed the outputs
    fc = rng.standard_normal((10, 16)).astype(np.float32)
    both = swapper.session({"conv2.weight": new, "fc.weight": fc}).run(None, feed)[0]
    np.testing.assert_allclose(both, b.run(_with_initializer(_with_initializer(model, "conv2.weight", new),
                                                            "fc.weight", fc), feed)[0], **TOL)
    # each session gets its own weights: the earlier override does not leak into a later one
    np.testing.assert_allclose(swapper.session().run(None, feed)[0], b.run(model, feed)[0], **TOL)


def test_weight_swapper_refuses_names_that_are_not_main_graph_initializers():
    with pytest.raises(CompressionError, match=r"cannot swap \['r1'\]: not initializers"):
        runtime.WeightSwapper(b.cnn_model(), ["conv1.weight", "r1"])
    with pytest.raises(CompressionError, match="else_conv.weight"):
        runtime.WeightSwapper(b.if_branch_model(), ["else_conv.weight"])  # a subgraph's own initializer


# ---------------------------------------------------------------------- prefix caching
def test_suffix_model_is_what_depends_on_the_start_nodes():
    model = b.cnn_model()
    sub, boundary = runtime.suffix_model(model, {"dw"})
    assert boundary == ["r3"]
    assert [n.name for n in sub.graph.node] == ["dw", "gap", "flatten", "fc"]
    assert {t.name for t in sub.graph.initializer} == {"dw.weight", "dw.bias", "fc.weight", "fc.bias"}
    assert [o.name for o in sub.graph.output] == ["y"]
    assert runtime.suffix_model(b.if_branch_model(), {"branch"}) is None  # subgraph nodes: no suffix
    assert runtime.suffix_model(model, {"no_such_node"}) is None


def test_prefix_cache_candidates_equal_the_rebuilt_full_model():
    model = b.cnn_model()
    feed, unseen = _feed(seed=0), _feed(seed=1)
    cache = runtime.PrefixCache(model, {"u3": ["conv3.weight"], "ufc": ["fc.weight"], "empty": []}, threads=1)
    assert set(cache.plans) == {"u3", "ufc"}
    assert cache.needed == ["flat", "r2"]
    recorder = cache.recording_session()
    assert [i.name for i in recorder.get_inputs()] == ["x"] and [o.name for o in recorder.get_outputs()] == ["y"]
    np.testing.assert_array_equal(recorder.run(["y"], feed)[0], b.run(model, feed)[0])
    np.testing.assert_array_equal(recorder.run(None, feed)[0], b.run(model, feed)[0])
    assert cache.lookup("u3", feed).keys() == {"r2"} and cache.lookup("u3", unseen) is None
    new = np.random.default_rng(7).standard_normal((16, 16, 1, 1)).astype(np.float32)
    rebuilt = _with_initializer(model, "conv3.weight", new)
    fallbacks = []

    def fallback():
        fallbacks.append(1)
        return runtime.session(rebuilt)

    cand = cache.candidate("u3", {"conv3.weight": new}, fallback)
    assert [o.name for o in cand.get_outputs()] == ["y"]
    np.testing.assert_allclose(cand.run(None, feed)[0], b.run(rebuilt, feed)[0], **TOL)
    np.testing.assert_allclose(cand.run(["y"], feed)[0], b.run(rebuilt, feed)[0], **TOL)
    assert fallbacks == []  # served from the cache
    np.testing.assert_allclose(cand.run(None, unseen)[0], b.run(rebuilt, unseen)[0], **TOL)
    assert fallbacks == [1]  # a feed the baseline did not see runs the full candidate
    fc = np.random.default_rng(8).standard_normal((10, 16)).astype(np.float32)
    np.testing.assert_allclose(cache.candidate("ufc", {"fc.weight": fc}, fallback).run(None, feed)[0],
                               b.run(_with_initializer(model, "fc.weight", fc), feed)[0], **TOL)
    marker = object()
    assert cache.candidate("empty", {}, lambda: marker) is marker  # no suffix plan: the full model


def test_prefix_cache_recording_session_returns_only_the_model_outputs():
    """run(None, feed) returns what a plain session returns (the recorded boundary tensors
    stay in the cache), and a list of names returns those."""
    model = b.cnn_model()
    feed = _feed()
    cache = runtime.PrefixCache(model, {"u3": ["conv3.weight"]})
    recorder = cache.recording_session()
    plain = runtime.session(model)
    got = recorder.run(None, feed)
    assert len(got) == len(recorder.get_outputs()) == len(plain.get_outputs()) == 1
    np.testing.assert_array_equal(got[0], plain.run(None, feed)[0])
    name = plain.get_outputs()[0].name
    named = recorder.run([name], feed)
    assert len(named) == 1
    np.testing.assert_array_equal(named[0], plain.run([name], feed)[0])
    assert cache.lookup("u3", feed) is not None  # the boundary was still recorded


def test_prefix_cache_over_its_memory_and_disk_budgets_stores_nothing():
    model = b.cnn_model()
    feed = _feed()
    cache = runtime.PrefixCache(model, {"u3": ["conv3.weight"]}, max_bytes=0, disk_bytes=0)
    np.testing.assert_array_equal(cache.recording_session().run(None, feed)[0], b.run(model, feed)[0])
    assert cache.used == 0 and cache.lookup("u3", feed) is None
    full = runtime.session(model)
    np.testing.assert_array_equal(cache.candidate("u3", {}, lambda: full).run(None, feed)[0],
                                  full.run(None, feed)[0])


# ------------------------------------------------------------------ shapes by execution
def test_shapes_by_execution_main_graph_and_if_branches():
    model = b.cnn_model()
    shapes = runtime.shapes_by_execution(model, _feed(batch=5), {"c2": 0, "flat": 0, "absent": 0})
    assert shapes == {"c2": (5, 16, 6, 6), "flat": (5, 16)}
    assert runtime.shapes_by_execution(model, _feed(), {"absent": 0}) == {}
    branch = b.if_branch_model()
    x = np.zeros((1, 3, 8, 8), np.float32)
    wanted = {"then_out": TensorProto.FLOAT, "else_out": TensorProto.FLOAT}
    assert runtime.shapes_by_execution(branch, {"x": x, "cond": np.array(True)}, wanted) == {"then_out": (1, 8, 8, 8)}
    assert runtime.shapes_by_execution(branch, {"x": x, "cond": np.array(False)}, wanted) == {"else_out": (1, 8, 8, 8)}


def test_shapes_by_execution_in_a_loop_body_drops_the_iteration_axis():
    model = _loop_model()
    v0 = np.zeros((2, 3), np.float32)
    assert runtime.shapes_by_execution(model, {"M": np.array(4, np.int64), "v0": v0}, {"t": TensorProto.FLOAT}) \
        == {"t": (2, 3)}
    # no iteration ran: no shape to report
    assert runtime.shapes_by_execution(model, {"M": np.array(0, np.int64), "v0": v0}, {"t": TensorProto.FLOAT}) == {}
    out = b.run(model, {"M": np.array(4, np.int64), "v0": v0})
    np.testing.assert_array_equal(out[0], np.full((2, 3), 4.0, np.float32))  # the probe left the model alone


# ------------------------------------------------------------------------------ timing
def test_runner_runs_the_model_into_bound_buffers():
    model = b.cnn_model()
    feed = _feed()
    run = runtime.runner(model, feed, threads=1)
    run()
    run()
    sess, _, buffers = run.keepalive
    assert [o.name for o in sess.get_outputs()] == ["y"]
    np.testing.assert_array_equal(buffers[-1].numpy(), b.run(model, feed)[0])


def test_incomplete_symbolic_inference_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """ORT's SymbolicShapeInference.infer_shapes saves sym_shape_infer_temp.onnx (and uuid
    .data files) into the current directory when inference is incomplete; ours must not."""
    from onnxruntime.tools import symbolic_shape_infer as ssi

    from onnx_compress.errors import CompressionError
    from onnx_compress.runtime import sessions

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ssi.SymbolicShapeInference, "_infer_impl", lambda self: setattr(self, "run_", False) or False)
    with pytest.raises(CompressionError, match="incomplete"):
        sessions._infer_symbolic(ssi.SymbolicShapeInference, b.cnn_model())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(Exception, match="Incomplete"):  # what the public call does, for contrast
        ssi.SymbolicShapeInference.infer_shapes(b.cnn_model(), auto_merge=True)
    assert (tmp_path / "sym_shape_infer_temp.onnx").exists()
