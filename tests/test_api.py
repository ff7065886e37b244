"""Both Python faces on small models: claimed ratios are measured, odd exporters work."""
from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import onnx
import pytest

import builders as b
import mac_count
import onnx_compress as oc
from onnx_compress import api, ir, layers
from onnx_compress.schemes import SCHEMES
from onnx_compress.schemes.svd import RankPlan
from onnx_compress.schemes.svd import apply_plans as apply


def _check_ratios(model, out, stats, tmp_path, metric="mac", multiplicity=1):
    """Totals in the stats equal an independent count of the written file; per-layer
    achieved ratios are at or below the request and within one rank step of it."""
    path = str(tmp_path / "out.onnx")
    oc.save(out, path)
    dims = stats.input_dims
    before = mac_count.count(model, dims)
    after = mac_count.count(path, dims)
    assert (stats.mac_before, stats.memory_before) == before
    assert (stats.mac_after, stats.memory_after) == after
    assert stats.mac_ratio == after[0] / before[0]
    analysis = layers.analyze(model, dims)
    for ls in stats.layers:
        rc = SCHEMES[ls.scheme].rank_cost(analysis.find(ls.name), metric)
        step = Fraction(rc.per_rank * multiplicity, rc.before)
        assert ls.achieved_ratio <= ls.requested_ratio + 1e-12
        if ls.rank + multiplicity <= rc.max_rank:  # else capped by full rank / break-even
            assert Fraction(ls.achieved_ratio) + step > Fraction(ls.requested_ratio) - Fraction(1, 10**9)
    # the per-layer figures add up to the model totals
    changed = {ls.name for ls in stats.layers}
    untouched = sum(l.mac for l in analysis.compressible if l.name not in changed)
    assert untouched + sum(ls.mac_after for ls in stats.layers) == stats.mac_after


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd"])
@pytest.mark.parametrize("metric", ["mac", "memory"])
def test_uniform_ratio_is_measured_on_the_written_file(scheme, metric, tmp_path):
    model = b.cnn_model()
    out, stats = oc.compress(model, scheme, 0.5, cost_metric=metric)
    _check_ratios(model, out, stats, tmp_path, metric)
    assert stats.layers and stats.mac_after < stats.mac_before
    x = b.random_input(model)
    assert b.run(out, x)[0].shape == b.run(model, x)[0].shape


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.55, 0.8, 0.95])
def test_per_layer_ratios_on_several_layers(ratio, tmp_path):
    model = b.cnn_model()
    out, stats = oc.compress(model, "weight_svd", {"conv2": ratio, "conv3": ratio, "fc": ratio})
    _check_ratios(model, out, stats, tmp_path)


def test_multiplicity_rounds_ranks(tmp_path):
    model = b.conv_model(n_in=32, n_out=48, in_spatial=(10, 10))
    out, stats = oc.compress(model, "weight_svd", {"conv": 0.45}, multiplicity=8)
    (ls,) = stats.layers
    assert ls.rank % 8 == 0 and ls.rank > 0
    _check_ratios(model, out, stats, tmp_path, multiplicity=8)


def test_input_model_is_never_modified(tmp_path):
    model = b.cnn_model()
    before = model.SerializeToString()
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    oc.compress(model, "weight_svd", 0.5)
    oc.compress(str(path), "spatial_svd", 0.5)
    assert model.SerializeToString() == before
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_model_fields_are_kept():
    model = b.cnn_model()
    model.producer_name = "unit-test"
    model.doc_string = "doc"
    model.metadata_props.add(key="author", value="me")
    out, _ = oc.compress(model, "weight_svd", 0.5)
    assert (out.ir_version, out.producer_name, out.doc_string) == (model.ir_version, "unit-test", "doc")
    assert [(p.key, p.value) for p in out.metadata_props] == [("author", "me")]
    assert list(out.opset_import) == list(model.opset_import)
    assert {i.name for i in out.graph.input} == {"x"} and [o.name for o in out.graph.output] == ["y"]


