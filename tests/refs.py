"""Shared by the tests: the bundled reference model and data, and the CLI run as a user runs it."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet_small.onnx"
CALIB = ROOT / "models" / "digits32_calib.npz"
TEST = ROOT / "models" / "digits32_test.npz"


def cli(*args: str) -> subprocess.CompletedProcess:
    """`onnx-compress ARGS` in a fresh interpreter (exit code, stdout, stderr captured)."""
    return subprocess.run([sys.executable, "-m", "onnx_compress.cli", *args], capture_output=True, text=True)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
