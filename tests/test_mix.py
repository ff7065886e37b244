"""A mix of schemes under one auto-mode target (schemes.Mix): units of every part, named
'<part>:<unit>'; footprints that multiply where two units change one layer; apply that runs
the parts in order; previews that combine; each part alone as a finalist; the CLI's
comma-separated --scheme with --target; the solver's negative fixed cost."""
from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import builders as b
import onnx_compress as oc
from onnx_compress import evaluators, layers, runtime, schemes
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.schemes.base import exact_cost
from onnx_compress.schemes.mix import merge_previews
from onnx_compress.search import solve
from refs import cli

ROOT = Path(__file__).resolve().parents[1]
RESNET, CALIB, TEST = (ROOT / "models" / n for n in ("resnet_small.onnx", "digits32_calib.npz",
                                                         "digits32_test.npz"))
MIX = schemes.mix_of(["channel_pruning", "weight_svd"])


def _context(model):
    data = b.random_input(model, seed=5, batch=16)
    settings = Settings(data=data, num_reconstruction_samples=64, reconstruct=False, data_aware=False)
    return schemes.Context("mac", 1, layers.analyze(model).input_dims, settings, Activations(settings))


def _units(model, ctx, keys=(0.25, 0.5, 0.75)):
    analysis = layers.analyze(model)
    names = [l.name for l in analysis.compressible if MIX.check(l) is None]
    return MIX.units(model, analysis, names, list(keys), ctx)


def test_a_mix_has_every_parts_units_under_prefixed_names():
    model = b.cnn_model(seed=3)
    units, left = _units(model, _context(model))
    names = [u.name for u in units]
    assert any(n.startswith("channel_pruning:") for n in names) and any(n.startswith("weight_svd:") for n in names)
    assert len(set(names)) == len(names)
    # a layer that one part takes is never reported as left out
    assert not set(left) & {n.partition(":")[2] for n in names}
    fams = MIX.families(units)
    assert len(fams) == 2 and fams[0] | fams[1] == set(names) and not fams[0] & fams[1]
    assert MIX.overlapping_units and not MIX.exact_costs and MIX.needs_data


def test_pruned_then_split_costs_the_product_of_the_footprints():
    """One layer pruned (its input channels) and split: the applied model's MACs are the
    footprint product (base.exact_cost), and apply equals the two-step pipeline."""
    model = b.cnn_model(seed=3)
    ctx = _context(model)
    units, _ = _units(model, ctx)
    by = {u.name: u for u in units}
    prune, split = by["channel_pruning:conv3"], by["weight_svd:conv3"]
    analysis = layers.analyze(model)
    costs = {l.name: layers.cost_of(l, "mac") for l in analysis.compressible}
    unreachable = 0
    for cp, sv in itertools.product(prune.candidates, split.candidates):
        ratios = {prune.name: cp.ratio, split.name: sv.ratio}
        got = MIX.apply(model, ratios, ctx)
        measured = layers.analyze(got.model).total("mac")
        if ("conv3", "weight_svd") not in {(s.name, s.scheme) for s in got.layers}:
            # the split's ratio is below rank 1 of the pruned layer: pruned only, with the reason
            why = next(s.reason for s in got.skipped if s.name == "conv3")
            assert "weight_svd after the earlier schemes" in why and "below" in why
            assert measured == exact_cost(units, {prune.name: cp.key}, costs)
            unreachable += 1
            continue
        assert {(s.name, s.scheme) for s in got.layers} == {("conv3", "channel_pruning"), ("conv3", "weight_svd")}
        predicted = exact_cost(units, {prune.name: cp.key, split.name: sv.key}, costs)
        # the split's rank is resolved on the pruned layer (16 x kept 1x1 conv): at most one rank away
        step = costs["conv3"] * Fraction(16 + cp.size, 16 * 16)
        assert abs(measured - predicted) <= step, (cp.key, sv.key, measured, predicted)
        piped, _ = oc.compress(model, ["channel_pruning", "weight_svd"], [{"conv3": cp.ratio}, {"conv3": sv.ratio}],
                               data=ctx.settings.data, num_reconstruction_samples=64, reconstruct=False,
                               data_aware=False)
        feed = b.random_input(model, seed=1, batch=3)
        np.testing.assert_allclose(b.run(got.model, feed)[0], b.run(piped, feed)[0], rtol=1e-5, atol=1e-6)
    assert 0 < unreachable < len(prune.candidates) * len(split.candidates)


def test_each_units_preview_reproduces_apply_of_that_unit():
    model = b.cnn_model(seed=3)
    ctx = _context(model)
    units, _ = _units(model, ctx, keys=(0.5,))
    feed = b.random_input(model, seed=11, batch=3)
    for unit in units:
        cand = unit.candidates[0]
        want = b.run(MIX.apply(model, {unit.name: cand.ratio}, ctx).model, feed)[0]
        sess = runtime.WeightSwapper(model, list(unit.weights)).session(unit.preview(cand))
        got = sess.run(None, feed)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()), err_msg=unit.name)


