"""Which layers take part: an NNI-style `config_list` resolved against a model's layers.

A config_list is a list of dicts, applied in order, each to the layers it matches:

- `op_types`: op types ('Conv', 'Gemm', 'MatMul'), or the aliases 'Conv1d'/'Conv2d'
  (-> 'Conv'), 'Linear' (-> 'Gemm' and 'MatMul') and 'default' (every layer); matched
  case-insensitively.
- `op_names`: exact layer names, or `"re:PATTERN"` for the names PATTERN fully matches.
- `exclude`: true removes the matched layers (and any fixed ratio they had).
- `ratio`: a fixed ratio in (0, 1] for the matched layers (manual for them); without it
  the matched layers are left to automatic selection. NNI's `sparsity` (the fraction
  removed, in [0, 1)) says the same: ratio = 1 - sparsity.
- `op_types` and `op_names` take a list or one string.

An entry needs `op_types` or `op_names`; with both, a layer must match both. Nothing is
selected before the first entry; later entries override earlier ones for the layers they
match. The compression target is global, never a per-entry key. Entries are numbered
from 1 in messages.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..cost import check_ratio
from ..errors import DataError, LayerError, ParameterError
from ..files import read_json

KEYS = ("op_types", "op_names", "exclude", "ratio", "sparsity")
LAYER_OPS = ("Conv", "Gemm", "MatMul")
ALIASES: dict[str, tuple[str, ...] | None] = {
    "conv": ("Conv",),
    "conv1d": ("Conv",),
    "conv2d": ("Conv",),
    "gemm": ("Gemm",),
    "matmul": ("MatMul",),
    "linear": ("Gemm", "MatMul"),
    "default": None,  # every layer
}
_KEY_HINTS = {
    "target": "the target is global, not per entry: pass it to the compressor, e.g. as target_comp_ratio",
    "sparsity_per_layer": "use 'sparsity' (the fraction removed) or 'ratio' (cost after / cost before)",
    "total_sparsity": "the target is global, not per entry: pass it to the compressor",
}
REGEX_PREFIX = "re:"
IGNORED = "in modules_to_ignore"
UNMATCHED = "not matched by config_list"


class LayerLike(Protocol):
    """Anything with a layer name and an ONNX op type (e.g. `layers.Layer`)."""

    name: str
    op: str


@dataclass(frozen=True)
class Resolution:
    """The outcome: layers for automatic selection, layers with fixed ratios, the rest.

    `auto` is in graph order; `fixed` maps layer name -> ratio (graph order); `excluded`
    maps layer name -> reason.
    """

    auto: tuple[str, ...]
    fixed: dict[str, float]
    excluded: dict[str, str]


@dataclass(frozen=True)
class _Entry:
    index: int  # from 1
    op_types: frozenset[str] | None  # None: no op_types key; frozenset of op names
    every_op: bool  # 'default' in op_types
    op_names: tuple[str, ...] | None
    exclude: bool
    ratio: float | None


# ------------------------------------------------------------------------- resolution
def resolve(layers: Sequence[LayerLike], config_list: list[dict] | None,
            modules_to_ignore: list[str] | None = None) -> Resolution:
    """Resolve `config_list` and `modules_to_ignore` against `layers` (in graph order).

    `config_list=None` selects every layer for automatic selection. ParameterError on a
    malformed entry; LayerError on a name (op_names or modules_to_ignore) that matches
    no layer.
    """
    names = [layer.name for layer in layers]
    ignore = _check_ignore(modules_to_ignore, names)
    if config_list is None:
        state: dict[str, tuple] = {name: ("auto",) for name in names}
    else:
        state = _apply(layers, _parse_list(config_list, layers))
    for name in ignore:
        state[name] = ("excluded", IGNORED)
    auto = tuple(n for n in names if state.get(n, ("",))[0] == "auto")
    fixed = {n: state[n][1] for n in names if state.get(n, ("",))[0] == "fixed"}
    excluded = {n: state[n][1] if n in state else UNMATCHED for n in names if n not in auto and n not in fixed}
    return Resolution(auto=auto, fixed=fixed, excluded=excluded)


def _apply(layers: Sequence[LayerLike], entries: list[_Entry]) -> dict[str, tuple]:
    """Layer name -> ('auto',) | ('fixed', ratio) | ('excluded', reason), entry by entry."""
    names = [layer.name for layer in layers]
    state: dict[str, tuple] = {}
    for entry in entries:
        by_name = _names_matched(entry, names)
        for layer in layers:
            if by_name is not None and layer.name not in by_name:
                continue
            if not _op_matches(entry, layer.op):
                continue
            if entry.exclude:
                state[layer.name] = ("excluded", f"excluded by config_list entry {entry.index}")
            elif entry.ratio is not None:
                state[layer.name] = ("fixed", entry.ratio)
            else:
                state[layer.name] = ("auto",)
    return state


def _op_matches(entry: _Entry, op: str) -> bool:
    if entry.op_types is None or entry.every_op:
        return True
    return op.lower() in entry.op_types


def _names_matched(entry: _Entry, names: list[str]) -> set[str] | None:
    """The layer names the entry's op_names match (None: no op_names key)."""
    if entry.op_names is None:
        return None
    matched: set[str] = set()
    for item in entry.op_names:
        hits = _match_name(item, names, entry.index)
        matched.update(hits)
    return matched