def test_constant_node_weights():
    model = b.constant_node_weights_model()
    names = [l.name for l in oc.inspect(model).compressible]
    assert len(names) == 3
    for scheme in ("weight_svd", "spatial_svd"):
        out, stats = oc.compress(model, scheme, 0.6)
        assert stats.layers
        x = b.random_input(model)
        assert np.isfinite(b.run(out, x)[0]).all()


def test_layers_inside_if_branches():
    model = b.if_branch_model()
    analysis = oc.inspect(model)
    inner = {l.name for l in analysis.compressible if l.in_subgraph}
    assert inner == {"then_conv", "else_conv"}
    out, stats = oc.compress(model, "spatial_svd", {"then_conv": 0.7, "else_conv": 0.7})
    assert {ls.name for ls in stats.layers} == {"then_conv", "else_conv"}
    ops = [n.op_type for a in next(n for n in out.graph.node if n.op_type == "If").attribute for n in a.g.node]
    assert ops.count("Conv") == 4
    for cond in (True, False):
        x = b.random_input(model)
        x["cond"] = np.array(cond)
        ref, got = b.run(model, x)[0], b.run(out, x)[0]
        assert got.shape == ref.shape and np.isfinite(got).all()
        assert not np.allclose(got, ref)  # the branch taken really was compressed


