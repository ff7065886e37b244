"""Latency as a cost: layers timed alone with ONNX Runtime, for auto mode.

A *variant* is what one layer computes, as a tiny model of its own: the layer's input
tensor at the timing batch size, then the original node, or the chain its split makes
(weight / spatial SVD at a rank), or the node with fewer input channels (channel
pruning). Weights are random of the right shapes and dtype (dense kernels do not run
faster on some values), so no factorisation is computed per candidate.

Timing (`measure`): one session per variant on the chosen provider (`runtime.runner`:
on CUDA, inputs and outputs stay on the device), `warmup` runs each, then rounds in which
all the variants of one layer run in turn (original, candidate 1, candidate 2, ...;
interleaved, so a drift in machine load hits them alike). A fast variant repeats within
a sample until the sample takes about 0.2 ms. At most `repeats` rounds, fewer when a
layer's rounds would take more than `seconds_per_layer` (3 at least; rounds also stop
when the budget is spent, as on a loaded machine). The fixed cost of
one session run (an Identity model, measured once) is subtracted from every sample, so a
layer's figure approaches what it costs inside a whole model.

A variant's time is a low quantile of its rounds (QUANTILE, the 20th percentile): load
from other processes only ever adds time, and on a busy machine most samples can carry
some, which a median would not survive. A candidate's latency is its time / the
original's (same rounds) times the original's figure. Figures
are integer nanoseconds, cached for the process per (variant, provider, threads): layers
of one shape are timed once, and later runs on the same machine reuse the figures
(`clear_cache()` forgets them).

A model's latency under this metric is the sum of its compressible layers' latencies
(Conv, Gemm, MatMul with constant weights, each timed alone), as its MAC count is the sum
of their MACs. `end_to_end` times whole models (interleaved, same quantile) for the
statistics.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .. import ir, layers, runtime
from .. import progress as progress_mod
from ..errors import ParameterError, ShapeError
from ..schemes.variants import Variant, original_variant, variant_model

STAGE = "measuring latency"  # progress stage
MIN_SAMPLE_S = 2e-4  # a sample repeats a fast variant until it takes about this long
MIN_ROUNDS = 3
QUANTILE = 0.2  # a variant's figure: this quantile of its rounds
FLOOR = 0.05  # a sample never drops below this fraction of its raw time when the overhead is subtracted
_CACHE: dict[tuple, int] = {}
_OVERHEAD: dict[tuple, float] = {}


def clear_cache() -> None:
    """Forget every cached timing (and the measured per-run overhead)."""
    _CACHE.clear()
    _OVERHEAD.clear()


def check_batch_size(batch_size) -> int | None:
    if batch_size is None:
        return None
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ParameterError(f"latency batch size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


# --------------------------------------------------------------------------- timing
def _rounds(runners: list[Callable[[], None]], timer: Timer, budget: float,
            max_rounds: int | None = None) -> list[list[float]]:
    """Seconds per run of each runner (N,) in each round: interleaved, after warm-up.

    At most `max_rounds` (default `timer.repeats`) rounds, and as many as fit in `budget`
    seconds, MIN_ROUNDS at least.
    """
    most = max_rounds or timer.repeats
    for run in runners:
        for _ in range(timer.warmup):
            run()
    once = []
    for run in runners:
        t = time.perf_counter()
        run()
        once.append(max(time.perf_counter() - t, 1e-9))
    numbers = [max(1, math.ceil(MIN_SAMPLE_S / t)) for t in once]
    per_round = sum(t * n for t, n in zip(once, numbers))
    rounds = max(min(MIN_ROUNDS, most), min(most, int(budget / per_round)))
    samples: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    for r in range(rounds):
        if r >= MIN_ROUNDS and time.perf_counter() - start > budget:  # a loaded machine: stop at the budget
            break
        for run, n, out in zip(runners, numbers, samples):
            t = time.perf_counter()
            for _ in range(n):
                run()
            out.append((time.perf_counter() - t) / n)
    return samples


def _overhead(timer: Timer) -> float:
    """Seconds one session run costs doing nothing (Identity of one number), per provider."""
    key = (timer.provider, timer.threads)
    if key not in _OVERHEAD:
        run = runtime.runner(ir.identity_model(), {"x": np.zeros(1, np.float32)}, timer.use_cuda, timer.threads)
        _OVERHEAD[key] = _low(_rounds([run], timer, 0.2)[0])
    return _OVERHEAD[key]


def _random_input(shape, dtype: str) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape).astype(dtype)


def measure(variants: list[Variant], timer: Timer, budget: float) -> list[list[float]]:
    """Per-round seconds of each variant (per run, the session overhead subtracted), interleaved.

    Returns one list of samples per variant, all of the same length (the rounds), taking
    about `budget` seconds at most (MIN_ROUNDS rounds at least).
    """
    runners = [runtime.runner(variant_model(v), {"x": _random_input(v.input_shape, v.dtype)},
                              timer.use_cuda, timer.threads) for v in variants]
    overhead = _overhead(timer)
    samples = _rounds(runners, timer, budget)
    return [[max(t - overhead, FLOOR * t) for t in s] for s in samples]


def _low(samples) -> float:
    """The QUANTILE of `samples` (seconds)."""
    return float(np.quantile(np.asarray(samples, dtype=np.float64), QUANTILE))


def _ns(seconds: float) -> int:
    return max(1, int(round(seconds * 1e9)))


@dataclass
class Timer:
    """Times variants on one provider at one batch size; figures cached for the process.

    `timed`: variants measured by this timer (cache misses); `seconds`: time spent measuring.
    """

    batch_size: int = 1
    use_cuda: bool = False
    threads: int | None = None
    repeats: int = 21
    warmup: int = 3
    seconds_per_layer: float = 1.0
    timed: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        if not isinstance(self.repeats, int) or isinstance(self.repeats, bool) or self.repeats < 1:
            raise ParameterError(f"latency repeats must be an integer >= 1, got {self.repeats!r}")
        self.provider = runtime.providers(self.use_cuda)[0]

    def _key(self, v: Variant) -> tuple:
        return v, self.provider, self.threads

    def cached(self, v: Variant) -> int | None:
        return _CACHE.get(self._key(v))

    def times(self, items: list[tuple[Variant, Variant | None]]) -> list[int]:
        """Latency in ns of each (variant, reference) item; uncached ones timed in one group.

        The group's variants (and the references of those with one) run interleaved; a
        variant with a reference gets (its time / the reference's, in this group) times the
        reference's figure (cached, or this group's), one without gets its time; a time is
        the QUANTILE of the rounds. Budget: `seconds_per_layer` per reference or lone
        variant in the group.
        """
        todo = {v: r if r != v else None for v, r in items if self.cached(v) is None}
        if todo:
            group = list(dict.fromkeys([*(r for r in todo.values() if r is not None), *todo]))
            lone = sum(1 for v in group if todo.get(v) is None)
            t0 = time.perf_counter()
            samples = dict(zip(group, measure(group, self, self.seconds_per_layer * max(1, lone))))
            self.seconds += time.perf_counter() - t0
            for v in group:  # references and lone variants first: the others scale them
                if todo.get(v) is None and self.cached(v) is None:
                    _CACHE[self._key(v)] = _ns(_low(samples[v]))
                    self.timed += 1
            for v, ref in todo.items():
                if ref is not None:
                    ratio = _low(samples[v]) / _low(samples[ref])
                    _CACHE[self._key(v)] = max(1, int(round(ratio * _CACHE[self._key(ref)])))
                    self.timed += 1
        return [_CACHE[self._key(v)] for v, _ in items]

    def latencies(self, ref: Variant, variants: list[Variant]) -> tuple[int, list[int]]:
        """Latency in ns of `ref` and of each of `variants`, timed interleaved with `ref`."""
        out = self.times([(ref, None), *((v, ref) for v in variants)])
        return out[0], out[1:]


# ----------------------------------------------------------------- units and models
def batch_dims(dims: dict, batch: int) -> dict:
    """The input dims with the batch (first) dimension set to `batch`.

    Inputs whose first dimension equals the first input's are the batched ones.
    """
    if not dims:
        return dict(dims)
    lead = next(iter(dims.values()))
    b0 = lead[0] if lead else None
    return {k: ((batch, *v[1:]) if v and v[0] == b0 else tuple(v)) for k, v in dims.items()}


def batch_analysis(proto: onnx.ModelProto, dims: dict, batch: int) -> layers.Analysis:
    try:
        return layers.analyze(proto, batch_dims(dims, batch))
    except ShapeError as exc:
        raise ShapeError(f"at latency batch size {batch}: {exc} (a model with a fixed batch is timed at "
                         "that batch)") from None


@dataclass(frozen=True)
class UnitLatency:
    """A unit's measured latency (ns): uncompressed, and per candidate key.

    `layers` (channel pruning): layer -> (its latency, {key: latency with the kept inputs}).
    """

    original: int
    candidates: dict[float, int]
    layers: dict = dataclasses.field(default_factory=dict)


def unit_latencies(proto: onnx.ModelProto, dims: dict, units: list, scheme, timer: Timer) -> dict[str, UnitLatency]:
    """Unit name -> its measured latency, uncompressed and at each candidate: the sum over
    the layers the scheme's `variants` name (SVD: the layer alone vs its split chain;
    channel pruning: the layers whose input channels the group removes, each alone with its
    kept inputs). Progress: stage "measuring latency", one step per unit.
    """
    analysis = batch_analysis(proto, dims, timer.batch_size)
    opset = ir.opset(proto)
    out = {}
    progress_mod.update(STAGE, 0, len(units))
    for done, unit in enumerate(units, start=1):
        original, per_key, per_layer = 0, {c.key: 0 for c in unit.candidates}, {}
        for name, ref, by_key in scheme.variants(analysis, unit, opset):
            ref_ns, ns = timer.latencies(ref, [by_key[c.key] for c in unit.candidates])
            original += ref_ns
            per_layer[name] = (ref_ns, {c.key: v for c, v in zip(unit.candidates, ns)})
            for c, v in zip(unit.candidates, ns):
                per_key[c.key] += v
        out[unit.name] = UnitLatency(original, per_key, per_layer if not scheme.exact_costs else {})
        progress_mod.update(STAGE, done, len(units))
    return out


def estimate(units: list, lat: dict[str, UnitLatency], per_layer: dict[str, int], choices: dict[str, float]) -> int:
    """The model's latency (ns) when each channel-pruning unit takes its chosen candidate.

    `per_layer`: the model's layers' latencies before. A layer that loses input channels
    takes its measured latency with the kept inputs; one that loses output channels (a
    producer upstream) scales by the kept fraction, like its MACs. Used to aim the
    selection; the pruned model's layers are then timed.
    """
    est = {name: float(ns) for name, ns in per_layer.items()}
    for unit in units:
        key = choices.get(unit.name, 1.0)
        if key == 1.0:
            continue
        for (name, side), kept in unit.data[key].items():
            if name not in est:
                continue
            if side == "in" and name in lat[unit.name].layers:
                original, per_key = lat[unit.name].layers[name]
                est[name] *= per_key[key] / original
            else:
                est[name] *= float(kept)
    return int(round(sum(est.values())))


def layer_variants(proto: onnx.ModelProto, dims: dict, batch: int) -> dict[str, Variant]:
    """Layer name -> the layer as it is, for every compressible layer of `proto`."""
    analysis = batch_analysis(proto, dims, batch)
    opset = ir.opset(proto)
    return {layer.name: original_variant(layer, opset) for layer in analysis.compressible}


def model_total(proto: onnx.ModelProto, dims: dict, timer: Timer,
                reference: dict[str, Variant] | None = None) -> tuple[int, dict[str, int]]:
    """The model's latency under the metric (ns): its compressible layers, each timed alone.

    The layers not yet timed run interleaved in one group, so a burst of machine load
    spreads over all of them; a layer whose name is in `reference` (the layers of the model
    it was compressed from) is timed relative to that layer.
    """
    variants = layer_variants(proto, dims, timer.batch_size)
    reference = reference or {}
    figures = timer.times([(v, reference.get(name)) for name, v in variants.items()])
    per = dict(zip(variants, figures))
    return sum(per.values()), per


def with_costs(units: list, lat: dict[str, UnitLatency]) -> list:
    """The units with their costs replaced by measured latencies (ns)."""
    out = []
    for u in units:
        cands = [dataclasses.replace(c, cost=lat[u.name].candidates[c.key]) for c in u.candidates]
        out.append(dataclasses.replace(u, candidates=cands, base_cost=lat[u.name].original))
    return out


def drop_slower(units: list, lat: dict[str, UnitLatency]) -> tuple[list, dict[str, list[float]], dict[str, str]]:
    """Remove candidates measured slower than their unit uncompressed.

    Returns (units left, unit -> dropped candidate keys, unit -> reason for units left
    with no candidate).
    """
    kept_units, dropped, gone = [], {}, {}
    for u in units:
        lu = lat[u.name]
        keep = [c for c in u.candidates if lu.candidates[c.key] <= lu.original]
        if len(keep) < len(u.candidates):
            dropped[u.name] = [c.key for c in u.candidates if c not in keep]
        if keep:
            kept_units.append(dataclasses.replace(u, candidates=keep))
        else:
            fastest = min(lu.candidates.values())
            gone[u.name] = (f"every candidate measured slower than the original layer (fastest "
                            f"{fastest / 1e3:.1f} us vs {lu.original / 1e3:.1f} us); allow_slower_splits=True "
                            "(--allow-slower-splits) keeps them")
    return kept_units, dropped, gone


def _feeds(proto: onnx.ModelProto, dims: dict) -> dict[str, np.ndarray] | None:
    feeds = {}
    for i, inp in enumerate(ir.graph_inputs(proto)):
        if inp.name not in dims or not inp.type.HasField("tensor_type"):
            return None
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        shape = tuple(dims[inp.name])
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = np.random.default_rng(i).standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype)
    return feeds


def end_to_end(models: list[onnx.ModelProto], dims: dict, timer: Timer) -> list[int] | None:
    """Whole-model latency (ns) of each model: interleaved rounds, the QUANTILE of each.

    Random inputs at the timer's batch size (integer inputs zero). None when an input's
    shape is unknown or a model does not run on it.
    """
    feeds = _feeds(models[0], batch_dims(dims, timer.batch_size))
    if feeds is None:
        return None
    try:
        runners = [runtime.runner(m, feeds, timer.use_cuda, timer.threads) for m in models]
        samples = _rounds(runners, timer, 2 * timer.seconds_per_layer, 4 * timer.repeats)
    except Exception:  # a model that does not run at this batch size: no figure
        return None
    return [_ns(_low(s)) for s in samples]


def summary(timer: Timer, lat: dict[str, UnitLatency], dropped: dict, before: int | None = None,
            after: int | None = None, model: list[int] | None = None, allow_slower: bool = False) -> dict:
    """The latency section of the statistics (ns)."""
    out = {
        "batch_size": timer.batch_size, "provider": timer.provider, "threads": timer.threads, "unit": "ns",
        "layers_before": before, "layers_after": after,
        "layers_ratio": after / before if before and after is not None else None,
        "model_before": model[0] if model else None, "model_after": model[1] if model else None,
        "model_ratio": model[1] / model[0] if model else None,
        "allow_slower_splits": allow_slower, "dropped": {u: list(k) for u, k in dropped.items()},
        "units": {u: {"original": v.original, "candidates": {str(k): ns for k, ns in v.candidates.items()}}
                  for u, v in lat.items()},
        "timed": timer.timed, "seconds": timer.seconds,
    }
    return out


@dataclass
class Prepared:
    """Auto mode's units after timing: slower candidates dropped, latency costs when asked.

    `total` / `current_total` (latency metric only): the original model's and the model
    the units belong to (after fixed-ratio layers), summed per-layer latency in ns.
    """

    timer: Timer
    units: list
    lat: dict[str, UnitLatency]
    dropped: dict[str, list[float]]
    gone: dict[str, str]
    total: int | None = None
    current_total: int | None = None
    current_layers: dict[str, int] = dataclasses.field(default_factory=dict)

    def estimator(self) -> Callable[[dict[str, float]], int]:
        """choices -> the model's estimated latency (ns); channel-pruning units (see `estimate`)."""
        return lambda choices: estimate(self.units, self.lat, self.current_layers, choices)


def prepare(proto: onnx.ModelProto, current: onnx.ModelProto, dims: dict, units: list, scheme,
            metric: str, timer: Timer, allow_slower: bool) -> Prepared:
    """Time every unit's candidates; drop the slower ones unless `allow_slower`; under the
    latency metric, make the measured latencies the units' costs and time the models' totals."""
    total = current_total = None
    current_layers: dict[str, int] = {}
    if metric == "latency":  # whole models first: every layer's figure from one spread-out group
        total, current_layers = model_total(proto, dims, timer)
        if current is not proto:
            current_total, current_layers = model_total(current, dims, timer)
        current_total = current_total or total
    lat = unit_latencies(current, dims, units, scheme, timer)
    dropped, gone = {}, {}
    if not allow_slower:
        units, dropped, gone = drop_slower(units, lat)
    if metric == "latency":
        units = with_costs(units, lat)
    return Prepared(timer, units, lat, dropped, gone, total, current_total, current_layers)
