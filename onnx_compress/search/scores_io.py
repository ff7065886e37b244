"""The saved eval-score dictionary (layer x candidate ratio -> score) as JSON, never pickle.

Greedy selection evaluates every layer at every candidate ratio; saving the table lets a
later run reuse it. The file records what it was made for (model digest, scheme, cost
metric, candidates), and `check_matches` refuses a table made for anything else. Ratio
keys are the shortest repr of the candidate float ("0.1", "0.3333333333333333"), so they
parse back to exactly the same float.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..errors import DataError, ParameterError
from ..files import read_json, write_text

FORMAT = "onnx_compress.eval_scores/1"
_FORMAT_PREFIX = "onnx_compress.eval_scores/"
SHORT = 12  # hex digits of a digest shown in messages


# ------------------------------------------------------------------------ ratio keys
def format_ratio(ratio: float | int | Fraction) -> str:
    """The canonical key of a candidate ratio: the shortest repr of its float value."""
    value = float(ratio)
    if not math.isfinite(value):
        raise ParameterError(f"a candidate ratio must be a finite number, got {ratio!r}")
    return repr(value)


def parse_ratio(key: str) -> float:
    """The float a ratio key stands for (exactly: `parse_ratio(format_ratio(r)) == float(r)`)."""
    try:
        value = float(key)
    except (TypeError, ValueError):
        raise ParameterError(f"ratio key must be a decimal number such as '0.5', got {key!r}") from None
    if not math.isfinite(value):
        raise ParameterError(f"ratio key must be a finite number, got {key!r}")
    return value


def _name(value) -> str:
    """An enum member's name or a string, lower-cased (CompressionScheme.weight_svd -> 'weight_svd')."""
    import enum

    return str(value.name if isinstance(value, enum.Enum) else value).lower()


def model_digest(model_bytes: bytes) -> str:
    """sha256 hex digest of the serialized model (`proto.SerializeToString()`)."""
    return hashlib.sha256(model_bytes).hexdigest()


# ----------------------------------------------------------------------------- table
@dataclass(frozen=True)
class ScoreTable:
    """Eval scores of one model, scheme and cost metric at each layer's candidate ratios.

    `scores`: layer name -> {format_ratio(candidate): score}. `baseline`: the score of the
    uncompressed model. `evaluations`: how many evaluations filled the table. `meta`:
    free-form JSON-able extras (onnx_compress version, creation time, ...).
    """

    model_digest: str
    scheme: str
    cost_metric: str
    candidates: tuple[float, ...]
    baseline: float
    scores: dict[str, dict[str, float]]
    evaluations: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", _name(self.scheme))
        object.__setattr__(self, "cost_metric", _name(self.cost_metric))
        object.__setattr__(self, "candidates", tuple(float(c) for c in self.candidates))
        object.__setattr__(self, "scores", {str(layer): {_canonical(k): float(v) for k, v in row.items()}
                                            for layer, row in self.scores.items()})

    def score(self, layer: str, ratio: float) -> float:
        """The score of `layer` at candidate `ratio`; ParameterError when it is not in the table."""
        row = self.scores.get(layer)
        key = format_ratio(ratio)
        if row is None or key not in row:
            have = sorted(row, key=float) if row is not None else "no scores for this layer"
            raise ParameterError(f"score table has no score for layer '{layer}' at ratio {key} (it has: {have})")
        return row[key]


def _canonical(key) -> str:
    """A ratio key (string or number) in canonical form."""
    return format_ratio(parse_ratio(key) if isinstance(key, str) else key)


# ---------------------------------------------------------------------------- saving
def to_json(table: ScoreTable) -> dict:
    """The JSON document of `table` (with its "format" field)."""
    return {
        "format": FORMAT,
        "model_digest": table.model_digest,
        "scheme": table.scheme,
        "cost_metric": table.cost_metric,
        "candidates": list(table.candidates),
        "baseline": table.baseline,
        "evaluations": table.evaluations,
        "scores": table.scores,
        "meta": table.meta,
    }


def save(table: ScoreTable, path: str | os.PathLike) -> None:
    """Write `table` to `path` as pretty-printed JSON, atomically (temp file + os.replace).

    Non-finite scores are written as NaN/Infinity (Python's JSON reads them back).
    """
    path = Path(path)
    try:
        text = json.dumps(to_json(table), indent=2)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"score table cannot be written as JSON ({exc}); keep `meta` to strings, numbers, lists and dicts") from None
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"{path}: folder {parent} does not exist; create it first")
    write_text(path, text + "\n")


