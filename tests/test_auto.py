"""Auto mode: eval-score dictionary, selection under the target, saved dictionaries, TAR."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders as b
import nets
import onnx_compress as oc
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.search import finalists
from onnx_compress import runtime
from onnx_compress.evaluators import accuracy, fidelity

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def wide_cnn(seed=0):
    """A chain of convs wide enough that every candidate ratio gives a distinct rank."""
    n = nets.Net(seed)
    x = n.node("Relu", [n.conv("x", 3, 16, name="c1")])
    x = n.node("Relu", [n.conv(x, 16, 24, name="c2")])
    x = n.node("Relu", [n.conv(x, 24, 32, name="c3")])
    x = n.node("Relu", [n.conv(x, 32, 32, k=1, name="c4")])
    return n.model(n.head(x, 32))


class Counting:
    """A fidelity evaluator that counts its calls."""

    def __init__(self, model):
        self.fn = fidelity(nets.calib(model, 16))
        self.calls = 0

    def __call__(self, session, iterations, use_cuda):
        self.calls += 1
        return self.fn(session, iterations, use_cuda)


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd"])
def test_evaluation_count_and_target(scheme):
    model = wide_cnn()
    ev = Counting(model)
    out, stats = oc.compress_auto(model, scheme, 0.6, ev, candidates=5)
    sel = stats.selection
    units = len(sel["scores"])
    assert units >= 3
    full = [u for u, scores in sel["scores"].items() if len(scores) == 4]
    assert len(full) >= units - 1  # a layer too small for a candidate rank skips that candidate only
    assert sel["evaluations"] == sum(len(s) for s in sel["scores"].values()) + 1  # candidates + baseline
    assert len(sel["verified"]) <= 3  # finalists scored on the real combined model
    assert ev.calls == sel["evaluations"] + len(sel["verified"]) + 1  # + the final model
    assert stats.mac_ratio <= 0.6
    # a real number: the callback's score of the returned model (top-1 agreement), scored afresh
    assert isinstance(stats.final_score, float) and 0.0 <= stats.final_score <= 1.0
    assert stats.final_score == pytest.approx(ev.fn(runtime.session(out), None, False), abs=1e-9)
    x = nets.calib(model, 2, seed=1)
    assert b.run(out, x)[0].shape == (2, 10)


@pytest.mark.parametrize("model,scheme,target", [
    ("vgg_small", "weight_svd", 0.7), ("vgg_small", "spatial_svd", 0.5), ("resnet_small", "weight_svd", 0.5),
])
def test_reference_models_hit_target_within_one_step(model, scheme, target):
    data = np.load(MODELS / "digits32_calib.npz")
    ev = fidelity({"input": data["input"][:64]})
    out, stats = oc.compress_auto(MODELS / f"{model}.onnx", scheme, target, ev)
    total = stats.mac_before
    # largest cost step between neighbouring candidates of any layer
    step = 0
    analysis = oc.inspect(MODELS / f"{model}.onnx")
    for name in stats.selection["scores"]:
        layer = analysis.find(name)
        rc = oc.schemes.SCHEMES[scheme].rank_cost(layer, "mac")
        ranks = sorted({oc.cost.rank_for_ratio(rc, k / 10) for k in range(1, 10)} | {rc.max_rank})
        step = max(step, max(rc.at(b_) - rc.at(a) for a, b_ in zip(ranks, ranks[1:])) if len(ranks) > 1 else 0)
        step = max(step, rc.before - rc.at(rc.max_rank))
    assert stats.mac_ratio <= target
    assert target - stats.mac_ratio <= step / total + 1e-12


def test_saved_dictionary_reproduces_selection_without_evaluations(tmp_path):
    model = wide_cnn()
    path = tmp_path / "scores.json"
    ev = Counting(model)
    _, first = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=5, scores_out=path)
    assert json.loads(path.read_text())["format"] == "onnx_compress.eval_scores/1"
    ev2 = Counting(model)
    out, again = oc.compress_auto(model, "weight_svd", 0.5, ev2, candidates=5, saved_eval_scores_dict=path)
    assert again.selection["evaluations"] == 0  # no dictionary evaluations
    assert ev2.calls == 2 + len(again.selection["verified"])  # the original (first), the finalists, the final model
    assert again.selection["chosen"] == first.selection["chosen"]
    _, other = oc.compress_auto(model, "weight_svd", 0.7, ev2, candidates=5, saved_eval_scores_dict=path)
    assert other.mac_ratio <= 0.7 and other.selection["evaluations"] == 0


def test_mismatched_dictionary_is_refused(tmp_path):
    path = tmp_path / "scores.json"
    model = wide_cnn()
    oc.compress_auto(model, "weight_svd", 0.5, Counting(model), candidates=5, scores_out=path)
    with pytest.raises(oc.ParameterError, match="another model|model digest|different model"):
        oc.compress_auto(wide_cnn(seed=1), "weight_svd", 0.5, Counting(model), candidates=5,
                         saved_eval_scores_dict=path)
    with pytest.raises(oc.ParameterError, match="scheme"):
        oc.compress_auto(model, "spatial_svd", 0.5, Counting(model), candidates=5, saved_eval_scores_dict=path)
    with pytest.raises(oc.ParameterError, match="candidates"):
        oc.compress_auto(model, "weight_svd", 0.5, Counting(model), candidates=4, saved_eval_scores_dict=path)


def test_unreachable_target_names_smallest_ratio():
    model = wide_cnn()
    with pytest.raises(oc.ParameterError, match=r"smallest achievable .* ratio is 0\.\d{4}"):
        oc.compress_auto(model, "weight_svd", 0.02, Counting(model), candidates=5)


def test_config_list_precedence_and_ignore():
    model = wide_cnn()
    config = [{"op_types": ["Conv"]}, {"op_names": ["c3"], "exclude": True}, {"op_names": ["c2"], "ratio": 0.5},
              {"op_names": ["re:c[24]"]}]  # later entry: c2 back to auto
    _, stats = oc.compress_auto(model, "weight_svd", 0.8, Counting(model), candidates=5, config_list=config,
                                modules_to_ignore=["c1"])
    assert set(stats.selection["scores"]) == {"c2", "c4"}
    assert stats.selection["fixed"] == {}
    reasons = {s.name: s.reason for s in stats.skipped}
    assert reasons["c3"] == "excluded by config_list entry 2" and reasons["c1"] == "in modules_to_ignore"
    assert "not matched" in reasons["fc"]
    config = [{"op_types": ["Conv"]}, {"op_names": ["c2"], "ratio": 0.5}]
    _, stats = oc.compress_auto(model, "weight_svd", 0.8, Counting(model), candidates=5, config_list=config)
    assert stats.selection["fixed"] == {"c2": 0.5} and "c2" not in stats.selection["scores"]
    assert any(l.name == "c2" and l.requested_ratio == 0.5 for l in stats.layers)


def test_knapsack_beats_or_ties_threshold_at_equal_budget():
    model = wide_cnn()
    ev = Counting(model)
    _, knap = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=5, method="knapsack")
    _, thr = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=5, method="threshold")
    assert thr.mac_ratio <= 0.5 and knap.mac_ratio <= 0.5
    assert knap.selection["expected_score"] >= thr.selection["expected_score"] - 1e-12
    assert knap.mac_ratio >= thr.mac_ratio - 1e-12 or knap.selection["expected_score"] > thr.selection["expected_score"]


def test_tar_rank_selection():
    model = wide_cnn()
    out, stats = oc.compress_auto(model, "weight_svd", 0.6, Counting(model), candidates=6, rank_select="tar")
    assert stats.selection["rank_select"] == "tar" and stats.mac_ratio <= 0.6
    levels = stats.selection["candidates"]
    assert levels == sorted(levels) and 0 < levels[0] < levels[-1] < 1


def test_trainer_called_after_each_layer():
    model = wide_cnn()
    seen = []

    class Trainer:
        def train_model(self, m, layer_name, train_flag=True):
            assert isinstance(m, onnx.ModelProto) and train_flag
            seen.append(layer_name)
            return m

    _, stats = oc.compress_auto(model, "weight_svd", 0.6, Counting(model), candidates=5, trainer=Trainer())
    assert seen and set(seen) == {l.name for l in stats.layers}


def test_channel_pruning_auto_meets_target():
    model = wide_cnn()
    data = nets.calib(model, 32)
    out, stats = oc.compress_auto(model, "channel_pruning", 0.6, Counting(model), candidates=5, data=data,
                                  num_reconstruction_samples=300)
    assert stats.mac_ratio <= 0.6
    assert stats.selection["evaluations"] > 1
    x = nets.calib(model, 2, seed=1)
    assert b.run(out, x)[0].shape == (2, 10)


def test_aimet_auto_mode():
    model = wide_cnn()
    params = oc.SpatialSvdParameters(
        oc.SpatialSvdParameters.Mode.auto,
        oc.SpatialSvdParameters.AutoModeParams(oc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=5),
                                               modules_to_ignore=["c1"]))
    out, stats = oc.ModelCompressor.compress_model(model, Counting(model), None, (1, 3, 16, 16),
                                                   oc.CompressionScheme.spatial_svd, oc.CostMetric.mac, params)
    assert stats.mac_ratio <= 0.6 and "c1" not in stats.selection["scores"]


def test_cli_auto_with_fidelity_and_saved_scores(tmp_path):
    model_path = tmp_path / "m.onnx"
    model = wide_cnn()
    onnx.save(model, str(model_path))
    np.savez(tmp_path / "calib.npz", **nets.calib(model, 16))
    common = [sys.executable, "-m", "onnx_compress.cli", "compress", str(model_path), "--scheme", "weight_svd",
              "--data", str(tmp_path / "calib.npz"), "--candidates", "5"]
    r = subprocess.run(common + ["-o", str(tmp_path / "a.onnx"), "--target", "0.6", "--scores-out",
                                 str(tmp_path / "s.json"), "--stats", str(tmp_path / "st.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fidelity on" in r.stdout
    r = subprocess.run(common + ["-o", str(tmp_path / "b.onnx"), "--target", "0.4", "--scores-in",
                                 str(tmp_path / "s.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "0 evaluations" in r.stdout
    r = subprocess.run(common + ["-o", str(tmp_path / "c.onnx"), "--target", "0.01"], capture_output=True, text=True)
    assert r.returncode == 2 and "smallest achievable" in r.stderr and not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize("scheme", ["spatial_svd", "channel_pruning"])
def test_prefix_cache_gives_the_same_scores(scheme):
    """Suffix-only evaluation on cached activations equals evaluating the whole model."""
    from onnx_compress import ir, layers
    from onnx_compress.schemes.pruning import units as prune_units
    from onnx_compress.search import dictionary as greedy

    proto = ir.load(MODELS / "resnet_small.onnx")
    analysis = layers.analyze(proto)
    names = [l.name for l in analysis.compressible]
    keys = greedy.candidate_keys(4)
    if scheme == "channel_pruning":
        settings = Settings(data=str(MODELS / "digits32_calib.npz"), num_reconstruction_samples=200)
        units, _ = prune_units.group_units(proto, analysis, names, keys, settings, "mac", 1, Activations(settings))
    else:
        units, _ = oc.schemes.SCHEMES[scheme].units(analysis.proto, analysis, names, keys, oc.schemes.Context("mac", 1, analysis.input_dims))
    test = np.load(MODELS / "digits32_test.npz")
    ev = accuracy({"input": test["input"][:128], "labels": test["labels"][:128]})
    cached = greedy.build_dictionary(proto, units, ev, None, False, prefix_cache=True)
    full = greedy.build_dictionary(proto, units, ev, None, False, prefix_cache=False)
    assert cached.baseline == full.baseline
    assert cached.scores == full.scores


def test_prefix_cache_tells_apart_feeds_its_fingerprint_confuses():
    """The cache keys feeds by a strided sample; a feed differing off the sample (or in a
    NaN) must run the full model, never reuse another feed's activations."""
    from onnx_compress import ir, runtime

    proto = ir.load(MODELS / "resnet_small.onnx")
    cache = runtime.PrefixCache(proto, {"u": [proto.graph.node[0].input[1]]})
    x = np.load(MODELS / "digits32_test.npz")["input"][:64].copy()
    y = x.copy()
    flat = y.reshape(-1)
    flat[1] += 1.0  # index 1 is off the stride-256 sample
    assert runtime._feed_key({"input": x}) == runtime._feed_key({"input": y})
    name = proto.graph.input[0].name
    out_x = cache.recording_session().run(None, {name: x})[0]
    assert cache.lookup("u", {name: x}) is not None
    assert cache.lookup("u", {name: y}) is None
    z = x.copy()
    z.reshape(-1)[5] = np.nan
    cache.recording_session().run(None, {name: z})
    assert cache.lookup("u", {name: z.copy()}) is not None  # NaNs in the same places match
    full = runtime.session(proto)
    sess = cache.candidate("u", {}, lambda: full)
    np.testing.assert_array_equal(sess.run(None, {name: x})[0], out_x)
    np.testing.assert_allclose(sess.run(None, {name: y})[0], full.run(None, {name: y})[0], rtol=0, atol=0)


