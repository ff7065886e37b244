"""Latency cost: layers timed alone, the latency metric in auto mode, the slower-split check.

No test asserts on wall-clock speed (machines are noisy): real timings are only checked
to be positive integers and cached; behaviour is checked with a deterministic fake timer.
"""
from __future__ import annotations

import json
import logging
import math
from fractions import Fraction

import numpy as np
import onnx
import pytest

import builders as b
import nets
import onnx_compress as oc
from onnx_compress import cli, layers
from onnx_compress.schemes import variants as variants_mod
from onnx_compress.search import latency
from onnx_compress.evaluators import fidelity
from onnx_compress.search import dictionary as greedy
from onnx_compress.schemes import SCHEMES

FAST = dict(repeats=3, warmup=1, seconds_per_layer=0.02)


def wide_cnn(seed=0):
    n = nets.Net(seed)
    x = n.node("Relu", [n.conv("x", 3, 16, name="c1")])
    x = n.node("Relu", [n.conv(x, 16, 24, name="c2")])
    x = n.node("Relu", [n.conv(x, 24, 32, name="c3")])
    return n.model(n.head(x, 32))


def fake_seconds(v: variants_mod.Variant) -> float:
    """A deterministic 'latency': weight elements plus a fixed cost per node."""
    elements = sum(math.prod(s) for _, shapes, _ in v.nodes for s in shapes if s)
    return 1e-6 * (2 * len(v.nodes) + elements / 500)


@pytest.fixture()
def fake_timer(monkeypatch):
    """Replace ONNX Runtime timing by `fake_seconds` (optionally slowed per variant)."""
    latency.clear_cache()
    calls = []
    slow = {"if": lambda v: False}

    def measure(variants, timer, budget):
        calls.append(list(variants))
        return [[fake_seconds(v) * (3.0 if slow["if"](v) else 1.0)] * 3 for v in variants]

    monkeypatch.setattr(latency, "measure", measure)
    yield calls, slow
    latency.clear_cache()


def evaluator(model):
    return fidelity(nets.calib(model, 8))


# ----------------------------------------------------------------------- real timings
def test_real_timings_are_positive_integers_and_cached(monkeypatch):
    latency.clear_cache()
    model = wide_cnn()
    analysis = layers.analyze(model)
    units, _ = SCHEMES["weight_svd"].units(analysis.proto, analysis, ["c2", "c3"], greedy.candidate_keys(4),
                                           oc.schemes.Context("mac", 1, analysis.input_dims))
    timer = latency.Timer(batch_size=2, **FAST)
    lat = latency.unit_latencies(model, analysis.input_dims, units, oc.schemes.SCHEMES["weight_svd"], timer)
    figures = [v for u in lat.values() for v in (u.original, *u.candidates.values())]
    assert figures and all(isinstance(v, int) and v > 0 for v in figures)
    assert timer.timed > 0
    calls = []
    real = latency.measure
    monkeypatch.setattr(latency, "measure", lambda *a: calls.append(a) or real(*a))
    again = latency.unit_latencies(model, analysis.input_dims, units, SCHEMES["weight_svd"], latency.Timer(batch_size=2, **FAST))
    assert again == lat and not calls  # every figure from the cache
    total, per = latency.model_total(model, analysis.input_dims, latency.Timer(batch_size=2, **FAST))
    assert total == sum(per.values()) and set(per) == {"c1", "c2", "c3", "fc"}
    latency.clear_cache()


