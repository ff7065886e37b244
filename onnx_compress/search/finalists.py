"""From the eval-score dictionary to the compressed model: the selection under the target,
its finalists scored on the real combined model, and (where unit costs are only upper
bounds, as in channel pruning) the correction toward the target with measured ratios.

`Problem` holds what every selection needs; `select_and_apply` is the one entry.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from .. import runtime
from ..errors import ParameterError
from ..schemes.base import Unit, exact_cost
from ..schemes.mix import merge_previews
from . import dictionary as greedy
from . import solve
from .dictionary import Dictionary

CLOSE_CALL = 0.01  # finalists estimated within this fraction of the baseline score are built and scored


@dataclass
class Problem:
    """A selection problem: the units of `current` with their scores, and the target.

    current_total: the cost of the model the units belong to (after fixed-ratio layers);
    total: the original model's, which `target` refers to. costs: layer -> cost of
    `current` under the metric (footprints apply to these: `schemes.base.exact_cost`).
    exact_costs: whether the units' costs add up to the model's exactly (the scheme's).
    """

    units: list[Unit]
    dictionary: Dictionary
    current: object
    current_total: int
    total: int
    target: Fraction
    method: str
    use_monotonic_fit: bool
    costs: Callable[[], dict[str, int]]
    exact_costs: bool = True
    overlapping: bool = False  # units may share a layer (a mix): additive costs over-count savings
    families: tuple = ()  # unit-name sets whose selection alone is a finalist too (a mix: each scheme's)

    def choose(self, goal, method: str | None = None, objective: str = "product"):
        return greedy.choose(self.units, self.dictionary, self.current_total, self.total, goal,
                             method or self.method, self.use_monotonic_fit, objective=objective)

    def model_cost(self, choices: dict[str, float]) -> int:
        return exact_cost(self.units, choices, self.costs())


def exact_goal(p: Problem, exact=None, method: str | None = None, objective: str = "product"):
    """The largest budget whose selection's *exact* model cost meets the target.

    Where unit costs leave out savings elsewhere (channel pruning's upstream producers),
    the selection under the target itself undershoots; bisection on the budget with the
    exact cost of each selection (footprints) finds the selection that uses the target fully.
    `exact(choices)`: the model's cost of a selection (latency: an estimate).
    """
    exact = exact or p.model_cost

    def fits(goal) -> bool:
        try:
            sel = p.choose(goal, method, objective)
        except ParameterError:
            return False
        choices = {u: o.ratio for u, o in sel.choices.items()}
        return Fraction(exact(choices), p.total) <= p.target

    if not fits(p.target):
        return _below_target(p, fits) if p.overlapping else None
    lo, hi = Fraction(p.target), Fraction(1)
    if fits(hi):
        return hi
    for _ in range(20):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _below_target(p: Problem, fits):
    """The largest budget under the target whose selection's exact cost meets it (None
    when none does): where units share layers (a mix of schemes), the additive costs
    over-count the savings and the selection under the target itself overshoots."""
    lo, hi, found = Fraction(0), Fraction(p.target), None
    for _ in range(20):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = found = mid
        else:
            hi = mid
    return found


def verified_choice(p: Problem, verify, goal_of=None, scored=None):
    """Score the finalist selections on the real combined model; keep the best.

    Finalists: the selection `p.method` makes under both objectives ("product", "sum") and,
    for the knapsack, AIMET's threshold selection. Each is scored once with every chosen
    preview weight swapped in, and ties keep the first (the requested method under the
    default objective). For SVD this is the combined model exactly (the units' weights do
    not overlap). For channel pruning each group's weights were refit on the original
    model's activations, while the final build refits each layer on the pruned model's
    own: the swapped-in score estimates the built model's, and ranks the finalists.
    `goal_of(method, objective)`: the budget to hand that solver (None: it has no
    selection that meets the target); default: the target itself.
    """
    finalists = _finalists(p, goal_of)
    if len(finalists) <= 1:
        return finalists[0] if finalists else None
    eval_callback, iterations, use_cuda = verify
    swapper = runtime.WeightSwapper(p.current, sorted({n for u in p.units for n in u.weights}), use_cuda)
    best, best_score = None, None
    for sel in finalists:
        overrides: dict = {}
        for unit in p.units:  # in the units' order: a mix's later units preview on top of earlier ones
            opt = sel.choices.get(unit.name)
            if opt is not None and opt.ratio != 1.0:
                cand = next(c for c in unit.candidates if c.key == opt.ratio)
                merge_previews(overrides, unit.preview(cand))
        score = float(eval_callback(swapper.session(overrides), iterations, use_cuda))
        p.dictionary.verified.append({"method": sel.method, "expected": sel.expected_score, "score": score,
                                      "estimate": goal_of is not None})
        if scored is not None:
            scored.append((sel, score))
        if best_score is None or score > best_score:
            best, best_score = sel, score
    return best


def _finalists(p: Problem, goal_of) -> list:
    finalists, seen = [], set()
    for meth, objective in ((p.method, "product"), (p.method, "sum"), ("threshold", "product")):
        if meth == "threshold" and p.method == "threshold" and objective == "product" and finalists:
            continue
        goal = p.target if goal_of is None else goal_of(meth, objective)
        if goal is None:
            continue
        try:
            sel = p.choose(goal, meth, objective)
        except ParameterError:
            if not finalists and meth == p.method and goal_of is None:
                raise
            continue
        key = tuple(sorted((u, o.ratio) for u, o in sel.choices.items()))
        if key not in seen:
            seen.add(key)
            finalists.append(sel)
    for sel in _family_selections(p, goal_of is not None):
        key = tuple(sorted((u, o.ratio) for u, o in sel.choices.items() if o.ratio != 1.0))
        if key not in seen:
            seen.add(key)
            finalists.append(sel)
    return finalists


def _family_selections(p: Problem, aimed: bool) -> list:
    """Each family's own selection under the target (the other units left as they are):
    with a mix of schemes, one scheme alone is a finalist, so the combined model is never
    chosen when one scheme's selection scores better on the real model."""
    out = []
    for family in p.families:
        sub = dataclasses.replace(p, units=[u for u in p.units if u.name in family], families=())
        if not sub.units:
            continue
        goal = exact_goal(sub) if aimed else p.target
        if goal is None:
            continue
        try:
            sel = sub.choose(goal)
        except ParameterError:
            continue
        rest = {u.name: solve.Option(1.0, u.base_cost, p.dictionary.baseline) for u in p.units if u.name not in family}
        out.append(dataclasses.replace(sel, choices={**sel.choices, **rest}))
    return out


def select_and_apply(p: Problem, build, achieved, verify=None, exact=None, tries: int = 1, measured=False):
    """Choose and build: returns (selection, model, layer stats, skipped).

    `build(sel)` -> (model, stats, skipped) applies a selection; `achieved(model, sel)` is
    its measured cost ratio. Exact unit costs (SVD): the verified finalist is built. Upper
    bounds (channel pruning): aim with footprints (`exact_goal`), verify and build close
    finalists; if the measured ratio still misses the target, relax the budget by the
    shortfall and repeat (`tries` times), keeping the best-scoring result that meets it.
    `measured`: the cost is measured (latency) and `exact` is the estimator, or None.
    """
    if p.exact_costs and verify is not None:
        chosen = verified_choice(p, verify)
        return (chosen, *build(chosen))
    if not p.exact_costs and (not measured or exact is not None) and p.units:
        result = _aimed(p, build, achieved, verify, exact)
        if result is not None:
            return result
    return _corrected(p, build, achieved, tries)


def _aimed(p: Problem, build, achieved, verify, exact):
    goal = exact_goal(p, exact)
    if goal is None:
        return None
    chosen = None
    if verify is not None:
        def goal_of(meth, objective):
            if meth == p.method and objective == "product":
                return goal
            return exact_goal(p, exact, meth, objective)

        scored = []
        chosen = verified_choice(p, verify, goal_of=goal_of, scored=scored)
        built = _build_close_finalists(p, scored, chosen, build, achieved, verify)
        if built is not None:
            return built
    if chosen is None:
        chosen = p.choose(goal)
    out, step_stats, more = build(chosen)
    if achieved(out, chosen) <= p.target:
        return chosen, out, step_stats, more
    return None


def _corrected(p: Problem, build, achieved, tries: int):
    goal, best, ratio = p.target, None, None
    for _ in range(tries):
        try:
            chosen = p.choose(goal)
        except ParameterError:  # a corrected goal below reach: keep what was measured so far
            if goal == p.target:
                raise
            break
        out, step_stats, more = build(chosen)
        ratio = achieved(out, chosen)
        if ratio <= p.target and (best is None or chosen.expected_score > best[0].expected_score):
            best = (chosen, out, step_stats, more)
        gap = p.target - ratio
        if abs(gap) < Fraction(1, 200):
            break
        new_goal = min(Fraction(1), goal + gap)
        if new_goal <= 0 or new_goal == goal:
            break
        goal = new_goal
    if best is None:
        raise ParameterError(f"no selection met the target {float(p.target):g} once measured "
                             f"(last: {float(ratio):.4f}); lower the target a little")
    return best


def _build_close_finalists(p: Problem, scored, chosen, build, achieved, verify):
    """When finalists' estimated scores are a close call (within CLOSE_CALL x |baseline| of
    the best), build each of them for real and keep the best built model that meets the
    target. Returns (chosen, out, stats, skipped) or None."""
    if chosen is None or len(scored) < 2:
        return None
    best_estimate = max(score for _, score in scored)
    margin = CLOSE_CALL * max(abs(p.dictionary.baseline), 1e-12)
    close = [sel for sel, score in scored if score >= best_estimate - margin]
    if len(close) < 2:
        return None
    eval_callback, iterations, use_cuda = verify
    best = None
    for sel in close:
        out, step_stats, more = build(sel)
        if achieved(out, sel) > p.target:
            continue
        score = runtime.evaluate(out, eval_callback, iterations, use_cuda)
        p.dictionary.verified.append({"method": sel.method, "expected": sel.expected_score, "score": score,
                                      "estimate": False})
        if best is None or score > best[0]:
            best = (score, (sel, out, step_stats, more))
    return None if best is None else best[1]