def test_verified_finalists_keep_the_best_real_score():
    model = wide_cnn()
    _, stats = oc.compress_auto(model, "spatial_svd", 0.5, Counting(model), candidates=5)
    verified = stats.selection["verified"]
    assert verified, "finalists were scored"
    best = max(v["score"] for v in verified)
    threshold = [v["score"] for v in verified if v["method"] == "threshold"]
    assert stats.final_score == pytest.approx(best, abs=1e-6)  # the final model is the best finalist
    assert all(stats.final_score >= t - 1e-6 for t in threshold)


def _cp_auto(target=0.6):
    test = np.load(MODELS / "digits32_test.npz")
    ev = accuracy({"input": test["input"][:200], "labels": test["labels"][:200]})
    return oc.compress_auto(MODELS / "vgg_small.onnx", "channel_pruning", target, ev, candidates=5,
                            data=MODELS / "digits32_calib.npz", num_reconstruction_samples=200)


def test_channel_pruning_scores_its_finalists_and_keeps_the_best(monkeypatch):
    """Channel pruning: knapsack (both objectives) and threshold finalists, each meeting the
    target by its exact cost, scored with all their groups' weights swapped in (an
    estimate); the selection built is the best-estimated one and meets the target."""

    monkeypatch.setattr(finalists, "CLOSE_CALL", 0.0)  # no close calls: estimates decide
    _, stats = _cp_auto()
    verified = stats.selection["verified"]
    assert len(verified) >= 2 and all(v["estimate"] for v in verified)
    methods = {v["method"] for v in verified}
    assert "threshold" in methods and "knapsack" in methods
    assert stats.mac_ratio <= 0.6
    best = max(verified, key=lambda v: v["score"])
    assert stats.selection["expected_score"] == pytest.approx(best["expected"], abs=1e-9)


