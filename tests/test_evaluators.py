"""fidelity(): label-free agreement of a candidate model with the original's outputs."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import builders as b
from onnx_compress.errors import DataError
from onnx_compress.evaluators import fidelity


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class CountingSession:
    """Wraps a session and counts `run` calls (the batches evaluated)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.runs = 0

    def get_inputs(self):
        return self.inner.get_inputs()

    def get_outputs(self):
        return self.inner.get_outputs()

    def run(self, names, feed):
        self.runs += 1
        return self.inner.run(names, feed)


def gemm_data(batches: int = 6, m: int = 5, k: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((batches * m, k)).astype(np.float32),
            "labels": rng.integers(0, 7, batches * m)}


def test_model_against_itself_is_one() -> None:
    model = b.gemm_model()
    evaluate = fidelity(gemm_data(), batch_size=5)
    assert evaluate(session(model), None, False) == 1.0  # the original: becomes the reference
    assert evaluate(session(model), None, False) == 1.0


def test_perturbed_model_scores_lower() -> None:
    evaluate = fidelity(gemm_data(), batch_size=5)
    evaluate(session(b.gemm_model(seed=0)), None, False)
    noisy = b.gemm_model(seed=0)
    w = noisy.graph.initializer[0]
    arr = np.frombuffer(w.raw_data, np.float32).copy()
    arr += np.random.default_rng(3).standard_normal(arr.shape).astype(np.float32) * 0.5
    w.raw_data = arr.tobytes()
    perturbed = evaluate(session(noisy), None, False)
    unrelated = evaluate(session(b.gemm_model(seed=7)), None, False)
    assert 0.0 <= unrelated < 1.0 and 0.0 <= perturbed < 1.0


def test_top1_agreement_is_exact_fraction() -> None:
    data = gemm_data(batches=4)
    reference = [b.run(b.gemm_model(seed=0), {"x": data["x"][i:i + 5]})[0] for i in range(0, 20, 5)]
    other = [b.run(b.gemm_model(seed=1), {"x": data["x"][i:i + 5]})[0] for i in range(0, 20, 5)]
    expected = np.mean(np.concatenate(reference).argmax(1) == np.concatenate(other).argmax(1))
    score = fidelity(data, reference=reference, batch_size=5)(session(b.gemm_model(seed=1)), None, False)
    assert score == pytest.approx(expected)


def test_cosine_path_for_non_classifier_outputs() -> None:
    model = b.conv_model(dynamic_batch=True)  # output (N, 6, 7, 8): not (N, C)
    data = {"x": np.random.default_rng(0).standard_normal((8, 4, 9, 10)).astype(np.float32)}
    evaluate = fidelity(data, batch_size=4)
    assert evaluate(session(model), None, False) == 1.0
    assert evaluate(session(model), None, False) == pytest.approx(1.0, abs=1e-6)
    other = b.conv_model(dynamic_batch=True, seed=5)
    ref = b.run(model, data)[0].reshape(8, -1).astype(np.float64)
    out = b.run(other, data)[0].reshape(8, -1).astype(np.float64)
    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    score = evaluate(session(other), None, False)
    assert score == pytest.approx(cos.mean(), abs=1e-6)
    assert -1.0 <= score < 0.99


def test_iterations_limit_batches() -> None:
    model = b.gemm_model()
    evaluate = fidelity(gemm_data(batches=6), batch_size=5)
    original = CountingSession(session(model))
    assert evaluate(original, 2, False) == 1.0
    assert original.runs == 2
    candidate = CountingSession(session(model))
    assert evaluate(candidate, 1, False) == 1.0
    assert candidate.runs == 1
    with pytest.raises(DataError, match="reference covers 2 batch"):
        evaluate(candidate, None, False)


def test_reference_as_callable_is_called_once() -> None:
    data = gemm_data(batches=2)
    calls = []

    def reference():
        calls.append(1)
        return [b.run(b.gemm_model(), {"x": data["x"][i:i + 5]})[0] for i in (0, 5)]

    evaluate = fidelity(data, reference=reference, batch_size=5)
    assert evaluate(session(b.gemm_model()), None, False) == 1.0
    assert evaluate(session(b.gemm_model(seed=2)), None, False) < 1.0
    assert calls == [1]


def test_reference_errors() -> None:
    with pytest.raises(DataError, match="list of arrays, one per batch"):
        fidelity(gemm_data(), reference=np.zeros((30, 7)))
    bad = [np.zeros((5, 3), np.float32)] * 6
    with pytest.raises(DataError, match=r"batch 1: the model's first output has shape \(5, 7\), the reference has \(5, 3\)"):
        fidelity(gemm_data(), reference=bad, batch_size=5)(session(b.gemm_model()), None, False)


def test_feed_is_checked_and_empty_data_refused() -> None:
    model = b.gemm_model()
    with pytest.raises(DataError, match="fidelity data.*expects"):
        fidelity({"x": np.zeros((10, 3), np.float32)}, batch_size=5)(session(model), None, False)
    with pytest.raises(DataError, match="empty"):
        fidelity([], batch_size=5)(session(model), None, False)


def test_random_input_feeds_work_as_iterable_data() -> None:
    model = b.gemm_model()
    feeds = [b.random_input(model, seed=s) for s in range(3)]
    evaluate = fidelity(feeds)
    assert evaluate(session(model), None, False) == 1.0
    assert evaluate(session(model), None, False) == 1.0


def test_cosine_measure_for_embedding_outputs() -> None:
    """measure="cosine": an (N, D) embedding is compared by cosine, not by its argmax."""
    data = gemm_data(batches=4)
    reference = [b.run(b.gemm_model(seed=0), {"x": data["x"][i:i + 5]})[0] for i in range(0, 20, 5)]
    other = np.concatenate([b.run(b.gemm_model(seed=1), {"x": data["x"][i:i + 5]})[0] for i in range(0, 20, 5)])
    ref = np.concatenate(reference).astype(np.float64)
    expected = np.mean((ref * other).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(other, axis=1))
    score = fidelity(data, reference=reference, batch_size=5, measure="cosine")(session(b.gemm_model(seed=1)), None, False)
    assert score == pytest.approx(expected, rel=1e-6)
    top1 = fidelity(data, reference=reference, batch_size=5, measure="top1")(session(b.gemm_model(seed=1)), None, False)
    assert top1 != pytest.approx(score)
    with pytest.raises(Exception, match="measure must be one of"):
        fidelity(data, measure="l2")
