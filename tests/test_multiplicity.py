"""Channel-block rounding ("auto" multiplicity), repeat candidates, and scores above baseline."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nets
from refs import cli
import onnx_compress as oc
from onnx_compress import cost, runtime
from onnx_compress.api import resolve_multiplicity
from onnx_compress.evaluators import fidelity
from onnx_compress.search import dictionary as greedy

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


# ------------------------------------------------------------------ scores above baseline
def _unit(name, options):
    """A unit of base cost 100 with candidates {key: cost}."""
    cands = [oc.schemes.Candidate(k, int(c), int(c), Fraction(int(c), 100)) for k, c in options.items()]
    return oc.schemes.Unit(name, cands, lambda c: {}, 100)


@pytest.mark.parametrize("objective", ["product", "sum"])
def test_a_score_above_baseline_is_not_spent_on_another_layers_loss(objective):
    # A alone at 0.5 scores *above* the baseline (1.03), B at 0.7 loses 0.02. Crediting
    # A's gain makes (A 0.5, B 0.7) look better than the model (1.01); clamped, the lossless
    # (A 0.2, B uncompressed) of the same cost wins.
    units = [_unit("A", {0.2: 20, 0.5: 50}), _unit("B", {0.7: 70})]
    dictionary = greedy.Dictionary(baseline=1.0, scores={"A": {0.2: 1.0, 0.5: 1.03}, "B": {0.7: 0.98}})
    chosen = greedy.choose(units, dictionary, 200, 200, Fraction(3, 5), "knapsack", False, objective=objective)
    assert chosen.choices["A"].ratio == 0.2
    assert chosen.choices["B"].ratio == 1.0
    assert chosen.expected_score == pytest.approx(1.0, abs=1e-12)  # never expected above the baseline
    assert chosen.cost == 120


def test_scores_below_baseline_still_rank_candidates():
    # nothing above the baseline: the clamp changes nothing, the smaller loss wins
    units = [_unit("A", {0.5: 50}), _unit("B", {0.5: 50})]
    dictionary = greedy.Dictionary(baseline=1.0, scores={"A": {0.5: 0.99}, "B": {0.5: 0.90}})
    chosen = greedy.choose(units, dictionary, 200, 200, Fraction(3, 4), "knapsack", False)
    assert (chosen.choices["A"].ratio, chosen.choices["B"].ratio) == (0.5, 1.0)
    assert chosen.expected_score == pytest.approx(0.99, abs=1e-9)


# ------------------------------------------------------------------------ channel block
def _probe_conv(channels: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((channels, channels, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _blocked(model: onnx.ModelProto, tmp_path: Path) -> bool:
    import onnxruntime as ort

    opts = runtime.options(1)
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return any(n.domain == "com.microsoft.nchwc" for n in onnx.load(tmp_path / "opt.onnx").graph.node)


def test_channel_block_is_what_ort_blocks_convs_at(tmp_path):
    block = runtime.channel_block()
    assert block in (1, 4, 8, 16, 32)
    assert runtime.channel_block(use_cuda=True) == 8
    if block == 1:
        pytest.skip("this ONNX Runtime build has no blocked (NCHWc) conv layout")
    # a conv on the block takes the blocked kernel; one input channel past it does not
    assert _blocked(_probe_conv(3 * block), tmp_path)
    assert not _blocked(_probe_conv(3 * block + 1), tmp_path)


def test_auto_multiplicity_resolves_and_bad_values_are_refused():
    assert resolve_multiplicity("auto") == runtime.channel_block()
    assert resolve_multiplicity(" AUTO ", use_cuda=True) == 8
    assert resolve_multiplicity(4) == 4
    for bad in ("fast", 0, -8, 2.0, True):
        with pytest.raises(oc.ParameterError, match="multiplicity"):
            resolve_multiplicity(bad)


def _wide():
    n = nets.Net(0)
    x = n.node("Relu", [n.conv("x", 3, 16, name="c1")])
    x = n.node("Relu", [n.conv(x, 16, 40, name="c2")])
    x = n.node("Relu", [n.conv(x, 40, 48, name="c3")])
    return n.model(n.head(x, 48))


def test_auto_multiplicity_puts_every_rank_on_the_block():
    model = _wide()
    block = runtime.channel_block()
    _, stats = oc.compress(model, "weight_svd", 0.5, multiplicity="auto")
    # on the block, or (a layer too small to reach it) capped where the split stops saving, and said so
    assert any(s.rank % block == 0 for s in stats.layers)
    assert all(s.rank % block == 0 or (s.rank < block and "multiplicity" in s.note) for s in stats.layers)
    assert stats.parameters["multiplicity"] == f"auto ({block})"
    ev = fidelity(nets.calib(model, 8))
    _, auto_stats = oc.compress_auto(model, "channel_pruning", 0.6, ev, candidates=5, multiplicity="auto",
                                     data=nets.calib(model, 32), num_reconstruction_samples=200)
    assert auto_stats.mac_ratio <= 0.6
    assert auto_stats.layers and all(s.rank % block == 0 or s.rank < block for s in auto_stats.layers)


# ------------------------------------------------------------------- repeat candidates
def test_rounding_that_repeats_a_size_costs_no_second_evaluation():
    model = _wide()
    calls = [0]
    fid = fidelity(nets.calib(model, 8))

    def ev(session, iterations, use_cuda):
        calls[0] += 1
        return fid(session, iterations, use_cuda)

    _, stats = oc.compress_auto(model, "weight_svd", 0.6, ev, candidates=10, multiplicity=8)
    analysis = oc.inspect(model)
    for name, scores in stats.selection["scores"].items():
        rc = oc.schemes.SCHEMES["weight_svd"].rank_cost(analysis.find(name), "mac")
        sizes = {cost.rank_for_ratio(rc, k / 10, 8) for k in range(1, 10)} - {0}
        assert len(scores) == len(sizes) < 9  # one evaluation per distinct rank, and rounding repeated some
    assert stats.selection["evaluations"] == sum(len(s) for s in stats.selection["scores"].values()) + 1


def test_saved_scores_of_another_multiplicity_are_refused(tmp_path):
    model = _wide()
    ev = fidelity(nets.calib(model, 8))
    path = tmp_path / "scores.json"
    oc.compress_auto(model, "weight_svd", 0.6, ev, candidates=5, scores_out=path)
    with pytest.raises(oc.ParameterError, match="multiplicity"):
        oc.compress_auto(model, "weight_svd", 0.6, ev, candidates=5, multiplicity=8, saved_eval_scores_dict=path)


def test_cli_accepts_auto_and_refuses_nonsense(tmp_path):
    out = tmp_path / "out.onnx"
    args = ("compress", str(MODELS / "vgg_small.onnx"), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5")
    bad = cli(*args, "--multiplicity", "fast")
    assert bad.returncode == 2 and "--multiplicity" in bad.stderr and "auto" in bad.stderr
    assert not out.exists()
    good = cli(*args, "--multiplicity", "auto", "--stats", str(tmp_path / "s.json"))
    assert good.returncode == 0, good.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    block = runtime.channel_block()
    ranks = [layer["rank"] for layer in stats["layers"]]
    assert any(r % block == 0 for r in ranks)
    assert all(r % block == 0 or r < block for r in ranks)  # small layers stop at their break-even rank
