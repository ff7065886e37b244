"""The README's examples run as written (docs never rot)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "models").symlink_to(ROOT / "models")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_quick_start_runs(workdir):
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (workdir / "out" / "vgg_ssvd.onnx").is_file()


def test_main_command_runs_and_prints_accuracy(workdir):
    main = blocks("bash")[0].strip()
    assert main.startswith("pip install -e . && ")
    command = main[len("pip install -e . && "):]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=workdir)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("top-1 accuracy")]
    assert len(lines) == 6  # three models x two schemes
    assert len(list((workdir / "out").glob("*.onnx"))) == 6


def test_test_command_is_what_ci_runs():
    test_cmd = blocks("bash")[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = test_cmd.split(" && ")
    assert "-e \".[test]\"" in install and "-e \".[test]\"" in ci
    assert run in ci
