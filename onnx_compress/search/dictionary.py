"""Auto mode: the eval-score dictionary, then per-layer ratios that meet a cost target.

1. Candidates. For every selected unit (a layer; for channel pruning, a channel group
   named by its first requested layer) and every candidate (ratio i/N for i = 1..N-1, or
   for TAR a relative reconstruction-error level), the exact rank or kept-channel count
   and the exact cost of the model with that unit alone compressed.
2. Scores. Each candidate is scored with the user's eval callback on a session of the
   model with a *same-shaped* weight swapped in (the low-rank product, or the pruned and
   refit weight): no graph rebuild or re-serialisation per candidate, every ORT graph
   optimisation kept (runtime.WeightSwapper). Optional worker threads.
3. Selection: one candidate per unit (1.0 included) maximising the expected score under
   the target, by an exact multiple-choice knapsack (or AIMET's threshold bisection,
   for comparison); see search/solve.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx

from .. import progress as progress_mod
from .. import runtime
from ..errors import ParameterError
from ..runtime.store import peak_rss_bytes
from ..schemes.base import Unit
from . import scores_io, solve
from .checkpoint import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class Dictionary:
    """The eval-score dictionary with its timing."""

    baseline: float
    scores: dict[str, dict[float, float]]
    evaluations: int = 0
    seconds: float = 0.0
    eval_seconds: float = 0.0  # time inside the eval callback (pure evaluation)
    session_seconds: float = 0.0  # time creating the candidate sessions
    loaded_from: str | None = None
    meta: dict = field(default_factory=dict)
    verified: list = field(default_factory=list)  # finalists scored on the real combined model
    cache: dict = field(default_factory=dict)  # the prefix cache's memory, disk and recomputations
    peak_rss_mb: float = 0.0  # the process's peak resident memory when the dictionary was done


def candidate_keys(n: int) -> list[float]:
    """i/N for i = 1..N-1, as floats with their exact decimal reading."""
    if not isinstance(n, int) or n < 2:
        raise ParameterError(f"num_comp_ratio_candidates must be an integer >= 2, got {n!r}")
    return [float(Fraction(i, n)) for i in range(1, n)]


def tar_levels(n: int) -> list[float]:
    """TAR error levels: relative reconstruction errors 0.05 .. 0.6 in n-1 steps."""
    if not isinstance(n, int) or n < 2:
        raise ParameterError(f"num_comp_ratio_candidates must be an integer >= 2, got {n!r}")
    return [round(float(v), 6) for v in np.linspace(0.05, 0.6, n - 1)]


# ------------------------------------------------------------------------------ scoring
class LocalScorer:
    """Scores the baseline and (unit, candidate) tasks in this process.

    Sessions come from one runtime.WeightSwapper of the model (the candidate's weights
    swapped in) or, with `prefix_cache`, from runtime.PrefixCache: the baseline records the
    activations each unit's suffix needs, and a candidate runs only the part of the model
    after its changed layers (the same scores). `map` runs tasks on `workers` threads.
    """

    def __init__(self, proto: onnx.ModelProto, weights: dict[str, list[str]], eval_callback, iterations,
                 use_cuda: bool, workers: int = 1, prefix_cache: bool = True, cache_mb: float | None = None):
        """`weights`: unit name -> the initializers its candidates replace. `cache_mb`: the
        prefix cache's memory budget (default a sixteenth of the available memory; beyond it,
        files, then recomputation: runtime.PrefixCache)."""
        names = sorted({n for ws in weights.values() for n in ws})
        threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if workers > 1 else None
        self.swapper = runtime.WeightSwapper(proto, names, use_cuda, threads=threads)
        budget = None if cache_mb is None else int(cache_mb * 2**20)
        self.cache = runtime.PrefixCache(proto, weights, use_cuda, threads, max_bytes=budget) if prefix_cache else None
        self.callback, self.iterations, self.use_cuda, self.workers = eval_callback, iterations, use_cuda, workers
        self.timing = {"eval": 0.0, "session": 0.0}
        self.stats: dict = {}

    def _score(self, make_session) -> float:
        t = time.perf_counter()
        sess = make_session()
        t1 = time.perf_counter()
        value = self.callback(sess, self.iterations, self.use_cuda)
        self.timing["session"] += t1 - t
        self.timing["eval"] += time.perf_counter() - t1
        return float(value)

    def baseline(self) -> float:
        return self._score(self.cache.recording_session if self.cache else self.swapper.session)

    def score(self, unit: str, overrides: dict) -> float:
        """The score of the model with `overrides` (name -> same-shaped array) swapped in at `unit`."""

        def full():
            return self.swapper.session(overrides)

        return self._score((lambda: self.cache.candidate(unit, overrides, full)) if self.cache else full)

    def _run(self, task) -> tuple[str, float, float]:
        unit, cand = task
        return unit.name, cand.key, self.score(unit.name, unit.preview(cand))

    def close(self) -> None:
        if self.cache is not None:
            self.stats = {**self.cache.store_.stats(), "recomputed": self.cache.recomputed}
            self.cache.close()

    def map(self, tasks):
        """(unit name, candidate key, score) per task, in task order, as they complete; the
        prefix cache frees a unit's activations once its last task is done."""
        left = Counter(unit.name for unit, _ in tasks)
        results = map(self._run, tasks) if self.workers == 1 else None
        with ThreadPoolExecutor(self.workers) if self.workers > 1 else contextlib.nullcontext() as pool:
            for result in results if pool is None else pool.map(self._run, tasks):
                left[result[0]] -= 1
                if self.cache is not None and left[result[0]] == 0:
                    self.cache.release(result[0])
                yield result