def test_if_branch_full_rank_is_exact():
    model = b.if_branch_model()
    analysis = layers.analyze(model)
    plans = [RankPlan(analysis.find(n), Fraction(1), 3) for n in ("then_conv", "else_conv")]
    apply(analysis, SCHEMES["weight_svd"], plans)
    out = ir.export(analysis.graph, model)
    for cond in (True, False):
        x = b.random_input(model)
        x["cond"] = np.array(cond)
        ref = b.run(model, x)[0]
        assert np.abs(b.run(out, x)[0] - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


def test_empty_node_names_use_output_names():
    model = b.empty_names_model()
    names = [l.name for l in oc.inspect(model).compressible]
    assert all(names) and len(set(names)) == len(names)
    out, stats = oc.compress(model, "weight_svd", {names[1]: 0.5})
    assert stats.layers[0].name == names[1]
    x = b.random_input(model)
    assert b.run(out, x)[0].shape == b.run(model, x)[0].shape


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd"])
def test_opset9_model(scheme):
    model = b.opset9_model()
    out, stats = oc.compress(model, scheme, 0.5)
    assert stats.layers
    assert out.opset_import[0].version == 9
    onnx.checker.check_model(out)
    x = b.random_input(model)
    assert b.run(out, x)[0].shape == b.run(model, x)[0].shape


def test_eval_callback_scores_before_and_after():
    model = b.cnn_model()
    x = b.random_input(model, batch=4)
    ref = b.run(model, x)[0]
    calls = []

    def fidelity(session, iterations, use_cuda):
        calls.append((iterations, use_cuda))
        return float(-np.abs(session.run(None, x)[0] - ref).max())

    _, stats = oc.compress(model, "weight_svd", 0.3, eval_callback=fidelity, eval_iterations=3)
    assert stats.baseline_score == 0.0 and stats.final_score < 0
    assert calls == [(3, False), (3, False)]


def test_stats_text_and_json():
    model = b.cnn_model()
    _, stats = oc.compress(model, "weight_svd", 0.5)
    text = str(stats)
    assert "conv2" in text and "depthwise conv, group=16" in text
    d = stats.to_dict()
    assert d["mac_ratio"] == stats.mac_ratio and d["layers"][0]["name"] == stats.layers[0].name
    import json
    assert json.loads(stats.to_json())["skipped"]


def test_aimet_shaped_api_manual_mode():
    model = b.cnn_model()
    params = oc.SpatialSvdParameters(
        oc.SpatialSvdParameters.Mode.manual,
        oc.SpatialSvdParameters.ManualModeParams([oc.ModuleCompRatioPair("conv2", 0.5)]),
        multiplicity=2,
    )
    out, stats = oc.ModelCompressor.compress_model(
        model, eval_callback=None, eval_iterations=None, input_shape=(1, 1, 12, 12),
        compress_scheme=oc.CompressionScheme.spatial_svd, cost_metric=oc.CostMetric.mac, parameters=params,
    )
    native_out, native_stats = oc.compress(model, "spatial_svd", {"conv2": 0.5}, multiplicity=2,
                                           input_shape=(1, 1, 12, 12))
    assert out.SerializeToString() == native_out.SerializeToString()
    same = lambda d: {k: v for k, v in d.items() if k != "parameters"}  # noqa: E731 (the calls differ)
    assert same(stats.to_dict()) == same(native_stats.to_dict())
    assert stats.parameters["cost_metric"] == "mac" and native_stats.parameters["ratios"] == {"conv2": 0.5}
    assert stats.layers[0].rank % 2 == 0


def test_aimet_shaped_api_refuses_auto_mode_and_mismatches():
    auto = oc.WeightSvdParameters(oc.WeightSvdParameters.Mode.auto,
                                  oc.WeightSvdParameters.AutoModeParams(oc.GreedySelectionParameters(0.5)))
    with pytest.raises(oc.ParameterError, match="auto mode"):
        oc.ModelCompressor.compress_model(b.cnn_model(), None, None, None, oc.CompressionScheme.weight_svd,
                                          oc.CostMetric.mac, auto)
    manual = oc.WeightSvdParameters(oc.WeightSvdParameters.Mode.manual,
                                    oc.WeightSvdParameters.ManualModeParams([("conv2", 0.5)]))
    with pytest.raises(oc.ParameterError, match="compress_scheme"):
        oc.ModelCompressor.compress_model(b.cnn_model(), None, None, None, oc.CompressionScheme.spatial_svd,
                                          oc.CostMetric.mac, manual)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(ratios={"nope": 0.5}), oc.LayerError, "unknown layer 'nope'"),
    (dict(ratios={"conv2": 1.5}), oc.ParameterError, r"in \(0, 1\], got 1.5"),
    (dict(ratios={"conv2": 0.0}), oc.ParameterError, r"in \(0, 1\]"),
    (dict(ratios={"conv3": 0.5}, scheme="spatial_svd"), oc.LayerError, "1x1 kernel"),
    (dict(ratios={"dw": 0.5}), oc.LayerError, "depthwise conv, group=16"),
    (dict(ratios={"conv2": 0.001}), oc.ParameterError, "below the smallest achievable"),
    (dict(ratios=0.5, scheme="nope"), oc.ParameterError, "unknown scheme"),
    (dict(ratios=0.5, cost_metric="flops"), oc.ParameterError, "cost metric"),
    (dict(ratios=0.5, multiplicity=0), oc.ParameterError, "multiplicity"),
    (dict(ratios=0.5, input_shape=[(1, 1, 12, 12), (1, 2)]), oc.ParameterError, "1 input"),
])
def test_bad_parameters_raise_clear_errors(kwargs, error, match):
    kwargs.setdefault("scheme", "weight_svd")
    with pytest.raises(error, match=match):
        oc.compress(b.cnn_model(), **kwargs)


def test_unknown_dynamic_dims_need_input_shape():
    model = b.conv_model(dynamic_batch=True)
    # dynamic batch alone defaults to 1
    assert api.inspect(model).input_dims == {"x": (1, 4, 9, 10)}
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(oc.ShapeError, match="input_shape"):
        oc.compress(model, "weight_svd", 0.5)
    out, stats = oc.compress(model, "weight_svd", 0.5, input_shape={"x": (2, 4, 9, 10)})
    assert stats.input_dims == {"x": (2, 4, 9, 10)}
