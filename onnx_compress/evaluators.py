"""Built-in evaluation callbacks, so the CLI needs no user code.

Each factory returns `eval_callback(session, iterations, use_cuda) -> float` (higher is
better), the same signature a user's own callback has. `iterations` limits the number of
batches (None: all of them).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import data as data_mod
from .errors import DataError, ParameterError


def _input_specs(session) -> dict[str, data_mod.InputSpec]:
    return data_mod.session_inputs(session)


def accuracy(data, batch_size: int = 64) -> Callable:
    """Top-1 accuracy of the model's first output against `labels` in `data`.

    `data`: an .npz path or dict of arrays with the model's inputs and `labels`, or an
    iterable of feed dicts that each carry `labels`.
    """
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = data_mod.load_npz(data)

    def evaluate(session, iterations=None, use_cuda=False) -> float:
        specs = _input_specs(session)
        correct = total = 0
        for i, feed in enumerate(data_mod.model_feeds(data, specs, batch_size, "evaluation data")):
            if iterations is not None and i >= iterations:
                break
            if data_mod.LABELS not in feed:
                raise DataError("accuracy evaluation needs an array named 'labels' in the data")
            logits = session.run(None, {k: feed[k] for k in specs})[0]
            pred = np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)
            correct += int((pred == np.asarray(feed[data_mod.LABELS]).reshape(-1)).sum())
            total += len(pred)
        if total == 0:
            raise DataError("evaluation data is empty")
        return correct / total

    return evaluate


FIDELITY_MEASURES = ("auto", "top1", "cosine")


def fidelity(data, reference=None, batch_size: int = 64, measure: str = "auto") -> Callable:
    """Label-free agreement of a candidate model with the original model's outputs.

    `data`: as for `accuracy`, without the need for `labels` (a `labels` array is ignored).
    `reference`: the original model's first output on each batch of `data` (batches as
    `data_mod.model_feeds(data, specs, batch_size)` cuts them for the model's inputs: along
    each input's batch axis, in the model's batch when it is static), as a list of arrays, or a callable
    returning that list (called once, on first use). With None, the *first session the
    callback is called with is taken as the original model*: its outputs become the
    reference (the compressor evaluates the original model first). A later call that
    needs more batches than the reference covers is a DataError.

    Score (higher is better, 1.0 = identical): when the first output is 2-D (N, C) with
    C > 1, the fraction of samples whose argmax agrees with the reference's (top-1
    agreement); otherwise the mean cosine similarity per sample (each sample flattened; a
    sample with non-finite values scores -1, two all-zero samples score 1).
    `measure`: "auto" (as above), "top1" (always argmax agreement over the last axis) or
    "cosine" (always per-sample cosine: embedding models, whose (N, D) output is not a
    class score).
    """
    if measure not in FIDELITY_MEASURES:
        raise ParameterError(f"fidelity measure must be one of {FIDELITY_MEASURES}, got {measure!r}")
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = data_mod.load_npz(data)
    state: dict = {"ref": reference if reference is None or callable(reference) else _check_reference(reference)}

    def evaluate(session, iterations=None, use_cuda=False) -> float:
        specs = _input_specs(session)
        first = [session.get_outputs()[0].name]
        ref = state["ref"]
        if callable(ref):
            ref = state["ref"] = _check_reference(ref())
        record = ref is None
        outputs: list[np.ndarray] = []
        agree = total = 0.0
        for i, feed in enumerate(data_mod.model_feeds(data, specs, batch_size, "fidelity data")):
            if iterations is not None and i >= iterations:
                break
            out = np.asarray(session.run(first, {k: feed[k] for k in specs})[0])
            if record:
                outputs.append(out)
                agree, total = agree + len(out), total + len(out)
                continue
            if i >= len(ref):
                raise DataError(
                    f"fidelity: the reference covers {len(ref)} batch(es), this evaluation needs batch {i + 1}; "
                    "evaluate the original model first with the largest `iterations`, or pass `reference`"
                )
            agree += _agreement(out, ref[i], i, measure)
            total += len(out)
        if total == 0:
            raise DataError("evaluation data is empty")
        if record:
            state["ref"] = outputs
        return agree / total

    return evaluate


def _check_reference(reference) -> list[np.ndarray]:
    if isinstance(reference, np.ndarray) or not isinstance(reference, (list, tuple)):
        raise DataError(
            f"fidelity reference must be a list of arrays, one per batch (the first output only), got "
            f"{type(reference).__name__}; split one array with np.array_split or pass a callable"
        )
    return [np.asarray(r) for r in reference]


def _agreement(out: np.ndarray, ref: np.ndarray, batch: int, measure: str = "auto") -> float:
    """Sum over the batch's samples of top-1 agreement or cosine similarity."""
    if out.shape != ref.shape:
        raise DataError(
            f"fidelity: batch {batch + 1}: the model's first output has shape {out.shape}, the reference "
            f"has {ref.shape}; the reference must come from the same data and batch_size"
        )
    if measure == "top1" or (measure == "auto" and ref.ndim == 2 and ref.shape[1] > 1):
        return float((out.argmax(axis=-1) == ref.argmax(axis=-1)).reshape(len(out), -1).mean(axis=1).sum())
    return float(_cosine(out.reshape(len(out), -1), ref.reshape(len(ref), -1)).sum())


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity in float64 (zero rows: 1 if both are zero, else 0)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((na > 0) & (nb > 0), dot / (na * nb), np.where((na == 0) & (nb == 0), 1.0, 0.0))
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    return np.where(finite, np.clip(cos, -1.0, 1.0), -1.0)
