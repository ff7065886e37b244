"""Auto mode: from a cost target to the compressed model, for any registered scheme.

`run(job, model, analysis, settings, where)`: the layers (config_list / modules_to_ignore),
fixed ratios first, the scheme's units with candidate sizes, a dry run, the reach check,
latency timing (optional), the eval-score dictionary (built or loaded), the selection with
its finalists (`finalists`), and the statistics. The API validated every option before.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import onnx

from .. import layers, runtime
from ..errors import CompressionError, LayerError, ParameterError, ShapeError
from ..options import Search, Settings
from ..runtime.activations import Activations
from ..schemes import Context, Scheme
from ..schemes.base import apply_with_trainer
from ..stats import CompressionStats, SkippedLayer, per_layer_rows
from . import config as config_mod
from . import dictionary, finalists, halving, latency, scores_io, sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Eval:
    """The user's scorer: eval_callback(session, iterations, use_cuda) -> float."""

    callback: Callable
    iterations: int | None
    use_cuda: bool

    def score(self, model: onnx.ModelProto) -> float:
        return runtime.evaluate(model, self.callback, self.iterations, self.use_cuda)

    @property
    def triple(self) -> tuple:
        return self.callback, self.iterations, self.use_cuda


@dataclass(frozen=True)
class Job:
    """An auto-mode run, validated by the API (`search`: the options as given; `keys`: the
    candidate keys they resolve to)."""

    scheme: Scheme
    target: Fraction
    metric: str
    eval: Eval
    multiplicity: int
    keys: list[float]
    search: Search = dataclasses.field(default_factory=Search)
    timer: latency.Timer | None = None
    allow_slower_splits: bool | None = None
    report: str | None = None
    parameters: dict = dataclasses.field(default_factory=dict)

    @property
    def grid(self) -> str:
        """Candidates (and fixed ratios) are on the MAC grid under the latency metric."""
        return "mac" if self.metric == "latency" else self.metric


def candidate_keys(rank_select: str, candidates: int) -> list[float]:
    return dictionary.tar_levels(candidates) if rank_select == "tar" else dictionary.candidate_keys(candidates)


def latency_timer(metric, batch_size, allow_slower_splits, repeats, use_cuda):
    """A latency timer when auto mode times layers (latency metric or the slower-split check)."""
    batch_size = latency.check_batch_size(batch_size)
    if allow_slower_splits not in (None, True, False):
        raise ParameterError(f"allow_slower_splits must be None, True or False, got {allow_slower_splits!r}")
    if metric != "latency" and allow_slower_splits is not False:
        if batch_size is not None:
            log.warning("latency_batch_size has no effect: nothing is timed unless cost_metric='latency' "
                        "or allow_slower_splits=False")
        return None
    return latency.Timer(batch_size=batch_size or 0, use_cuda=use_cuda, repeats=repeats)


@dataclass
class _Run:
    """What the steps of one run share."""

    job: Job
    proto: onnx.ModelProto
    first: layers.Analysis
    ctx: Context
    where: str
    skipped: list = dataclasses.field(default_factory=list)
    layer_stats: list = dataclasses.field(default_factory=list)
    baseline: float | None = None  # the uncompressed model's score, when fixed ratios come first

    @property
    def dims(self):
        return self.ctx.dims


