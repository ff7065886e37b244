"""NNI's config_list, read the way NNI's compressors read it, against an ONNX model's layers.

A config_list is a list of dicts applied one by one; for each layer the *last* entry that
matches it is the one it gets (NNI: "the configurations in latter dict will overwrite the
configurations in former ones"), and an entry with `exclude: True` leaves it alone.

- `op_types`: a list of op types or one string; 'default' (alone or in the list) is the
  compressor's default layers: Conv, Gemm and MatMul with a constant weight. 'Conv2d',
  'Conv1d' and 'Linear' are accepted for PyTorch names. Omitted: any layer type.
- `op_names`: ONNX node names (`onnx_compress.inspect(model)` lists them); a name that
  matches no compressible layer is an error.
- `exclude`: True leaves the matched layers uncompressed.
- the compressor's own keys (`sparsity` and `nm` for pruners, `q_bits` for quantizers).

Entries are numbered from 0 in messages, as they index the list.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import ParameterError

DEFAULT_OPS = ("Conv", "Gemm", "MatMul")
COMMON_KEYS = ("op_types", "op_names", "exclude")
ALIASES = {"conv": ("Conv",), "conv1d": ("Conv",), "conv2d": ("Conv",), "conv3d": ("Conv",),
           "gemm": ("Gemm",), "matmul": ("MatMul",), "linear": ("Gemm", "MatMul"), "default": DEFAULT_OPS}


@dataclass(frozen=True)
class Entry:
    """One parsed entry: its index, the op types it matches (None: any), its names
    (None: any), whether it excludes, and the dict itself (what calc_mask receives)."""

    index: int
    op_types: frozenset[str] | None
    op_names: tuple[str, ...] | None
    exclude: bool
    config: dict


def resolve(config_list, layers, keys: tuple[str, ...], check=None) -> dict[str, dict]:
    """Layer name -> the config dict that applies to it, in graph order.

    `layers`: the model's layers (`layers.Analysis.layers`: name, op, reason); `keys`: the
    compressor's own keys; `check(entry_dict, where)` validates those keys of an entry
    that does not exclude. ParameterError with the entry index on anything malformed.
    """
    entries = parse(config_list, keys, check)
    usable = [layer for layer in layers if layer.reason is None]
    refused = {layer.name: layer.reason for layer in layers if layer.reason is not None}
    names = [layer.name for layer in usable]
    chosen: dict[str, Entry | None] = {}
    for entry in entries:
        if entry.op_names is not None:
            _check_names(entry, names, refused)
        for layer in usable:
            if entry.op_names is not None and layer.name not in entry.op_names:
                continue
            if entry.op_types is not None and layer.op not in entry.op_types:
                continue
            chosen[layer.name] = entry
    return {n: chosen[n].config for n in names if chosen.get(n) is not None and not chosen[n].exclude}


def parse(config_list, keys: tuple[str, ...], check=None) -> list[Entry]:
    """The entries of `config_list`, checked (see `resolve`)."""
    if isinstance(config_list, (str, bytes, dict)) or not isinstance(config_list, (list, tuple)):
        raise ParameterError(f"config_list must be a list of dicts, got {type(config_list).__name__} "
                             "(e.g. [{'sparsity': 0.8, 'op_types': 'default'}])")
    return [_entry(item, i, keys, check) for i, item in enumerate(config_list)]


def _entry(item, index: int, keys: tuple[str, ...], check) -> Entry:
    where = f"config_list[{index}]"
    if not isinstance(item, dict):
        raise ParameterError(f"{where}: expected a dict, got {type(item).__name__} {item!r}")
    valid = COMMON_KEYS + keys
    for key in item:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {list(valid)}"
            raise ParameterError(f"{where}: unknown key {key!r} ({hint})")
    exclude = item.get("exclude", False)
    if not isinstance(exclude, bool):
        raise ParameterError(f"{where}: 'exclude' must be True or False, got {exclude!r}")
    op_types = _op_types(item["op_types"], where) if "op_types" in item else None
    op_names = _op_names(item["op_names"], where) if "op_names" in item else None
    if exclude and op_types is None and op_names is None:
        raise ParameterError(f"{where}: 'exclude': True without 'op_types' or 'op_names' would exclude every layer")
    if not exclude and check is not None:
        check(item, where)
    return Entry(index, op_types, op_names, exclude, dict(item))


def _op_types(value, where: str) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
        raise ParameterError(f"{where}: 'op_types' must be a string or a non-empty list of strings, got {value!r}")
    ops: set[str] = set()
    for item in items:
        key = item.lower()
        if key not in ALIASES:
            known = list(DEFAULT_OPS) + ["Conv2d", "Linear", "default"]
            raise ParameterError(f"{where}: unknown op type {item!r} (compressible types: {known})")
        ops.update(ALIASES[key])
    return frozenset(ops)


def _op_names(value, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
        raise ParameterError(f"{where}: 'op_names' must be a non-empty list of node names, got {value!r}")
    return tuple(items)


def _check_names(entry: Entry, names: list[str], refused: dict[str, str]) -> None:
    where = f"config_list[{entry.index}]"
    for name in entry.op_names:
        if name in names:
            continue
        if name in refused:
            raise ParameterError(f"{where}: op_names: layer '{name}' cannot be compressed: {refused[name]}")
        close = difflib.get_close_matches(name, names, n=2)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ParameterError(f"{where}: op_names: '{name}' matches no layer{hint} "
                             "(onnx_compress.inspect(model) lists the layers)")


def check_sparsity(item: dict, where: str, need: bool = True) -> None:
    """A pruner entry's 'sparsity' (a fraction in [0, 1)) and 'nm' ((N, M), 1 <= N < M)."""
    if "nm" in item:
        check_nm(item["nm"], f"{where}: 'nm'")
        if "sparsity" in item:
            raise ParameterError(f"{where}: give 'sparsity' or 'nm', not both (N:M fixes the sparsity at 1 - N/M)")
        return
    if "sparsity" not in item:
        if need:
            raise ParameterError(f"{where}: needs 'sparsity' (the fraction of weights to remove, e.g. 0.8)")
        return
    value = item["sparsity"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ParameterError(f"{where}: 'sparsity' must be a number in [0, 1), got {value!r}")


def check_nm(value, where: str) -> tuple[int, int]:
    """(N, M) with 1 <= N < M, both integers; ParameterError naming `where` otherwise."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or not 1 <= value[0] < value[1]:
        raise ParameterError(f"{where} must be (N, M) integers with 1 <= N < M, e.g. (2, 4), got {value!r}")
    return int(value[0]), int(value[1])
