"""Built-in evaluation callbacks, so the CLI needs no user code.

Each factory returns `eval_callback(session, iterations, use_cuda) -> float` (higher is
better), the same signature a user's own callback has. `iterations` limits the number of
batches (None: all of them).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import data as data_mod
from .errors import DataError


def _input_specs(session) -> dict[str, tuple]:
    return {i.name: tuple(i.shape) for i in session.get_inputs()}


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
        for i, feed in enumerate(data_mod.batches(data, batch_size)):
            if iterations is not None and i >= iterations:
                break
            if data_mod.LABELS not in feed:
                raise DataError("accuracy evaluation needs an array named 'labels' in the data")
            data_mod.check_feed(feed, specs, "evaluation data")
            logits = session.run(None, {k: feed[k] for k in specs})[0]
            pred = np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)
            correct += int((pred == np.asarray(feed[data_mod.LABELS]).reshape(-1)).sum())
            total += len(pred)
        if total == 0:
            raise DataError("evaluation data is empty")
        return correct / total

    return evaluate