def _match_name(item: str, names: list[str], index: int) -> list[str]:
    """Layers one op_names item matches; LayerError when none does (a typo must not pass)."""
    where = f"config_list entry {index}"
    if item.startswith(REGEX_PREFIX):
        pattern = item[len(REGEX_PREFIX):]
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ParameterError(f"{where}: op_names pattern {pattern!r} is not a valid regular expression ({exc})") from None
        hits = [n for n in names if rx.fullmatch(n)]
        if not hits:
            raise LayerError(
                f"{where}: op_names pattern {pattern!r} matches no layer (it must match a whole "
                "name; add '.*' for a prefix); `onnx-compress inspect MODEL` lists the layers"
            )
        return hits
    if item not in names:
        raise LayerError(f"{where}: op_names: {_unknown(item, names)}")
    return [item]


def _unknown(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown layer '{name}'{hint} (`onnx-compress inspect MODEL` lists the layers)"


def _check_ignore(modules_to_ignore: list[str] | None, names: list[str]) -> list[str]:
    if modules_to_ignore is None:
        return []
    if isinstance(modules_to_ignore, str) or not isinstance(modules_to_ignore, (list, tuple, set, frozenset)):
        raise ParameterError(
            f"modules_to_ignore must be a list of layer names, got {type(modules_to_ignore).__name__} "
            f"{modules_to_ignore!r} (e.g. ['conv1'])"
        )
    for name in modules_to_ignore:
        if name not in names:
            raise LayerError(f"modules_to_ignore: {_unknown(str(name), names)}")
    return list(modules_to_ignore)


# ---------------------------------------------------------------------------- parsing
def _parse_list(config_list, layers: Sequence[LayerLike]) -> list[_Entry]:
    if isinstance(config_list, (str, bytes)) or not isinstance(config_list, (list, tuple)):
        raise ParameterError(
            f"config_list must be a list of dicts, got {type(config_list).__name__} "
            "(e.g. [{'op_types': ['Conv']}, {'op_names': ['fc'], 'exclude': True}])"
        )
    known_ops = sorted(set(LAYER_OPS) | {layer.op for layer in layers})
    return [_parse_entry(entry, i, known_ops) for i, entry in enumerate(config_list, start=1)]


def _parse_entry(entry, index: int, known_ops: list[str]) -> _Entry:
    where = f"config_list entry {index}"
    if not isinstance(entry, dict):
        raise ParameterError(f"{where}: expected a dict with keys {list(KEYS)}, got {type(entry).__name__} {entry!r}")
    _check_keys(entry, where)
    if "op_types" not in entry and "op_names" not in entry:
        raise ParameterError(
            f"{where}: has neither 'op_types' nor 'op_names' (keys: {sorted(entry)}); "
            "say which layers it applies to, e.g. {'op_types': ['default']} for all"
        )
    op_types, every = _parse_op_types(entry, where, known_ops)
    op_names = _string_list(entry, "op_names", where) if "op_names" in entry else None
    exclude = entry.get("exclude", False)
    if not isinstance(exclude, bool):
        raise ParameterError(f"{where}: 'exclude' must be true or false, got {exclude!r}")
    ratio = _parse_ratio(entry, where)
    if exclude and ratio is not None:
        key = "sparsity" if entry.get("sparsity") is not None else "ratio"
        raise ParameterError(f"{where}: has both 'exclude': true and '{key}' {entry[key]}; an excluded layer "
                             f"takes no {key}")
    return _Entry(index, op_types, every, op_names, exclude, ratio)


def _check_keys(entry: dict, where: str) -> None:
    for key in entry:
        if key in KEYS:
            continue
        hint = _KEY_HINTS.get(key)
        if hint is None:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "remove it"
        raise ParameterError(f"{where}: unknown key {key!r}; valid keys are {list(KEYS)} ({hint})")


def _string_list(entry: dict, key: str, where: str) -> tuple[str, ...]:
    value = entry[key]
    if isinstance(value, str) and value:  # NNI writes op_types='default' as well as ['default']
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        example = [value] if isinstance(value, str) else ["..."]
        raise ParameterError(f"{where}: '{key}' must be a list of strings, got {value!r} (e.g. {example!r})")
    if not value:
        raise ParameterError(f"{where}: '{key}' is an empty list, so the entry matches nothing; remove the key or name something")
    return tuple(value)


def _parse_op_types(entry: dict, where: str, known_ops: list[str]) -> tuple[frozenset[str] | None, bool]:
    """Lower-cased op names the entry matches, and whether it matches every layer."""
    if "op_types" not in entry:
        return None, False
    ops: set[str] = set()
    every = False
    lowered = {op.lower(): op for op in known_ops}
    for item in _string_list(entry, "op_types", where):
        key = item.lower()
        if key in ALIASES:
            targets = ALIASES[key]
            if targets is None:
                every = True
            else:
                ops.update(t.lower() for t in targets)
        elif key in lowered:
            ops.add(key)
        else:
            choices = known_ops + ["Conv2d", "Conv1d", "Linear", "default"]
            close = difflib.get_close_matches(item, choices, n=2)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ParameterError(f"{where}: unknown op type {item!r}{hint} (known: {choices})")
    return frozenset(ops), every


def _parse_ratio(entry: dict, where: str) -> float | None:
    if "sparsity" in entry and entry["sparsity"] is not None:
        if entry.get("ratio") is not None:
            raise ParameterError(f"{where}: has both 'ratio' and 'sparsity'; give one (ratio = 1 - sparsity)")
        sparsity = entry["sparsity"]
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ParameterError(f"{where}: sparsity must be a number in [0, 1) (the fraction removed), "
                                 f"got {sparsity!r}")
        return round(1.0 - float(sparsity), 12)
    if "ratio" not in entry or entry["ratio"] is None:
        return None
    ratio = entry["ratio"]
    if isinstance(ratio, bool):
        raise ParameterError(f"{where}: ratio must be a number in (0, 1], got {ratio!r}")
    check_ratio(ratio, where)
    return float(ratio)


# ------------------------------------------------------------------------------ files
def load_config(path: str | os.PathLike) -> list[dict]:
    """A config_list from a JSON file: a list of dicts, or {"config_list": [...]}.

    DataError naming the file when it is missing, not JSON, or shaped otherwise. The
    entries themselves are checked by `resolve`.
    """
    path = Path(path)
    doc = read_json(path, "config file")
    if isinstance(doc, dict):
        extra = sorted(set(doc) - {"config_list"})
        if "config_list" not in doc or extra:
            raise DataError(
                f"{path}: a config object must have exactly one key 'config_list', got keys {sorted(doc)} "
                '(write [{"op_types": ["Conv"]}, ...] or {"config_list": [...]})'
            )
        doc = doc["config_list"]
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise DataError(
            f"{path}: expected a list of objects (config_list entries), got {type(doc).__name__} "
            '(write [{"op_types": ["Conv"]}, ...])'
        )
    return doc
