"""onnx_compress.ir on its own: loading, saving, export, traversal, constants, rewriting, shapes."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as b
from onnx_compress import ir
from onnx_compress.errors import ModelLoadError


def _outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return b.run(model, feed)


def _if_two_node_model() -> onnx.ModelProto:
    """If whose then branch is Conv -> Relu (an inner tensor `then_c`), else branch Identity."""
    rng = np.random.default_rng(3)
    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["then_c"], name="then_conv", kernel_shape=[1, 1]),
         helper.make_node("Relu", ["then_c"], ["then_out"], name="then_relu")],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"], name="else_id")],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)],
        "if2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")])
    return b._make_model(graph)


# ------------------------------------------------------------------------------ loading
def test_load_returns_a_private_copy_from_a_proto_or_a_path(tmp_path):
    model = b.cnn_model()
    loaded = ir.load(model)
    assert loaded is not model
    loaded.graph.node[0].name = "renamed"
    assert model.graph.node[0].name == "conv1"  # the caller's proto is untouched
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    from_path = ir.load(path)
    assert [n.name for n in from_path.graph.node] == [n.name for n in model.graph.node]
    for a, c in zip(from_path.graph.initializer, model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(c))


def test_load_refuses_missing_garbage_and_wrong_types(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model file"):
        ir.load(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\xff\xff\xff not a model")
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        ir.load(junk)
    with pytest.raises(ModelLoadError, match="must be a path or an onnx.ModelProto"):
        ir.load(42)
    empty = onnx.ModelProto()
    empty.ir_version = 8
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        ir.load(empty)
    broken = b.cnn_model()
    broken.graph.input[0].type.tensor_type.elem_type = 999  # no such element type
    with pytest.raises(ModelLoadError, match="cannot import the ONNX graph"):
        ir.import_graph(broken)


def test_normalize_folds_constant_nodes_into_initializers_keeping_names_and_outputs():
    model = b.constant_node_weights_model()
    loaded = ir.load(model)
    assert not [n for n in loaded.graph.node if n.op_type == "Constant"]
    assert {"conv1", "conv2", "fc"} <= {n.name for n in loaded.graph.node}
    inits = {t.name for t in loaded.graph.initializer}
    for node in loaded.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] in inits
    feed = b.random_input(model, seed=1, batch=3)
    np.testing.assert_allclose(_outputs(loaded, feed)[0], _outputs(model, feed)[0], rtol=1e-5, atol=1e-5)


def test_normalize_raises_old_ir_versions_and_drops_initializers_from_inputs():
    model = b.opset9_model(ir_version=3)
    for init in model.graph.initializer:  # IR 3: every initializer also a graph input
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    assert [i.name for i in ir.graph_inputs(model)] == ["x"]
    out = ir.normalize(model)
    assert out.ir_version >= 4
    assert [i.name for i in out.graph.input] == ["x"]
    onnx.checker.check_model(out)
    assert ir.opset(out) == 9


def test_normalize_moves_subgraph_initializers_to_the_main_graph():
    model = b.if_branch_model()
    loaded = ir.load(model)
    main = {t.name for t in loaded.graph.initializer}
    assert {"else_conv.weight", "else_conv.bias", "then_conv.weight"} <= main
    else_branch = next(a.g for a in loaded.graph.node[0].attribute if a.name == "else_branch")
    assert len(else_branch.initializer) == 0
    for cond in (True, False):
        feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32),
                "cond": np.array(cond)}
        np.testing.assert_allclose(_outputs(loaded, feed)[0], _outputs(model, feed)[0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- saving
def test_save_load_round_trip_with_external_data(tmp_path):
    model = ir.load(b.cnn_model())
    path = tmp_path / "m.onnx"
    ir.save(model, path, external=True)
    data = tmp_path / "m.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    assert ir.uses_external_data(path)
    assert ir.external_files(path) == [data.resolve()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temporary left
    raw = onnx.load(str(path), load_external_data=False)
    big = [t.name for t in raw.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert "conv2.weight" in big  # 16*8*3*3 floats: over 1 KiB
    assert "conv1.bias" not in big  # 8 floats stay inline
    # file size: the protobuf plus the external tensors' bytes
    assert ir.model_bytes(raw) == raw.ByteSize() + sum(
        int({e.key: e.value for e in t.external_data}["length"])
        for t in raw.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    again = ir.load(path)
    for a, c in zip(again.graph.initializer, model.graph.initializer):
        assert a.name == c.name
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(c))
    feed = b.random_input(model, batch=2)
    np.testing.assert_array_equal(_outputs(again, feed)[0], _outputs(model, feed)[0])


def test_save_inline_writes_one_file_and_leaves_the_model_unchanged(tmp_path):
    model = ir.load(b.cnn_model())
    before = model.SerializeToString()
    path = tmp_path / "inline.onnx"
    ir.save(model, path)
    assert os.listdir(tmp_path) == ["inline.onnx"]
    assert not ir.uses_external_data(path)
    assert ir.external_files(path) == []
    assert model.SerializeToString() == before
    assert onnx.load(str(path)).SerializeToString() == before
    assert not ir.too_big(model) and not ir.is_file_backed(model)
    assert ir.model_bytes(model) == model.ByteSize() == path.stat().st_size  # nothing external


def test_save_refuses_an_invalid_model_and_writes_nothing(tmp_path):
    model = ir.load(b.cnn_model())
    model.graph.node[0].input[1] = "no_such_tensor"
    with pytest.raises(ModelLoadError, match="not valid ONNX"):
        ir.save(model, tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []


def test_file_backed_tensors_are_read_from_their_file_and_copied_on_save(tmp_path):
    model = ir.load(b.cnn_model())
    src = tmp_path / "src.onnx"
    ir.save(model, src, external=True)
    backed = onnx.load(str(src), load_external_data=False)
    for t in backed.graph.initializer:  # absolute locations: what a file-backed load leaves
        for e in t.external_data:
            if e.key == "location":
                e.value = str((tmp_path / e.value).resolve())
    assert ir.is_file_backed(backed)
    assert not ir.is_file_backed(model)
    w = next(t for t in backed.graph.initializer if t.name == "conv2.weight")
    location, offset, length = ir.file_source(w)
    assert location == str((tmp_path / "src.onnx.data").resolve()) and length == 16 * 8 * 3 * 3 * 4
    assert offset >= 0
    assert ir.file_source(next(t for t in backed.graph.initializer if t.name == "conv1.bias")) is None
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in backed.graph.initializer:
        np.testing.assert_array_equal(ir.to_array(t), expected[t.name])
    out = tmp_path / "copy" / "out.onnx"
    out.parent.mkdir()
    ir.save(backed, out)  # file-backed: external data, weights copied from src.onnx.data
    assert (out.parent / "out.onnx.data").is_file()
    written = ir.load(out)
    assert not ir.is_file_backed(written)
    for t in written.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), expected[t.name])


# ------------------------------------------------------------------------------- export
def test_export_keeps_model_fields_passes_the_checker_and_infers_shapes():
    model = b.cnn_model()
    model.doc_string = "a doc"
    model.model_version = 7
    helper.set_model_props(model, {"author": "tests"})
    graph = ir.import_graph(model)
    out = ir.export(graph, model)
    onnx.checker.check_model(out, full_check=True)
    assert (out.ir_version, out.producer_name, out.doc_string, out.model_version) == \
        (model.ir_version, "onnx_compress-tests", "a doc", 7)
    assert [(o.domain, o.version) for o in out.opset_import] == [("", b.DEFAULT_OPSET)]
    assert {p.key: p.value for p in out.metadata_props} == {"author": "tests"}
    inferred = ir.concrete_shapes(out.graph.value_info)
    assert "c2" in {vi.name for vi in out.graph.value_info}
    assert inferred == {}  # batch is symbolic: none of the intermediate shapes is concrete
    dims = [d.dim_value or d.dim_param for d in next(v for v in out.graph.value_info if v.name == "c2")
            .type.tensor_type.shape.dim]
    assert dims == ["N", 16, 6, 6]
    feed = b.random_input(model, batch=2)
    np.testing.assert_array_equal(_outputs(out, feed)[0], _outputs(model, feed)[0])
    # nodes cut off from the outputs are cleaned up
    graph = ir.import_graph(model)
    graph.nodes.append(gs.Node("Relu", name="unused", inputs=[graph.inputs[0]],
                               outputs=[gs.Variable("dangling", dtype=np.float32)]))
    assert [n.name for n in ir.export(graph, model).graph.node] == [n.name for n in model.graph.node]


# ---------------------------------------------------------------------------- traversal
def test_iter_nodes_descends_into_subgraphs_with_their_owning_graph():
    graph = ir.import_graph(b.if_branch_model())
    seen = [(ir.node_name(n), owner is graph) for n, owner in ir.iter_nodes(graph)]
    assert seen[0] == ("branch", True) and seen[-1] == ("relu", True)  # graph order, branches right after If
    assert sorted(seen[1:3]) == [("else_conv", False), ("then_conv", False)]
    branch = graph.nodes[0]
    assert [len(g.nodes) for g in ir.subgraphs(branch)] == [1, 1]
    assert ir.subgraphs(graph.nodes[1]) == []
    names = ir.all_names(graph)
    assert {"then_conv", "else_conv", "else_conv.weight", "then_out", "x", "y"} <= names


def test_node_name_falls_back_to_the_first_output():
    graph = ir.import_graph(b.empty_names_model())
    names = [ir.node_name(n) for n, _ in ir.iter_nodes(graph)]
    assert names == ["c1", "r1", "c2", "r2", "gap", "flat", "y"]


def test_unique_name_avoids_taken_names_and_records_them():
    taken = {"a", "a_1"}
    assert ir.unique_name("a", taken) == "a_2"
    assert ir.unique_name("a", taken) == "a_3"
    assert ir.unique_name("b", taken) == "b"
    assert taken == {"a", "a_1", "a_2", "a_3", "b"}


# ---------------------------------------------------------------------------- constants
def test_constant_value_finds_weights_wherever_the_exporter_put_them():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [
        helper.make_node("Constant", [], ["k_tensor"], value=numpy_helper.from_array(w, "kv")),
        helper.make_node("Constant", [], ["k_float"], value_float=2.5),
        helper.make_node("Constant", [], ["k_ints"], value_ints=[1, 2, 3]),
        helper.make_node("Identity", ["init"], ["id1"]),
        helper.make_node("Identity", ["id1"], ["id2"]),
        helper.make_node("Identity", ["k_tensor"], ["id_const"]),
        helper.make_node("Relu", ["x"], ["computed"]),
    ]
    outs = ["k_float", "k_ints", "id2", "id_const", "computed"]
    graph = helper.make_graph(
        nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
        [numpy_helper.from_array(2 * w, "init")])
    g = ir.import_graph(b._make_model(graph))
    t = g.tensors()
    np.testing.assert_array_equal(ir.constant_value(t["init"]), 2 * w)
    np.testing.assert_array_equal(ir.constant_value(t["id2"]), 2 * w)
    np.testing.assert_array_equal(ir.constant_value(t["k_tensor"]), w)
    np.testing.assert_array_equal(ir.constant_value(t["id_const"]), w)
    assert ir.constant_value(t["k_float"]).dtype == np.float32 and float(ir.constant_value(t["k_float"])) == 2.5
    np.testing.assert_array_equal(ir.constant_value(t["k_ints"]), np.array([1, 2, 3], np.int64))
    assert ir.constant_value(t["x"]) is None
    assert ir.constant_value(t["computed"]) is None
    assert ir.constant_value(None) is None


# ---------------------------------------------------------------------------- rewriting
def test_replace_with_chain_reproduces_a_gemm_through_onnx_runtime():
    """Gemm(x, B, C) (transB) replaced by MatMul(x, B^T) -> Add(C): same outputs, names, consumers."""
    model = b.gemm_model(k=12, n=7, m=5, trans_b=1)
    graph = ir.import_graph(model)
    node = next(n for n in graph.nodes if n.name == "gemm")
    bmat, c = ir.constant_value(node.inputs[1]), ir.constant_value(node.inputs[2])
    taken = ir.all_names(graph)
    taken.add("gemm.0")  # a name already in use gets a suffix
    names = ir.replace_with_chain(graph, node, [ir.NodeSpec("MatMul", (bmat.T.copy(),)), ir.NodeSpec("Add", (c,))],
                                  "gemm", taken)
    assert names == ["gemm.0_1", "gemm.1"]
    assert set(names) <= taken
    out = ir.export(graph, model)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add"]
    assert [o.name for o in out.graph.output] == ["y"]
    assert [n.name for n in out.graph.node] == names
    x = np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_allclose(_outputs(out, {"x": x})[0], _outputs(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_outputs(out, {"x": x})[0], x @ bmat.T + c, rtol=1e-5, atol=1e-5)


def test_replace_with_chain_splits_a_conv_with_extra_inputs_and_empty_params():
    """conv3 (1x1, 16->16) as an exact rank-16 factorisation Conv(V) -> Conv(U, bias from the
    original node through extra_inputs), in the middle of the CNN."""
    model = b.cnn_model()
    graph = ir.import_graph(model)
    node = next(n for n in graph.nodes if n.name == "conv3")
    w = ir.constant_value(node.inputs[1])[:, :, 0, 0].astype(np.float64)
    u, s, vt = np.linalg.svd(w)
    first = (np.diag(s) @ vt).astype(np.float32)[:, :, None, None]
    second = u.astype(np.float32)[:, :, None, None]
    specs = [ir.NodeSpec("Conv", (first, None), {"kernel_shape": [1, 1]}),  # None: no bias
             ir.NodeSpec("Conv", (second,), {"kernel_shape": [1, 1]}, extra_inputs=(2,))]
    names = ir.replace_with_chain(graph, node, specs, "conv3", ir.all_names(graph))
    assert names == ["conv3.0", "conv3.1"]
    out = ir.export(graph, model)
    by_name = {n.name: n for n in out.graph.node}
    assert by_name["conv3.0"].input[2] == "" and by_name["conv3.1"].input[2] == "conv3.bias"
    assert by_name["conv3.1"].output[0] == "c3"  # the relu after it still reads c3
    feed = b.random_input(model, seed=2, batch=3)
    np.testing.assert_allclose(_outputs(out, feed)[0], _outputs(model, feed)[0], rtol=1e-5, atol=1e-5)


def test_insert_gather_and_set_input_permute_a_matmul_without_changing_it():
    """x[..., p] @ W[p] == x @ W: the Gather feeds only the MatMul, the weight is replaced."""
    model = b.matmul_model(k=12, n=7, lead=(2, 3))
    graph = ir.import_graph(model)
    node = graph.nodes[0]
    w = ir.constant_value(node.inputs[1])
    perm = np.random.default_rng(0).permutation(12)
    taken = ir.all_names(graph)
    name = ir.insert_gather(graph, node, 0, perm, axis=2, name="perm", taken=taken)
    ir.set_input(node, 1, w[perm], ir.unique_name("W.permuted", taken))
    assert name == "perm" and node.inputs[0].name != "x"
    out = ir.export(graph, model)
    assert sorted(n.op_type for n in out.graph.node) == ["Gather", "MatMul"]
    assert {t.name for t in out.graph.initializer} == {"W.permuted", "perm.indices"}
    x = np.random.default_rng(1).standard_normal((2, 3, 12)).astype(np.float32)
    np.testing.assert_allclose(_outputs(out, {"x": x})[0], x @ w, rtol=1e-5, atol=1e-5)


def test_set_input_keeps_0d_values_and_append_input_adds_the_last_input():
    graph = ir.import_graph(b.gemm_model(bias=False))
    node = graph.nodes[0]
    ir.set_input(node, 1, np.asfortranarray(np.ones((12, 7), np.float32)), "ones")
    assert node.inputs[1].values.flags.c_contiguous
    ir.append_input(node, np.float32(0.5) * np.ones(7, np.float32), "C2")
    assert [t.name for t in node.inputs] == ["x", "ones", "C2"]
    out = ir.export(graph, b.gemm_model(bias=False))
    x = np.random.default_rng(2).standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_allclose(_outputs(out, {"x": x})[0], x.sum(axis=1, keepdims=True) + 0.5 + np.zeros((5, 7)),
                               rtol=1e-5, atol=1e-5)
    scalar = ir.import_graph(b.gemm_model()).nodes[0]
    ir.set_input(scalar, 2, np.array(3.0, np.float32), "c0")
    assert scalar.inputs[2].values.shape == ()


def test_forget_shape_drops_a_variables_shape_only():
    graph = ir.import_graph(ir.checked(b.cnn_model()))
    t = graph.tensors()
    assert t["c2"].shape is not None
    ir.forget_shape(t["c2"])
    ir.forget_shape(t["conv2.weight"])
    assert t["c2"].shape is None
    assert tuple(t["conv2.weight"].shape) == (16, 8, 3, 3)


# ------------------------------------------------------------------------------- shapes
def test_static_shapes_resolve_every_tensor_for_given_input_dims():
    model = ir.load(b.cnn_model())
    shapes = ir.static_shapes(model, {"x": (3, 1, 12, 12)})
    assert shapes["c1"] == (3, 8, 12, 12)
    assert shapes["c2"] == (3, 16, 6, 6)
    assert shapes["gap"] == (3, 16, 1, 1)
    assert shapes["flat"] == (3, 16) and shapes["y"] == (3, 10)
    assert shapes["conv2.weight"] == (16, 8, 3, 3)
    sub = ir.static_shapes(ir.load(b.if_branch_model()), {})
    assert sub["then_out"] == sub["else_out"] == (1, 8, 8, 8)  # subgraph tensors too


def test_with_input_dims_copies_and_concrete_shapes_skip_symbolic_dims():
    model = b.cnn_model()
    fixed = ir.with_input_dims(model, {"x": (4, 1, 12, 12), "absent": (1,)})
    assert ir.concrete_shapes(fixed.graph.input) == {"x": (4, 1, 12, 12)}
    assert ir.concrete_shapes(model.graph.input) == {}  # the original keeps its symbolic batch
    assert ir.concrete_shapes(model.graph.output) == {}


def test_expose_tensors_outputs_main_graph_and_if_branch_tensors():
    model = _if_two_node_model()
    exposed, where = ir.expose_tensors(model, {"then_c": TensorProto.FLOAT, "absent": TensorProto.FLOAT})
    assert set(where) == {"then_c"}
    out_name, drop = where["then_c"]
    assert drop == 0 and out_name in {o.name for o in exposed.graph.output}
    assert [o.name for o in model.graph.output] == ["y"]  # the original is untouched
    w = numpy_helper.to_array(model.graph.initializer[0])[:, :, 0, 0]
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
    got = b.run(exposed, {"x": x, "cond": np.array(True)})
    names = [o.name for o in exposed.graph.output]
    np.testing.assert_allclose(got[names.index(out_name)], np.einsum("oi,nihw->nohw", w, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], np.maximum(np.einsum("oi,nihw->nohw", w, x), 0), rtol=1e-5, atol=1e-5)
    other = b.run(exposed, {"x": x, "cond": np.array(False)})
    assert other[names.index(out_name)].size == 0  # the branch that did not run yields an empty tensor
    main, at = ir.expose_tensors(b.cnn_model(), {"r2": TensorProto.FLOAT})
    assert at == {"r2": ("r2", 0)} and [o.name for o in main.graph.output] == ["y", "r2"]
