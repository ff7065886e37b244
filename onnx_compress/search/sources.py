"""Where auto mode's eval-score dictionary comes from: a saved table (`scores_in`), a
checkpoint being resumed (`scores_out`), the exhaustive dictionary (local threads or Ray
actors), or successive halving (`halving=True`: search/halving.py)."""
from __future__ import annotations

import logging

from .. import runtime
from ..errors import ParameterError
from . import checkpoint, dictionary, finalists, halving, ray_scorer, scores_io

log = logging.getLogger(__name__)


def dictionary_for(job, ctx, current, units, problem_of) -> dictionary.Dictionary:
    """The eval-score dictionary of `units` of `current` for auto.Job `job`.
    `problem_of(dictionary) -> finalists.Problem`: the run's selection problem on a
    dictionary (halving re-scores what can change its selection)."""
    digest = scores_io.model_digest(current.SerializeToString())
    scheme_key = job.scheme.table_key(ctx)
    if job.search.halving:
        scores = _halving(job, current, units, problem_of)
    elif job.search.saved_eval_scores_dict is not None:
        table = scores_io.load(job.search.saved_eval_scores_dict)
        scores_io.check_matches(table, digest, scheme_key, job.grid, job.keys, [])
        _check_complete(table, units, job.search.saved_eval_scores_dict)
        scores_io.check_matches(table, digest, scheme_key, job.grid, job.keys, [u.name for u in units])
        scores = dictionary.from_table(table)
        scores.loaded_from = str(job.search.saved_eval_scores_dict)
    else:
        keep = None
        if job.search.scores_out is not None:  # written as scores arrive; a rerun resumes from it
            keep = checkpoint.Checkpoint(job.search.scores_out, digest, scheme_key, job.grid, job.keys)
            keep.load([u.name for u in units])
        with ray_scorer.open_scorer(job.search, current, units, job.eval) as scorer:  # None: local
            scores = dictionary.build_dictionary(current, units, job.eval.callback, job.eval.iterations,
                                                 job.eval.use_cuda, workers=job.search.workers,
                                                 progress=job.search.progress, checkpoint=keep, scorer=scorer,
                                                 cache_mb=job.search.cache_mb)
    if scores.evaluations == 0:  # every score reused: the evaluator still sees the original model first
        _score_original(current, job.eval, scores.baseline)
    if job.search.scores_out is not None:
        scores_io.save(dictionary.to_table(scores, digest, scheme_key, job.grid, job.keys), job.search.scores_out)
    return scores


def check_halving(search) -> None:
    """ParameterError for what halving does not combine with (yet)."""
    if not search.halving:
        return
    if search.halving is not True:
        raise ParameterError(f"halving must be True or False, got {search.halving!r}")
    for field, why in (("saved_eval_scores_dict", "reused scores need no evaluations"),
                       ("scores_out", "its table would hold slice estimates beside full-data scores, and it "
                                      "cannot resume yet")):
        if getattr(search, field) is not None:
            raise ParameterError(f"halving (--halving) and {field} cannot be combined: {why}")
    if search.executor != "local":
        raise ParameterError("halving (--halving) runs on the local executor only, not on Ray yet")


def _halving(job, current, units, problem_of) -> dictionary.Dictionary:
    """Successive halving, re-scoring on the full data what can change the run's first
    selection (the knapsack's or threshold's at the target; with upper-bound unit costs,
    at the budget whose exact model cost meets it, as finalists._aimed aims)."""
    def choose(scores):
        p = problem_of(scores)
        goal = None if p.exact_costs else finalists.exact_goal(p)
        return p.choose(goal if goal is not None else p.target)

    return halving.build_halving(current, units, job.eval.callback, job.eval.iterations, job.eval.use_cuda, choose,
                                 workers=job.search.workers, cache_mb=job.search.cache_mb,
                                 progress=job.search.progress)


def rescore(job, current, units, scores: dictionary.Dictionary, pairs) -> None:
    """Score the (unit, key) `pairs` of a halving dictionary, estimates so far, on the full
    data (whole-model evaluations), in place."""
    by_name, info = {u.name: u for u in units}, scores.meta["halving"]
    log.info("halving: scoring %d estimated candidate(s) of the chosen on the full data", len(pairs))
    scorer = dictionary.LocalScorer(current, dictionary.unit_weights(units), job.eval.callback, job.eval.iterations,
                                    job.eval.use_cuda, prefix_cache=False)
    try:
        for name, key in pairs:
            unit = by_name[name]
            cand = next(c for c in unit.candidates if c.key == key)
            scores.scores[name][key] = scorer.score(name, unit.preview(cand))
            left = [k for k in info["estimated"][name] if k != key]
            if left:
                info["estimated"][name] = left
            else:
                del info["estimated"][name]
            info["rescored_after_selection"] = info.get("rescored_after_selection", 0) + 1
            scores.evaluations += 1
    finally:
        scorer.close()


def _score_original(current, ev, saved: float) -> None:
    """Evaluate the original model once before any finalist, as a built dictionary does: an
    evaluator that takes its reference from its first call (evaluators.fidelity) would take
    it from the first finalist otherwise, and score and select differently from the run
    that wrote the scores."""
    dictionary.check_reused_baseline(saved, runtime.evaluate(current, ev.callback, ev.iterations, ev.use_cuda))


def _check_complete(table, units, source) -> None:
    """ParameterError when a reused table lacks a candidate's score (an interrupted run's file)."""
    if table.meta.get("complete") is not False:
        return
    for u in units:
        missing = [c.key for c in u.candidates if scores_io.format_ratio(c.key) not in table.scores.get(u.name, {})]
        if missing:
            raise ParameterError(
                f"eval-score file {source} has no score for layer '{u.name}' at ratio(s) "
                f"{', '.join(scores_io.format_ratio(k) for k in missing)}: it is incomplete (an interrupted run's); "
                "pass it as scores_out (--scores-out) instead to resume that run and evaluate the missing ones")
