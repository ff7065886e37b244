"""A minimal progress bar with ETA for terminals; silent when stderr is not a terminal.

Library code takes a `progress(done, total)` callable and never prints; the CLI passes a
`Bar` (or nothing with --quiet).
"""
from __future__ import annotations

import sys
import time


class Bar:
    """`bar(done, total)` redraws one line on `stream` when it is a terminal."""

    def __init__(self, label: str, stream=None, width: int = 28):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.start = time.monotonic()
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        filled = int(self.width * done / total)
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}")
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}:{s:02d}"
