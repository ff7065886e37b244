"""The `scores_out` file as a running checkpoint of the eval-score dictionary.

Scores are written to the file as they arrive (atomically, at most every `interval`
seconds and always when the run ends, by an error or Ctrl-C included), so a long run that
is interrupted or loses its machine keeps what it paid for. A rerun with the same file
resumes: the file must have been made for the same model (sha256 of the serialised
model), scheme, cost metric and candidates, as `scores_in` is checked; its scores of the
units and candidates of this run are taken as they are, and only the missing ones are
evaluated. A file at that path that is not an eval-score file, or was made for anything
else, is refused rather than overwritten (it may be another run's work).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..errors import DataError, ParameterError
from . import scores_io

log = logging.getLogger(__name__)


class Checkpoint:
    """Scores of one dictionary run, kept in the file at `path` as they arrive."""

    def __init__(self, path: str | os.PathLike, digest: str, scheme: str, metric: str, keys: list[float],
                 interval: float = 1.0):
        self.path = Path(path)
        self.digest, self.scheme, self.metric, self.keys = digest, scheme, metric, list(keys)
        self.interval = interval
        self.baseline: float | None = None
        self.scores: dict[str, dict[float, float]] = {}
        self.resumed = 0  # scores taken from the file
        self._lock = threading.Lock()
        self._written = 0.0
        self._dirty = False

    def load(self, units: list[str]) -> None:
        """Take the scores the file already holds for `units` (none when there is no file)."""
        if not self.path.exists():
            return
        fix = f"delete {self.path} or pass another --scores-out file to start over"
        try:
            table = scores_io.load(self.path)
        except DataError as exc:
            raise ParameterError(f"scores_out {exc}; it is not resumed and is not overwritten: {fix}") from None
        try:
            scores_io.check_matches(table, self.digest, self.scheme, self.metric, self.keys, [],
                                    source=f"scores_out file {self.path}")
        except ParameterError as exc:
            raise ParameterError(str(exc).replace("delete it or pass another file to recompute the scores", fix)) from None
        wanted = set(units)
        for unit, row in table.scores.items():
            if unit in wanted:
                self.scores[unit] = {scores_io.parse_ratio(k): v for k, v in row.items()}
        self.resumed = sum(len(row) for row in self.scores.values())
        self.baseline = table.baseline if table.meta.get("baseline_scored", True) else None
        if self.resumed:
            log.warning("resuming the eval-score dictionary from %s: %d score(s) there, the missing ones are "
                        "evaluated", self.path, self.resumed)

    def known(self, unit: str, key: float) -> bool:
        return key in self.scores.get(unit, {})

    def record(self, unit: str, key: float, value: float) -> None:
        """One new score; the file is rewritten when `interval` seconds have passed."""
        with self._lock:
            self.scores.setdefault(unit, {})[key] = float(value)
            self._dirty = True
            if time.monotonic() - self._written >= self.interval:
                self._write()

    def set_baseline(self, value: float) -> None:
        with self._lock:
            self.baseline = float(value)
            self._dirty = True

    def flush(self) -> None:
        """Write what is not yet in the file (called when the run ends, however it ends)."""
        with self._lock:
            if self._dirty:
                self._write()

    def _write(self) -> None:
        meta = {"complete": False, "baseline_scored": self.baseline is not None}
        table = scores_io.ScoreTable(
            model_digest=self.digest, scheme=self.scheme, cost_metric=self.metric, candidates=tuple(self.keys),
            baseline=self.baseline if self.baseline is not None else 0.0,
            scores={u: {scores_io.format_ratio(k): v for k, v in row.items()} for u, row in self.scores.items()},
            evaluations=sum(len(row) for row in self.scores.values()), meta=meta)
        scores_io.save(table, self.path)
        self._written, self._dirty = time.monotonic(), False
