"""One test per class of failure that real exported graphs showed (the reach issue):
undeclared dependencies, IR 3 graphs, shapes found only by execution, constants that reach
layers indirectly, auto mode seeing the same layers as manual mode, and named vs. all
layers. Each builds the smallest graph of its class, as the exporter writes it."""
from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnx_compress as oc
from onnx_compress import evaluators, layers, runtime
from onnx_compress.errors import LayerError, ParameterError, ShapeError

from refs import ROOT as _ROOT
from refs import cli as run_cli

MODELS = _ROOT / "models"

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _w(*shape):
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _calib(n=16, shape=(3, 16, 16), seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)}


# ------------------------------------------------------------------- 1. dependencies
def test_every_third_party_import_is_declared():
    """onnxruntime 1.32 stopped installing sympy, which its symbolic shape inference imports."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    imported = set()
    for path in (ROOT / "onnx_compress").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    stdlib = set(__import__("sys").stdlib_module_names) | {"onnx_compress"}
    # the extras (report: matplotlib, ray: ray), imported only where their feature runs
    extras = [d for group in project["optional-dependencies"].values() for d in group]
    optional = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in extras} - {"pytest"}
    assert {"matplotlib", "ray"} <= optional
    pip_name = {"onnx_graphsurgeon": "onnx-graphsurgeon"}
    third = {pip_name.get(m, m).lower() for m in imported - stdlib - optional if m != "__future__"}
    assert third <= names, f"imported but not declared: {sorted(third - names)}"
    assert "sympy" in names  # imported by onnxruntime.tools.symbolic_shape_infer, which layers uses
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # noqa: F401


def _loop_model() -> onnx.ModelProto:
    """A conv inside a Loop body: ONNX shape inference leaves its shapes unknown."""
    body = h.make_graph(
        [h.make_node("Identity", ["cin"], ["cout"]),
         h.make_node("Conv", ["st", "wl"], ["bc"], name="loop_conv", pads=[1, 1, 1, 1]),
         h.make_node("Relu", ["bc"], ["st_out"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cin", T.BOOL, []),
         h.make_tensor_value_info("st", T.FLOAT, ["a", "b", "c", "d"])],
        [h.make_tensor_value_info("cout", T.BOOL, []), h.make_tensor_value_info("st_out", T.FLOAT, ["a", "b", "c", "d"])])
    inits = [nh.from_array(np.array(2, np.int64), "trip"), nh.from_array(np.array(True), "cond0"),
             nh.from_array(_w(8, 3, 3, 3), "w1"), nh.from_array(_w(8, 8, 3, 3), "wl"), nh.from_array(_w(4, 8, 3, 3), "w2")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Loop", ["trip", "cond0", "c1"], ["ly"], body=body),
             h.make_node("Conv", ["ly", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = h.make_graph(nodes, "loop", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["a", "b", "c", "d"])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def test_shape_error_says_which_step_failed_and_never_asks_for_a_given_input_shape(monkeypatch):
    def no_sympy(*_):
        raise ImportError("No module named 'sympy'")

    def no_run(*_):
        raise RuntimeError("probe run refused")

    monkeypatch.setattr(layers, "_symbolic_shapes", no_sympy)
    monkeypatch.setattr(runtime, "shapes_by_execution", no_run)
    with pytest.raises(ShapeError) as err:
        oc.compress(_loop_model(), "weight_svd", {"loop_conv": 0.5}, input_shape={"x": (1, 3, 16, 16)})
    text = str(err.value)
    assert "loop_conv" in text and "pass input_shape" not in text
    assert "symbolic shape inference is unavailable (No module named 'sympy')" in text
    assert "probe input" in text and "probe run refused" in text


def test_dynamic_input_without_dims_still_asks_for_input_shape():
    model = _loop_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    analysis = oc.inspect(model)
    layer = next(l for l in analysis.layers if l.name == "loop_conv")
    assert layer.mac is None and "'x' have dynamic dimensions; pass input_shape" in layer.shape_note


# ---------------------------------------------------------------- 3. shapes by execution
def test_layer_inside_a_loop_gets_its_shape_by_execution():
    analysis = oc.inspect(_loop_model())
    layer = next(l for l in analysis.layers if l.name == "loop_conv")
    assert layer.in_shape == (1, 8, 16, 16) and layer.out_shape == (1, 8, 16, 16)
    assert layer.mac == 16 * 16 * 8 * 8 * 9
    out, stats = oc.compress(_loop_model(), "weight_svd", 0.5)
    assert "loop_conv" in [l.name for l in stats.layers]
    onnx.checker.check_model(out)
    x = _calib(2)["x"]
    assert _run(out, x).shape == _run(_loop_model(), x).shape


# ------------------------------------------------------------------------- 2. IR 3
def _ir3_model(opset: int = 8) -> onnx.ModelProto:
    """Every initializer also a graph input, IR version 3 (older exporters, the model zoo)."""
    inits = [nh.from_array(_w(8, 3, 3, 3), "W1"), nh.from_array(_w(8, 8, 3, 3), "W2"),
             nh.from_array(_w(4, 8 * 8 * 8), "Wf"), nh.from_array(np.zeros(4, np.float32), "bf")]
    nodes = [h.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             h.make_node("Relu", ["c2"], ["r2"]), h.make_node("Flatten", ["r2"], ["f"]),
             h.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    ins = [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])]
    ins += [h.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    g = h.make_graph(nodes, "ir3", ins, [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd", "channel_pruning"])
def test_ir3_model_compresses_to_a_valid_model(scheme):
    model = _ir3_model()
    before = model.SerializeToString()
    out, stats = oc.compress(model, scheme, 0.5, data=_calib())
    assert model.SerializeToString() == before  # the input is never modified
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version >= 4
    assert [i.name for i in out.graph.input] == ["x"]
    assert stats.layers and stats.mac_after < stats.mac_before
    x = _calib(1, seed=5)["x"]
    assert _run(out, x).shape == (1, 4)


def test_ir3_changes_nothing_but_the_layout():
    """The same graph at IR 7 (initializers not inputs) compresses to the same numbers."""
    model = _ir3_model()
    modern = onnx.ModelProto()
    modern.CopyFrom(model)
    del modern.graph.input[1:]
    modern.ir_version = 7
    x = _calib(1, seed=5)["x"]
    for scheme in ("weight_svd", "spatial_svd"):
        a, _ = oc.compress(model, scheme, 0.5)
        b, _ = oc.compress(modern, scheme, 0.5)
        np.testing.assert_allclose(_run(a, x), _run(b, x), rtol=1e-6, atol=1e-6)
        assert a.ir_version == 4


def test_ir3_model_in_auto_mode():
    evaluator = evaluators.fidelity(_calib(8, seed=3))
    out, stats = oc.compress_auto(_ir3_model(), "weight_svd", 0.5, evaluator, candidates=5)
    onnx.checker.check_model(out)
    assert stats.mac_ratio <= 0.5 + 1e-9


# --------------------------------------------------------- 4-5. constants reaching layers
def _const(name, arr):
    return h.make_node("Constant", [], [name], value=nh.from_array(np.asarray(arr), f"{name}_value"))


def _paddle_model() -> onnx.ModelProto:
    """paddle2onnx's layout: every weight in a Constant node, each conv bias added as
    Add(Conv(x), Reshape(Constant[C], Constant[4])), no initializers at all."""
    nodes = [_const("w1", _w(8, 3, 3, 3)), _const("b1", _w(8)), _const("s1", np.array([1, 8, 1, 1], np.int64)),
             h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Reshape", ["b1", "s1"], ["b1r"], name="bias1_reshape"),
             h.make_node("Add", ["c1", "b1r"], ["a1"], name="bias1"),
             h.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             _const("w2", _w(8, 8, 3, 3)), _const("b2", _w(8)), _const("s2", np.array([1, 8, 1, 1], np.int64)),
             h.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             h.make_node("Reshape", ["b2", "s2"], ["b2r"], name="bias2_reshape"),
             h.make_node("Add", ["c2", "b2r"], ["a2"], name="bias2"),
             h.make_node("Relu", ["a2"], ["r2"], name="relu2"),
             h.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             h.make_node("Flatten", ["g"], ["f"], name="flatten"),
             _const("wf", _w(8, 4)), h.make_node("MatMul", ["f", "wf"], ["y"], name="fc")]
    g = h.make_graph(nodes, "paddle", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _caffe_model() -> onnx.ModelProto:
    """Caffe-era per-channel scale and bias: Mul/Add(x, Unsqueeze(b[C], axes=[1, 2]))."""
    inits = [nh.from_array(_w(8, 3, 3, 3), "w1"), nh.from_array(_w(8), "scale"), nh.from_array(_w(8), "shift"),
             nh.from_array(_w(4, 8, 3, 3), "w2")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Unsqueeze", ["scale"], ["su"], axes=[1, 2]), h.make_node("Mul", ["c1", "su"], ["m"]),
             h.make_node("Unsqueeze", ["shift"], ["bu"], axes=[1, 2]), h.make_node("Add", ["m", "bu"], ["a"]),
             h.make_node("Relu", ["a"], ["r"]),
             h.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = h.make_graph(nodes, "caffe", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 16, 16])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    return model


def test_constant_node_weights_are_layers_with_stable_names():
    analysis = oc.inspect(_paddle_model())
    assert [l.name for l in analysis.compressible] == ["conv1", "conv2", "fc"]
    assert all(l.mac for l in analysis.compressible)


@pytest.mark.parametrize("build", [_paddle_model, _caffe_model])
def test_per_channel_constants_computed_from_constants_shrink_with_their_channels(build):
    model = build()
    out, stats = oc.compress(model, "channel_pruning", {"conv2": 0.5}, data=_calib(), reconstruct=False)
    assert [l.name for l in stats.layers] == ["conv2"]
    onnx.checker.check_model(out)
    # the upstream conv lost output channels, and so did its per-channel bias/scale
    conv1 = next(n for n in out.graph.node if n.name == "conv1")
    w1 = next(t for t in out.graph.initializer if t.name == conv1.input[1])
    assert w1.dims[0] == 4
    x = _calib(1, seed=7)["x"]
    assert _run(out, x).shape == _run(model, x).shape


def test_pruning_zero_channels_through_a_computed_bias_is_exact():
    """Channels whose conv weights and bias are zero carry nothing: removing them changes
    no output (the Reshape(Constant) bias must be sliced with them)."""
    model = _paddle_model()
    for node in model.graph.node:
        if node.output[0] == "w2":  # conv2 reads nothing from channels 4..7 of conv1's output
            arr = nh.to_array(node.attribute[0].t).copy()
            arr[:, 4:] = 0
            node.attribute[0].t.CopyFrom(nh.from_array(arr, node.attribute[0].t.name))
    out, stats = oc.compress(model, "channel_pruning", {"conv2": 0.5}, data=_calib(), reconstruct=False)
    x = _calib(2, seed=7)["x"]
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["weight_svd", "channel_pruning"])
def test_auto_mode_sees_constant_node_weights(scheme):
    evaluator = evaluators.fidelity(_calib(8, seed=3))
    out, stats = oc.compress_auto(_paddle_model(), scheme, 0.6, evaluator, candidates=5, data=_calib())
    onnx.checker.check_model(out)
    assert stats.mac_ratio <= 0.6 + 1e-9
    assert stats.layers


# ---------------------------------------------------------------- 8. named vs all layers
def test_one_ratio_for_all_skips_layers_that_cannot_reach_it():
    out, stats = oc.compress(str(MODELS / "resnet_small.onnx"), "spatial_svd", 0.05)
    assert any("below rank 1" in s.reason for s in stats.skipped)


def test_a_named_layer_that_cannot_reach_its_ratio_stays_an_error():
    with pytest.raises(ParameterError, match="smallest achievable"):
        oc.compress(str(MODELS / "resnet_small.onnx"), "spatial_svd", {"/stem/stem.0/Conv": 0.01})


def test_ignore_works_in_manual_mode():
    _, stats = oc.compress(str(MODELS / "resnet_small.onnx"), "weight_svd", 0.5,
                           modules_to_ignore=["/layer1/conv1/Conv"])
    assert "/layer1/conv1/Conv" not in [l.name for l in stats.layers]
    assert any(s.name == "/layer1/conv1/Conv" and "ignored" in s.reason for s in stats.skipped)
    with pytest.raises(LayerError, match="unknown layer"):
        oc.compress(str(MODELS / "resnet_small.onnx"), "weight_svd", 0.5, modules_to_ignore=["/nope"])
    with pytest.raises(ParameterError, match="both given a ratio and ignored"):
        oc.compress(str(MODELS / "resnet_small.onnx"), "weight_svd", {"/layer1/conv1/Conv": 0.5},
                    modules_to_ignore=["/layer1/conv1/Conv"])


def test_cli_ignore_with_ratio(tmp_path):
    res = run_cli("compress", str(MODELS / "resnet_small.onnx"), "-o", str(tmp_path / "o.onnx"),
                  "--scheme", "weight_svd", "--ratio", "0.5", "--ignore", "/layer1/conv1/Conv",
                  "--stats", str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert "/layer1/conv1/Conv" not in [l["name"] for l in stats["layers"]]


def test_inspect_lists_a_scheme_only_where_compress_can_apply_it(tmp_path):
    res = run_cli("inspect", str(MODELS / "resnet_small.onnx"), "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["layers"]}
    stem = rows["/stem/stem.0/Conv"]
    assert "channel_pruning" not in stem["schemes"]
    assert "graph input" in stem["skip_reasons"]["channel_pruning"]
    data = MODELS / "digits32_calib.npz"
    _, stats = oc.compress(str(MODELS / "resnet_small.onnx"), "channel_pruning", 0.5, data=str(data),
                           num_reconstruction_samples=50)
    pruned = {l.name for l in stats.layers}
    for name, row in rows.items():
        if "channel_pruning" in row["schemes"]:
            assert name in pruned or any(s.name == name and "already pruned" in s.reason for s in stats.skipped), name


def test_auto_mode_checks_the_rewrite_before_any_evaluation(monkeypatch):
    """A model the rewrite cannot write validly fails before the eval-score dictionary."""
    from onnx_compress import ir

    calls = []

    def evaluator(session, iterations, use_cuda):
        calls.append(1)
        return 1.0

    def refuse(proto):
        raise RuntimeError("checker says no")

    monkeypatch.setattr(ir.graph, "checked", refuse)
    with pytest.raises(RuntimeError, match="checker says no"):
        oc.compress_auto(_ir3_model(), "weight_svd", 0.5, evaluator, candidates=5)
    assert calls == []


# ------------------------------------------------- reconstruction with few distinct rows
def test_positions_are_not_repeated_past_their_number():
    from onnx_compress.schemes.patches import distinct_positions

    pos = distinct_positions(np.random.default_rng(0), (16, 48), 2000)
    assert len(pos) == 16 and len(np.unique(pos[:, 0])) == 16
    conv = distinct_positions(np.random.default_rng(0), (2, 8, 3, 3), 500)
    assert len(conv) == 18 and len(np.unique(conv, axis=0)) == 18
    assert len(distinct_positions(np.random.default_rng(0), (2, 8, 30, 30), 500)) == 500


def test_refit_after_global_pooling_does_not_overfit_few_images():
    """A Gemm after global pooling sees one row per image: with 16 images the refit used to
    interpolate 2000 copies of them (held-out error 11.9 on this file; 0.46 without refit)."""
    path = ROOT / "tests" / "corpus" / "fusion_dynamo_op18_dyn.onnx"
    rng = np.random.default_rng(0)
    calib = {"image": rng.standard_normal((16, 3, 32, 32)).astype(np.float32),
             "meta": rng.standard_normal((16, 8)).astype(np.float32)}
    held = {"image": rng.standard_normal((32, 3, 32, 32)).astype(np.float32),
            "meta": rng.standard_normal((32, 8)).astype(np.float32)}
    model = onnx.load(str(path))

    def err(m):
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, held)[0]
        got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, held)[0]
        return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))

    refit, _ = oc.compress(model, "channel_pruning", 0.5, data=calib)
    plain, _ = oc.compress(model, "channel_pruning", 0.5, data=calib, reconstruct=False)
    assert err(refit) < err(plain)


# ------------------------------------------------------ 6. a fixed-batch state input
def test_fixed_batch_state_input_is_cut_along_its_own_axis():
    """silero-VAD style at batch 1, every dim static: `state` [2, 1, 128] fed [2, 16, 128]
    is cut along axis 1 (the axis holding a multiple of its declared size), in model-sized
    batches beside `input` [1, 512] fed [16, 512]; the scalar `sr` goes whole."""
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((16, 512)).astype(np.float32),
            "state": rng.standard_normal((2, 16, 128)).astype(np.float32), "sr": np.array(16000, np.int64)}
    out, stats = oc.compress(str(ROOT / "tests" / "corpus" / "vad_dynamo_op18.onnx"), "weight_svd", 0.5, data=data)
    assert stats.layers and stats.mac_ratio < 0.7
    from onnx_compress import data as data_mod

    specs = data_mod.model_inputs(onnx.load(str(ROOT / "tests" / "corpus" / "vad_dynamo_op18.onnx")))
    feeds = list(data_mod.model_feeds(data, specs))
    assert len(feeds) == 16 and feeds[3]["state"].shape == (2, 1, 128)
    np.testing.assert_array_equal(feeds[3]["state"], data["state"][:, 3:4])
