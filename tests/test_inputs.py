"""Calibration and evaluation data fed to inputs as exporters declare them: batch axes
other than 0 (recurrent states), scalars, a static batch, other dtypes, partial
input_shape (data.model_feeds and its consumers)."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import mac_count
import onnx_compress as oc
from onnx_compress import data as data_mod
from onnx_compress import runtime
from onnx_compress.errors import DataError, ParameterError
from onnx_compress.evaluators import accuracy, fidelity


# ---------------------------------------------------------------------------- models
class G:
    """A tiny graph builder with seeded weights."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def const(self, name, *shape, scale=0.5, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(self.rng.normal(0, scale, shape).astype(dtype), name))
        return name

    def node(self, op, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, c_in, c_out, name):
        return self.node("Conv", [x, self.const(name + ".w", c_out, c_in, 3, 3), self.const(name + ".b", c_out)],
                         name, kernel_shape=[3, 3], pads=[1] * 4)

    def gemm(self, x, k, n, name):
        return self.node("Gemm", [x, self.const(name + ".w", n, k), self.const(name + ".b", n)], name, transB=1)

    def features(self, x, mid=None):
        """conv1 -> [mid(x)] -> relu -> conv2 -> pooled (N, 8)."""
        x = self.conv(x, 3, 8, "conv1")
        if mid is not None:
            x = mid(x)
        x = self.node("Relu", [x], "relu1")
        x = self.conv(x, 8, 8, "conv2")
        x = self.node("GlobalAveragePool", [x], "gap")
        return self.node("Flatten", [x], "flat", axis=1)

    def model(self, inputs, out, out_shape, opset=17):
        graph = helper.make_graph(self.nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def vi(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def state_model():
    """x [B, 3, 8, 8] and a state [2, B, 8] (batch on axis 1), averaged over its first axis
    and added to the pooled features."""
    g = G()
    f = g.features("x")
    s = g.node("ReduceMean", ["state"], "smean", axes=[0], keepdims=0)
    y = g.gemm(g.node("Add", [f, s], "add"), 8, 4, "fc")
    return g.model([vi("x", ["B", 3, 8, 8]), vi("state", [2, "B", 8])], y, ["B", 4])


def gru_model():
    """A GRU (time-major X [T, B, 4]) with an initial state h [1, B, 6], then two Gemms."""
    g = G()
    g.const("W", 1, 18, 4), g.const("R", 1, 18, 6), g.const("Bg", 1, 36)
    g.nodes.append(helper.make_node("GRU", ["x", "W", "R", "Bg", "", "h"], ["Y", "Yh"], name="gru", hidden_size=6))
    g.inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    hidden = g.node("Squeeze", ["Yh", "axes0"], "squeeze")
    y = g.gemm(g.node("Relu", [g.gemm(hidden, 6, 8, "fc1")], "relu2"), 8, 4, "fc2")
    return g.model([vi("x", ["T", "B", 4]), vi("h", [1, "B", 6])], y, ["B", 4])


def scalar_model():
    """x [N, 3, 8, 8] with a scalar `gain` multiplied into conv1's output."""
    g = G()
    y = g.gemm(g.features("x", mid=lambda x: g.node("Mul", [x, "gain"], "scale")), 8, 4, "fc")
    return g.model([vi("x", ["N", 3, 8, 8]), vi("gain", [])], y, ["N", 4])


def static_model(batch=2):
    """A conv net exported at a static batch."""
    g = G()
    y = g.gemm(g.features("x"), 8, 4, "fc")
    return g.model([vi("x", [batch, 3, 8, 8])], y, [batch, 4])


def ids_model():
    """int64 token ids [N, 6] -> embedding (Gather) -> mean -> two Gemms."""
    g = G()
    g.const("emb", 10, 8)
    e = g.node("Gather", ["emb", "ids"], "embed", axis=0)
    m = g.node("ReduceMean", [e], "mean", axes=[1], keepdims=0)
    y = g.gemm(g.node("Relu", [g.gemm(m, 8, 8, "fc1")], "relu2"), 8, 4, "fc2")
    return g.model([vi("ids", ["N", 6], TensorProto.INT64)], y, ["N", 4])


def bias_model():
    """x [N, 3, H, W] (dynamic spatial dims) and a static constant input bias [1, 8]."""
    g = G()
    y = g.gemm(g.node("Add", [g.features("x"), "bias"], "add"), 8, 4, "fc")
    return g.model([vi("x", ["N", 3, "H", "W"]), vi("bias", [1, 8])], y, ["N", 4])


def rand(*shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(data_mod, "_warned", set())


# ---------------------------------------------------------------- batch axis not 0
def test_state_input_is_cut_along_its_own_batch_axis():
    model = state_model()
    specs = data_mod.model_inputs(model)
    assert data_mod.batch_axes(specs) == {"x": 0, "state": 1}
    data = {"x": rand(10, 3, 8, 8), "state": rand(2, 10, 8, seed=2)}
    feeds = list(data_mod.model_feeds(data, specs, batch_size=4))
    assert [f["state"].shape for f in feeds] == [(2, 4, 8), (2, 4, 8), (2, 2, 8)]
    np.testing.assert_array_equal(feeds[1]["state"], data["state"][:, 4:8])
    np.testing.assert_array_equal(feeds[1]["x"], data["x"][4:8])
    with pytest.raises(DataError, match=r"'x' 10 \(axis 0\), 'state' 9 \(axis 1\)"):
        list(data_mod.model_feeds({"x": data["x"], "state": data["state"][:, :9]}, specs))


@pytest.mark.parametrize("scheme", ["channel_pruning", "weight_svd"])
def test_state_model_compresses_with_data(scheme):
    model = state_model()
    data = {"x": rand(12, 3, 8, 8), "state": rand(2, 12, 8, seed=2)}
    out, stats = oc.compress(model, scheme, ratios=0.5, data=data, num_reconstruction_samples=200)
    assert stats.input_dims == {"x": (1, 3, 8, 8), "state": (2, 1, 8)}
    assert stats.mac_after < stats.mac_before == mac_count.count(model, stats.input_dims)[0]
    assert run(out, {"x": data["x"][:3], "state": data["state"][:, :3]}).shape == (3, 4)


def test_state_model_evaluators_and_auto_mode():
    model = state_model()
    data = {"x": rand(10, 3, 8, 8), "state": rand(2, 10, 8, seed=2)}
    logits = run(model, data)
    data["labels"] = logits.argmax(axis=1)
    data["labels"][:3] = (data["labels"][:3] + 1) % 4  # 7 of 10 right
    assert runtime.evaluate(model, accuracy(data, batch_size=4), None, False) == pytest.approx(0.7)
    out, stats = oc.compress_auto(model, "weight_svd", 0.8, fidelity(data, batch_size=4), candidates=3)
    assert stats.mac_ratio <= 0.8 and 0 < stats.final_score <= 1


def test_state_model_quantizes():
    model = state_model()
    data = {"x": rand(16, 3, 8, 8), "state": rand(2, 16, 8, seed=2)}
    q = oc.quantize(model, data)
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_gru_state_h_batch_on_axis_1():
    model = gru_model()
    assert data_mod.batch_axes(data_mod.model_inputs(model)) == {"x": 1, "h": 1}
    data = {"x": rand(5, 12, 4), "h": rand(1, 12, 6, seed=2)}
    out, stats = oc.compress(model, "weight_svd", ratios=0.5, data=data, eval_callback=fidelity(data, batch_size=5))
    assert stats.input_dims == {"x": (5, 1, 4), "h": (1, 1, 6)}
    assert stats.mac_after < stats.mac_before
    assert stats.baseline_score == 1.0 and 0 < stats.final_score <= 1
    assert run(out, {"x": data["x"][:, :3], "h": data["h"][:, :3]}).shape == (3, 4)


# -------------------------------------------------------------------------- scalars
@pytest.mark.parametrize("as_npz", [False, True])
def test_scalar_input_goes_with_every_batch(tmp_path, as_npz):
    model = scalar_model()
    data = {"x": rand(10, 3, 8, 8), "gain": np.array(2.0, np.float32)}
    feeds = list(data_mod.model_feeds(data, data_mod.model_inputs(model), batch_size=4))
    assert [f["x"].shape[0] for f in feeds] == [4, 4, 2]
    assert all(f["gain"].shape == () and f["gain"] == 2.0 for f in feeds)
    if as_npz:
        np.savez(tmp_path / "d.npz", **data)
        data = str(tmp_path / "d.npz")
    out, stats = oc.compress(model, "channel_pruning", ratios=0.5, data=data, num_reconstruction_samples=200,
                             eval_callback=fidelity(data, batch_size=4))
    assert stats.mac_after < stats.mac_before and stats.baseline_score == 1.0
    out, stats = oc.compress(model, "weight_svd", ratios=0.5, data=data)
    assert stats.mac_after < stats.mac_before


# --------------------------------------------------------------------- static batch
def test_static_batch_is_fed_in_model_sized_batches_and_costed_at_it(tmp_path):
    model = static_model(2)
    path = tmp_path / "six.npz"
    np.savez(path, x=rand(6, 3, 8, 8))
    true = mac_count.count(model, {"x": (2, 3, 8, 8)})[0]
    out, stats = oc.compress(model, "channel_pruning", ratios=1.0, data=str(path))
    assert stats.input_dims == {"x": (2, 3, 8, 8)}
    assert stats.mac_before == true and stats.mac_after == stats.mac_before
    out, stats = oc.compress(model, "weight_svd", ratios=0.5, data=str(path))
    assert stats.mac_before == true and stats.mac_after < true
    feeds = list(data_mod.model_feeds(str(path), data_mod.model_inputs(model)))
    assert [f["x"].shape for f in feeds] == [(2, 3, 8, 8)] * 3


def test_static_batch_evaluators_and_auto_mode(tmp_path, caplog):
    model = static_model(2)
    x = rand(7, 3, 8, 8)
    labels = np.concatenate([run(model, {"x": x[i:i + 2]}).argmax(axis=1) for i in (0, 2, 4)])
    labels[0] = (labels[0] + 1) % 4  # 5 of the 6 used samples right; the 7th is dropped
    data = {"x": x, "labels": np.append(labels, 0)}
    with caplog.at_level(logging.WARNING, logger="onnx_compress"):
        assert runtime.evaluate(model, accuracy(data), None, False) == pytest.approx(5 / 6)
    assert any("last 1 dropped" in r.getMessage() for r in caplog.records)
    out, stats = oc.compress_auto(model, "weight_svd", 0.8, fidelity({"x": x[:6]}), candidates=3)
    assert stats.mac_ratio <= 0.8 and stats.mac_before == mac_count.count(model, {"x": (2, 3, 8, 8)})[0]


def test_static_batch_with_fewer_samples_is_refused():
    with pytest.raises(DataError, match=r"input 'x' holds 1 sample\(s\), fewer than the model's static batch 2"):
        oc.compress(static_model(2), "channel_pruning", ratios=0.5, data={"x": rand(1, 3, 8, 8)})


# --------------------------------------------------------------------------- dtypes
def test_float64_data_is_cast_with_one_warning(caplog):
    model = state_model()
    data32 = {"x": rand(8, 3, 8, 8), "state": rand(2, 8, 8, seed=2)}
    data64 = {k: v.astype(np.float64) for k, v in data32.items()}
    with caplog.at_level(logging.WARNING, logger="onnx_compress"):
        out64, stats = oc.compress(model, "channel_pruning", ratios=0.5, data=data64, num_reconstruction_samples=200,
                                   eval_callback=fidelity(data64, batch_size=4))
    casts = [r.getMessage() for r in caplog.records if "float64" in r.getMessage()]
    assert len(casts) == 2 and any("'x'" in m for m in casts) and any("'state'" in m for m in casts)
    assert stats.baseline_score == 1.0
    out32, _ = oc.compress(model, "channel_pruning", ratios=0.5, data=data32, num_reconstruction_samples=200)
    for a, b in zip(out64.graph.initializer, out32.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_int32_ids_are_cast_to_int64():
    model = ids_model()
    ids = np.random.default_rng(0).integers(0, 10, (16, 6)).astype(np.int32)
    out, stats = oc.compress(model, "weight_svd", ratios=0.5, data={"ids": ids},
                             eval_callback=fidelity({"ids": ids}, batch_size=8))
    assert stats.mac_after < stats.mac_before and stats.baseline_score == 1.0 and stats.final_score > 0
    assert len(oc.runtime.quantize.calibration_feeds(model, {"ids": ids})) == 1


def test_unsafe_cast_is_a_data_error_naming_the_input():
    model = ids_model()
    ids = np.random.default_rng(0).integers(0, 10, (16, 6)).astype(np.float32)
    with pytest.raises(DataError, match=r"input 'ids' is float32, the model expects int64"):
        oc.compress(model, "weight_svd", ratios=0.5, data={"ids": ids})
    with pytest.raises(DataError, match=r"input 'ids' is float32, the model expects int64"):
        runtime.evaluate(model, fidelity({"ids": ids}), None, False)
    with pytest.raises(DataError, match=r"input 'x' is int64, the model expects float32"):
        oc.compress(static_model(2), "channel_pruning", ratios=0.5, data={"x": np.zeros((2, 3, 8, 8), np.int64)})


# --------------------------------------------------------------------- input_shape
def test_input_shape_names_only_the_dynamic_inputs():
    model = bias_model()
    for shape in ([(1, 3, 8, 8)], (1, 3, 8, 8), {"x": (1, 3, 8, 8)}):
        out, stats = oc.compress(model, "weight_svd", ratios=0.5, input_shape=shape)
        assert stats.input_dims == {"x": (1, 3, 8, 8), "bias": (1, 8)}
        assert stats.mac_before == mac_count.count(model, stats.input_dims)[0]
    with pytest.raises(ParameterError, match="one per dynamic input"):
        oc.compress(model, "weight_svd", ratios=0.5, input_shape=[(1, 3, 8, 8)] * 3)
    # a dict naming only x: the state's batch axis (1) defaults to 1, its static dims stay
    out, stats = oc.compress(state_model(), "weight_svd", ratios=0.5, input_shape={"x": (1, 3, 8, 8)})
    assert stats.input_dims == {"x": (1, 3, 8, 8), "state": (2, 1, 8)}