def test_channel_pruning_builds_close_finalists_and_keeps_the_best_built(monkeypatch):
    """Close calls (here: every finalist) are built and scored for real; the model returned
    is the best built one, and its score is what the statistics report."""

    monkeypatch.setattr(finalists, "CLOSE_CALL", 10.0)
    _, stats = _cp_auto()
    real = [v for v in stats.selection["verified"] if not v["estimate"]]
    estimated = [v for v in stats.selection["verified"] if v["estimate"]]
    assert len(real) == len(estimated) >= 2
    assert stats.final_score == pytest.approx(max(v["score"] for v in real), abs=1e-9)
    assert stats.mac_ratio <= 0.6


def test_aimet_weight_svd_auto_mode_params_in_aimets_order():
    g = oc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=5)
    P = oc.WeightSvdParameters.AutoModeParams
    for auto in (P(rank_select_scheme=oc.RankSelectScheme.greedy, select_params=g, modules_to_ignore=["c1"]),
                 P(oc.RankSelectScheme.greedy, g, ["c1"]),           # AIMET's positional order
                 P(g, ["c1"], oc.RankSelectScheme.greedy),           # this project's earlier order
                 P(greedy_select_params=g, modules_to_ignore=["c1"])):
        assert auto.select_params is g and auto.greedy_params is g and auto.modules_to_ignore == ["c1"]
        assert auto.rank_select_scheme == oc.RankSelectScheme.greedy
    assert P(oc.RankSelectScheme.tar, g).rank_select_scheme == oc.RankSelectScheme.tar
    with pytest.raises(oc.ParameterError, match="select_params"):
        P(oc.RankSelectScheme.greedy)
    with pytest.raises(oc.ParameterError, match="cannot use int"):
        P(oc.RankSelectScheme.greedy, g, 3)
    model = wide_cnn()
    params = oc.WeightSvdParameters(oc.WeightSvdParameters.Mode.auto,
                                    P(oc.RankSelectScheme.greedy, g, modules_to_ignore=["c1"]))
    assert params.mode_params is params.params
    out, stats = oc.ModelCompressor.compress_model(model, Counting(model), None, (1, 3, 16, 16),
                                                   oc.CompressionScheme.weight_svd, oc.CostMetric.mac, params)
    native, nstats = oc.compress_auto(model, "weight_svd", 0.6, Counting(model), candidates=5,
                                      modules_to_ignore=["c1"], input_shape=(1, 3, 16, 16))
    assert out.SerializeToString() == native.SerializeToString() and "c1" not in stats.selection["scores"]


