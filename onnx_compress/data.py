"""Calibration and evaluation data: `.npz` files, dicts of arrays, iterables of feed dicts,
and objects with ONNX Runtime's CalibrationDataReader interface (`get_next()`).

Everything is turned into an iterator of feed dicts {input name: array}, optionally with
a `labels` array beside the inputs. `model_feeds` adapts them to a model's inputs as the
exporter declared them (`InputSpec`: declared dims and dtype, from `model_inputs(proto)`
or `session_inputs(session)`): each input is cut along its own batch axis
(`batch_axes`), scalars go unchanged with every batch, a static batch is fed in
model-sized batches, and safe dtype differences are cast. Every consumer of data (channel
pruning, data-aware SVD, refit, evaluators, quantization's calibration) goes through it.
Pure numpy and onnx; no onnxruntime import.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import ir
from .errors import DataError

log = logging.getLogger(__name__)

LABELS = "labels"


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; DataError naming the file when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if not arrays:
        raise DataError(f"{path}: the .npz file holds no arrays; it needs one per model input, "
                        "keyed by input name (np.savez(path, input_name=array, ...))")
    return arrays


@dataclass(frozen=True)
class Positional:
    """The key of an unnamed array in a feed: the model's `index`-th input."""

    index: int

    def __str__(self) -> str:
        return f"input #{self.index}"


def _arraylike(x) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not isinstance(x, (str, bytes, Mapping)))


def _unnamed(item) -> dict:
    """A feed from a batch that names no input, as torch DataLoaders and tf.data yield them:
    an array (or tensor with __array__) for a one-input model, `(inputs, labels)` with
    inputs an array or a tuple of arrays (one per model input, in order), or `(inputs,)`."""
    if _arraylike(item):
        return {Positional(0): np.asarray(item)}
    if isinstance(item, (tuple, list)) and item:
        inputs, rest = item[0], item[1:]
        feed = {}
        if isinstance(inputs, Mapping):
            feed = dict(inputs)
        elif _arraylike(inputs):
            feed = {Positional(0): np.asarray(inputs)}
        elif isinstance(inputs, (tuple, list)) and inputs and all(_arraylike(v) for v in inputs):
            feed = {Positional(i): np.asarray(v) for i, v in enumerate(inputs)}
        else:
            raise DataError(f"data items: cannot read the inputs of a {type(item).__name__} batch "
                            f"(its first element is a {type(inputs).__name__})")
        if rest and _arraylike(rest[0]):
            feed[LABELS] = np.asarray(rest[0])
        return feed
    raise DataError("data items must be dicts of input name -> array, arrays, or (inputs, labels) "
                    f"tuples; got {type(item).__name__}")


def _named(feed: dict, specs) -> dict:
    """`feed` with its Positional keys replaced by the model's input names, in order."""
    positional = sorted((k for k in feed if isinstance(k, Positional)), key=lambda k: k.index)
    if not positional:
        return feed
    names = list(specs)
    if len(positional) != len(names):
        raise DataError(f"the data gives {len(positional)} unnamed input array(s) per batch, the model has "
                        f"{len(names)} input(s) {names}: give dicts of input name -> array")
    out = {k: v for k, v in feed.items() if not isinstance(k, Positional)}
    out.update({names[k.index]: feed[k] for k in positional})
    return out


