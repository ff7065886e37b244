"""Real-world reach: the corpus of exported graphs (tests/corpus, built by
tools/build_corpus.py) and the scheme x mode matrix of tools/reach_matrix.py.

The quick test checks the corpus itself (every manifest file present, valid, runnable);
the slow one runs the whole matrix through the CLI and allows only successes and one-line
refusals (no internal errors, crashes, timeouts or invalid outputs).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"


def _load_tool():
    spec = importlib.util.spec_from_file_location("reach_matrix", ROOT / "tools" / "reach_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reach_matrix", mod)
    spec.loader.exec_module(mod)
    return mod


reach = _load_tool()
MANIFEST = reach.load_manifest(CORPUS)


def test_manifest_lists_every_corpus_file():
    listed = {e["file"] for e in MANIFEST}
    on_disk = {p.name for p in CORPUS.glob("*.onnx")}
    assert listed == on_disk
    for e in MANIFEST:
        assert {"file", "exporter", "opset", "ir_version", "inputs", "kind", "notes"} <= set(e), e["file"]
        for name, spec in e["inputs"].items():
            assert spec["dtype"] in ("float32", "int64", "int32", "bool"), (e["file"], name)
            assert spec["batch_axis"] is None or 0 <= spec["batch_axis"] < len(spec["shape"]), (e["file"], name)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_corpus_file_is_valid_and_runs(entry):
    path = CORPUS / entry["file"]
    model = onnx.load(str(path))
    assert model.ir_version == entry["ir_version"]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == entry["opset"]
    assert path.stat().st_size < 500_000
    outputs = reach.check_file(entry, CORPUS)  # onnx.checker + one ONNX Runtime run
    if "outputs" in entry:
        assert outputs == entry["outputs"]


@pytest.mark.slow
def test_reach_matrix_has_no_internal_errors(tmp_path):
    results = reach.run_matrix(corpus=CORPUS, workdir=tmp_path, traceback=False, jobs=2)
    bad = [f"{r['file']} {r['scheme']} {r['mode']}: {r['status']}: {r.get('error', '')}"
           for r in results if r["status"] not in reach.OK_STATUSES]
    assert not bad, f"{len(bad)} of {len(results)} runs failed:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["yolo_ts_op13.onnx", "yolo_ts_op9_ir3.onnx", "yolo_dynamo_op20_dyn.onnx",
                                  "unet_ts_op16.onnx", "unet_dynamo_op18_dyn.onnx", "paddle_det_op11.onnx"])
def test_detector_and_unet_shrink_upstream(name):
    """Fewer than 10% of the channel groups of the corpus' detectors and U-Nets are locked
    (TorchScript's chunk() Slices with computed bounds, paddle2onnx's Reshape(Constant)
    biases and C2f Split/Concat re-cuts each locked most of them once)."""
    import numpy as np

    import onnx_compress as oc

    entry = next(e for e in MANIFEST if e["file"] == name)
    rng = np.random.default_rng(0)
    data = {}
    for inp, spec in entry["inputs"].items():
        shape = list(spec["shape"])
        if spec["batch_axis"] is not None:
            shape[spec["batch_axis"]] *= 8
        data[inp] = rng.standard_normal(shape).astype(spec["dtype"])
    _, stats = oc.compress(str(CORPUS / name), "channel_pruning", 0.5, data=data, num_reconstruction_samples=200)
    groups = stats.channel_groups
    assert groups["groups"] >= 10 and groups["locked_fraction"] < 0.10, groups
    assert stats.mac_ratio < 0.5
    assert "channel groups:" in str(stats)
