"""Progress reporting and logging: the library reports stages and never prints."""
from __future__ import annotations

import io

import pytest

import onnx_compress as oc
from onnx_compress import evaluators, progress
from refs import CALIB, MODEL, TEST, cli


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_channel_pruning_reports_every_stage_and_prints_nothing(capsys):
    events = []
    with progress.listen(lambda stage, done, total: events.append((stage, done, total))):
        oc.compress_auto(MODEL, "channel_pruning", 0.5, evaluators.accuracy(str(TEST)), 2,
                         data=str(CALIB), num_reconstruction_samples=100)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    stages = {e[0] for e in events}
    assert {"channel-pruning candidates", "eval-score dictionary", "sampling activations",
            "compressing layers"} <= stages
    for stage in stages:
        runs = [e for e in events if e[0] == stage]
        assert all(0 <= d <= t for _, d, t in runs)
        assert runs[-1][1] == runs[-1][2]  # every stage ends complete
    dictionary = [e for e in events if e[0] == "eval-score dictionary"]
    assert [d for _, d, _ in dictionary] == list(range(len(dictionary)))  # 0, 1, ..., total


def test_nothing_is_reported_without_a_listener(capsys):
    progress.update("eval-score dictionary", 1, 2)
    oc.compress(MODEL, "spatial_svd", 0.5)
    assert capsys.readouterr() == ("", "")


def test_bars_draw_on_a_terminal_only():
    tty = Tty()
    bars = progress.Bars(tty)
    bars("eval-score dictionary", 0, 4)
    bars("sampling activations", 0, 2)
    bars("sampling activations", 2, 2)
    bars("eval-score dictionary", 4, 4)
    text = tty.getvalue()
    assert "eval-score dictionary [" in text and "4/4" in text and "ETA" in text
    assert text.endswith("\n") and text.count("\n") == 1  # the inner stage is cleared, not kept
    pipe = io.StringIO()
    silent = progress.Bars(pipe)
    silent("eval-score dictionary", 1, 4)
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_flags_work_before_or_after_the_command(tmp_path, where):
    args = ["compress", str(MODEL), "-o", str(tmp_path / "m.onnx"), "--scheme", "weight_svd", "--ratio", "0.5"]
    quiet = cli("-q", *args) if where == "before" else cli(*args, "-q")
    assert quiet.returncode == 0 and "scheme: weight_svd" not in quiet.stdout and quiet.stderr == ""
    assert "wrote" in quiet.stdout
    loud = cli("-v", *args) if where == "before" else cli(*args, "--verbose")
    assert loud.returncode == 0 and "scheme: weight_svd" in loud.stdout
    assert "INFO onnx_compress" in loud.stderr
    normal = cli(*args)
    assert "INFO" not in normal.stderr