def test_aimet_svd_data_loader_is_data_aware_exactly_as_native_data():
    model = wide_cnn()
    data = nets.calib(model, 16)
    manual = oc.SpatialSvdParameters.ManualModeParams([oc.ModuleCompRatioPair("c2", 0.5),
                                                       oc.ModuleCompRatioPair("c3", 0.4)])
    params = oc.SpatialSvdParameters(oc.SpatialSvdParameters.Mode.manual, manual, data_loader=data)
    out, _ = oc.ModelCompressor.compress_model(model, None, None, (1, 3, 16, 16),
                                               oc.CompressionScheme.spatial_svd, oc.CostMetric.mac, params)
    aware, _ = oc.compress(model, "spatial_svd", {"c2": 0.5, "c3": 0.4}, data=data, input_shape=(1, 3, 16, 16))
    plain, _ = oc.compress(model, "spatial_svd", {"c2": 0.5, "c3": 0.4}, input_shape=(1, 3, 16, 16))
    assert out.SerializeToString() == aware.SerializeToString()
    assert out.SerializeToString() != plain.SerializeToString()


def test_trainer_returning_none_keeps_the_model():
    model = wide_cnn()
    seen = []

    class InPlaceTrainer:  # AIMET's trainers fine-tune in place and return None
        def train_model(self, m, layer, train_flag=True):
            seen.append(layer)

    out, stats = oc.compress_auto(model, "weight_svd", 0.6, Counting(model), candidates=5, trainer=InPlaceTrainer())
    plain, _ = oc.compress_auto(model, "weight_svd", 0.6, Counting(model), candidates=5)
    assert set(seen) == {l.name for l in stats.layers}
    x = nets.calib(model, 2, seed=1)
    np.testing.assert_allclose(b.run(out, x)[0], b.run(plain, x)[0], rtol=1e-5, atol=1e-5)

    class Bad:
        def train_model(self, m, layer, train_flag=True):
            return "model"

    with pytest.raises(oc.ParameterError, match="ModelProto or None, got str"):
        oc.compress_auto(model, "weight_svd", 0.6, Counting(model), candidates=5, trainer=Bad())


