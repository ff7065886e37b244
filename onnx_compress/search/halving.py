"""Successive halving for the eval-score dictionary (issue 17 item 5): every candidate
scored on a slice of the evaluation data, the full data only for what can change the
selection, and the full-data score always for what is finally chosen.

`build_halving(proto, units, eval_callback, iterations, use_cuda, choose)` returns a
dictionary.Dictionary like build_dictionary's: full-data scores where they were measured,
estimates elsewhere (meta["halving"] says which). `choose(dictionary) -> solve.Selection`
is the caller's selection at its target (dictionary.choose with its units and costs).

1. The baseline on the full data (`iterations` batches, all with None; it records the
   prefix cache), its batches counted as the session.run calls the evaluator makes: n.
   The slice is the first k = max(1, ceil(n * fraction)) batches (`iterations=k`).
   Where k >= n (one batch, or fraction 1), or the evaluator runs as many batches on the
   slice as on the full data (it ignores `iterations`), or it makes no session.run call
   (nothing to count), halving degenerates to the exhaustive dictionary, the same scores
   as build_dictionary's, and meta["halving"]["degenerate"] says why.
2. The baseline and every candidate on the slice. A candidate's estimate is the full
   baseline less its slice drop: full_base - (slice_base - slice_score). (Measured on the
   reference models and the anchor, 582 candidates within 0.15 of the baseline, 8 batches
   of 64: the estimate's error has rms 0.010 with k = 2, 0.015 with k = 1; scaling the
   drop by slice/full baselines instead is the same there, the baselines being close.)
3. Rounds. The *nominal* selection uses full scores where known and estimates elsewhere;
   its chosen candidates (ratio != 1.0) without a full score are scored on the full data.
   The *optimistic* selection raises each estimate by z * c * sqrt(|slice drop| + d0)
   (d0 = 0.002 x |slice_base|; c^2 the mean over full-scored candidates of residual^2 /
   (|slice drop| + d0): the slice's error grows with the drop, as a binomial's does);
   its chosen unscored candidates are scored too, at the largest z of (3, 2, 1.5, 1,
   0.5) whose candidates fit the work budget (`max_work` of the exhaustive batches).
   Optimism is what makes the result exact: were every estimate an upper bound, a
   selection made only of full-scored candidates would be the exhaustive one. When
   neither wants more, each unit's neighbouring candidates (the next key either side of
   its chosen one, the cheaper first, units in order) are scored while the budget
   allows, and the rounds go on. Replayed on the exhaustive and slice dictionaries of
   the reference models and the anchor (22 model x scheme x target rows, 0.5 and 0.7,
   k = 2 of 8 batches): neighbours alone, without optimism, matched the exhaustive
   selection in 15 rows; optimism alone in 19; both in 20 (and the same expected score
   in 21), at most 0.5 of the work each. Ordering the neighbours by their estimates
   instead did worse (19): a cheaper neighbour whose estimate is low often ties. Of the
   two rows left, one is a tie the knapsack breaks differently: many candidates score at
   the baseline there, its frontier passes solve.DEFAULT_MAX_STATES and it gives up the
   higher-cost tie rule (with 10**6 states the rows match, 21 of 22).
4. Whatever the budget and the round cap, the nominal selection is re-solved and its
   unscored candidates scored until it is made only of full-scored candidates, so
   selecting on the returned dictionary chooses only full-data scores (the work can pass
   `max_work` for that, never for anything else).

The work is counted in batches (session.run calls), against the exhaustive dictionary's
n x (candidates + 1). Wall time gains less (tools/bench_halving.py): the candidates
re-scored on the full data are the ones that matter, mostly of early layers whose suffix
is long, and of high rank (resnet_small, weight SVD, 10 candidates: 35 ms each against
19 ms for the average candidate), and every evaluation has a fixed cost (a 1-batch
dictionary takes 0.24-0.26 of the 8-batch one's time). On a quiet machine, median of 3:
resnet_small weight SVD at 0.5, halving 0.94x the exhaustive dictionary's wall time;
the anchor's channel pruning 0.77x; at work 0.49-0.50.
Not supported here: resuming from a checkpoint, and other scorers (Ray): LocalScorer only.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import onnx

from .. import progress as progress_mod
from ..errors import ParameterError
from ..runtime.store import peak_rss_bytes
from ..schemes.base import Unit
from . import solve
from .dictionary import Dictionary, LocalScorer, unit_weights

FRACTION = 0.25  # of the batches: the slice
MAX_WORK = 0.5  # of the exhaustive dictionary's batches, for everything but the guarantee (step 4)
LADDER = (3.0, 2.0, 1.5, 1.0, 0.5)  # optimism, in spreads; the largest that fits the budget
FLOOR = 2e-3  # d0 of the spread model, relative to |slice baseline|
MAX_ROUNDS = 50  # optimistic and neighbour rounds (the guarantee's are not capped)
STAGE = "eval-score dictionary"


class _Counted:
    """A session that counts its run() calls; everything else from the session."""

    def __init__(self, session):
        self._session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


class LocalEvaluations:
    """Evaluations through one dictionary.LocalScorer at any `iterations`, counting the
    batches (session.run calls) of all of them in `batches`.

    The protocol halve() needs: baseline(iterations) -> (score, batches), scores(tasks,
    iterations) -> (unit name, key, score) per task, `batches`, close()."""

    def __init__(self, proto: onnx.ModelProto, units: list[Unit], eval_callback, use_cuda: bool, workers: int = 1,
                 prefix_cache: bool = True, cache_mb: float | None = None):
        self.callback, self.batches, self._iterations = eval_callback, 0, None
        self._lock = threading.Lock()
        self.scorer = LocalScorer(proto, unit_weights(units), self._counting, None, use_cuda, workers, prefix_cache,
                                  cache_mb)

    def _counting(self, session, _iterations, use_cuda):
        counted = _Counted(session)
        try:
            return self.callback(counted, self._iterations, use_cuda)
        finally:
            with self._lock:
                self.batches += counted.runs

    def baseline(self, iterations) -> tuple[float, int]:
        self._iterations, before = iterations, self.batches
        value = self.scorer.baseline()
        return value, self.batches - before

    def scores(self, tasks, iterations):
        self._iterations = iterations
        yield from self.scorer.map(tasks)

    def close(self) -> None:
        self.scorer.close()


class _State:
    """Scores so far: `full` (unit -> key -> full-data score) and `slice` ones, the
    baselines, and the work in batches."""

    def __init__(self, units: list[Unit], choose: Callable, evals, iterations, n: int, k: int, max_work: float):
        self.units, self.choose, self.evals, self.iterations = units, choose, evals, iterations
        self.by_name = {u.name: u for u in units}
        self.n, self.k = n, k
        self.count = sum(len(u.candidates) for u in units)
        self.budget = max_work * n * (self.count + 1)  # batches
        self.full: dict[str, dict[float, float]] = {u.name: {} for u in units}
        self.slice: dict[str, dict[float, float]] = {u.name: {} for u in units}
        self.full_base = self.slice_base = 0.0
        self.rounds = 0

    def estimate(self, unit: str, key: float) -> float:
        return self.full_base - (self.slice_base - self.slice[unit][key])

    def _drop(self, unit: str, key: float) -> float:
        return abs(self.slice_base - self.slice[unit][key]) + FLOOR * max(abs(self.slice_base), 1e-12)

    def spread(self) -> float | None:
        """c of the margin model (module doc, step 3); None before two full scores."""
        res = [(f - self.estimate(u, key)) ** 2 / self._drop(u, key) for u, s in self.full.items() for key, f in s.items()]
        return math.sqrt(sum(res) / len(res)) if len(res) >= 2 else None

    def dictionary(self, z: float = 0.0, c: float | None = None) -> Dictionary:
        """Full scores where known, else the estimates raised by z spreads."""
        scores = {}
        for name, sl in self.slice.items():
            scores[name] = {}
            for key in sl:
                if key in self.full[name]:
                    scores[name][key] = self.full[name][key]
                else:
                    raise_by = z * c * math.sqrt(self._drop(name, key)) if z and c else 0.0
                    scores[name][key] = self.estimate(name, key) + raise_by
        return Dictionary(baseline=self.full_base, scores=scores)

    def unscored(self, selection: solve.Selection) -> set[tuple[str, float]]:
        return {(u, o.ratio) for u, o in selection.choices.items()
                if o.ratio != 1.0 and u in self.full and o.ratio not in self.full[u]}

    def room(self) -> int:
        """Full-data evaluations the work budget still allows."""
        return max(0, int((self.budget - self.evals.batches) // self.n))

    def score_full(self, wanted, progress: Callable | None) -> None:
        tasks = [(self.by_name[u], c) for u, key in sorted(wanted) for c in self.by_name[u].candidates if c.key == key]
        done = self.count + 2 + sum(len(s) for s in self.full.values())
        allowed = int((self.budget - self.n - self.k * (self.count + 1)) // self.n)  # full re-scores in budget
        planned = max(done + len(tasks), self.count + 2 + allowed)
        _score(self.evals, tasks, self.iterations, self.full, progress, done, planned)
        self.rounds += 1


def _score(evals, tasks, iterations, into: dict, progress: Callable | None, done: int, planned: int) -> None:
    """Score `tasks` at `iterations` into `into` (unit -> key -> score), reporting progress."""
    for done, (name, key, value) in enumerate(evals.scores(tasks, iterations), start=done + 1):
        into[name][key] = value
        progress_mod.update(STAGE, done, planned)
        if progress:
            progress(done, planned)


def _optimistic(st: _State, need: set) -> set:
    """The unscored candidates of the optimistic selection at the largest z that fits."""
    c = st.spread()
    if c is None:
        return set()
    room = st.room() - len(need)
    for z in LADDER:
        more = st.unscored(st.choose(st.dictionary(z, c))) - need
        if more and len(more) <= room:
            return more
    return set()


def _neighbours(st: _State, selection: solve.Selection) -> list[tuple[str, float]]:
    """Unscored next keys either side of each unit's chosen one (the cheaper first), in
    the units' order, cut to the room left."""
    found = []
    for name, have in st.slice.items():
        keys = sorted(have) + [1.0]
        at = keys.index(selection.choices[name].ratio) if name in selection.choices else len(keys) - 1
        found += [(name, keys[j]) for j in (at - 1, at + 1)
                  if 0 <= j < len(keys) and keys[j] != 1.0 and keys[j] not in st.full[name]]
    return found[:st.room()]


