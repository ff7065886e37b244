"""The eval-score dictionary on a Ray cluster (`executor="ray"`, CLI `--ray [ADDRESS]`).

`RayScorer` has LocalScorer's interface (`baseline()`, `map(tasks)`, `timing`), so
dictionary.build_dictionary runs it unchanged (checkpoint and resume included):
- the model (serialised once) and the eval callback (cloudpickled once, in the state it
  has when the dictionary starts) go to the object store once; every worker is a Ray actor
  that builds its own LocalScorer from them, once, with `num_cpus` intra-op threads (or a
  `num_gpus` share of a GPU with use_cuda), and scores its own baseline first: that fills
  its prefix cache, and a fidelity evaluator takes its reference there, as it does locally;
- the driver scores the baseline itself too (its callback is the one the finalists and the
  final model are scored with afterwards), previews each candidate (Unit objects stay on
  the driver) and ships the same-shaped override arrays with the task;
- tasks go to the least busy ready actor, at most WINDOW per actor in flight; results come
  back in task order (the same dictionary, key order included), progress as they complete;
- an actor that dies is restarted and its tasks retried (RETRIES times, by Ray); an
  exception raised by the evaluator is not retried: it is raised again here, as locally.

Ray is imported only when used (the optional extra: pip install onnx_compress[ray]).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import time

import onnx

from .. import ir
from ..errors import CompressionError, ParameterError
from .dictionary import LocalScorer, unit_weights

log = logging.getLogger(__name__)

INSTALL = "pip install onnx_compress[ray]"
WINDOW = 2  # tasks in flight per actor: the next candidate's weights travel while one is scored
RETRIES = 3  # restarts of an actor that dies, and retries of the tasks it held


def import_ray():
    """The ray module, or a ParameterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ParameterError(f"executor='ray' needs Ray, which is not installed: {INSTALL}") from None
    return ray