def _raw(source) -> Iterator[tuple[bool, dict]]:
    """(whole, feed) pairs: whole=True for the one feed of all arrays of an .npz or dict
    (still to be cut into batches), False for each feed of an iterable or reader. A bare
    array is the whole data of a one-input model; an iterable's items may be feed dicts,
    arrays or (inputs, labels) tuples (`_unnamed`), whose arrays are keyed `Positional`."""
    if _arraylike(source):
        yield True, {Positional(0): np.asarray(source)}
    elif isinstance(source, (str, os.PathLike)):
        yield True, load_npz(source)
    elif isinstance(source, Mapping):
        yield True, dict(source)
    elif hasattr(source, "get_next"):
        if hasattr(source, "rewind"):
            source.rewind()
        while (feed := source.get_next()) is not None:
            yield False, dict(feed)
    elif isinstance(source, Iterable):
        for feed in source:
            yield False, dict(feed) if isinstance(feed, Mapping) else _unnamed(feed)
    else:
        raise DataError(
            "data must be an .npz path, a dict of arrays, an array, an iterable of feed dicts, arrays or "
            "(inputs, labels) batches, or a "
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
    """Shapes of the arrays of `source` as given (labels excluded): all of an .npz or
    dict's arrays, uncut; the first feed of an iterable or reader."""
    for _, feed in _raw(source):
        return {k: tuple(np.shape(v)) for k, v in feed.items() if k != LABELS and not isinstance(k, Positional)}
    raise DataError("the data source is empty")


# ------------------------------------------------------------- inputs as declared
@dataclass(frozen=True)
class InputSpec:
    """A model input as its exporter declared it.

    `dims`: per axis an int (static), the symbolic name (str) or None (dynamic); None
    for the whole tuple when the rank is unknown; () for a scalar. `dtype`: the numpy
    dtype of its elem_type (None when unknown, or strings: never cast).
    """

    dims: tuple | None
    dtype: np.dtype | None = None

    @property
    def static(self) -> bool:
        return self.dims is not None and all(_is_static(d) for d in self.dims)


def _is_static(d) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0


def _np_dtype(elem: int) -> np.dtype | None:
    if not elem or elem == onnx.TensorProto.STRING:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except Exception:  # a type numpy lacks (bfloat16, float8 ...): fed as given
        return None


def model_inputs(proto: onnx.ModelProto) -> dict[str, InputSpec]:
    """The main graph's real inputs as declared (dims with symbolic names, dtypes)."""
    out = {}
    for inp in ir.graph_inputs(proto):
        if not inp.type.HasField("tensor_type"):
            out[inp.name] = InputSpec(None)
            continue
        tt = inp.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                         for d in tt.shape.dim)
        out[inp.name] = InputSpec(dims, _np_dtype(tt.elem_type))
    return out


def session_inputs(session) -> dict[str, InputSpec]:
    """The inputs of an ONNX Runtime session as declared (its `get_inputs()`)."""
    out = {}
    for i in session.get_inputs():
        shape = getattr(i, "shape", None)
        dims = None if shape is None else tuple(
            int(d) if _is_static(d) else (d if isinstance(d, str) and d else None) for d in shape)
        dtype, kind = None, str(getattr(i, "type", ""))
        if kind.startswith("tensor(") and kind.endswith(")"):
            name = kind[len("tensor("):-1].upper()
            if name in onnx.TensorProto.DataType.keys():
                dtype = _np_dtype(onnx.TensorProto.DataType.Value(name))
        out[i.name] = InputSpec(dims, dtype)
    return out


def static_batch_model(specs: Mapping[str, InputSpec]) -> bool:
    """True when every input of rank >= 1 has a static first dim: the model's batch is
    fixed (e.g. exported at batch 1), and every input's batch axis is 0."""
    ranked = [s.dims for s in specs.values() if s.dims != ()]
    return bool(ranked) and all(d is not None and _is_static(d[0]) for d in ranked)