def test_data_loaders_yielding_tuples_arrays_or_tensors_equal_feed_dicts():
    torch = pytest.importorskip("torch")
    model = wide_cnn()
    data = nets.calib(model, 16)
    (name, x), = [(k, v) for k, v in data.items() if k != "labels"]
    labels = np.arange(len(x)) % 10
    ratios = {"c2": 0.5, "c3": 0.4}
    want, _ = oc.compress(model, "channel_pruning", ratios, data=[{name: x[:8]}, {name: x[8:]}],
                          num_reconstruction_samples=200)
    loaders = {
        "(inputs, labels) tuples": [(x[:8], labels[:8]), (x[8:], labels[8:])],
        "torch [tensor, tensor] lists": [[torch.from_numpy(x[:8]), torch.from_numpy(labels[:8])],
                                         [torch.from_numpy(x[8:]), torch.from_numpy(labels[8:])]],
        "bare arrays": [x[:8], x[8:]],
        "torch tensors": [torch.from_numpy(x[:8]), torch.from_numpy(x[8:])],
    }
    for what, loader in loaders.items():
        got, _ = oc.compress(model, "channel_pruning", ratios, data=loader, num_reconstruction_samples=200)
        assert got.SerializeToString() == want.SerializeToString(), what
    with pytest.raises(oc.DataError, match="cannot read the inputs of a tuple batch"):
        oc.compress(model, "channel_pruning", ratios, data=[("text", 1)])


