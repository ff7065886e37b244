"""The scheme contract: one suite that every registered scheme must pass (scikit-learn's
`check_estimator` is the model). It runs over `onnx_compress.schemes.SCHEMES`: the three
built-in schemes and the example scheme of examples/01_add_a_scheme.py, registered here.

For every scheme, on small models with layers it can take:
- `check` returns None or a non-empty reason, and refuses a layer with NaN weights;
- `apply` at ratio 1 leaves the outputs unchanged, and every skipped layer carries a reason;
- `units` give candidates whose sizes, costs and footprints are monotone, with ratios in (0, 1];
- a full-size candidate's preview reproduces the original model through ONNX Runtime;
- every candidate's preview reproduces `apply` at that candidate's ratio through ONNX Runtime,
  and the applied model's cost is the footprint's (`schemes.base.exact_cost`), exactly;
- a scheme registry refuses names taken and non-schemes.
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as b
import onnx_compress as oc
from onnx_compress import layers, runtime, schemes
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.schemes.base import exact_cost

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE = load_example("01_add_a_scheme.py")  # registers "matmul_lowrank"


def models() -> dict[str, onnx.ModelProto]:
    return {"cnn": b.cnn_model(seed=3), "matmul": b.matmul_model(k=12, n=9, lead=(4,)), "mlp": EXAMPLE.mlp()}


def context(scheme, model) -> schemes.Context:
    dims = layers.analyze(model).input_dims
    if not scheme.needs_data:
        return schemes.Context("mac", 1, dims)
    data = b.random_input(model, seed=5, batch=16)
    settings = Settings(data=data, num_reconstruction_samples=64, reconstruct=False)
    return schemes.Context("mac", 1, dims, settings, Activations(settings))


def outputs(model, feed) -> np.ndarray:
    return b.run(model, feed)[0]


def previewed(model, unit, candidate, feed) -> np.ndarray:
    swapper = runtime.WeightSwapper(model, list(unit.weights))
    sess = swapper.session(unit.preview(candidate))
    return sess.run(None, feed)[0]


def close(got, want, what: str) -> None:
    scale = max(float(np.abs(want).max()), 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def scheme_units(name):
    """(model name, model, context, units) for each model where the scheme has units."""
    scheme = schemes.SCHEMES[name]
    found = []
    for label, model in models().items():
        analysis = layers.analyze(model)
        names = [l.name for l in analysis.compressible if scheme.check(l) is None]
        if not names:
            continue
        ctx = context(scheme, model)
        units, left = scheme.units(model, analysis, names, [0.25, 0.5, 0.75], ctx)
        assert all(isinstance(r, str) and r for r in left.values()), f"{name}: units left out without reasons"
        if units:
            found.append((label, model, ctx, units))
    assert found, f"{name}: no unit on any contract model"
    return found


SCHEME_NAMES = sorted(schemes.SCHEMES)


def test_the_example_scheme_is_registered_beside_the_built_in_ones():
    assert {"weight_svd", "spatial_svd", "channel_pruning", "matmul_lowrank"} <= set(schemes.SCHEMES)
    assert all(isinstance(s, schemes.Scheme) and s.name == n for n, s in schemes.SCHEMES.items())


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_check_gives_none_or_a_reason_and_refuses_nan_weights(name):
    scheme = schemes.SCHEMES[name]
    for model in models().values():
        for layer in layers.analyze(model).layers:
            why = scheme.check(layer)
            assert why is None or (isinstance(why, str) and why.strip()), f"{name} on {layer.name}: {why!r}"
    bad = b.cnn_model(seed=3)
    for t in bad.graph.initializer:
        if t.name in ("conv2.weight", "fc.weight"):
            t.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(t).shape, np.nan,
                                                            np.float32), t.name))
    by_name = {l.name: l for l in layers.analyze(bad).layers}
    for layer_name in ("conv2", "fc"):
        why = scheme.check(by_name[layer_name])
        assert isinstance(why, str) and "NaN" in why, f"{name} takes {layer_name} with NaN weights: {why!r}"


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_apply_at_ratio_one_changes_nothing_and_skips_with_reasons(name):
    scheme = schemes.SCHEMES[name]
    for label, model, ctx, _units in scheme_units(name):
        feed = b.random_input(model, seed=7, batch=3)
        result = scheme.apply(model, 1.0, ctx)
        assert isinstance(result, schemes.StepResult) and not result.layers
        assert all(isinstance(s.reason, str) and s.reason for s in result.skipped), f"{name}/{label}"
        np.testing.assert_array_equal(outputs(result.model, feed), outputs(model, feed))


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_candidates_are_monotone_in_size(name):
    for label, _model, _ctx, units in scheme_units(name):
        for unit in units:
            assert unit.candidates and unit.size > 0 and unit.weights, f"{name}/{label}/{unit.name}"
            cands = sorted(unit.candidates, key=lambda c: c.key)
            sizes = [c.size for c in cands]
            assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), f"{unit.name}: sizes {sizes}"
            assert all(0 < c.size < unit.size or c.size <= unit.size for c in cands)
            costs = [c.cost for c in cands]
            assert costs == sorted(costs) and costs[-1] <= unit.base_cost, f"{unit.name}: costs {costs}"
            assert all(Fraction(0) < c.ratio <= 1 for c in cands)
            layers_touched = set().union(*(c.footprint for c in cands))
            assert layers_touched, f"{unit.name}: empty footprints"
            for layer_name in layers_touched:
                kept = [c.footprint.get(layer_name, Fraction(1)) for c in cands]
                assert kept == sorted(kept) and all(0 < k <= 1 for k in kept), f"{unit.name}/{layer_name}: {kept}"


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_a_full_size_preview_reproduces_the_model(name):
    for label, model, _ctx, units in scheme_units(name):
        feed = b.random_input(model, seed=9, batch=3)
        want = outputs(model, feed)
        for unit in units:
            full = schemes.Candidate(1.0, unit.size, unit.base_cost, Fraction(1), {})
            close(previewed(model, unit, full, feed), want, f"{name}/{label}/{unit.name} at full size")


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_previews_reproduce_apply_and_footprints_give_its_cost(name):
    scheme = schemes.SCHEMES[name]
    for label, model, ctx, units in scheme_units(name):
        feed = b.random_input(model, seed=11, batch=3)
        analysis = layers.analyze(model)
        costs = {l.name: layers.cost_of(l, "mac") for l in analysis.compressible}
        for unit in units:
            for cand in unit.candidates:
                where = f"{name}/{label}/{unit.name} at size {cand.size}"
                result = scheme.apply(model, {unit.name: cand.ratio}, ctx)
                assert [s.name for s in result.layers] == [unit.name], where
                assert result.layers[0].rank == cand.size, where
                close(previewed(model, unit, cand, feed), outputs(result.model, feed), where)
                got = layers.analyze(result.model).total("mac")
                assert got == exact_cost(units, {unit.name: cand.key}, costs), where


def test_the_registry_refuses_taken_names_and_non_schemes():
    with pytest.raises(oc.ParameterError, match="already registered"):
        schemes.register(EXAMPLE.MatMulLowRank())
    with pytest.raises(oc.ParameterError, match="must be an instance"):
        schemes.register(object())
    with pytest.raises(oc.ParameterError, match="built in"):
        schemes.unregister("weight_svd")
    with pytest.raises(oc.ParameterError, match="unknown scheme"):
        oc.compress(b.cnn_model(), "no_such_scheme", 0.5)