def batch_axes(specs: Mapping[str, InputSpec]) -> dict[str, int | None]:
    """Each input's batch axis, from the declared dims (None for a scalar).

    A model with a static batch (`static_batch_model`): axis 0. Otherwise the batch is the
    symbolic dim name found in the most inputs (a name at some input's axis 0 first, then
    the first seen), when at least two inputs share it: each input's axis of that name
    (`state` [2, 'B', 128] beside `x` ['B', 3, 32, 32] -> 1). An input without it: its
    first dynamic dim; an input with none, or of unknown rank: axis 0.
    """
    if static_batch_model(specs):
        return {n: (None if s.dims == () else 0) for n, s in specs.items()}
    counts: Counter = Counter()
    order: list[str] = []
    at0 = set()
    for spec in specs.values():
        names = [d for d in (spec.dims or ()) if isinstance(d, str)]
        for d in names:
            if d not in order:
                order.append(d)
        counts.update(set(names))
        if spec.dims and isinstance(spec.dims[0], str):
            at0.add(spec.dims[0])
    shared = [d for d in order if counts[d] >= 2]
    batch = max(shared, key=lambda d: (counts[d], d in at0, -order.index(d))) if shared else None
    axes: dict[str, int | None] = {}
    for name, spec in specs.items():
        if spec.dims is None:
            axes[name] = 0
        elif not spec.dims:
            axes[name] = None
        elif batch is not None and batch in spec.dims:
            axes[name] = spec.dims.index(batch)
        else:
            axes[name] = next((k for k, d in enumerate(spec.dims) if not _is_static(d)), 0)
    return axes


_warned: set = set()


def _warn_once(key, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def _castable(have: np.dtype, want: np.dtype) -> bool:
    """float -> float; int -> a wider int; int -> a float that holds every value."""
    if have.kind == "f" and want.kind == "f":
        return True
    return have.kind in "iu" and want.kind in "iuf" and bool(np.can_cast(have, want, "safe"))


def _as_input(value, spec: InputSpec, name: str, where: str) -> np.ndarray:
    """`value` as an array of the input's declared dtype (DataError when the cast is unsafe)."""
    want = spec.dtype
    if want is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        # a plain Python number (a sample rate ...): exact in the declared type, or refused
        arr = np.asarray(value, dtype=want) if want.kind in "iuf" else None
        if arr is not None and arr.item() == value and (want.kind == "f" or isinstance(value, int)):
            return arr
    arr = np.asarray(value)
    if want is None or arr.dtype == want:
        return arr
    if not _castable(arr.dtype, want):
        raise DataError(
            f"{where}: input '{name}' is {arr.dtype}, the model expects {want}; "
            f"{arr.dtype} -> {want} is not a safe cast: convert the data"
        )
    _warn_once(("cast", name, arr.dtype.str, want.str),
               "%s: input '%s' is %s, the model expects %s: cast", where, name, arr.dtype, want)
    return arr.astype(want)


def _fits(arr: np.ndarray, dims: tuple) -> bool:
    return arr.ndim == len(dims) and all(not _is_static(d) or d == n for d, n in zip(dims, arr.shape))


def _static_axis(arr: np.ndarray, dims: tuple, default: int) -> int:
    """The batch axis of data for a fully static input: the one axis where the data holds
    a multiple of the declared size (a recurrent `state` declared [2, 1, 128] and fed
    [2, N, 128] -> axis 1); `default` when that is not one axis."""
    if arr.ndim != len(dims):
        return default
    off = [k for k, (d, n) in enumerate(zip(dims, arr.shape)) if _is_static(d) and d != n]
    if len(off) == 1 and dims[off[0]] > 0 and arr.shape[off[0]] % dims[off[0]] == 0:
        return off[0]
    return default


def _plan(feed: dict, specs: Mapping[str, InputSpec], axes, static: bool, where: str):
    """({input: batch axis} of the inputs to cut, their common sample count, the model's
    static batch or None). Inputs left out go unchanged with every batch: scalars, and
    the constant (fully static) inputs of a dynamic-batch model."""
    cut, counts, sizes, held = {}, {}, {}, []
    for name, spec in specs.items():
        arr, axis = feed[name], axes[name]
        if axis is None or arr.ndim == 0:
            continue
        if static:
            if _fits(arr, spec.dims):
                held.append(name)
                continue
            axis = _static_axis(arr, spec.dims, axis)
            sizes[name] = spec.dims[axis]
        elif spec.static:
            continue
        cut[name], counts[name] = axis, arr.shape[axis]
    if not cut:
        return {}, None, None
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{where}: inputs hold different numbers of samples along their batch axes: "
            + ", ".join(f"'{n}' {counts[n]} (axis {cut[n]})" for n in cut)
        )
    if len(set(sizes.values())) > 1:
        raise DataError(
            f"{where}: inputs declare different static batch sizes: "
            + ", ".join(f"'{n}' {sizes[n]}" for n in sizes)
        )
    for name in held:
        _warn_once(("held", name), "%s: input '%s' has exactly the model's shape; it is fed unchanged with "
                   "every batch", where, name)
    return cut, next(iter(counts.values())), (next(iter(sizes.values())) if sizes else None)