def test_aimet_enums_values_and_stats_fields_and_layout():
    assert oc.CompressionScheme(1) is oc.CompressionScheme.weight_svd
    assert oc.CompressionScheme(3) is oc.CompressionScheme.channel_pruning
    assert oc.CostMetric(2) is oc.CostMetric.memory and oc.RankSelectScheme(1) is oc.RankSelectScheme.greedy
    assert oc.SpatialSvdParameters.Mode.auto.value == 2 and oc.ChannelPruningParameters.Mode.manual.value == 1
    model = wide_cnn()
    params = oc.WeightSvdParameters(oc.WeightSvdParameters.Mode(2), oc.WeightSvdParameters.AutoModeParams(
        oc.RankSelectScheme(1), oc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=3)))
    _, stats = oc.ModelCompressor.compress_model(model, Counting(model), None, (1, 3, 16, 16),
                                                 oc.CompressionScheme(1), oc.CostMetric(1), params)
    assert stats.baseline_model_accuracy == stats.baseline_score == 1.0
    assert stats.compressed_model_accuracy == stats.final_score
    assert stats.mac_compression_ratio == stats.mac_ratio <= 0.6
    assert stats.memory_compression_ratio == stats.memory_ratio
    assert [(s.name, s.compression_ratio) for s in stats.per_layer_stats] == \
        [(s.name, s.achieved_ratio) for s in stats.layers]
    assert stats.compression_ratio_selection_stats == stats.selection["scores"]
    text = str(stats)
    assert text.startswith("*" * 94 + "\nCompressed Model Statistics\nBaseline model accuracy: 1.000000, ")
    assert f"Compression ratio for memory={stats.memory_ratio:.6f}, mac={stats.mac_ratio:.6f}" in text
    first = stats.layers[0]
    assert f"\nPer-layer Stats\n    Name:{first.name}, compression-ratio: {first.achieved_ratio:.6f}\n" in text
    assert "Greedy Eval Dict\n    Layer: c1\n        Ratio=" in text
    manual = oc.WeightSvdParameters(oc.WeightSvdParameters.Mode.manual,
                                    oc.WeightSvdParameters.ManualModeParams([oc.ModuleCompRatioPair("c2", 0.5)]))
    _, mstats = oc.ModelCompressor.compress_model(model, None, None, (1, 3, 16, 16), oc.CompressionScheme.weight_svd,
                                                  oc.CostMetric.mac, manual)
    assert mstats.compression_ratio_selection_stats is None and str(mstats).endswith("\nNone\n" + "*" * 94 + "\n")


def test_trainer_in_manual_mode_runs_after_each_layer_in_graph_order():
    """AIMET's trainer in manual mode: layers compressed one at a time in graph order, the
    trainer after each; None keeps the model (the result equals the run without a trainer),
    a returned ModelProto is what the next layer is compressed on."""
    model = wide_cnn()
    seen = []

    class InPlaceTrainer:
        def train_model(self, m, layer, train_flag=True):
            seen.append((layer, train_flag, isinstance(m, onnx.ModelProto)))

    manual = oc.SpatialSvdParameters.ManualModeParams([oc.ModuleCompRatioPair("c3", 0.4),
                                                       oc.ModuleCompRatioPair("c2", 0.5)])
    params = oc.SpatialSvdParameters(oc.SpatialSvdParameters.Mode.manual, manual)
    out, stats = oc.ModelCompressor.compress_model(model, None, None, (1, 3, 16, 16), oc.CompressionScheme.spatial_svd,
                                                   oc.CostMetric.mac, params, trainer=InPlaceTrainer())
    assert seen == [("c2", True, True), ("c3", True, True)]
    plain, _ = oc.compress(model, "spatial_svd", {"c2": 0.5, "c3": 0.4}, input_shape=(1, 3, 16, 16))
    x = nets.calib(model, 2, seed=1)
    np.testing.assert_allclose(b.run(out, x)[0], b.run(plain, x)[0], rtol=1e-5, atol=1e-5)

    class Replacing:  # returns another model: the next layer is compressed on it
        def __init__(self):
            self.calls = 0

        def train_model(self, m, layer, train_flag=True):
            self.calls += 1
            replaced = onnx.ModelProto()
            replaced.CopyFrom(m)
            replaced.doc_string = f"tuned after {layer}"
            return replaced

    out, _ = oc.compress(model, "weight_svd", 0.5, input_shape=(1, 3, 16, 16), trainer=Replacing())
    assert out.doc_string.startswith("tuned after")
    with pytest.raises(oc.ParameterError, match="train_model"):
        oc.compress(model, "weight_svd", 0.5, trainer=object())


