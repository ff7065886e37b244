"""The HTML report: content from the statistics, every section present, rendered in Chromium.

The browser test opens the report of a real auto-mode run in headless Chromium and reads
the DOM after rendering; it is skipped with a message where Chromium is not installed
(`.ci/run` installs it).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

import onnx_compress as oc
from onnx_compress import report
from onnx_compress.errors import ParameterError
from refs import CALIB, MODEL, TEST, cli


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """One auto-mode run (channel pruning at 0.5) with its report, stats and model."""
    out = tmp_path_factory.mktemp("report")
    r = cli("compress", str(MODEL), "-o", str(out / "m.onnx"), "--scheme", "channel_pruning", "--target", "0.5",
            "--data", str(CALIB), "--eval-data", str(TEST), "--samples", "200", "--eval-iterations", "4",
            "--report", str(out / "r.html"), "--stats", str(out / "s.json"), "-q")
    assert r.returncode == 0, r.stderr
    return out, r


def _section(html: str, key: str) -> str:
    m = re.search(rf'<section id="{key}">(.*?)</section>', html, re.S)
    assert m, f"section {key} missing"
    return m.group(1)


def test_report_has_every_section_with_the_run_figures(auto_run):
    out, _ = auto_run
    html = (out / "r.html").read_text()
    stats = json.loads((out / "s.json").read_text())
    for key in report.SECTIONS:
        _section(html, key)
    summary = _section(html, "summary")
    assert f"{stats['mac_ratio']:.4f}" in summary and f"{stats['final_score']:.4f}" in summary
    assert "quantized" not in summary and "compressed (channel_pruning)" in summary
    # per-layer chart and table: every layer of the model, in graph order
    costs = _section(html, "layer-costs")
    names = [r["name"] for r in stats["per_layer"]]
    assert names == [n.name or n.output[0] for n in onnx.load(str(MODEL)).graph.node if n.op_type in ("Conv", "Gemm")]
    positions = [costs.index(f">{n}<") for n in names]
    assert positions == sorted(positions)
    assert costs.count("<svg") == 1
    # one score curve per unit, each with its chosen candidate marked
    curves = _section(html, "score-curves")
    units = stats["selection"]["scores"]
    assert len(units) >= 3 and all(u in curves for u in units)
    assert curves.count("<svg") == 1
    assert _section(html, "chosen-ratios").count("<svg") == 1
    skipped = _section(html, "skipped")
    for k in stats["skipped"]:
        assert k["name"] in skipped and k["reason"].replace("'", "&#x27;") in skipped
    repro = _section(html, "reproduce")
    assert "onnx-compress compress" in repro and "--target 0.5" in repro and "channel_pruning" in repro
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_per_layer_rows_measure_the_compressed_model(auto_run):
    out, _ = auto_run
    stats = json.loads((out / "s.json").read_text())
    rows = stats["per_layer"]
    assert sum(r["mac_before"] for r in rows) == stats["mac_before"]
    assert sum(r["mac_after"] for r in rows) == stats["mac_after"]
    compressed = {ls["name"] for ls in stats["layers"]}
    for r in rows:
        assert (r["status"] == "compressed") == (r["name"] in compressed)
        assert r["ratio"] == pytest.approx(r["mac_after"] / r["mac_before"])
        if r["status"] == "unchanged":
            assert r["mac_after"] == r["mac_before"]


def test_svd_rows_follow_split_nodes_through_a_pipeline(tmp_path):
    _, stats = oc.compress(MODEL, ["spatial_svd", "channel_pruning"], 0.7, data=str(CALIB),
                           num_reconstruction_samples=100)
    rows = {r["name"]: r for r in stats.per_layer}
    assert sum(r["mac_after"] for r in rows.values()) == stats.mac_after
    split = [ls for ls in stats.layers if ls.scheme == "spatial_svd"]
    assert split and all(rows[ls.name]["status"] == "compressed" for ls in split)
    assert all(rows[ls.name]["mac_after"] < rows[ls.name]["mac_before"] for ls in split)


def test_api_visualization_writes_the_report_and_checks_the_path_first(tmp_path):
    path = tmp_path / "manual.html"
    _, stats = oc.compress(MODEL, "weight_svd", 0.5, visualization=path)
    html = path.read_text()
    for key in report.SECTIONS:
        _section(html, key)
    assert "Manual mode" in _section(html, "score-curves")
    assert '"function": "compress"' in _section(html, "reproduce").replace("&quot;", '"')
    with pytest.raises(ParameterError, match="does not exist"):
        oc.compress(MODEL, "weight_svd", 0.5, visualization=tmp_path / "missing" / "r.html")
    with pytest.raises(ParameterError, match="is a folder"):
        oc.compress(MODEL, "weight_svd", 0.5, visualization=tmp_path)


def test_aimet_visualization_url_is_accepted(tmp_path, caplog):
    params = oc.WeightSvdParameters(oc.WeightSvdParameters.Mode.manual,
                                    oc.WeightSvdParameters.ManualModeParams([oc.ModuleCompRatioPair("/fc/Gemm", 0.5)]))
    with caplog.at_level(logging.WARNING, logger="onnx_compress"):
        _, stats = oc.ModelCompressor.compress_model(MODEL, None, None, (1, 1, 32, 32), oc.CompressionScheme.weight_svd,
                                                     oc.CostMetric.mac, params, visualization_url="http://localhost:5006/")
    assert "not supported" in caplog.text
    path = tmp_path / "aimet.html"
    oc.ModelCompressor.compress_model(MODEL, None, None, (1, 1, 32, 32), oc.CompressionScheme.weight_svd,
                                      oc.CostMetric.mac, params, visualization_url=str(path))
    assert path.is_file() and "/fc/Gemm" in path.read_text()


def test_report_path_errors_leave_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    r = cli("compress", str(MODEL), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5",
            "--report", str(tmp_path / "nope" / "r.html"))
    assert r.returncode == 2 and "folder" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = cli("compress", str(MODEL), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5", "--report", str(tmp_path))
    assert r.returncode == 2 and "is a folder" in r.stderr
    assert not out.exists()
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        r = cli("compress", str(MODEL), "-o", str(out), "--scheme", "weight_svd", "--ratio", "0.5",
                "--report", str(locked / "r.html"))
        assert r.returncode == 2 and "not writable" in r.stderr and not out.exists()


def test_report_command_renders_saved_stats(auto_run, tmp_path):
    out, _ = auto_run
    again = tmp_path / "again.html"
    r = cli("report", str(out / "s.json"), "-o", str(again))
    assert r.returncode == 0, r.stderr
    html = again.read_text()
    assert all(f'<section id="{k}">' in html for k in report.SECTIONS)
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "stats"}')
    r = cli("report", str(bad), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "not a statistics JSON" in r.stderr
    assert not (tmp_path / "x.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium(auto_run, tmp_path):
    out, _ = auto_run
    url = (out / "r.html").resolve().as_uri()
    dom = chromium("--dump-dom", url, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for key in report.SECTIONS:
        assert f'<section id="{key}">' in html, key
    assert html.count("<svg") == 3  # the three charts parsed as inline SVG
    shot = tmp_path / "shot.png"
    r = chromium("--window-size=1200,2400", f"--screenshot={shot}", url, tmp=tmp_path)
    assert r.returncode == 0 and shot.stat().st_size > 50_000  # a page with charts, not a blank one
