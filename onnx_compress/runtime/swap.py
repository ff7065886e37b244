"""Weight swapping and prefix caching: sessions of one model with some weights replaced,
without rebuilding it (`WeightSwapper`), and candidate sessions that run only the part of
the model after the changed layers, fed from the baseline's recorded activations
(`PrefixCache`). Auto mode scores its eval-score dictionary with them."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from .. import ir
from ..errors import CompressionError
from .sessions import check_providers, options, output_bytes, providers, session


def _mark_external(t: onnx.TensorProto, nbytes: int) -> None:
    """Drop `t`'s data and mark it external: its values come with the session
    (SessionOptions.add_external_initializers), not from the serialised model."""
    for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
        t.ClearField(field)
    del t.external_data[:]
    for key, value in (("location", "onnx_compress.swap"), ("offset", "0"), ("length", str(nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    t.data_location = onnx.TensorProto.EXTERNAL


class WeightSwapper:
    """Sessions of one model with some initializers replaced, without rebuilding it.

    The named main-graph initializers are marked as external data in a prepared copy
    serialised once; each `session(overrides)` then hands ONNX Runtime the current or
    overridden arrays from memory (`add_external_initializers`), so the candidate keeps
    every graph optimisation of a normal session (constant folding, fusions, prepacking).
    """

    def __init__(self, model: onnx.ModelProto, names: list[str], use_cuda: bool = False,
                 threads: int | None = None, values: dict | None = None):
        """`values`: arrays to use for some of `names` instead of the model's own (shared,
        not copied; the prefix cache's suffix models carry no weight data of their own)."""
        inits = {t.name: t for t in model.graph.initializer}
        missing = [n for n in names if n not in inits]
        if missing:
            raise CompressionError(f"cannot swap {missing}: not initializers of the main graph")
        values = values or {}
        self.values = {n: values[n] if n in values else ir.to_array(inits[n]) for n in names}
        prepared = onnx.ModelProto()
        prepared.CopyFrom(model)
        for t in prepared.graph.initializer:
            if t.name in self.values:
                _mark_external(t, self.values[t.name].nbytes)
        self._folder = None  # file-backed models (over 2 GB): ORT reads a saved copy
        if ir.is_file_backed(prepared):
            self._folder = tempfile.TemporaryDirectory(prefix="onnx_compress_swap_")
            self.model_bytes = os.path.join(self._folder.name, "model.onnx")
            ir.save(prepared, self.model_bytes, external=True, check=False)
        else:
            self.model_bytes = prepared.SerializeToString()
        self.use_cuda = use_cuda
        self.threads = threads

    def session(self, overrides: dict | None = None) -> ort.InferenceSession:
        """A session of the model with `overrides` (name -> same-shaped array) swapped in."""
        overrides = overrides or {}
        opts = options(self.threads)
        names = list(self.values)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(overrides.get(n, self.values[n])))
                  for n in names]
        opts.add_external_initializers(names, values)
        sess = ort.InferenceSession(self.model_bytes, opts, providers=providers(self.use_cuda))
        sess._onnx_compress_keepalive = values  # the session reads these buffers
        return check_providers(sess, self.use_cuda)