def run(job: Job, proto: onnx.ModelProto, first: layers.Analysis, settings: Settings | None,
        where: str) -> tuple[onnx.ModelProto, CompressionStats]:
    """Auto mode on `proto` (analysed as `first`); returns the model and its statistics."""
    scheme = job.scheme
    ctx = context(job.grid, job.multiplicity, first.input_dims, settings, job.search.rank_select)
    r = _Run(job, proto, first, ctx, where)
    resolution = _resolve(r)
    current = proto
    if resolution.fixed:
        # the baseline is the uncompressed model's; the dictionary scores from the fixed step on
        r.baseline = job.eval.score(proto)
        if job.search.trainer is not None:
            step = apply_with_trainer(scheme, current, dict(resolution.fixed), ctx, job.search.trainer)
        else:
            step = scheme.apply(current, dict(resolution.fixed), ctx)
        current = step.model
        r.layer_stats += step.layers
        r.skipped += step.skipped
    analysis = layers.analyze(current, r.dims)
    units, left = scheme.units(current, analysis, list(resolution.auto), job.keys, ctx)
    r.skipped += [SkippedLayer(n, analysis.find(n).op, why) for n, why in left.items()]
    if not units and not resolution.fixed:
        raise LayerError(f"no layer of {where} can be compressed by {scheme.name}: "
                         f"{reasons([(k.name, k.reason) for k in dedupe(r.skipped) if k.reason])}")
    _dry_run(r, current, analysis, list(resolution.auto))
    total = first.total(job.grid)
    if not units:
        _check_fixed_reach(analysis.total(job.grid), total, job.target, job.grid, r.skipped)
    if scheme.exact_costs and job.metric != "latency":  # exact unit costs: refuse before any evaluation
        _check_reach(units, analysis.total(job.grid), total, job.target, job.grid, r.skipped)
    timed = _time_units(r, current, units, analysis)
    if timed is not None:
        units = timed.units
    current_total = analysis.total(job.grid)
    measure = None
    if job.metric == "latency":
        total, current_total = timed.total, timed.current_total
        measure = _latency_measure(scheme, current, r.dims, job.timer)
    costs = _costs(current, r.dims, job.grid)

    def problem_of(scores) -> finalists.Problem:
        return finalists.Problem(units, scores, current, current_total, total, job.target, job.search.method,
                                 job.search.use_monotonic_fit, costs, scheme.exact_costs, scheme.overlapping_units,
                                 scheme.families(units))

    scores = sources.dictionary_for(job, r.ctx, current, units, problem_of)
    chosen, out = _select_full_scored(r, problem_of(scores), current, measure, timed)
    return out, _stats(r, out, chosen, scores, resolution, total, timed, measure, analysis)


def _resolve(r: _Run):
    scheme, first = r.job.scheme, r.first
    eligible = [l for l in first.compressible if scheme.check(l) is None]
    if not eligible:
        require_eligible(first, [scheme], {}, r.where)
    resolution = config_mod.resolve(eligible, r.job.search.config_list, r.job.search.modules_to_ignore)
    r.skipped += [SkippedLayer(l.name, l.op, l.reason) for l in first.layers if l.reason]
    r.skipped += [SkippedLayer(l.name, l.op, scheme.check(l)) for l in first.compressible if scheme.check(l)]
    r.skipped += [SkippedLayer(n, first.find(n).op, why) for n, why in resolution.excluded.items()]
    return resolution


def require_eligible(analysis: layers.Analysis, steps: list[Scheme], ignored: dict[str, str], where: str) -> None:
    """LayerError, before any work, when no step of `steps` applies to any layer of the model
    (every layer refused, ignored or of a kind the scheme cannot take), with the reasons."""
    why: dict[str, str] = {l.name: l.reason for l in analysis.layers if l.reason}
    for layer in analysis.compressible:
        for step in steps:
            reason = ignored.get(layer.name) or step.check(layer)
            if reason is None:
                return
            why.setdefault(layer.name, reason)
    raise LayerError(f"no layer of {where} can be compressed by {'+'.join(s.name for s in steps)}: "
                     f"{reasons(list(why.items()))}")


def context(metric: str, multiplicity: int, dims, settings: Settings | None, rank_select: str = "greedy") -> Context:
    """A step's context, with the calibration service when there is data."""
    activations = Activations(settings) if settings is not None and settings.data is not None else None
    return Context(metric, multiplicity, dims, settings, activations, rank_select)


def _costs(model: onnx.ModelProto, dims, metric: str):
    """Layer -> cost of `model` under `metric`, computed when first asked."""
    cache: dict = {}

    def costs() -> dict[str, int]:
        if not cache:
            analysis = layers.analyze(model, dims)
            cache.update({l.name: layers.cost_of(l, metric) for l in analysis.compressible})
        return cache

    return costs


def _dry_run(r: _Run, model, analysis, names: list[str]) -> None:
    """Rewrite the layers `names` of a copy at ratio 0.5 (the scheme's quick settings) and
    check the result, before the eval-score dictionary is paid for: a model that the rewrite
    cannot write validly fails in seconds, not after every evaluation. Per-layer refusals
    are left to the search, which reports them."""
    if not names:
        return
    others = {layer.name: "not in this run" for layer in analysis.compressible if layer.name not in set(names)}
    quick = r.job.scheme.quick(r.ctx.settings)
    ctx = context(r.ctx.metric, r.ctx.multiplicity, r.dims, quick, r.ctx.rank_select)
    try:
        r.job.scheme.apply(model, 0.5, ctx, others)
    except CompressionError as exc:
        log.debug("dry run: %s", exc)


