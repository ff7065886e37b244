"""Bounded storage for the prefix cache's recorded activations: memory up to a budget, then
files in a private temporary folder up to a disk budget, then nothing (the caller
recomputes what is not stored).

The default memory budget is a sixteenth of the memory available when the cache is made
(`default_memory_bytes`), the default disk budget half the free space of the temporary
folder. Files are read back whole (`np.load`, not memory-mapped), so what a lookup reads
is freed with the candidate's run and never counts twice in the process's resident memory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

MEMORY_FRACTION = 16  # default budget: available memory // MEMORY_FRACTION
RECORD_FRACTION = 32  # a recording run's boundary tensors: available memory // RECORD_FRACTION
DISK_FRACTION = 2  # default disk budget: free space of the temporary folder // DISK_FRACTION


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux, else free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def default_memory_bytes() -> int:
    return available_memory() // MEMORY_FRACTION


def default_record_bytes() -> int:
    return available_memory() // RECORD_FRACTION


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (bytes; 0 where the platform does not say)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except (ImportError, OSError):
        return 0


class TieredStore:
    """Arrays under hashable keys: in memory within `memory_bytes`, then on disk within
    `disk_bytes`; `put` says where an array went ("memory", "disk" or None: not stored)."""

    def __init__(self, memory_bytes: int | None = None, disk_bytes: int | None = None):
        self.memory_bytes = default_memory_bytes() if memory_bytes is None else int(memory_bytes)
        self._disk_limit = disk_bytes
        self.memory_used = self.disk_used = 0
        self.dropped = 0  # arrays that fit nowhere
        self._memory: dict = {}
        self._disk: dict = {}  # key -> (path, nbytes)
        self._folder: tempfile.TemporaryDirectory | None = None
        self._files = 0
        self._lock = threading.Lock()

    def _disk_budget(self) -> int:
        if self._disk_limit is None:
            self._disk_limit = shutil.disk_usage(tempfile.gettempdir()).free // DISK_FRACTION
        return int(self._disk_limit)

    def put(self, key, array: np.ndarray, copy: bool = True) -> str | None:
        """`copy` False: the caller hands the array over (kept in memory as it is)."""
        array = np.asarray(array)
        with self._lock:
            if key in self._memory or key in self._disk:
                return "memory" if key in self._memory else "disk"
            if self.memory_used + array.nbytes <= self.memory_bytes:
                self._memory[key] = np.array(array, copy=True) if copy else array  # the caller may reuse its buffer
                self.memory_used += array.nbytes
                return "memory"
            if self.disk_used + array.nbytes > self._disk_budget():
                self.dropped += 1
                return None
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="onnx_compress_cache_")
            self._files += 1
            path = Path(self._folder.name) / f"{self._files}.npy"
            self.disk_used += array.nbytes  # reserved; readable once written
        try:
            np.save(path, array, allow_pickle=False)
        except OSError:  # the disk filled up after all: forget it, the caller recomputes
            with self._lock:
                self.disk_used -= array.nbytes
                self.dropped += 1
            return None
        with self._lock:
            self._disk[key] = (path, array.nbytes)
        return "disk"

    def get(self, key) -> np.ndarray | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            entry = self._disk.get(key)
        return None if entry is None else np.load(entry[0], allow_pickle=False)

    def delete(self, key) -> None:
        """Forget `key` (its memory or file is freed)."""
        with self._lock:
            if key in self._memory:
                self.memory_used -= self._memory.pop(key).nbytes
                return
            entry = self._disk.pop(key, None)
            if entry is not None:
                self.disk_used -= entry[1]
        if entry is not None:
            try:
                os.remove(entry[0])
            except OSError:
                pass

    def __contains__(self, key) -> bool:
        return key in self._memory or key in self._disk

    def close(self) -> None:
        """Free the memory and delete the files."""
        with self._lock:
            self._memory.clear()
            self._disk.clear()
            self.memory_used = self.disk_used = 0
            if self._folder is not None:
                self._folder.cleanup()
                self._folder = None

    def stats(self) -> dict:
        return {"memory_mb": self.memory_used / 2**20, "disk_mb": self.disk_used / 2**20, "dropped": self.dropped,
                "memory_budget_mb": self.memory_bytes / 2**20}