def build_dictionary(proto: onnx.ModelProto, units: list[Unit], eval_callback, iterations, use_cuda: bool,
                     workers: int = 1, progress: Callable | None = None, prefix_cache: bool = True,
                     checkpoint: Checkpoint | None = None, scorer=None, cache_mb: float | None = None) -> Dictionary:
    """Score the model and every candidate of every unit (a unit alone compressed).

    `scorer`: what evaluates (default a LocalScorer with `workers` threads and the
    `prefix_cache`). With a `checkpoint`, the scores it already holds are not evaluated
    again (a resumed run), each new score goes to it as it arrives, and it is flushed
    however the run ends (an error or Ctrl-C included).
    """
    tasks, results = _resume(units, checkpoint)
    if checkpoint is not None and not tasks and checkpoint.baseline is not None:  # nothing left to evaluate
        return Dictionary(baseline=checkpoint.baseline, scores=results, meta={"resumed": checkpoint.resumed})
    t0 = time.perf_counter()
    try:
        scorer = scorer or LocalScorer(proto, unit_weights(units), eval_callback, iterations, use_cuda, workers,
                                       prefix_cache, cache_mb)
        progress_mod.update("eval-score dictionary", 0, len(tasks))
        baseline = _baseline(scorer.baseline(), checkpoint)
        for done, (name, key, value) in enumerate(scorer.map(tasks), start=1):
            results[name][key] = value
            if checkpoint is not None:
                checkpoint.record(name, key, value)
            if progress:
                progress(done, len(tasks))
            progress_mod.update("eval-score dictionary", done, len(tasks))
    finally:
        if checkpoint is not None:
            checkpoint.flush()
        if scorer is not None and hasattr(scorer, "close"):
            scorer.close()
    timing = getattr(scorer, "timing", {})
    return Dictionary(baseline=baseline, scores=results, evaluations=len(tasks) + 1,
                      seconds=time.perf_counter() - t0, eval_seconds=timing.get("eval", 0.0),
                      session_seconds=timing.get("session", 0.0),
                      meta={"resumed": checkpoint.resumed} if checkpoint is not None and checkpoint.resumed else {},
                      cache=dict(getattr(scorer, "stats", {})), peak_rss_mb=peak_rss_bytes() / 2**20)


def unit_weights(units: list[Unit]) -> dict[str, list[str]]:
    """Unit name -> the initializers its candidates replace."""
    return {u.name: list(u.weights) for u in units}


def _resume(units: list[Unit], checkpoint: Checkpoint | None):
    """The (unit, candidate) tasks still to evaluate, and the results the checkpoint holds."""
    results: dict[str, dict[float, float]] = {u.name: {} for u in units}
    tasks = []
    for u in units:
        held = checkpoint.scores.get(u.name, {}) if checkpoint is not None else {}
        for c in u.candidates:
            if c.key in held:
                results[u.name][c.key] = held[c.key]
            else:
                tasks.append((u, c))
    return tasks, results


def _baseline(value: float, checkpoint: Checkpoint | None) -> float:
    """This run's baseline score, or a resumed checkpoint's (which the resumed scores go with)."""
    if checkpoint is None:
        return value
    if checkpoint.baseline is None:
        checkpoint.set_baseline(value)
    else:
        check_reused_baseline(checkpoint.baseline, value)
    return checkpoint.baseline


