"""Eval-score dictionary as JSON: exact round trip, atomic writes, mismatch and file errors."""
from __future__ import annotations

import json

import pytest

from onnx_compress.errors import DataError, ParameterError
from onnx_compress.search import scores_io
from onnx_compress.search.scores_io import (FORMAT, ScoreTable, check_matches, format_ratio, load, model_digest,
                                            parse_ratio, save)

CANDIDATES = (0.1, 0.2, 0.3, 1 / 3, 0.7, 0.9)


def table(**changes) -> ScoreTable:
    fields = dict(
        model_digest=model_digest(b"model bytes"),
        scheme="spatial_svd",
        cost_metric="mac",
        candidates=CANDIDATES,
        baseline=0.9375,
        scores={"conv1": {format_ratio(c): 0.5 + c / 3 for c in CANDIDATES},
                "fc": {format_ratio(0.1): 0.125, format_ratio(1 / 3): 0.3}},
        evaluations=8,
        meta={"onnx_compress": "0.1.0", "created": "2024-01-01T00:00:00Z"},
    )
    fields.update(changes)
    return ScoreTable(**fields)


def test_format_and_parse_ratio_are_exact() -> None:
    assert format_ratio(0.1) == "0.1"
    assert format_ratio(1 / 3) == repr(1 / 3) == "0.3333333333333333"
    assert format_ratio(1) == "1.0"
    for r in (*CANDIDATES, 0.1 + 0.2, 2 / 7, 1e-5):
        assert parse_ratio(format_ratio(r)) == r
    with pytest.raises(ParameterError):
        parse_ratio("half")


def test_model_digest_is_sha256_hex() -> None:
    import hashlib

    assert model_digest(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_round_trip_is_exact(tmp_path) -> None:
    original = table()
    path = tmp_path / "scores.json"
    save(original, path)
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT
    assert "\n  " in path.read_text()  # pretty-printed
    loaded = load(path)
    assert loaded == original
    assert loaded.candidates == CANDIDATES
    assert set(loaded.scores["conv1"]) == {format_ratio(c) for c in CANDIDATES}
    for c in CANDIDATES:
        assert loaded.score("conv1", c) == 0.5 + c / 3
    assert loaded.evaluations == 8 and loaded.meta["onnx_compress"] == "0.1.0"


def test_enum_scheme_and_metric_are_stored_by_value(tmp_path) -> None:
    from onnx_compress import CompressionScheme, CostMetric

    t = table(scheme=CompressionScheme.weight_svd, cost_metric=CostMetric.memory)
    assert (t.scheme, t.cost_metric) == ("weight_svd", "memory")
    check_matches(t, t.model_digest, CompressionScheme.weight_svd, CostMetric.memory, CANDIDATES, ["fc"])


def test_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    path = tmp_path / "scores.json"
    save(table(), path)
    save(table(baseline=0.5), path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]
    assert load(path).baseline == 0.5


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch) -> None:
    path = tmp_path / "scores.json"
    save(table(), path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(scores_io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save(table(baseline=0.1), path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]
    assert load(path).baseline == 0.9375


def test_unserializable_meta_is_a_parameter_error(tmp_path) -> None:
    with pytest.raises(ParameterError, match="meta"):
        save(table(meta={"when": object()}), tmp_path / "s.json")
    assert list(tmp_path.iterdir()) == []


def test_check_matches_accepts_extra_layers_and_candidate_order() -> None:
    t = table()
    check_matches(t, t.model_digest, "spatial_svd", "mac", tuple(reversed(CANDIDATES)), ["fc"])


def test_mismatch_digest_prints_both_short_digests() -> None:
    t = table()
    other = model_digest(b"another model")
    with pytest.raises(ParameterError, match=f"another model.*{t.model_digest[:12]}.*{other[:12]}"):
        check_matches(t, other, "spatial_svd", "mac", CANDIDATES, ["conv1"])


@pytest.mark.parametrize("scheme, metric, candidates, layers, pattern", [
    ("weight_svd", "mac", CANDIDATES, ["conv1"], "scheme 'spatial_svd', this run uses 'weight_svd'"),
    ("spatial_svd", "memory", CANDIDATES, ["conv1"], "cost metric 'mac', this run uses 'memory'"),
    ("spatial_svd", "mac", (0.1, 0.5), ["conv1"], r"candidates \[0.1, 0.2, .*\], this run uses \[0.1, 0.5\]"),
    ("spatial_svd", "mac", CANDIDATES, ["conv1", "conv2", "fc", "head"], r"no scores for layer\(s\) \['conv2', 'head'\]"),
])
def test_mismatch_errors(scheme, metric, candidates, layers, pattern) -> None:
    t = table()
    with pytest.raises(ParameterError, match=pattern):
        check_matches(t, t.model_digest, scheme, metric, candidates, layers)


def test_missing_and_invalid_files_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match=r"nope\.json: no such eval-score file"):
        load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not a readable JSON file"):
        load(bad)


def test_wrong_format_is_named(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something/1", "scores": {}}))
    with pytest.raises(DataError, match=r"other\.json: not an onnx_compress eval-score file"):
        load(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=r"other\.json: not an onnx_compress eval-score file"):
        load(path)
    path.write_text(json.dumps({"format": "onnx_compress.eval_scores/2"}))
    with pytest.raises(DataError, match=r"other\.json: eval-score format .*not supported"):
        load(path)


def test_malformed_fields_are_named(tmp_path) -> None:
    path = tmp_path / "s.json"
    save(table(), path)
    doc = json.loads(path.read_text())
    del doc["baseline"]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"s\.json: malformed eval-score file \(missing field 'baseline'\)"):
        load(path)
    doc = json.loads(json.dumps(scores_io.to_json(table())))
    doc["scores"]["fc"]["0.5"] = 0.2
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"s\.json: .*ratio key '0.5' is not one of the candidates"):
        load(path)
