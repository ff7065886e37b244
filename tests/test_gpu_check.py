"""tools/gpu_check.sh, the GPU machine's one-step check: on a machine without CUDA it stops at
the provider check with status 3 and a message saying what is missing, before any long step."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is present here")
def test_without_cuda_it_stops_at_the_provider_check(tmp_path):
    (tmp_path / "gpu" / "anchors").mkdir(parents=True)
    (tmp_path / "gpu" / "wheels").mkdir()
    env = dict(os.environ, GPU_CHECK_DIR=str(tmp_path / "gpu"), GPU_CHECK_PYTHON=sys.executable,
               OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "no CUDAExecutionProvider" in summary and "nothing else was run" in summary
    assert not (tmp_path / "out" / "cuda_tests.txt").exists()


def test_it_refuses_to_run_unprepared(tmp_path):
    env = dict(os.environ, GPU_CHECK_DIR=str(tmp_path / "none"), OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--prepare" in r.stdout