def test_merged_previews_keep_the_earlier_units_removed_entries():
    pruned = np.array([[0.0, 2.0], [0.0, 3.0]], np.float32)
    split = np.array([[1.0, 1.5], [0.5, 2.5]], np.float32)
    overrides = {"w": pruned}
    merge_previews(overrides, {"w": split, "v": np.ones(2, np.float32)})
    np.testing.assert_array_equal(overrides["w"], [[0.0, 1.5], [0.0, 2.5]])
    np.testing.assert_array_equal(overrides["v"], [1.0, 1.0])


def test_apply_names_the_expected_keys():
    model = b.cnn_model(seed=3)
    with pytest.raises(oc.ParameterError, match="'<scheme>:<layer>'.*'channel_pruning:conv3'"):
        MIX.apply(model, {"conv3": 0.5}, _context(model))
    with pytest.raises(oc.ParameterError, match="at least two"):
        schemes.Mix([schemes.SCHEMES["weight_svd"]])
    with pytest.raises(oc.ParameterError, match="each scheme once"):
        schemes.mix_of(["weight_svd", "weight_svd"])


def test_one_ratio_for_all_is_the_pipeline_at_that_ratio():
    model = b.cnn_model(seed=3)
    ctx = _context(model)
    got = MIX.apply(model, 0.5, ctx)
    piped, _ = oc.compress(model, ["channel_pruning", "weight_svd"], [0.5, 0.5], data=ctx.settings.data,
                           num_reconstruction_samples=64, reconstruct=False, data_aware=False)
    assert layers.analyze(got.model).total("mac") == layers.analyze(piped).total("mac")
    assert not {s.name for s in got.skipped} & {s.name for s in got.layers}


def test_auto_mix_meets_the_target_and_is_never_worse_than_its_best_part():
    """resnet_small at 0.5: weight SVD alone scores far below channel pruning alone; the
    mix's finalists include each part's own selection, so it keeps pruning's accuracy."""
    cb = evaluators.accuracy(str(TEST))
    kw = dict(data=str(CALIB), candidates=5, num_reconstruction_samples=300)
    _, alone = oc.compress_auto(str(RESNET), "channel_pruning", 0.5, cb, **kw)
    out, st = oc.compress_auto(str(RESNET), ["channel_pruning", "weight_svd"], 0.5, cb, **kw)
    assert st.scheme == "channel_pruning+weight_svd"
    assert st.mac_ratio <= 0.5
    assert st.final_score >= alone.final_score - 0.01
    units = st.selection["scores"]
    assert any(n.startswith("weight_svd:") for n in units) and any(n.startswith("channel_pruning:") for n in units)
    assert len(st.selection["verified"]) >= 4  # the mix's finalists and each part's own
    assert runtime.evaluate(out, cb, None, False) == pytest.approx(st.final_score)


def test_cli_target_with_two_schemes_is_one_mixed_target(tmp_path):
    out = tmp_path / "mix.onnx"
    stats = tmp_path / "stats.json"
    r = cli("compress", str(RESNET), "-o", str(out), "--scheme", "channel_pruning,weight_svd", "--target", "0.6",
            "--data", str(CALIB), "--eval-data", str(TEST), "--samples", "200", "--candidates", "4",
            "--stats", str(stats))
    assert r.returncode == 0, r.stderr
    payload = json.loads(stats.read_text())
    assert payload["scheme"] == "channel_pruning+weight_svd" and payload["mac_after"] / payload["mac_before"] <= 0.6
    bad = cli("compress", str(RESNET), "-o", str(tmp_path / "x.onnx"), "--scheme", "channel_pruning,weight_svd",
              "--target", "0.6", "--data", str(CALIB), "--rank-select", "tar")
    assert bad.returncode != 0 and "tar" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_the_solver_takes_a_negative_fixed_cost_exactly():
    """Units that share layers count them twice: the fixed cost goes negative; the knapsack
    stays exact (brute force over every choice)."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        opts = []
        for i in range(4):
            base = int(rng.integers(20, 60))
            cands = [solve.Option(1.0, base, 1.0)]
            for r in (0.25, 0.5, 0.75):
                cands.append(solve.Option(r, int(base * r), float(1.0 - rng.random() * (1 - r))))
            opts.append(solve.LayerOptions(f"u{i}", tuple(cands)))
        whole = sum(o.options[0].cost for o in opts)
        fixed = -int(whole * 0.4)
        total = whole + fixed
        target = 0.6
        best = None
        for pick in itertools.product(*(o.options for o in opts)):
            cost = fixed + sum(p.cost for p in pick)
            if cost <= target * total:
                score = 1.0 - sum(1.0 - p.score for p in pick)
                best = score if best is None else max(best, score)
        if best is None:
            with pytest.raises(oc.ParameterError):
                solve.select(opts, fixed, total, target, 1.0)
            continue
        sel = solve.select(opts, fixed, total, target, 1.0)
        assert sel.cost <= target * total
        assert sel.expected_score == pytest.approx(best, abs=1e-9), trial
