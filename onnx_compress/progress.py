"""Progress of long steps, reported to whoever listens; a terminal bar with ETA for the CLI.

Library code never prints: it calls `update(stage, done, total)`, which reaches the
listener installed with `listen(callback)` in the current context (nothing otherwise).
The CLI installs `Bars()` (a bar per stage on a terminal; silent when stderr is not one),
or nothing with --quiet. Stages: "eval-score dictionary", "channel-pruning candidates",
"sampling activations", "compressing layers", "measuring latency".
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable

_listener: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("onnx_compress_progress", default=None)


@contextlib.contextmanager
def listen(callback: Callable[[str, int, int], None] | None):
    """Send `update(stage, done, total)` calls made inside the block to `callback`."""
    token = _listener.set(callback)
    try:
        yield callback
    finally:
        _listener.reset(token)


def update(stage: str, done: int, total: int) -> None:
    """Report that `done` of `total` items of `stage` are finished (0 = starting)."""
    callback = _listener.get()
    if callback is not None:
        callback(stage, done, total)


class Bars:
    """A listener drawing the current stage as one redrawn terminal line with ETA.

    Main stages end with a newline (their final line stays visible); short inner stages
    ("sampling activations", run inside the others) are cleared when they finish.
    Silent when `stream` (default stderr) is not a terminal.
    """

    INNER = {"sampling activations"}

    def __init__(self, stream=None, width: int = 28):
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.starts: dict[str, float] = {}
        self.shown = 0  # characters on the current line

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if done == 0 or stage not in self.starts:
            self.starts[stage] = now
        elapsed = now - self.starts[stage]
        eta = _clock(elapsed / done * (total - done)) if done else "?"
        filled = int(self.width * min(done, total) / total)
        line = (f"{stage} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                f"{_clock(elapsed)} elapsed, ETA {eta}")
        self.stream.write("\r" + line.ljust(self.shown))
        self.shown = len(line)
        if done >= total:
            if stage in self.INNER:
                self.stream.write("\r" + " " * self.shown + "\r")
            else:
                self.stream.write("\n")
            self.shown = 0
            self.starts.pop(stage, None)
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}:{s:02d}"