def _cut(feed: dict, cut: dict, n: int, size: int) -> Iterator[dict]:
    """The first `n` samples of `feed` in batches of `size` (inputs along their axes in
    `cut`, labels along axis 0; the rest unchanged)."""
    labels = feed.get(LABELS)
    for start in range(0, n, size):
        piece = dict(feed)
        for name, axis in cut.items():
            piece[name] = feed[name][(slice(None),) * axis + (slice(start, start + size),)]
        if labels is not None:
            piece[LABELS] = labels[start:start + size]
        yield piece


def model_feeds(source, specs: Mapping[str, InputSpec], batch_size: int = 64,
                where: str = "calibration data") -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts from any supported data source, adapted to the model's inputs `specs`
    (`model_inputs(proto)` or `session_inputs(session)`): exactly the model's inputs,
    plus `labels` when the data has them.

    - Each input is cut along its own batch axis (`batch_axes`): the arrays of an .npz or
      dict in batches of `batch_size` (the sample counts of all inputs must agree); the
      feeds of an iterable or reader are kept as given. Scalars (rank 0) and the fully
      static inputs of a dynamic-batch model go unchanged with every batch.
    - A model with a static batch b: every feed whose inputs hold more than b samples is
      fed in batches of b (a remainder is dropped with a warning; fewer than b samples
      is a DataError); an input with exactly its declared shape goes unchanged.
    - Arrays of another dtype than the declared one are cast, with a warning once per
      input, where that is safe (float -> float, int -> wider int, int -> float that
      holds every value); otherwise a DataError naming the input and both dtypes.
    - Each feed is checked (`check_feed`): missing inputs, ranks and static dims.
    """
    axes = batch_axes(specs)
    static = static_batch_model(specs)
    dims = {k: s.dims for k, s in specs.items() if s.dims is not None}
    for whole, feed in _raw(source):
        feed = _named(feed, specs)
        missing = [name for name in specs if name not in feed]
        if missing:
            check_feed(feed, specs, where)  # raises, naming the missing inputs
        adapted = {}
        for name, spec in specs.items():
            arr = _as_input(feed[name], spec, name, where)
            if spec.dims is not None and arr.ndim != len(spec.dims):
                check_feed({name: arr}, {name: spec.dims}, where)  # raises the rank error
            adapted[name] = arr
        if LABELS in feed:
            adapted[LABELS] = np.asarray(feed[LABELS])
        if not whole and not static:
            check_feed(adapted, dims, where)
            yield adapted
            continue
        cut, n, batch = _plan(adapted, specs, axes, static, where)
        if not cut:
            check_feed(adapted, dims, where)
            yield adapted
            continue
        if LABELS in adapted and (adapted[LABELS].ndim == 0 or len(adapted[LABELS]) != n):
            raise DataError(f"{where}: 'labels' has shape {adapted[LABELS].shape}, the inputs hold {n} samples")
        size = batch_size
        if batch is not None:
            if n < batch:
                name = next(iter(cut))
                raise DataError(f"{where}: input '{name}' holds {n} sample(s), fewer than the model's "
                                f"static batch {batch}")
            if n % batch:
                _warn_once(("remainder", where, n, batch), "%s: %d sample(s) fed in batches of %d (the model's "
                           "static batch): the last %d dropped", where, n, batch, n % batch)
                n -= n % batch
            size = batch
        for piece in _cut(adapted, cut, n, size):
            check_feed(piece, dims, where)
            yield piece