# ------------------------------------------------------------------ prefix caching
def _feed_key(feed: dict) -> tuple:
    """A cheap fingerprint of a feed: names, shapes, dtypes and a strided sample of values.

    Equal feeds have equal keys; feeds with equal keys are told apart by `_same_feed`.
    Hashing every byte of every batch cost as much as a fifth of a small model's
    suffix run, for each candidate.
    """
    parts = []
    for name in sorted(feed):
        arr = np.asarray(feed[name])
        flat = arr.reshape(-1)
        step = max(1, flat.size // 256)
        parts.append((name, arr.shape, str(arr.dtype), flat[::step].tobytes()))
    return tuple(parts)


def _same_feed(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        x, y = np.asarray(x), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not np.array_equal(x, y) and not (x.dtype.kind in "fc" and np.array_equal(x, y, equal_nan=True)):
            return False
    return True


def suffix_model(model: onnx.ModelProto, start_nodes: set[str],
                 inferred: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, list[str]] | None:
    """The part of `model` that depends on the nodes `start_nodes`, and its boundary inputs.

    Boundary: tensors the suffix reads that the rest of the graph (or the graph inputs)
    computes, plus graph outputs the suffix does not reach. None when the graph has
    subgraph nodes in the suffix or the extraction fails (callers use the full model).
    `inferred`: `model` with its shapes inferred, when the caller has it (one inference
    for many suffixes).
    """
    import onnx.utils

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    suffix, stack = set(), [n for n in graph.node if n.name in start_nodes]
    while stack:
        node = stack.pop()
        if id(node) in suffix:
            continue
        suffix.add(id(node))
        for out in node.output:
            stack.extend(consumers.get(out, []))
    nodes = [n for n in graph.node if id(n) in suffix]
    if not nodes or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for n in nodes for a in n.attribute):
        return None
    produced = {o for n in nodes for o in n.output}
    inits = {t.name for t in graph.initializer}
    boundary = sorted({i for n in nodes for i in n.input if i and i not in produced and i not in inits})
    boundary += [o.name for o in graph.output if o.name not in produced and o.name not in boundary]
    try:
        inferred = inferred if inferred is not None else onnx.shape_inference.infer_shapes(model)
        sub = onnx.utils.Extractor(inferred).extract_model(boundary, [o.name for o in graph.output])
    except Exception:
        return None
    return sub, boundary


class _FullModelView:
    """Presents the full model's inputs and outputs; everything else from `_session`."""

    _cache: PrefixCache
    _session: ort.InferenceSession

    def get_inputs(self):
        return self._cache.inputs

    def get_outputs(self):
        return self._cache.outputs

    def __getattr__(self, name):
        return getattr(self._session, name)


class _Recorder(_FullModelView):
    """Runs the full model and stores the boundary tensors of every unit per feed."""

    def __init__(self, cache: PrefixCache, session: ort.InferenceSession):
        self._cache, self._session = cache, session

    def run(self, output_names, input_feed, run_options=None):
        cache = self._cache
        fid = cache.store_feed(input_feed)
        groups = cache.record_groups(input_feed) if fid is not None else [[]]
        outputs = list(cache.model_outputs)
        by_name = {}
        for i, group in enumerate(groups):  # each group's tensors go to the store before the next run
            wanted = list(dict.fromkeys((outputs if i == 0 else []) + group))
            values = dict(zip(wanted, cache.group_session(wanted).run(wanted, input_feed, run_options)))
            by_name.update((k, values[k]) for k in outputs if k in values)
            for name in group:  # the run's own arrays: kept without a copy
                cache.store_.put((fid, name), values[name], copy=False)
            del values
        keys = [o.name for o in cache.outputs] if output_names is None else list(output_names)
        return [by_name[k] for k in keys]  # the model's outputs only, as a plain session's run


class _SuffixSession(_FullModelView):
    """Looks like a session of the candidate model; runs only the suffix on cached inputs."""

    def __init__(self, cache: PrefixCache, unit: str, session: ort.InferenceSession, fallback):
        self._cache, self._unit, self._session, self._fallback = cache, unit, session, fallback
        self._full = None

    def run(self, output_names, input_feed, run_options=None):
        boundary = self._cache.lookup(self._unit, input_feed)
        if boundary is None:  # data the baseline did not see: run the whole candidate model
            if self._full is None:
                self._full = self._fallback()
            return self._full.run(output_names, input_feed, run_options)
        keys = [o.name for o in self._cache.outputs] if output_names is None else list(output_names)
        return self._session.run(keys, boundary, run_options)


def _skeleton(model: onnx.ModelProto, min_elements: int = 64) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`model` without the data of its main-graph float initializers of `min_elements` or
    more (marked external, as WeightSwapper hands them to ONNX Runtime), and those arrays.

    Every suffix model is cut from the skeleton, so the cache holds the weights once, not
    once per unit (a ResNet-50-class model's 53 suffixes held 2.6 GB of copies)."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    arrays = {}
    for t in skeleton.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE) \
                and int(np.prod(t.dims, dtype=np.int64)) >= min_elements:
            arrays[t.name] = ir.to_array(t)
            _mark_external(t, arrays[t.name].nbytes)
    return skeleton, arrays


class PrefixCache:
    """Scores candidates by running only the part of the model after the changed layers.

    The baseline evaluation goes through `recording_session()`, which stores, for each
    feed the evaluator uses, every unit's boundary tensors (the activations its suffix
    reads). A candidate session then runs the unit's suffix model with the candidate
    weights swapped in, fed from that cache; outputs are those of the full candidate
    model. Feeds the baseline did not see fall back to the full model.

    Memory is bounded: the feeds and activations go to a runtime.store.TieredStore, in
    memory up to `max_bytes` (default a sixteenth of the available memory), then to files up
    to `disk_bytes` (default half the free temporary space); a boundary tensor stored
    nowhere is recomputed from its feed when a candidate needs it, and a feed stored
    nowhere runs the full candidate model. The suffix models share one copy of the weights.
    Recording a batch runs the model once per group of boundary tensors of at most
    `record_bytes` (default a 32nd of the available memory), each group stored before
    the next, so a batch's boundaries (3 GB for a ResNet-50 at 64 images) are never all held.
    """

    def __init__(self, model: onnx.ModelProto, units: dict[str, list[str]], use_cuda: bool = False,
                 threads: int | None = None, max_bytes: int | None = None, disk_bytes: int | None = None,
                 record_bytes: int | None = None):
        from .store import TieredStore, default_record_bytes

        self.record_bytes = default_record_bytes() if record_bytes is None else int(record_bytes)

        self.use_cuda, self.threads = use_cuda, threads
        self.model_outputs = [o.name for o in model.graph.output]
        skeleton, self.shared = _skeleton(model)
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton)
        except Exception:
            inferred = skeleton
        consumers = {}
        for node in model.graph.node:
            for i in node.input:
                consumers.setdefault(i, set()).add(node.name)
        self.plans: dict[str, tuple] = {}
        for unit, weights in units.items():
            starts = set().union(*(consumers.get(w, set()) for w in weights)) if weights else set()
            plan = suffix_model(skeleton, starts, inferred) if starts else None
            if plan is not None:
                self.plans[unit] = plan
        del skeleton, inferred
        self.needed = sorted({b for _, boundary in self.plans.values() for b in boundary})
        self.recorder_session = session(model, use_cuda, threads, extra_outputs=self.needed)  # never run
        self._model, self._group_sessions = model, {}
        # the model's own outputs come first; the recorded extras follow them
        self.inputs = self.recorder_session.get_inputs()
        self.outputs = self.recorder_session.get_outputs()[:len(self.model_outputs)]
        self.store_ = TieredStore(max_bytes, disk_bytes)
        self.feeds: dict[tuple, list[int]] = {}  # feed fingerprint -> ids of the stored feeds
        self._feed_names: dict[int, list[str]] = {}
        self.recomputed = 0  # boundary tensors recomputed (stored nowhere)
        self.swappers: dict[str, WeightSwapper] = {}

    @property
    def used(self) -> int:
        """Bytes stored (memory and disk)."""
        return self.store_.memory_used + self.store_.disk_used

    def recording_session(self) -> _Recorder:
        return _Recorder(self, self.recorder_session)

    def _find(self, feed: dict) -> int | None:
        for fid in self.feeds.get(_feed_key(feed), ()):
            stored = {k: self.store_.get(("feed", fid, k)) for k in self._feed_names[fid]}
            if all(v is not None for v in stored.values()) and _same_feed(stored, feed):
                return fid
        return None

    def store_feed(self, feed: dict) -> int | None:
        """Store a feed the baseline runs on: its id, or None when it is stored already (its
        tensors were recorded) or fits nowhere (candidates on it run the full model)."""
        if self._find(feed) is not None:
            return None
        fid = len(self._feed_names)
        if not all(self.store_.put(("feed", fid, k), v) for k, v in feed.items()):
            return None
        self._feed_names[fid] = list(feed)
        self.feeds.setdefault(_feed_key(feed), []).append(fid)
        return fid

    def group_session(self, names: list[str]) -> ort.InferenceSession:
        """A session of the model with just `names` as extra outputs, without a memory arena.

        ONNX Runtime keeps every graph output alive through a run, fetched or not: a run of
        the recorder session with all 58 boundaries of a ResNet-50 as outputs peaked at 4.2 GB
        for a 1.4 GB group, one with the group's alone at 2.4 GB. Only the newest is kept (a
        batch's groups each make one, 0.1-0.2 s; five kept held 1 GB of weight copies)."""
        key = tuple(names)
        if key not in self._group_sessions:
            self._group_sessions.clear()  # one at a time: each holds its own copy of the weights
            extra = [n for n in names if n not in self.model_outputs]
            self._group_sessions[key] = session(self._model, self.use_cuda, self.threads, extra_outputs=extra,
                                                arena=False)
        return self._group_sessions[key]

    def record_groups(self, feed: dict) -> list[list[str]]:
        """The boundary tensors in groups of at most `record_bytes` on `feed` (by the sizes ONNX
        Runtime infers; a tensor of unknown size counts as the largest known one), so that
        recording a batch never holds all of its boundaries at once: one run per group."""
        sizes = output_bytes(self.recorder_session, feed)
        known = [b for b in sizes.values() if b is not None]
        if not known:
            return [list(self.needed)]
        groups, total = [[]], 0
        for name in self.needed:
            size = sizes.get(name) or max(known)
            if groups[-1] and total + size > self.record_bytes:
                groups.append([])
                total = 0
            groups[-1].append(name)
            total += size
        return groups

    def lookup(self, unit: str, feed: dict) -> dict | None:
        fid = self._find(feed)
        if fid is None:
            return None
        found = {k: self.store_.get((fid, k)) for k in self.plans[unit][1]}
        missing = [k for k, v in found.items() if v is None]
        if missing:  # not stored: recompute them from the feed, and keep them if there is room now
            self.recomputed += len(missing)
            for name, value in zip(missing, self.group_session(missing).run(missing, feed)):
                found[name] = value
                self.store_.put((fid, name), value)
        return found

    def release(self, unit: str) -> None:
        """`unit` has no candidates left: free the boundary tensors no other unit reads."""
        plan = self.plans.pop(unit, None)
        self.swappers.pop(unit, None)
        if plan is None:
            return
        still = {b for _, boundary in self.plans.values() for b in boundary}
        for name in plan[1]:
            if name not in still:
                for fid in self._feed_names:
                    self.store_.delete((fid, name))

    def candidate(self, unit: str, overrides: dict, fallback) -> object:
        """A session-like object for the model with `overrides` swapped in at `unit`."""
        self._group_sessions.clear()  # the recording is over (a recomputation makes its own again)
        if unit not in self.plans:
            return fallback()
        if unit not in self.swappers:
            sub = self.plans[unit][0]
            names = [t.name for t in sub.graph.initializer if t.name in self.shared or t.name in overrides]
            self.swappers[unit] = WeightSwapper(sub, names, self.use_cuda, self.threads, values=self.shared)
        swapper = self.swappers[unit]
        sess = swapper.session({k: v for k, v in overrides.items() if k in swapper.values})
        return _SuffixSession(self, unit, sess, fallback)

    def close(self) -> None:
        """Free the stored activations, delete their files and drop the recording sessions."""
        self.store_.close()
        self._group_sessions.clear()
