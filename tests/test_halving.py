"""Successive halving for the eval-score dictionary (search/halving.py): the chosen
candidates carry the exhaustive dictionary's full-data scores, the work is counted in
batches and below the exhaustive dictionary's, and it degenerates to the exhaustive
dictionary where the slice would be the full data."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import onnx_compress as oc
from onnx_compress import ir, layers
from onnx_compress.errors import ParameterError
from onnx_compress.evaluators import accuracy
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.search import dictionary as greedy
from onnx_compress.search import halving

MODELS = Path(__file__).resolve().parents[1] / "models"


class Counting:
    """An evaluator that counts the session.run calls (batches) it makes."""

    def __init__(self, fn):
        self.fn, self.runs = fn, 0

    def __call__(self, session, iterations, use_cuda):
        outer = self

        class Session:
            def run(self, *args, **kwargs):
                outer.runs += 1
                return session.run(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(session, name)

        return self.fn(Session(), iterations, use_cuda)


class IgnoresIterations:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, session, iterations, use_cuda):
        return self.fn(session, None, use_cuda)


def digits(n: int, repeat: int = 1) -> dict:
    test = np.load(MODELS / "digits32_test.npz")
    x, y = test["input"][:n], test["labels"][:n]
    return {"input": np.concatenate([x] * repeat), "labels": np.concatenate([y] * repeat)}


def setup(scheme: str = "weight_svd", candidates: int = 5):
    proto = ir.load(MODELS / "resnet_small.onnx")
    analysis = layers.analyze(proto)
    names = [l.name for l in analysis.compressible]
    keys = greedy.candidate_keys(candidates)
    settings = Settings(data=str(MODELS / "digits32_calib.npz"), num_reconstruction_samples=200) \
        if scheme == "channel_pruning" else None
    ctx = oc.schemes.Context("mac", 1, analysis.input_dims, settings, Activations(settings) if settings else None)
    units, _ = oc.schemes.SCHEMES[scheme].units(analysis.proto, analysis, names, keys, ctx)
    total = analysis.total("mac")
    return proto, units, total


def chooser(units, total: int, target: float):
    return lambda d: greedy.choose(units, d, total, total, target, "knapsack", False)


def check_chosen(units, total, target, halved, exhaustive):
    """Every full score is the exhaustive one, exactly, and the selection uses only those."""
    meta = halved.meta["halving"]
    estimated = {(u, k) for u, keys in meta["estimated"].items() for k in keys}
    assert halved.baseline == exhaustive.baseline
    for u, scores in halved.scores.items():
        assert set(scores) == set(exhaustive.scores[u])
        for k, v in scores.items():
            if (u, k) not in estimated:
                assert v == exhaustive.scores[u][k]
    sel = chooser(units, total, target)(halved)
    for u, o in sel.choices.items():
        if o.ratio != 1.0:
            assert (u, o.ratio) not in estimated
            assert halved.scores[u][o.ratio] == exhaustive.scores[u][o.ratio]
    return sel


@pytest.mark.parametrize("scheme,target", [("weight_svd", 0.6), ("channel_pruning", 0.5)])
def test_chosen_candidates_carry_the_exhaustive_full_scores_and_the_work_is_counted(scheme, target):
    proto, units, total = setup(scheme)
    ev = Counting(accuracy(digits(256)))  # 4 batches of 64: a slice of 1
    exhaustive = greedy.build_dictionary(proto, units, ev, None, False)
    runs = ev.runs
    assert runs == 4 * (sum(len(u.candidates) for u in units) + 1)
    ev.runs = 0
    halved = halving.build_halving(proto, units, ev, None, False, chooser(units, total, target))
    meta = halved.meta["halving"]
    assert meta["degenerate"] is None and meta["full_batches"] == 4 and meta["slice_batches"] == 1
    assert meta["batches"] == ev.runs  # counted as the evaluator's own session.run calls
    assert meta["exhaustive_batches"] == runs
    count = sum(len(u.candidates) for u in units)
    assert meta["slice_evaluations"] == count + 1
    assert meta["batches"] == 4 * meta["full_evaluations"] + 1 * meta["slice_evaluations"]
    assert halved.evaluations == meta["full_evaluations"] + meta["slice_evaluations"]
    assert meta["work"] == ev.runs / runs and meta["work"] < 1
    assert sum(len(k) for k in meta["estimated"].values()) == count - (meta["full_evaluations"] - 1) > 0
    check_chosen(units, total, target, halved, exhaustive)


def test_one_batch_degenerates_to_the_exhaustive_dictionary():
    proto, units, total = setup()
    ev = Counting(accuracy(digits(64)))
    exhaustive = greedy.build_dictionary(proto, units, ev, None, False)
    runs, ev.runs = ev.runs, 0
    halved = halving.build_halving(proto, units, ev, None, False, chooser(units, total, 0.6))
    assert halved.baseline == exhaustive.baseline and halved.scores == exhaustive.scores
    assert halved.evaluations == exhaustive.evaluations and ev.runs == runs
    meta = halved.meta["halving"]
    assert "is the full data" in meta["degenerate"] and meta["estimated"] == {} and meta["work"] == 1.0


def test_an_evaluator_that_ignores_iterations_degenerates_too():
    proto, units, total = setup(candidates=3)
    ev = IgnoresIterations(accuracy(digits(128)))
    exhaustive = greedy.build_dictionary(proto, units, ev, None, False)
    halved = halving.build_halving(proto, units, ev, None, False, chooser(units, total, 0.6))
    assert halved.scores == exhaustive.scores
    assert "does not honour iterations" in halved.meta["halving"]["degenerate"]


def test_user_iterations_bound_the_full_data():
    proto, units, total = setup(candidates=3)
    ev = Counting(accuracy(digits(500)))
    exhaustive = greedy.build_dictionary(proto, units, ev, 4, False)
    halved = halving.build_halving(proto, units, ev, 4, False, chooser(units, total, 0.6))
    meta = halved.meta["halving"]
    assert meta["full_batches"] == 4 and meta["slice_batches"] == 1
    check_chosen(units, total, 0.6, halved, exhaustive)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_the_selection_is_the_exhaustive_one_where_the_slice_is_the_data_in_small(target):
    """Four copies of the same 64 images: every slice score is the full score, so the
    estimates are exact and the selection must be the exhaustive one."""
    proto, units, total = setup()
    ev = accuracy(digits(64, repeat=4))
    exhaustive = greedy.build_dictionary(proto, units, ev, None, False)
    halved = halving.build_halving(proto, units, ev, None, False, chooser(units, total, target), workers=2)
    assert halved.meta["halving"]["work"] < 0.75
    sel = check_chosen(units, total, target, halved, exhaustive)
    assert sel.choices == chooser(units, total, target)(exhaustive).choices
    for u, scores in halved.scores.items():
        assert scores == pytest.approx(exhaustive.scores[u], abs=1e-12)  # the estimates too


# ------------------------------------------------------------------------- the loop, on synthetic data

class Table:
    """A halve() evaluator from tables: unit -> key -> score, per number of batches."""

    def __init__(self, base: dict, scores: dict, n: int):
        self.base, self.table, self.n, self.batches = base, scores, n, 0

    def baseline(self, iterations):
        b = self.n if iterations is None else iterations
        self.batches += b
        return self.base[b], b

    def scores(self, tasks, iterations):
        b = self.n if iterations is None else iterations
        for u, c in tasks:
            self.batches += b
            yield u.name, c.key, self.table[b][u.name][c.key]


def synthetic(seed: int, units: int = 12, keys=(0.2, 0.4, 0.6, 0.8), noise: float = 0.05):
    """Units with cost key x c and drops sens x (1 - key)^2; slice scores noisy (8 batches, slice 2)."""
    rng = np.random.default_rng(seed)
    us, full, part = [], {}, {}
    for i in range(units):
        c, sens = int(rng.integers(100, 1000)), float(rng.uniform(0.01, 0.5))
        name = f"u{i}"
        us.append(SimpleNamespace(name=name, base_cost=c, candidates=[SimpleNamespace(key=k, cost=int(k * c))
                                                                         for k in keys]))
        full[name] = {k: 0.9 - sens * (1 - k) ** 2 for k in keys}
        part[name] = {k: s + float(rng.normal(0, noise)) for k, s in full[name].items()}
    total = sum(u.base_cost for u in us)
    return us, total, Table({8: 0.9, 2: 0.95}, {8: full, 2: part}, 8)


@pytest.mark.parametrize("max_work", [0.01, 0.5, 10.0])
def test_the_chosen_always_have_full_scores_whatever_the_budget(max_work):
    for seed in range(3):
        units, total, table = synthetic(seed)
        choose = chooser(units, total, 0.6)
        calls = []
        out = halving.halve(table, units, choose, None, max_work=max_work, progress=lambda *a: calls.append(a))
        assert [d for d, _ in calls] == list(range(3, out.evaluations + 1))  # after the two baselines
        assert all(d <= planned for d, planned in calls)
        meta = out.meta["halving"]
        estimated = {(u, k) for u, keys in meta["estimated"].items() for k in keys}
        sel = choose(out)
        assert all(o.ratio == 1.0 or (u, o.ratio) not in estimated for u, o in sel.choices.items())
        for u, scores in out.scores.items():
            for k, v in scores.items():
                if (u, k) not in estimated:
                    assert v == table.table[8][u][k]
        assert meta["batches"] == table.batches
        if max_work >= 10:  # an unbounded budget: optimism and neighbours find the exhaustive optimum
            exhaustive = choose(greedy.Dictionary(baseline=0.9, scores=table.table[8]))
            assert sel.expected_score == pytest.approx(exhaustive.expected_score, abs=1e-12)


def test_bad_parameters():
    units, total, table = synthetic(0)
    with pytest.raises(ParameterError, match="fraction"):
        halving.halve(table, units, chooser(units, total, 0.6), None, fraction=0)
    with pytest.raises(ParameterError, match="max_work"):
        halving.halve(table, units, chooser(units, total, 0.6), None, max_work=0)


def test_estimated_in_names_the_estimates_a_selection_uses():
    units, total, table = synthetic(1)
    out = halving.halve(table, units, chooser(units, total, 0.6), None, max_work=0.01)
    assert halving.estimated_in(out, chooser(units, total, 0.6)(out)) == []
    estimated = out.meta["halving"]["estimated"]
    u, keys = next(iter(estimated.items()))
    out.scores[u][keys[0]] = 0.9  # as good as the baseline: the knapsack at 0.3 takes it
    sel = chooser(units, total, 0.3)(out)
    assert (u, keys[0]) in halving.estimated_in(out, sel)


def test_compress_auto_with_halving_selects_as_the_exhaustive_dictionary_at_half_the_work(tmp_path):
    """halving=True (--halving) in auto mode: the same selection on resnet_small's weight SVD
    at 0.5 (tools/bench_halving.py's row), at most half the batches, no estimate chosen."""
    import json

    from refs import CALIB, MODEL, TEST, cli

    model, ev = str(MODEL), accuracy(str(TEST))
    _, full = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=10)
    _, half = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=10, halving=True)
    info = half.selection["halving"]
    assert "halving" not in full.selection
    assert half.selection["chosen"] == full.selection["chosen"]
    assert half.final_score == full.final_score and half.mac_ratio == full.mac_ratio
    assert info["degenerate"] is None and info["slice_batches"] < info["full_batches"]
    assert 0.3 < info["work"] <= 0.5 and info["chosen_estimates"] == []
    for u, k in half.selection["chosen"].items():  # the chosen carry the exhaustive full-data scores
        if k != 1.0:
            assert half.selection["scores"][u][str(k)] == pytest.approx(full.selection["scores"][u][str(k)], abs=1e-12)
    for kw, match in (({"scores_out": tmp_path / "s.json"}, "halving .* and scores_out cannot be combined"),
                      ({"saved_eval_scores_dict": tmp_path / "s.json"}, "and saved_eval_scores_dict cannot"),
                      ({"executor": "ray"}, "local executor only"), ({"halving": 1}, "halving must be True")):
        with pytest.raises(ParameterError, match=match):
            oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=10, **{"halving": True, **kw})
    assert not (tmp_path / "s.json").exists()
    r = cli("compress", model, "-o", str(tmp_path / "o.onnx"), "--scheme", "channel_pruning", "--target", "0.7",
            "--data", str(CALIB), "--eval-data", str(TEST), "--samples", "200",
            "--halving", "--stats", str(tmp_path / "st.json"), "-q")
    assert r.returncode == 0, r.stderr
    sel = json.loads((tmp_path / "st.json").read_text())["selection"]
    assert sel["halving"]["work"] <= 0.5 and sel["halving"]["chosen_estimates"] == []
    # channel pruning's close finalists chose an estimate (the head at 0.5): scored on the full data, chosen again
    assert sel["halving"]["rescored_after_selection"] == 1
