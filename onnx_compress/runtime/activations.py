"""Calibration data and activation sampling: the service the schemes reach through the
small `schemes.base.Activations` protocol (they never import onnxruntime themselves).

`Activations(settings).sampler(model)` loads the calibration feeds adapted to `model`'s
inputs and returns a `Sampler` that runs the model (and the current, partly compressed
one) with the tensors a layer needs exposed as outputs, caching the original's.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx

from .. import data as data_mod
from .. import progress as progress_mod
from ..errors import DataError
from ..options import Settings
from . import sessions as runtime


class Activations:
    """The calibration service: one per step, handed to the scheme."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def feeds(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        return load_batches(self.settings, model)

    def sampler(self, model: onnx.ModelProto, settings: Settings | None = None) -> "Sampler":
        settings = settings or self.settings
        return Sampler(model, load_batches(settings, model), settings)


def load_batches(settings: Settings, proto: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Calibration feeds adapted to the model's inputs as declared (data.model_feeds: batch
    axes, scalars, a static batch, dtypes; DataError when they do not fit)."""
    if settings.data is None:
        raise DataError("channel pruning needs calibration data (data_loader / --data)")
    specs = data_mod.model_inputs(proto)
    feeds = []
    for feed in data_mod.model_feeds(settings.data, specs, where="calibration data"):
        feeds.append({k: feed[k] for k in specs})
    if not feeds:
        raise DataError("calibration data is empty")
    return feeds



class Sampler:
    """Runs the original and the current model on calibration batches, with the tensors a
    layer needs exposed as outputs; caches the original model's activations."""

    def __init__(self, original: onnx.ModelProto, feeds, settings: Settings, budget: int | None = None):
        """`budget`: bytes of cached original tensors (default a sixteenth of the available
        memory): past it the least recently used go, a prefetch keeps what fits and the
        rest is computed, a fitting chunk at a time, when it is first read."""
        from .store import default_memory_bytes

        self.original = original
        self.feeds = feeds
        self.settings = settings
        self.budget = default_memory_bytes() if budget is None else int(budget)
        self._orig_cache: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self._pending: list[str] = []  # prefetched names that did not fit, in their order
        self.reference = settings.reference
        self._ref_names = _tensor_names(settings.reference) if settings.reference is not None else set()
        self._ref_cache: dict[str, list[np.ndarray]] = {}

    def target_tensor(self, name: str) -> list[np.ndarray]:
        """A layer output to refit toward: from the reference model when it has the tensor
        (e.g. the uncompressed model before an SVD step), else from the input model."""
        if name in self._ref_names:
            self._fill(self._ref_cache, self.reference, [name])
            return self._ref_cache[name]
        return self.original_tensor(name)

    def prefetch(self, names) -> None:
        """Compute the original model's tensors `names` in one pass over the batches (as
        many of them as the budget holds; the rest when first read, in chunks)."""
        self._pending = [n for n in dict.fromkeys(names) if n not in self._orig_cache]
        self._fill_original(self._pending)

    def original_tensor(self, name: str) -> list[np.ndarray]:
        if name not in self._orig_cache:
            rest = self._pending[self._pending.index(name):] if name in self._pending else [name]
            self._fill_original(rest)
        self._orig_cache.move_to_end(name)
        return self._orig_cache[name]

    def _fill_original(self, names: list[str]) -> None:
        """The first of `names` and as many following ones as fit the budget, then evict."""
        names = [n for n in names if n not in self._orig_cache]
        if not names:
            return
        got = self._run(self.original, names, self.budget)
        self._orig_cache.update(got)
        self._pending = [n for n in self._pending if n not in self._orig_cache]
        used = sum(_nbytes(v) for v in self._orig_cache.values())
        for old in list(self._orig_cache):
            if used <= self.budget or old in got:
                continue
            used -= _nbytes(self._orig_cache.pop(old))

    def current_tensor(self, model: onnx.ModelProto, name: str) -> list[np.ndarray]:
        if model is self.original:
            return self.original_tensor(name)
        return self._run(model, [name])[name]

    def _fill(self, cache: dict, model: onnx.ModelProto, names) -> None:
        missing = [n for n in dict.fromkeys(names) if n not in cache]
        if missing:
            cache.update(self._run(model, missing))

    def _run(self, model: onnx.ModelProto, names: list[str], budget: int | None = None) -> dict[str, list[np.ndarray]]:
        """Tensors `names` of `model` on every batch, from one session and one run per batch.

        With a `budget`, the longest prefix of `names` whose tensors over all batches fit it
        (at least one name) is run and kept: sized by the shapes ONNX Runtime infers before
        the first run (so that it never holds more), else by the first batch's tensors."""
        sess = runtime.session(model, self.settings.use_cuda, extra_outputs=names)
        if budget is not None:
            sizes = runtime.output_bytes(sess, self.feeds[0])
            if all(sizes.get(n) is not None for n in names):
                names = names[:_fitting([sizes[n] for n in names], len(self.feeds), budget)]
        runs = []
        for i, feed in enumerate(self.feeds):
            progress_mod.update("sampling activations", i, len(self.feeds))
            out = sess.run(names, feed)
            if i == 0 and budget is not None:
                keep = _fitting([arr.nbytes for arr in out], len(self.feeds), budget)
                names, out = names[:keep], out[:keep]
            runs.append(out)
        progress_mod.update("sampling activations", len(self.feeds), len(self.feeds))
        return {name: [r[k] for r in runs] for k, name in enumerate(names)}


def _fitting(sizes: list[int], batches: int, budget: int) -> int:
    """How many of the leading tensors, `sizes` bytes a batch, fit `budget` over the batches (>= 1)."""
    total, keep = 0, 0
    for size in sizes:
        total += size * batches
        if keep and total > budget:
            break
        keep += 1
    return keep


def _nbytes(arrays: list[np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays)


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output}