def test_trainer_in_manual_channel_pruning_does_not_prune_a_group_twice():
    """Two named layers of one residual group: the second was pruned with the first, so it is
    skipped with the reason, as without a trainer."""
    calls = []

    class T:
        def train_model(self, m, layer, train_flag=True):
            calls.append(layer)

    from onnx_compress import ir, layers
    from onnx_compress.schemes.pruning import depgraph

    analysis = layers.analyze(ir.load(str(MODELS / "resnet_small.onnx")))
    group = depgraph.build_group(analysis.find("/layer1/conv1/Conv"), analysis.graph, analysis.shapes)
    a, other = group.in_layers()[0], group.in_layers()[1]
    out, stats = oc.compress(str(MODELS / "resnet_small.onnx"), "channel_pruning", {a: 0.5, other: 0.5},
                             data=str(MODELS / "digits32_calib.npz"), trainer=T(), num_reconstruction_samples=200)
    once, _ = oc.compress(str(MODELS / "resnet_small.onnx"), "channel_pruning", {a: 0.5},
                          data=str(MODELS / "digits32_calib.npz"), num_reconstruction_samples=200)
    width = {l.name: l.weight.shape for l in oc.inspect(out).compressible}
    assert width == {l.name: l.weight.shape for l in oc.inspect(once).compressible}
    assert any(s.name == other and "group of" in s.reason for s in stats.skipped)
    assert len(calls) == 1


def test_config_list_fixed_ratios_count_toward_the_target_and_the_baseline_is_uncompressed():
    model = wide_cnn()
    ev = Counting(model)
    uncompressed = runtime.evaluate(model, ev, None, False)
    fixed = [{"op_types": "default"}, {"sparsity": 0.9, "op_names": "c3"}]  # NNI's shape
    out, stats = oc.compress_auto(model, "weight_svd", 0.4, ev, candidates=5, config_list=fixed)
    assert stats.baseline_score == pytest.approx(uncompressed, abs=1e-12)
    assert stats.selection["baseline"] < stats.baseline_score  # the dictionary's: c3 already fixed
    assert stats.mac_after / stats.mac_before <= 0.4
    c3 = next(l for l in stats.layers if l.name == "c3")
    assert c3.requested_ratio == pytest.approx(0.1) and len(stats.layers) > 1  # the others chosen to meet the target
    every = [{"sparsity": 0.2, "op_types": "default"}]  # every layer fixed at 0.8 of its MACs
    with pytest.raises(oc.ParameterError, match="target 0.5 cannot be reached: the config_list's fixed ratios"):
        oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=5, config_list=every)
    out, stats = oc.compress_auto(model, "weight_svd", 0.9, ev, candidates=5, config_list=every)
    assert stats.baseline_score == pytest.approx(uncompressed, abs=1e-12)
    assert stats.mac_after / stats.mac_before <= 0.9 and all(l.requested_ratio == 0.8 for l in stats.layers)


def test_trainer_loop_prunes_what_the_plain_run_prunes():
    """With a trainer returning None the layer-by-layer loop gives the plain run's model: a
    layer that only lost output channels to an earlier group is still pruned, and one
    ratio for all skips (not refuses) the layers it cannot take."""
    class T:
        def train_model(self, m, layer, train_flag=True):
            return None

    resnet, calib = str(MODELS / "resnet_small.onnx"), str(MODELS / "digits32_calib.npz")
    ratios = {"/layer1/conv1/Conv": 0.5, "/layer1/conv2/Conv": 0.5}
    _, plain = oc.compress(resnet, "channel_pruning", ratios, data=calib, num_reconstruction_samples=200)
    _, looped = oc.compress(resnet, "channel_pruning", ratios, data=calib, num_reconstruction_samples=200,
                            trainer=T())
    assert looped.mac_after == plain.mac_after and len(looped.layers) == len(plain.layers) == 2
    vgg = str(MODELS / "vgg_small.onnx")
    for scheme in ("weight_svd", "spatial_svd"):
        plain_model, plain = oc.compress(vgg, scheme, 0.1)
        looped_model, looped = oc.compress(vgg, scheme, 0.1, trainer=T())
        assert [l.name for l in looped.layers] == [l.name for l in plain.layers]
        assert sorted((s.name, s.reason) for s in looped.skipped) == sorted((s.name, s.reason) for s in plain.skipped)
        assert looped.mac_after == plain.mac_after