def check_reused_baseline(saved: float, value: float) -> None:
    """Log when a reused dictionary's baseline (a checkpoint's, a saved table's) differs from
    this run's: the evaluation is not deterministic, or its data changed."""
    if not np.isclose(saved, value, rtol=1e-9, atol=0.0):
        log.warning("the reused baseline score %r differs from this run's %r: the evaluation is not "
                    "deterministic, or its data changed; the reused dictionary keeps its own", saved, value)


# ---------------------------------------------------------------------------- selection
def _relative(score: float, baseline: float) -> float:
    """Score as the log of its ratio to the baseline (the 'product' objective's loss unit)."""
    floor = 1e-3 * max(abs(baseline), 1e-12)
    return float(np.log(max(score, floor) / max(baseline, floor)))


def choose(units: list[Unit], dictionary: Dictionary, current_total: int, total: int, target, method: str,
           use_monotonic_fit: bool, objective: str = "product") -> solve.Selection:
    """Pick one candidate per unit so the model's cost is at most `target` x `total`.

    `current_total`: cost of the model the units belong to (after any fixed-ratio layers);
    `total`: cost of the original model, which the target refers to.
    `objective`: how single-layer scores combine into the model's expected score:
    "product" (default) expects baseline x prod(score_i / baseline), i.e. the relative
    losses multiply, so two choices that each halve the score are worth a quarter;
    "sum" expects baseline - sum(baseline - score_i) (AIMET-style additive losses).
    Either way a candidate scoring above the baseline counts as the baseline: one layer
    compressed alone often scores an image or two above the uncompressed model (noise, or
    a regulariser's luck), and crediting that gain let the solver spend it on real losses
    in other layers that the combined model then shows (on the anchor, one dictionary each:
    weight SVD at 0.51 of the MACs with multiplicity 8, 0.924 credited, 0.996 clamped;
    spatial SVD at 0.4 with multiplicity 4, 0.928 and 0.992).
    """
    if objective not in ("product", "sum"):
        raise ParameterError(f"objective must be 'product' or 'sum', got {objective!r}")
    base = dictionary.baseline

    def value(score: float) -> float:
        score = min(score, base)
        return score if objective == "sum" else base + max(abs(base), 1e-12) * _relative(score, base)

    layer_opts, offset = [], 0
    for u in units:
        opts = [solve.Option(ratio=1.0, cost=u.base_cost, score=value(base))]
        for c in u.candidates:
            if c.key in dictionary.scores.get(u.name, {}):
                opts.append(solve.Option(ratio=c.key, cost=c.cost, score=value(dictionary.scores[u.name][c.key])))
        layer_opts.append(solve.LayerOptions(u.name, tuple(opts)))
        offset += u.base_cost
    fixed = current_total - offset  # negative where units share layers (a mix of schemes)
    chosen = solve.select(layer_opts, fixed, total, target, value(base), method=method,
                          use_monotonic_fit=use_monotonic_fit)
    if objective == "product":  # report the expected score in score units
        expected = base * float(np.exp((chosen.expected_score - base) / max(abs(base), 1e-12)))
        real = {n: solve.Option(o.ratio, o.cost, _score_of(dictionary, n, o.ratio)) for n, o in chosen.choices.items()}
        chosen = dataclasses.replace(chosen, expected_score=expected, choices=real)
    return chosen


def _score_of(dictionary: Dictionary, unit: str, key: float) -> float:
    return dictionary.baseline if key == 1.0 else dictionary.scores[unit][key]


def to_table(dictionary: Dictionary, digest: str, scheme: str, metric: str, keys: list[float]) -> scores_io.ScoreTable:
    return scores_io.ScoreTable(
        model_digest=digest, scheme=scheme, cost_metric=metric, candidates=tuple(keys),
        baseline=dictionary.baseline,
        scores={u: {scores_io.format_ratio(k): v for k, v in s.items()} for u, s in dictionary.scores.items()},
        evaluations=dictionary.evaluations, meta=dict(dictionary.meta))


def from_table(table: scores_io.ScoreTable) -> Dictionary:
    scores = {u: {scores_io.parse_ratio(k): v for k, v in s.items()} for u, s in table.scores.items()}
    return Dictionary(baseline=table.baseline, scores=scores, evaluations=0, loaded_from="file")