def _check_reach(units, current_total: int, total: int, target_q, metric: str, skipped) -> None:
    """ParameterError, before the eval-score dictionary is paid for, when every unit at its
    cheapest candidate still leaves the model above the target (exact unit costs)."""
    fixed = current_total - sum(u.base_cost for u in units)
    cheapest = fixed + sum(min(c.cost for c in u.candidates) for u in units)
    allowed = (target_q.numerator * int(total)) // target_q.denominator
    if cheapest > allowed:
        raise ParameterError(
            f"target {float(target_q):g} cannot be reached: the smallest achievable {metric} ratio is "
            f"{cheapest / total:.4f} (every selected layer at its cheapest candidate){left_out(units, skipped)}")


def _check_fixed_reach(current_total: int, total: int, target_q, metric: str, skipped) -> None:
    """ParameterError when the config_list's fixed ratios leave no layer to choose and the
    model they give is above the target (the target is never silently ignored)."""
    if current_total * target_q.denominator > target_q.numerator * int(total):
        raise ParameterError(
            f"target {float(target_q):g} cannot be reached: the config_list's fixed ratios give a {metric} "
            f"ratio of {current_total / total:.4f} and leave no layer for automatic selection; lower the "
            f"fixed ratios or let more layers be chosen{left_out([], skipped)}")


def _time_units(r: _Run, current, units, analysis):
    job = r.job
    if job.timer is None:
        return None
    timer = job.timer
    timer.batch_size = timer.batch_size or (next(iter(r.dims.values()))[0] if r.dims else 1)
    timed = latency.prepare(r.proto, current, r.dims, units, job.scheme, job.metric, timer,
                            allow_slower=job.allow_slower_splits is True)
    r.skipped += [SkippedLayer(n, analysis.find(n).op, why) for n, why in timed.gone.items()]
    return timed


def _latency_measure(scheme: Scheme, current, dims, timer):
    """The achieved cost under the latency metric: with exact unit costs, the selection's own
    sum (each candidate as measured); otherwise the built model's layers timed (savings
    elsewhere included), each relative to the same layer of `current`."""
    if scheme.exact_costs:
        return lambda out, chosen: chosen.cost
    reference = latency.layer_variants(current, dims, timer.batch_size)
    return lambda out, chosen: latency.model_total(out, dims, timer, reference)[0]


def _select(r: _Run, problem: finalists.Problem, current, measure, timed):
    job = r.job
    by_unit = {u.name: u for u in problem.units}

    def build(sel):
        """(out, layer stats, skipped) of the model with selection `sel` applied."""
        ratios = {u: _ratio_of(by_unit[u], opt.ratio) for u, opt in sel.choices.items() if opt.ratio != 1.0}
        return _final(r, current, ratios)

    def achieved(out, sel) -> Fraction:
        """The built model's cost ratio, as measured."""
        return Fraction(measure(out, sel) if measure else layers.analyze(out, r.dims).total(job.grid), problem.total)

    exact = timed.estimator() if measure is not None and not job.scheme.exact_costs else None
    tries = 4 if not job.scheme.exact_costs and job.search.trainer is None else 1
    try:
        chosen, out, step_stats, more = finalists.select_and_apply(
            problem, build, achieved, verify=job.eval.triple if job.search.verify_finalists else None, exact=exact,
            tries=tries, measured=measure is not None)
    except ParameterError as exc:
        if "cannot be reached" not in str(exc):
            raise
        raise ParameterError(f"{exc}{left_out(problem.units, r.skipped)}") from None
    r.layer_stats += step_stats
    r.skipped += more
    return chosen, out


def _select_full_scored(r: _Run, problem: finalists.Problem, current, measure, timed):
    """_select; with halving, a finalist chosen at another goal than halving's own (a
    corrected target, a close finalist) can use slice estimates: those are scored on the
    full data and the selection made again, until the chosen use full-data scores only (each
    round turns at least one estimate into a full score, so the rounds end)."""
    kept = len(r.layer_stats), len(r.skipped)
    while True:
        chosen, out = _select(r, problem, current, measure, timed)
        missing = halving.estimated_in(problem.dictionary, chosen)
        if not missing:
            return chosen, out
        del r.layer_stats[kept[0]:], r.skipped[kept[1]:]
        sources.rescore(r.job, current, problem.units, problem.dictionary, missing)


def _ratio_of(unit, key: float) -> Fraction:
    """The manual ratio that reproduces a unit's chosen candidate exactly."""
    return next(c.ratio for c in unit.candidates if c.key == key)