def check_options(search, use_cuda: bool, eval_callback=None) -> None:
    """ParameterError for a bad executor or Ray field of `search` (options.Search); with
    executor='ray', Ray is imported and the callback pickled, so that a missing install or
    a callback Ray cannot send is found before any work."""
    if search.executor not in ("local", "ray"):
        raise ParameterError(f"executor must be 'local' or 'ray', got {search.executor!r}")
    given = [f for f in ("ray_address", "ray_workers", "ray_gpus") if getattr(search, f) is not None]
    if search.executor == "local":
        if given or search.ray_cpus != 1:
            raise ParameterError(f"{(given or ['ray_cpus'])[0]} applies with executor='ray' only")
        return
    if search.cache_mb is not None:
        raise ParameterError("cache_mb (--cache-mb) applies to the local executor; each Ray worker's prefix cache "
                             "takes its default budget of that worker's memory")
    if search.ray_address is not None and (not isinstance(search.ray_address, str) or not search.ray_address):
        raise ParameterError(f"ray_address must be a cluster address such as 'auto' or 'HOST:6379', "
                             f"got {search.ray_address!r}")
    for name in ("ray_workers", "ray_cpus"):
        value = getattr(search, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ParameterError(f"{name} must be an integer >= 1, got {value!r}")
    gpus = search.ray_gpus
    if gpus is not None:
        if not use_cuda:
            raise ParameterError("ray_gpus (--ray-gpus) applies with use_cuda (--cuda)")
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 < gpus <= 1e6 or \
                (gpus > 1 and gpus != int(gpus)):
            raise ParameterError(f"ray_gpus must be a GPU share in (0, 1] or a whole number of GPUs, got {gpus!r}")
    import_ray()
    if eval_callback is not None:
        _pickled(eval_callback)


def open_scorer(search, proto: onnx.ModelProto, units, ev):
    """A context giving the dictionary's scorer: a RayScorer with executor='ray' (closed at
    the end), else None (build_dictionary's own LocalScorer). `ev`: auto.Eval."""
    if search.executor != "ray":
        return contextlib.nullcontext(None)
    return RayScorer(proto, unit_weights(units), ev.callback, ev.iterations, ev.use_cuda, workers=search.ray_workers,
                     address=search.ray_address, num_cpus=search.ray_cpus, num_gpus=search.ray_gpus)


def _pickled(callback) -> bytes:
    """The callback as Ray ships it (cloudpickle), or a one-line ParameterError."""
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(callback)
    except Exception as exc:  # pickle raises TypeError, PicklingError, AttributeError, ...
        why = (str(exc).splitlines() or [""])[0]
        raise ParameterError(f"executor='ray' sends the eval_callback to the workers with cloudpickle, and it cannot "
                             f"be pickled ({type(exc).__name__}: {why}); make it a function or an object that holds "
                             "data only, opening sessions, files or connections inside the call") from None


def local_scorer(proto, weights, callback, iterations, use_cuda: bool, threads: int, prefix_cache: bool = True):
    """A LocalScorer whose sessions use about `threads` intra-op threads."""
    if "threads" in inspect.signature(LocalScorer).parameters:
        return LocalScorer(proto, weights, callback, iterations, use_cuda, prefix_cache=prefix_cache, threads=threads)
    # LocalScorer gives its sessions cpu_count // workers threads (the default with 1 worker)
    workers = max(1, (os.cpu_count() or 1) // threads)
    return LocalScorer(proto, weights, callback, iterations, use_cuda, workers, prefix_cache)


class _Worker:
    """A Ray actor: one LocalScorer of the model, built on first use, its own baseline
    scored before any candidate (again after a restart)."""

    def __init__(self, weights, iterations, use_cuda, threads, prefix_cache):
        self.args = (weights, iterations, use_cuda, threads, prefix_cache)
        self.scorer = None
        self.base = None

    def _ready(self, shared: list) -> LocalScorer:
        """`shared`: [model ref, callback ref] (with every call, not to the constructor: a
        restarted actor gets them from the retried call, the driver keeping them alive)."""
        if self.scorer is None:
            weights, iterations, use_cuda, threads, prefix_cache = self.args
            import ray
            from ray import cloudpickle

            model, blob = ray.get(shared)
            try:
                callback = cloudpickle.loads(blob)
            except Exception as exc:
                raise ParameterError(
                    f"a Ray worker cannot load the eval_callback ({type(exc).__name__}: {exc}): what it refers to "
                    "by module must be importable on every node (install it there)") from None
            self.scorer = local_scorer(onnx.load_model_from_string(model), weights, callback, iterations, use_cuda,
                                       threads, prefix_cache)
        return self.scorer

    def _timed(self, fn, *args):
        before = dict(self.scorer.timing)
        value = fn(*args)
        return value, {k: v - before.get(k, 0.0) for k, v in self.scorer.timing.items()}

    def baseline(self, shared: list):
        """(baseline score, timing) of this process."""
        if self.base is None:
            self.base = self._timed(self._ready(shared).baseline)
        return self.base

    def score(self, shared: list, unit: str, overrides: dict):
        """(score, timing) of the model with `overrides` swapped in at `unit`."""
        self.baseline(shared)
        return self._timed(self.scorer.score, unit, overrides)


class RayScorer:
    """Scores the baseline and (unit, candidate) tasks on Ray actors (see the module doc).

    `workers`: actors (None: as many as the cluster's resources hold); `address`: None
    starts a local Ray instance, "auto" or "HOST:PORT" connects to a cluster (an already
    initialised Ray is used as it is); `num_cpus` per actor (its intra-op threads);
    `num_gpus` per actor with use_cuda (default 1; a fraction shares a GPU). A Ray this
    scorer initialised is shut down by `close()` (a cluster it connected to keeps running).
    """

    def __init__(self, proto: onnx.ModelProto, weights: dict[str, list[str]], eval_callback, iterations,
                 use_cuda: bool, *, workers: int | None = None, address: str | None = None, num_cpus: int = 1,
                 num_gpus: float | None = None, prefix_cache: bool = True):
        self.ray = import_ray()
        if ir.too_big(proto):
            raise ParameterError("executor='ray' ships the model as one protobuf, which holds at most 2 GiB; "
                                 "use the local executor for this model")
        self.blob = _pickled(eval_callback)
        self.proto, self.weights, self.callback = proto, weights, eval_callback
        self.iterations, self.use_cuda, self.prefix_cache = iterations, use_cuda, prefix_cache
        self.workers, self.address, self.num_cpus = workers, address, num_cpus
        self.num_gpus = (1 if num_gpus is None else num_gpus) if use_cuda else 0
        # eval / session: summed over the driver's baseline and the actors; preview: the
        # driver previewing candidates; wait: the driver waiting for results
        self.timing = {"eval": 0.0, "session": 0.0, "preview": 0.0, "wait": 0.0}
        self.actors: list = []
        self.warming: dict = {}  # actor baseline ref -> actor index
        self.shared: list = []  # the object refs of the model and the callback
        self.base: float | None = None
        self.initialised = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """End the actors, and the Ray connection if this scorer made it."""
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
        self.actors, self.warming, self.shared = [], {}, []
        if self.initialised:
            self.ray.shutdown()
            self.initialised = False

    # ----------------------------------------------------------------------- the cluster
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # the caller's own Ray: used as it is, left running
            return
        quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
        if self.address is None:
            need = (self.workers or 1) * self.num_cpus
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False, **quiet)
        else:
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ParameterError(f"cannot connect to the Ray cluster at {self.address!r}: "
                                     f"{(str(exc).splitlines() or [''])[0]}") from None
        self.initialised = True

    def _actor_count(self) -> int:
        """Actors to start: `workers`, at most as many as the cluster's resources hold at once."""
        have = self.ray.cluster_resources()
        fits = math.floor(have.get("CPU", 0) / self.num_cpus + 1e-9)
        if self.num_gpus:
            fits = min(fits, math.floor(have.get("GPU", 0) / self.num_gpus + 1e-9))
        if fits < 1:
            raise ParameterError(f"the Ray cluster has {have.get('CPU', 0):g} CPU(s) and {have.get('GPU', 0):g} GPU(s); "
                                 f"a worker needs {self.num_cpus} CPU(s)" +
                                 (f" and {self.num_gpus:g} GPU(s)" if self.num_gpus else ""))
        if self.workers is not None and self.workers > fits:
            log.warning("the Ray cluster holds %d worker(s) of %d CPU(s)%s at once; starting %d, not %d", fits,
                        self.num_cpus, f" and {self.num_gpus:g} GPU(s)" if self.num_gpus else "", fits, self.workers)
        return min(fits, self.workers or fits)

    def _start(self) -> None:
        ray = self.ray
        self._connect()
        self.shared = [ray.put(self.proto.SerializeToString()), ray.put(self.blob)]  # once, for every actor
        actor_class = ray.remote(_Worker).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                 max_restarts=RETRIES, max_task_retries=RETRIES)
        for i in range(self._actor_count()):
            actor = actor_class.remote(self.weights, self.iterations, self.use_cuda, self.num_cpus, self.prefix_cache)
            self.actors.append(actor)
            self.warming[actor.baseline.remote(self.shared)] = i
        log.info("eval-score dictionary on Ray: %d worker(s), %d CPU(s)%s each", len(self.actors), self.num_cpus,
                 f" and {self.num_gpus:g} GPU(s)" if self.num_gpus else "")

    # ----------------------------------------------------------------------- scoring
    def baseline(self) -> float:
        """The model's score, on the driver (whose callback scores the finalists later);
        the actors score their own meanwhile (checked against it as they come in)."""
        if not self.actors:
            self._start()
        here = LocalScorer(self.proto, self.weights, self.callback, self.iterations, self.use_cuda, 1,
                           self.prefix_cache)  # as build_dictionary's own
        self.base = here.baseline()
        self._add(here.timing)
        return self.base

    def _add(self, timing: dict) -> None:
        for k, v in timing.items():
            self.timing[k] = self.timing.get(k, 0.0) + v

    def _get(self, ref, what: str):
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised in the worker: the same error as locally
            log.debug("raised in a Ray worker (%s):\n%s", what, exc)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            raise CompressionError(f"a Ray worker died {RETRIES + 1} times {what}: "
                                   f"{(str(exc).splitlines() or [''])[0]}") from None

    def _joined(self, ref, ready: list) -> None:
        """An actor's baseline came in: the actor takes tasks from now on."""
        i = self.warming.pop(ref)
        value, timing = self._get(ref, "scoring the baseline")
        self._add(timing)
        if value != self.base:
            log.warning("a Ray worker scored the baseline %r where the driver scored %r: the evaluation differs "
                        "between processes or machines, so the dictionary may differ from a local run", value,
                        self.base)
        ready.append(i)

    def map(self, tasks):
        """(unit name, candidate key, score) per task, in task order; each unit's candidate
        previewed here when its task is sent."""
        ray = self.ray
        tasks = list(tasks)
        if not self.actors:
            self.baseline()
        results: list = [None] * len(tasks)
        flight: dict = {}  # task ref -> (task index, actor index)
        load = [0] * len(self.actors)
        ready: list[int] = []
        sent = emitted = 0
        while emitted < len(tasks):
            while sent < len(tasks) and ready and min(load[i] for i in ready) < WINDOW:
                actor = min(ready, key=load.__getitem__)
                unit, cand = tasks[sent]
                t = time.perf_counter()
                overrides = unit.preview(cand)
                self.timing["preview"] += time.perf_counter() - t
                flight[self.actors[actor].score.remote(self.shared, unit.name, overrides)] = (sent, actor)
                load[actor] += 1
                sent += 1
            t = time.perf_counter()
            done, _ = ray.wait(list(flight) + list(self.warming), num_returns=1)
            self.timing["wait"] += time.perf_counter() - t
            for ref in done:
                if ref in self.warming:
                    self._joined(ref, ready)
                    continue
                index, actor = flight.pop(ref)
                load[actor] -= 1
                unit, cand = tasks[index]
                value, timing = self._get(ref, f"scoring layer '{unit.name}' at {cand.key:g}")
                self._add(timing)
                results[index] = float(value)
            while emitted < len(tasks) and results[emitted] is not None:
                unit, cand = tasks[emitted]
                yield unit.name, cand.key, results[emitted]
                emitted += 1
        log.info("Ray dictionary: %d task(s) on %d worker(s); the driver previewed candidates for %.1f s and waited "
                 "%.1f s", len(tasks), len(self.actors), self.timing["preview"], self.timing["wait"])
