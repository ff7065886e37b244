"""The eval-score dictionary as a checkpoint (issue 17 item 4): `scores_out` is written as
scores arrive, an interrupted run leaves what it paid for there, and a rerun with the same
file evaluates only the missing candidates and makes the same selection."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import nets
import onnx_compress as oc
from onnx_compress.evaluators import fidelity
from test_auto import wide_cnn

CANDIDATES = 5  # 4 candidates per layer, 4 layers + the head: 20 scores


class Interrupting:
    """A fidelity evaluator that counts its calls and raises KeyboardInterrupt (as Ctrl-C
    does in the main thread) on call number `stop`."""

    def __init__(self, model, stop=None, measure="auto"):
        self.fn = fidelity(nets.calib(model, 16), measure=measure)
        self.calls, self.stop = 0, stop

    def __call__(self, session, iterations, use_cuda):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.fn(session, iterations, use_cuda)


def _scores(path):
    return json.loads(path.read_text())["scores"]


def test_interrupted_run_resumes_with_only_the_missing_evaluations(tmp_path):
    model = wide_cnn()
    whole = tmp_path / "whole.json"
    _, ref = oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=CANDIDATES, scores_out=whole)
    total = ref.selection["evaluations"] - 1  # candidates, without the baseline
    assert total >= 16

    path = tmp_path / "scores.json"
    with pytest.raises(KeyboardInterrupt):  # the baseline, then 8 candidates, then Ctrl-C on the 10th call
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model, stop=10), candidates=CANDIDATES,
                         scores_out=path)
    partial = _scores(path)
    assert sum(len(row) for row in partial.values()) == 8
    assert json.loads(path.read_text())["meta"]["complete"] is False
    for layer, row in partial.items():  # what was written is what the whole run scored
        for key, value in row.items():
            assert value == _scores(whole)[layer][key]

    ev = Interrupting(model)
    _, again = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=CANDIDATES, scores_out=path)
    assert again.selection["resumed"] == 8
    assert again.selection["evaluations"] == 1 + total - 8  # the baseline (for the cache) and the missing ones
    assert again.selection["chosen"] == ref.selection["chosen"]
    assert _scores(path) == _scores(whole)
    assert "complete" not in json.loads(path.read_text())["meta"]

    _, third = oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=CANDIDATES, scores_out=path)
    assert third.selection["evaluations"] == 0 and third.selection["chosen"] == ref.selection["chosen"]


def test_interrupt_during_the_baseline_leaves_nothing_to_resume_wrongly(tmp_path):
    model = wide_cnn()
    path = tmp_path / "scores.json"
    with pytest.raises(KeyboardInterrupt):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model, stop=1), candidates=CANDIDATES, scores_out=path)
    assert not path.exists()
    _, ref = oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=CANDIDATES, scores_out=path)
    assert ref.selection["resumed"] == 0


def test_a_file_made_for_another_model_or_not_a_score_file_is_refused_and_kept(tmp_path):
    model = wide_cnn()
    path = tmp_path / "scores.json"
    oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=CANDIDATES, scores_out=path)
    before = path.read_bytes()
    other = wide_cnn(seed=1)
    with pytest.raises(oc.ParameterError, match=r"scores_out file .*scores\.json was made for another model.*delete"):
        oc.compress_auto(other, "weight_svd", 0.5, Interrupting(other), candidates=CANDIDATES, scores_out=path)
    with pytest.raises(oc.ParameterError, match="candidates"):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=4, scores_out=path)
    assert path.read_bytes() == before
    junk = tmp_path / "notes.json"
    junk.write_text('{"hello": 1}\n')
    with pytest.raises(oc.ParameterError, match="not an onnx_compress eval-score file.*not overwritten"):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=CANDIDATES, scores_out=junk)
    assert junk.read_text() == '{"hello": 1}\n'


def test_an_incomplete_file_as_scores_in_is_refused_with_the_way_out(tmp_path):
    model = wide_cnn()
    path = tmp_path / "scores.json"
    with pytest.raises(KeyboardInterrupt):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model, stop=5), candidates=CANDIDATES, scores_out=path)
    with pytest.raises(oc.ParameterError, match=r"incomplete.*scores_out \(--scores-out\) instead to resume"):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), candidates=CANDIDATES,
                         saved_eval_scores_dict=path)


def test_cli_resumes_from_its_scores_out_file(tmp_path):
    model_path = tmp_path / "m.onnx"
    model = wide_cnn()
    onnx.save(model, str(model_path))
    np.savez(tmp_path / "calib.npz", **nets.calib(model, 16))
    scores = tmp_path / "s.json"
    common = [sys.executable, "-m", "onnx_compress.cli", "compress", str(model_path), "--scheme", "weight_svd",
              "--data", str(tmp_path / "calib.npz"), "--candidates", str(CANDIDATES), "--target", "0.5",
              "--scores-out", str(scores)]

    def run(name):
        stats = tmp_path / f"{name}.json"
        r = subprocess.run(common + ["-o", str(tmp_path / f"{name}.onnx"), "--stats", str(stats)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r, json.loads(stats.read_text())["selection"]

    _, first = run("a")
    doc = json.loads(scores.read_text())
    dropped = 0
    for row in doc["scores"].values():  # as an interrupted run leaves it: some scores missing
        for key in sorted(row)[:2]:
            del row[key]
            dropped += 1
    scores.write_text(json.dumps(doc))
    r, second = run("b")
    assert "resuming the eval-score dictionary" in r.stderr
    assert second["evaluations"] == 1 + dropped and second["chosen"] == first["chosen"]
    assert json.loads(scores.read_text())["scores"] == first["scores"]


def test_reused_scores_still_show_the_evaluator_the_original_model_first(tmp_path):
    """fidelity takes its reference from its first call: with every score reused (scores_in,
    or a complete scores_out) the original model is still evaluated before any finalist, so
    the finalists score and the selection goes as in the run that wrote the scores."""
    model = wide_cnn()
    path = tmp_path / "scores.json"
    first = Interrupting(model, measure="cosine")
    _, ref = oc.compress_auto(model, "weight_svd", 0.5, first, candidates=CANDIDATES, scores_out=path)
    assert ref.selection["verified"] and all(v["score"] < 1.0 for v in ref.selection["verified"])
    for kw in ({"saved_eval_scores_dict": path}, {"scores_out": path}):
        ev = Interrupting(model, measure="cosine")
        _, again = oc.compress_auto(model, "weight_svd", 0.5, ev, candidates=CANDIDATES, **kw)
        assert again.selection["evaluations"] == 0
        assert ev.calls == first.calls - (ref.selection["evaluations"] - 1)  # all but the candidates
        assert again.selection["verified"] == ref.selection["verified"], kw
        assert again.selection["chosen"] == ref.selection["chosen"]