@pytest.mark.parametrize("scheme,model", [
    ("weight_svd", b.conv_model(n_in=6, n_out=8, kernel=(3, 3), pads=(1, 1, 1, 1), strides=(2, 2))),
    ("spatial_svd", b.conv_model(n_in=6, n_out=8, kernel=(3, 3), pads=(1, 0, 1, 2))),
    ("weight_svd", b.gemm_model()),
])
def test_split_variants_have_the_real_splits_shapes(scheme, model):
    layer = layers.analyze(model).compressible[0]
    rc = SCHEMES[scheme].rank_cost(layer, "memory")
    ranks = [1, 2, rc.full_rank // 2 + 1]
    variants = variants_mod.split_variants(layer, SCHEMES[scheme], ranks, 17)
    for rank in ranks:
        specs = SCHEMES[scheme].specs(layer, rank, 17)
        got = [tuple(s for s in shapes[:len(spec.params)]) for (_, shapes, _), spec in zip(variants[rank].nodes, specs)]
        assert got == [tuple(p.shape for p in spec.params) for spec in specs]
        x = np.zeros(variants[rank].input_shape, np.float32)
        y = b.run(variants_mod.variant_model(variants[rank]), {"x": x})[0]
        assert y.shape == layer.out_shape


def test_pruned_variants_run():
    model = nets.silu_se_net()
    analysis = layers.analyze(model, (2, 3, 16, 16))
    for name in ("expand", "dw", "project", "fc"):
        layer = analysis.find(name)
        kept = variants_mod.in_width(layer) // 2
        v = variants_mod.pruned_variant(layer, kept, 17)
        y = b.run(variants_mod.variant_model(v), {"x": np.zeros(v.input_shape, np.float32)})[0]
        assert y.shape[0] == 2 and v.input_shape[0 if name == "fc" else 1] in (2, kept)


# ------------------------------------------------------------------ auto mode, fake timer
@pytest.mark.parametrize("method", ["knapsack", "threshold"])
def test_latency_target_met_on_the_measured_table(fake_timer, method):
    model = wide_cnn()
    out, stats = oc.compress_auto(model, "weight_svd", 0.8, evaluator(model), candidates=5,
                                  cost_metric=oc.CostMetric.latency, method=method, latency_batch_size=4)
    lat = stats.latency
    assert stats.cost_metric == "latency" and lat["batch_size"] == 4
    # the total, computed independently from the fake timer: every layer alone at batch 4
    analysis = layers.analyze(model, (4, 3, 16, 16))
    total = sum(latency._ns(fake_seconds(variants_mod.original_variant(l, 17))) for l in analysis.compressible)
    assert lat["layers_before"] == total
    assert Fraction(lat["layers_after"], total) <= Fraction(8, 10)
    # the after figure is the chosen candidates' table entries plus the untouched layers
    chosen = stats.selection["chosen"]
    expected = total
    for unit, key in chosen.items():
        entry = lat["units"][unit]
        if key != 1.0:
            expected += entry["candidates"][str(key)] - entry["original"]
    assert lat["layers_after"] == expected
    assert "latency layers:" in str(stats)


def test_slower_splits_dropped_unless_allowed(fake_timer):
    calls, slow = fake_timer
    slow["if"] = lambda v: len(v.nodes) > 1 and v.input_shape[1] == 16  # every split of c2 is slower
    model = wide_cnn()
    ev = evaluator(model)
    _, fast = oc.compress_auto(model, "weight_svd", 0.8, ev, candidates=5)  # mac default: nothing timed
    assert not calls and fast.latency is None and "c2" in fast.selection["scores"]

    _, checked = oc.compress_auto(model, "weight_svd", 0.8, ev, candidates=5, allow_slower_splits=False)
    assert calls and checked.cost_metric == "mac" and checked.mac_ratio <= 0.8
    assert "c2" not in checked.selection["scores"] and "c2" not in checked.selection["chosen"]
    assert checked.latency["dropped"]["c2"] == [0.2, 0.4, 0.6, 0.8]
    reason = {s.name: s.reason for s in checked.skipped}["c2"]
    assert "slower than the original layer" in reason

    _, lat = oc.compress_auto(model, "weight_svd", 0.9, ev, candidates=5, cost_metric="latency")
    assert "c2" not in lat.selection["scores"] and lat.latency["dropped"]["c2"]

    _, kept = oc.compress_auto(model, "weight_svd", 0.9, ev, candidates=5, cost_metric="latency",
                               allow_slower_splits=True)
    assert "c2" in kept.selection["scores"] and not kept.latency["dropped"]
    assert all(v > kept.latency["units"]["c2"]["original"] for v in kept.latency["units"]["c2"]["candidates"].values())


def test_channel_pruning_latency_target(fake_timer):
    model = wide_cnn()
    data = nets.calib(model, 16)
    out, stats = oc.compress_auto(model, "channel_pruning", 0.7, evaluator(model), candidates=4, data=data,
                                  num_reconstruction_samples=100, reconstruct=False, cost_metric="latency")
    lat = stats.latency
    assert lat["layers_after"] <= 0.7 * lat["layers_before"]
    # the after figure is the pruned model's layers, timed
    total, _ = latency.model_total(out, {"x": (1, 3, 16, 16)}, latency.Timer(batch_size=1))
    assert lat["layers_after"] == total
    assert b.run(out, nets.calib(model, 2, seed=1))[0].shape == (2, 10)


# -------------------------------------------------------------------------- refusals
def test_bad_values_are_parameter_errors(fake_timer):
    model = wide_cnn()
    ev = evaluator(model)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(oc.ParameterError, match="batch size"):
            oc.compress_auto(model, "weight_svd", 0.8, ev, cost_metric="latency", latency_batch_size=bad)
    with pytest.raises(oc.ParameterError, match="allow_slower_splits"):
        oc.compress_auto(model, "weight_svd", 0.8, ev, allow_slower_splits="yes")
    with pytest.raises(oc.ParameterError, match="auto mode"):
        oc.compress(model, "weight_svd", 0.5, cost_metric="latency")
    with pytest.raises(oc.ParameterError, match="cost metric"):
        oc.compress(model, "weight_svd", 0.5, cost_metric="seconds")


# ------------------------------------------------------------------------------- CLI
def test_cli_latency_flags_end_to_end(fake_timer, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # in-process: leave pytest's logging alone
    model = tmp_path / "m.onnx"
    net = wide_cnn()
    onnx.save(net, str(model))
    np.savez(tmp_path / "d.npz", **nets.calib(net, 8))
    out, stats = tmp_path / "o.onnx", tmp_path / "s.json"
    args = ["-q", "compress", str(model), "-o", str(out), "--scheme", "weight_svd", "--target", "0.85",
            "--data", str(tmp_path / "d.npz"), "--candidates", "4", "--stats", str(stats)]
    assert cli.main(args + ["--metric", "latency", "--latency-batch", "3"]) == 0
    saved = json.loads(stats.read_text())
    assert saved["cost_metric"] == "latency" and saved["latency"]["batch_size"] == 3
    assert "latency ratio" in capsys.readouterr().out
    assert cli.main(args + ["--metric", "latency", "--allow-slower-splits"]) == 0
    assert json.loads(stats.read_text())["latency"]["allow_slower_splits"] is True
    assert cli.main(args + ["--drop-slower-splits"]) == 0
    assert json.loads(stats.read_text())["cost_metric"] == "mac"

    assert cli.main(args + ["--metric", "latency", "--latency-batch", "0"]) == 2
    assert "--latency-batch must be an integer >= 1" in capsys.readouterr().err
    manual = ["-q", "compress", str(model), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5"]
    assert cli.main(manual + ["--metric", "latency"]) == 2
    assert "auto mode" in capsys.readouterr().err
