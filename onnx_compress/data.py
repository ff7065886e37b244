"""Calibration and evaluation data: `.npz` files, dicts of arrays, iterables of feed dicts,
and objects with ONNX Runtime's CalibrationDataReader interface (`get_next()`).

Everything is turned into an iterator of feed dicts {input name: array}, optionally with
a `labels` array beside the inputs. Pure numpy; no onnxruntime import.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from .errors import DataError

LABELS = "labels"


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; DataError naming the file when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _split(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    for key, value in arrays.items():
        if len(value) != n:
            raise DataError(f"data arrays differ in length: '{key}' has {len(value)}, expected {n}")
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in arrays.items()}


def batches(source, batch_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts from any supported data source.

    `source`: path to an .npz (keys are input names, optional `labels`), a dict of
    arrays (split into batches of `batch_size` along axis 0), an object with `get_next()`
    (returns a feed dict, None at the end; `rewind()` is called first when present), or
    an iterable of feed dicts.
    """
    if isinstance(source, (str, os.PathLike)):
        yield from _split(load_npz(source), batch_size)
    elif isinstance(source, Mapping):
        yield from _split({k: np.asarray(v) for k, v in source.items()}, batch_size)
    elif hasattr(source, "get_next"):
        if hasattr(source, "rewind"):
            source.rewind()
        while (feed := source.get_next()) is not None:
            yield dict(feed)
    elif isinstance(source, Iterable):
        for feed in source:
            if not isinstance(feed, Mapping):
                raise DataError(f"data items must be dicts of input name -> array, got {type(feed).__name__}")
            yield dict(feed)
    else:
        raise DataError(
            "data must be an .npz path, a dict of arrays, an iterable of feed dicts, or a "
            f"CalibrationDataReader; got {type(source).__name__}"
        )


def check_feed(feed: Mapping[str, np.ndarray], inputs: Mapping[str, tuple], where: str) -> None:
    """DataError unless `feed` has every model input with a compatible rank and static dims.

    `inputs` maps input name -> declared dims (ints, or None/str for dynamic ones).
    """
    missing = [name for name in inputs if name not in feed]
    if missing:
        raise DataError(
            f"{where}: data has no array for model input(s) {missing}; it has {sorted(feed)} "
            f"(keys must be the model's input names)"
        )
    for name, dims in inputs.items():
        arr = np.asarray(feed[name])
        if len(dims) != arr.ndim:
            raise DataError(f"{where}: input '{name}' has shape {arr.shape}, the model expects rank {len(dims)}")
        for k, (want, got) in enumerate(zip(dims, arr.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise DataError(
                    f"{where}: input '{name}' has shape {arr.shape}, the model expects "
                    f"{tuple(d if isinstance(d, int) and d > 0 else '?' for d in dims)} (dim {k})"
                )


def first_shapes(source) -> dict[str, tuple[int, ...]]:
    """Shapes of the arrays in the first batch of `source` (labels excluded)."""
    for feed in batches(source):
        return {k: tuple(np.asarray(v).shape) for k, v in feed.items() if k != LABELS}
    raise DataError("the data source is empty")