def _final(r: _Run, proto, ratios):
    """Apply the chosen ratios; with a trainer, one layer at a time, training after each."""
    scheme, trainer = r.job.scheme, r.job.search.trainer
    if trainer is None or not ratios:
        step = scheme.apply(proto, ratios, r.ctx)
    else:
        step = apply_with_trainer(scheme, proto, ratios, r.ctx, trainer)
    return step.model, step.layers, step.skipped


def _stats(r: _Run, out, chosen, scores, resolution, total, timed, measure, analysis) -> CompressionStats:
    job = r.job
    final = job.eval.score(out)
    after = layers.analyze(out, r.dims)
    selection_info = {
        "method": job.search.method, "rank_select": job.search.rank_select, "target": float(job.target), "candidates": job.keys,
        "baseline": scores.baseline,
        "scores": {u: {scores_io.format_ratio(k): v for k, v in s.items()} for u, s in scores.scores.items()},
        "chosen": {u: opt.ratio for u, opt in chosen.choices.items()},
        "expected_score": chosen.expected_score, "evaluations": scores.evaluations,
        "resumed": scores.meta.get("resumed", 0), "peak_rss_mb": scores.peak_rss_mb, "cache": dict(scores.cache),
        "dictionary_seconds": scores.seconds, "eval_seconds": scores.eval_seconds,
        "session_seconds": scores.session_seconds, "loaded_from": scores.loaded_from,
        "fixed": dict(resolution.fixed), "verified": list(scores.verified),
    }
    if "halving" in scores.meta:  # the scores on a slice of the data, and which of them the chosen use
        selection_info["halving"] = dict(scores.meta["halving"], chosen_estimates=[
            [u, k] for u, k in halving.estimated_in(scores, chosen)])
    skipped = dedupe(r.skipped)
    return CompressionStats(
        scheme=job.scheme.name, cost_metric=job.metric, mac_before=_total(r.first, "mac"),
        mac_after=_total(after, "mac"), memory_before=r.first.total("memory"), memory_after=after.total("memory"),
        layers=tuple(r.layer_stats), skipped=tuple(skipped),
        baseline_score=scores.baseline if r.baseline is None else r.baseline, final_score=final,
        input_dims=dict(r.dims), selection=selection_info,
        per_layer=per_layer_rows(r.first, after, r.layer_stats, skipped), parameters=job.parameters,
        latency=_latency_summary(timed, r.proto, out, r.dims, chosen, total, measure, job.allow_slower_splits is True),
        channel_groups=job.scheme.census(analysis),
    )


def _latency_summary(timed, proto, out, dims, chosen, total, measure, allow_slower):
    """The statistics' latency section: per-layer sums (latency metric) and end to end."""
    if timed is None:
        return None
    after = measure(out, chosen) if measure is not None else None
    model = latency.end_to_end([proto, out], dims, timed.timer)
    return latency.summary(timed.timer, timed.lat, timed.dropped, total if measure else None, after, model,
                           allow_slower=allow_slower)


def _total(analysis: layers.Analysis, metric: str) -> int | None:
    try:
        return analysis.total(metric)
    except ShapeError:  # MACs unknown for some layer: totals only where measurable
        return None


def dedupe(skipped: list[SkippedLayer]) -> list[SkippedLayer]:
    seen, out = set(), []
    for s in skipped:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


def reasons(items: list[tuple[str, str]]) -> str:
    """'name': reason (+k more; by reason: r (n), ...) for a one-line error."""
    if not items:
        return f"it has no {', '.join(layers.LAYER_OPS[:-1])} or {layers.LAYER_OPS[-1]} layer"
    name, reason = items[0]
    return f"'{name}': {reason}{_more([r for _, r in items])}"


def _more(found: list[str]) -> str:
    """' (+k more; by reason: r (n), ...)' after the first of `found` reasons ('' for one)."""
    if len(found) <= 1:
        return ""
    counts = Counter(r.split(":")[0][:70] for r in found)
    return (f" (+{len(found) - 1} more; by reason: "
            + ", ".join(f"{k} ({n})" for k, n in counts.most_common(3)) + ")")


def left_out(units, skipped) -> str:
    """'; N layers selected, the rest left out: 'name': reason (+k more: reason (n), ...)'."""
    text = f"; {len(units)} layer{'s' if len(units) != 1 else ''} or group{'s' if len(units) != 1 else ''} selectable"
    gone = [s for s in skipped if s.reason]
    if not gone:
        return text
    return f"{text}, left out: '{gone[0].name}': {gone[0].reason}{_more([s.reason for s in gone])}"