def _settle(st: _State, progress) -> None:
    """Step 4: until the nominal selection is made only of full-scored candidates."""
    while True:
        need = st.unscored(st.choose(st.dictionary()))
        if not need:
            return
        st.score_full(need, progress)


def _rounds(st: _State, progress) -> None:
    """Step 3: optimistic rounds, then neighbours, while the budget and round cap allow."""
    for _ in range(MAX_ROUNDS):
        need = st.unscored(st.choose(st.dictionary()))
        wanted = need | _optimistic(st, need)
        if not wanted:
            wanted = set(_neighbours(st, st.choose(st.dictionary())))
            if not wanted:
                return
        st.score_full(wanted, progress)


def halve(evals, units: list[Unit], choose: Callable, iterations, *, fraction: float = FRACTION,
          max_work: float = MAX_WORK, progress: Callable | None = None) -> Dictionary:
    """The halving dictionary from any `evals` (the LocalEvaluations protocol); see the module doc."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ParameterError(f"halving fraction must be in (0, 1], got {fraction!r}")
    if not (isinstance(max_work, (int, float)) and max_work > 0):
        raise ParameterError(f"halving max_work must be > 0, got {max_work!r}")
    tasks = [(u, c) for u in units for c in u.candidates]
    progress_mod.update(STAGE, 0, len(tasks) + 1)
    full_base, n = evals.baseline(iterations)
    k = max(1, math.ceil(n * fraction))
    why = _degenerate(n, k)
    st = _State(units, choose, evals, iterations, max(n, 1), k, max_work)
    st.full_base = full_base
    if why is None:
        st.slice_base, sliced = evals.baseline(k)
        if sliced >= n:
            why = f"the evaluator ran {sliced} batch(es) with iterations={k}, as many as the full data's {n}: " \
                  "it does not honour iterations"
    if why is not None:  # the exhaustive dictionary
        _score(evals, tasks, iterations, st.full, progress, 1, len(tasks) + 1)
        st.slice = {name: dict(scores) for name, scores in st.full.items()}
        return _result(st, why, fraction, max_work)
    _score(evals, tasks, k, st.slice, progress, 2, len(tasks) + 2)
    _rounds(st, progress)
    _settle(st, progress)
    return _result(st, None, fraction, max_work)


def _degenerate(n: int, k: int) -> str | None:
    if n == 0:
        return "the evaluator made no session.run call on the baseline: its batches cannot be counted"
    if k >= n:
        return f"the slice ({k} of {n} batch(es)) is the full data"
    return None


def _result(st: _State, why: str | None, fraction: float, max_work: float) -> Dictionary:
    full = sum(len(s) for s in st.full.values())
    estimated = {u: sorted(set(s) - set(st.full[u])) for u, s in st.slice.items()}
    exhaustive = st.n * (st.count + 1)
    meta = {"search": "halving", "fraction": fraction, "max_work": max_work, "full_batches": st.n,
            "slice_batches": st.n if why else st.k, "full_evaluations": full + 1,
            "slice_evaluations": 0 if why else st.count + 1, "batches": st.evals.batches,
            "exhaustive_batches": exhaustive, "work": st.evals.batches / exhaustive, "rounds": st.rounds,
            "estimated": {u: keys for u, keys in estimated.items() if keys}, "degenerate": why}
    return Dictionary(baseline=st.full_base, scores=st.dictionary().scores,
                      evaluations=full + 1 + (0 if why else st.count + 1), meta={"halving": meta})


def estimated_in(dictionary: Dictionary, selection: solve.Selection) -> list[tuple[str, float]]:
    """The (unit, key) of `selection` whose score in a halving `dictionary` is an estimate:
    none for the `choose` it was built with; a selection at another goal (a corrected
    target, another objective) can have some."""
    estimated = dictionary.meta.get("halving", {}).get("estimated", {})
    return [(u, o.ratio) for u, o in selection.choices.items() if o.ratio in estimated.get(u, ())]


def build_halving(proto: onnx.ModelProto, units: list[Unit], eval_callback, iterations, use_cuda: bool,
                  choose: Callable[[Dictionary], solve.Selection], *, fraction: float = FRACTION,
                  max_work: float = MAX_WORK, workers: int = 1, prefix_cache: bool = True,
                  cache_mb: float | None = None, progress: Callable | None = None) -> Dictionary:
    """The eval-score dictionary by successive halving (module doc): scores on a slice of
    `fraction` of the batches for every candidate, full-data scores for those that can
    change `choose`'s selection, within `max_work` of the exhaustive dictionary's batches
    (except what step 4 needs). `choose(dictionary) -> solve.Selection`: the caller's
    selection, e.g. `lambda d: dictionary.choose(units, d, current_total, total, target,
    method, use_monotonic_fit, objective)`. Selecting on the result with the same `choose`
    gives a selection made only of full-data scores. The other arguments as build_dictionary's."""
    t0 = time.perf_counter()
    evals = LocalEvaluations(proto, units, eval_callback, use_cuda, workers, prefix_cache, cache_mb)
    try:
        out = halve(evals, units, choose, iterations, fraction=fraction, max_work=max_work, progress=progress)
    finally:
        evals.close()
    timing = evals.scorer.timing
    out.seconds, out.eval_seconds, out.session_seconds = time.perf_counter() - t0, timing["eval"], timing["session"]
    out.cache, out.peak_rss_mb = dict(evals.scorer.stats), peak_rss_bytes() / 2**20
    return out
