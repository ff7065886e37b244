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


def _bash(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=cwd)


def test_main_command_runs_auto_mode_and_prints_accuracy(workdir):
    main = blocks("bash")[0].strip()
    install = 'pip install -e ".[report]" && '
    assert main.startswith(install)
    r = _bash(main[len(install):], workdir)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("accuracy on"))
    assert "(target 0.5)" in line
    assert float(line.split("MAC ratio ")[1].split()[0]) <= 0.5
    assert (workdir / "out" / "resnet_auto.html").stat().st_size > 50_000


def test_manual_loop_on_all_reference_models(workdir):
    loop = next(b for b in blocks("bash") if b.startswith("for m in"))
    r = _bash(loop.strip(), workdir)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("top-1 accuracy")]
    assert len(lines) == 9  # three models x three schemes
    assert len(list((workdir / "out").glob("*.onnx"))) == 9


def test_test_command_is_what_ci_runs():
    test_cmd = blocks("bash")[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = test_cmd.split(" && ")
    assert "-e \".[test]\"" in install and "-e \".[test]\"" in ci
    assert run in ci


def test_auto_mode_example_runs_and_reuses_scores(workdir):
    block = next(b for b in blocks("bash") if "--scores-out out/scores.json" in b)
    r = _bash(block.strip(), workdir)
    assert r.returncode == 0, r.stderr
    assert (workdir / "out" / "scores.json").is_file()
    assert "0 evaluations" in r.stdout  # the second command reused the saved dictionary