# --------------------------------------------------------------------------- loading
def load(path: str | os.PathLike) -> ScoreTable:
    """Read a table written by `save`; DataError naming the file when it is missing, not
    JSON, of another format, or has missing or ill-typed fields."""
    path = Path(path)
    doc = read_json(path, "eval-score file")
    _check_format(doc, path)
    try:
        return _from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError(f"{path}: malformed eval-score file ({what}); delete it to recompute the scores") from None


def _check_format(doc, path: Path) -> None:
    got = doc.get("format") if isinstance(doc, dict) else None
    if got == FORMAT:
        return
    if isinstance(got, str) and got.startswith(_FORMAT_PREFIX):
        raise DataError(f"{path}: eval-score format {got!r} is not supported (this version reads {FORMAT!r}); "
                        "upgrade onnx_compress or recompute the scores")
    raise DataError(f"{path}: not an onnx_compress eval-score file (format {got!r}, expected {FORMAT!r})")


def _from_json(doc: dict) -> ScoreTable:
    scores = doc["scores"]
    candidates = doc["candidates"]
    meta = doc.get("meta", {})
    if not isinstance(scores, dict) or not all(isinstance(row, dict) for row in scores.values()):
        raise TypeError("'scores' must map layer names to {ratio: score} objects")
    if not isinstance(candidates, list) or not all(_is_number(c) for c in candidates):
        raise TypeError(f"'candidates' must be a list of numbers, got {candidates!r}")
    if not isinstance(meta, dict):
        raise TypeError(f"'meta' must be an object, got {meta!r}")
    for field_name in ("model_digest", "scheme", "cost_metric"):
        if not isinstance(doc[field_name], str):
            raise TypeError(f"'{field_name}' must be a string, got {doc[field_name]!r}")
    if not _is_number(doc["baseline"]) or not isinstance(doc.get("evaluations", 0), int):
        raise TypeError("'baseline' must be a number and 'evaluations' an integer")
    _check_keys(scores, candidates)
    return ScoreTable(model_digest=doc["model_digest"], scheme=doc["scheme"], cost_metric=doc["cost_metric"],
                      candidates=tuple(candidates), baseline=float(doc["baseline"]), scores=scores,
                      evaluations=int(doc.get("evaluations", 0)), meta=meta)


def _check_keys(scores: dict, candidates: list) -> None:
    allowed = {format_ratio(c) for c in candidates}
    for layer, row in scores.items():
        for key, value in row.items():
            if not _is_number(value):
                raise TypeError(f"layer '{layer}': score at {key!r} must be a number, got {value!r}")
            try:
                canon = _canonical(key)
            except ParameterError as exc:
                raise ValueError(f"layer '{layer}': {exc}") from None
            if canon not in allowed:
                raise ValueError(f"layer '{layer}': ratio key {key!r} is not one of the candidates {sorted(allowed, key=float)}")
        if len({_canonical(k) for k in row}) != len(row):
            raise ValueError(f"layer '{layer}': two ratio keys stand for the same ratio ({sorted(row)})")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -------------------------------------------------------------------------- matching
def check_matches(table: ScoreTable, model_digest: str, scheme, cost_metric, candidates: Iterable[float],
                  layers: Iterable[str], *, source: str = "eval-score dictionary") -> None:
    """ParameterError unless `table` was made for this model, scheme, cost metric and
    candidates, and has every layer in `layers` (extra layers are fine).

    `source` names the table in messages (e.g. the file it came from).
    """
    fix = "delete it or pass another file to recompute the scores"
    if table.model_digest != model_digest:
        raise ParameterError(
            f"{source} was made for another model (digest {table.model_digest[:SHORT]}, this model "
            f"{model_digest[:SHORT]}); {fix}"
        )
    for what, have, want in (("scheme", table.scheme, _name(scheme)), ("cost metric", table.cost_metric, _name(cost_metric))):
        if have != want:
            raise ParameterError(f"{source} was made for {what} '{have}', this run uses '{want}'; {fix}")
    have_c = sorted({format_ratio(c) for c in table.candidates}, key=float)
    want_c = sorted({format_ratio(c) for c in candidates}, key=float)
    if have_c != want_c:
        raise ParameterError(f"{source} was made for candidates [{', '.join(have_c)}], this run uses "
                             f"[{', '.join(want_c)}]; {fix}")
    missing = [name for name in layers if name not in table.scores]
    if missing:
        raise ParameterError(f"{source} has no scores for layer(s) {missing} (it has {len(table.scores)} layer(s)); {fix}")
