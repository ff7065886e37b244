"""Small file helpers: atomic text writes, JSON reads whose errors name the file, and output
paths checked before any work and committed together at the end (`Outputs`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .errors import DataError, ParameterError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike, what: str):
    """The JSON document in `path`; DataError naming the file (and `what` it should be)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None


# ------------------------------------------------------------------- output transactions
def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """ParameterError unless a file can be written at `path`; checked before any work.

    The folder must exist and accept a new file (tried, not guessed from permission bits,
    which root ignores), and `path` must not be a folder or a read-only file.
    """
    path = Path(path)
    if not str(path) or path.name in ("", ".", ".."):
        raise ParameterError(f"{what} path {str(path)!r} is not a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ParameterError(f"{what} path {path} is a folder; give a file name")
    if not parent.exists():
        raise ParameterError(f"{what} path {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ParameterError(f"{what} path {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ParameterError(f"{what} path {path}: folder {parent} is not writable ({exc.strerror})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ParameterError(f"{what} path {path} exists and is not writable")
    return path


class Outputs:
    """A run's output files, written together at the end or not at all.

    `add(path, what)` checks `path` at once (before any work) and returns the staging path
    to write to instead: the same file name in a hidden folder beside it, so the files a
    writer puts next to it (a model's `.data`) are staged with it. `commit()` moves every
    staged file into place with Ctrl-C deferred (a few renames); leaving the `with` block
    without a commit, by an error or an interrupt, deletes everything staged, so a failed
    run leaves no new file. Files that existed before are replaced only at the commit.
    """

    def __init__(self, inputs: dict[str | os.PathLike, str] | None = None):
        """`inputs`: the files the run reads, each with what it is ("the input model")."""
        self._inputs = {Path(p).resolve(): what for p, what in (inputs or {}).items() if p}
        self._staged: list[tuple[Path, Path]] = []  # (staging folder, final folder)
        self._finals: dict[Path, str] = {}

    def add(self, path: str | os.PathLike | None, what: str, *, companions: tuple[str, ...] = (),
            stage: bool = True) -> Path | None:
        """Check and stage one output; None for None. `companions`: suffixes of files
        written beside it (".data"), checked too. `stage=False`: checked only, written in
        place as the run goes (a checkpoint that must survive an interrupt)."""
        if path is None:
            return None
        path = check_writable(path, what)
        for name in (path, *(path.with_name(path.name + s) for s in companions)):
            final = name.resolve()
            if final in self._inputs:
                raise ParameterError(f"{what} path {name} is {self._inputs[final]}; choose another path")
            if final in self._finals:
                raise ParameterError(f"{what} path {name} is also the {self._finals[final]} path")
            if name != path and name.is_dir():
                raise ParameterError(f"{what} path {path}: {name} (written beside it) is a folder")
            self._finals[final] = what
        if not stage:
            return path
        parent = path.parent if str(path.parent) else Path(".")
        stage = Path(tempfile.mkdtemp(prefix=".onnx_compress_out_", dir=parent))
        self._staged.append((stage, parent))
        return stage / path.name

    def commit(self) -> None:
        """Move every staged file to its final place (Ctrl-C waits until all are moved)."""
        with _deferred_interrupt():
            for stage, parent in self._staged:
                for item in sorted(stage.iterdir()):
                    os.replace(item, parent / item.name)
            self.discard()

    def discard(self) -> None:
        for stage, _ in self._staged:
            shutil.rmtree(stage, ignore_errors=True)
        self._staged.clear()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold SIGINT until the block ends (then raise KeyboardInterrupt if one came)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
