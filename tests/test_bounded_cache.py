"""The prefix cache in bounded memory (issue 17 item 1): activations beyond the memory
budget go to files, beyond the disk budget they are recomputed from the feed, and the
scores stay exactly those of the whole-model evaluation in every case."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import builders as b
import onnx_compress as oc
from onnx_compress import ir, layers, runtime
from onnx_compress.evaluators import accuracy
from onnx_compress.runtime.store import TieredStore, peak_rss_bytes
from onnx_compress.search import dictionary as greedy

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_tiered_store_memory_then_disk_then_nothing():
    a = np.arange(100, dtype=np.float32)  # 400 bytes
    store = TieredStore(memory_bytes=500, disk_bytes=900)
    assert store.put("a", a) == "memory"
    a[0] = -1.0  # the caller's buffer changes: the stored copy does not
    assert store.put("b", a) == "disk" and store.put("c", a) == "disk"
    assert store.put("d", a) is None and store.dropped == 1
    assert store.get("a")[0] == 0.0 and store.get("b")[0] == -1.0 and store.get("d") is None
    assert (store.memory_used, store.disk_used) == (400, 800)
    folder = store._folder.name
    assert len(list(Path(folder).glob("*.npy"))) == 2
    store.close()
    assert not Path(folder).exists() and store.get("b") is None


def test_suffix_models_share_one_copy_of_the_weights():
    model = ir.load(MODELS / "resnet_small.onnx")
    units = {l.name: [l.node.inputs[1].name] for l in layers.analyze(model).compressible}
    cache = runtime.PrefixCache(model, units)
    weights = sum(ir.to_array(t).nbytes for t in model.graph.initializer)
    shared = sum(a.nbytes for a in cache.shared.values())
    held = sum(sub.ByteSize() for sub, _ in cache.plans.values())
    assert len(cache.plans) >= 8 and shared >= 0.95 * weights
    consumers = {i: n.name for n in model.graph.node for i in n.input}
    copies = sum(runtime.suffix_model(model, {consumers[w[0]]})[0].ByteSize() for w in units.values())
    assert held < copies / 3  # suffix graphs without weight data (that is in cache.shared, once)


def _feeds(n=4, batch=8):
    return [{"x": np.random.default_rng(i).standard_normal((batch, 1, 12, 12)).astype(np.float32)} for i in range(n)]


@pytest.mark.parametrize("memory,disk", [(None, None), (3000, None), (0, 0), (20000, 0)])
def test_candidates_equal_the_full_model_at_every_budget(memory, disk):
    model = b.cnn_model()
    cache = runtime.PrefixCache(model, {"u3": ["conv3.weight"], "ufc": ["fc.weight"]}, threads=1,
                                max_bytes=memory, disk_bytes=disk)
    recorder = cache.recording_session()
    feeds = _feeds()
    for feed in feeds:
        recorder.run(None, feed)
    new = np.random.default_rng(7).standard_normal((16, 16, 1, 1)).astype(np.float32)
    full = runtime.WeightSwapper(model, ["conv3.weight"]).session({"conv3.weight": new})
    cand = cache.candidate("u3", {"conv3.weight": new}, lambda: full)
    for feed in feeds:
        np.testing.assert_array_equal(cand.run(None, feed)[0], full.run(None, feed)[0])
    s = cache.store_
    assert s.memory_used <= s.memory_bytes
    if memory == 3000:
        assert s.disk_used > 0 and cache.recomputed == 0
    if (memory, disk) == (20000, 0):  # feeds fit, some boundaries do not: recomputed from the feed
        assert cache.recomputed > 0
    cache.close()


def test_recording_holds_one_group_of_boundaries_at_a_time():
    """A batch's boundary tensors are recorded in runs of at most `record_bytes` (ResNet-50 at
    64 images: 3 GB at once before), each by a session with just those outputs (ONNX Runtime
    holds every graph output through a run), and the candidates' outputs do not change."""
    model = b.cnn_model()
    units = {"u2": ["conv2.weight"], "u3": ["conv3.weight"], "ufc": ["fc.weight"]}
    whole = runtime.PrefixCache(model, units, threads=1)
    feeds = _feeds(batch=8)
    sizes = runtime.sessions.output_bytes(whole.recorder_session, feeds[0])
    exact = {n: int(np.prod(a.shape)) * 4 for n, a in zip(whole.needed, whole.recorder_session.run(whole.needed, feeds[0]))}
    assert {n: sizes[n] for n in whole.needed} == exact  # symbolic batch bound by the feed's
    assert whole.record_groups(feeds[0]) == [whole.needed]  # the default budget holds them all
    small = runtime.PrefixCache(model, units, threads=1, record_bytes=max(exact.values()))
    groups = small.record_groups(feeds[0])
    assert len(groups) == len(whole.needed) > 1 and sum(groups, []) == whole.needed
    runs = []
    make = small.group_session

    def counting(names):
        session = make(names)
        assert [o.name for o in session.get_outputs()] == list(dict.fromkeys(small.model_outputs + list(names)))
        return type("Counting", (), {"run": lambda self, names, feed, *a: runs.append(list(names)) or
                                     session.run(names, feed, *a)})()
    small.group_session = counting
    recorder, plain = small.recording_session(), whole.recording_session()
    for feed in feeds:
        out = recorder.run(None, feed)
        np.testing.assert_array_equal(out[0], plain.run(None, feed)[0])
    assert len(runs) == len(feeds) * len(groups)
    assert max(sum(exact[n] for n in r if n in exact) for r in runs) <= small.record_bytes
    recorder.run(None, feeds[0])  # a feed recorded already: one run, the model's outputs only
    assert runs[-1] == small.model_outputs
    new = np.random.default_rng(7).standard_normal((16, 16, 1, 1)).astype(np.float32)
    full = runtime.WeightSwapper(model, ["conv3.weight"]).session({"conv3.weight": new})
    cand = small.candidate("u3", {"conv3.weight": new}, lambda: full)
    for feed in feeds:
        np.testing.assert_array_equal(cand.run(None, feed)[0], full.run(None, feed)[0])
    assert small.recomputed == 0
    small.close(), whole.close()


def test_dictionary_in_a_small_cache_equals_the_uncached_one():

    proto = ir.load(MODELS / "resnet_small.onnx")
    analysis = layers.analyze(proto)
    names = [l.name for l in analysis.compressible]
    keys = greedy.candidate_keys(3)
    units, _ = oc.schemes.SCHEMES["weight_svd"].units(analysis.proto, analysis, names, keys,
                                                      oc.schemes.Context("mac", 1, analysis.input_dims))
    test = np.load(MODELS / "digits32_test.npz")
    ev = accuracy({"input": test["input"][:96], "labels": test["labels"][:96]}, batch_size=32)
    small = greedy.build_dictionary(proto, units, ev, None, False, cache_mb=0.5)
    full = greedy.build_dictionary(proto, units, ev, None, False, prefix_cache=False)
    assert small.scores == full.scores and small.baseline == full.baseline
    assert small.cache["memory_mb"] <= 0.5 and small.cache["disk_mb"] > 0
    assert small.peak_rss_mb * 2**20 == pytest.approx(peak_rss_bytes(), rel=0.5)


def test_sampler_in_a_small_budget_gives_the_same_tensors_and_stays_in_it(monkeypatch):
    from onnx_compress.options import Settings
    from onnx_compress.runtime import activations
    from onnx_compress.runtime.activations import Activations, Sampler

    model = ir.load(MODELS / "resnet_small.onnx")
    settings = Settings(data=str(MODELS / "digits32_calib.npz"))
    feeds = Activations(settings).feeds(model)
    names = [n.input[0] for n in model.graph.node if n.op_type == "Conv"]
    free = Sampler(model, feeds, settings, budget=2**40)
    free.prefetch(names)
    one = sum(a.nbytes for a in free.original_tensor(names[0]))
    small = Sampler(model, feeds, settings, budget=3 * one)
    asked, make = [], activations.runtime.session

    def counting(*args, **kwargs):
        sess = make(*args, **kwargs)
        return type("Counting", (), {"run": lambda self, wanted, feed: asked.append(list(wanted)) or sess.run(wanted, feed),
                                     "__getattr__": lambda self, k: getattr(sess, k)})()
    monkeypatch.setattr(activations.runtime, "session", counting)
    small.prefetch(names)
    for name in names:
        got = small.original_tensor(name)
        held = sum(a.nbytes for v in small._orig_cache.values() for a in v)
        biggest = max(sum(a.nbytes for a in free.original_tensor(n)) for n in names)
        assert held <= max(3 * one, biggest)
        for a, b_ in zip(got, free.original_tensor(name)):
            np.testing.assert_array_equal(a, b_)
    assert len(small._orig_cache) < len(names)
    per_name = {n: sum(a.nbytes for a in free.original_tensor(n)) for n in names}
    assert asked
    assert all(len(a) == 1 or sum(per_name[n] for n in a) <= 3 * one for a in asked)  # never more than fits


def test_channel_pruning_in_a_small_sampler_budget_writes_the_same_model(monkeypatch):
    from onnx_compress.runtime import store

    from onnx_compress.runtime.activations import Sampler

    held = []
    real = Sampler._fill_original

    def spy(self, names):
        real(self, names)
        held.append((len(self._orig_cache), sum(a.nbytes for v in self._orig_cache.values() for a in v)))

    monkeypatch.setattr(Sampler, "_fill_original", spy)
    model = ir.load(MODELS / "resnet_small.onnx")
    kw = dict(data=str(MODELS / "digits32_calib.npz"), num_reconstruction_samples=300)
    out, _ = oc.compress(model, "channel_pruning", 0.5, **kw)
    assert max(n for n, _ in held) > 4  # every layer's input stays cached in the default budget
    held.clear()
    monkeypatch.setattr(store, "default_memory_bytes", lambda: 200_000)  # less than one tensor
    small, _ = oc.compress(model, "channel_pruning", 0.5, **kw)
    assert held and max(n for n, _ in held) == 1  # one tensor at a time
    assert small.SerializeToString() == out.SerializeToString()


def test_release_frees_what_no_other_unit_reads_and_recomputed_tensors_are_kept():
    model = b.cnn_model()
    cache = runtime.PrefixCache(model, {"u3": ["conv3.weight"], "ufc": ["fc.weight"]}, threads=1)
    recorder = cache.recording_session()
    feeds = _feeds(2)
    for feed in feeds:
        recorder.run(None, feed)
    def held():
        return {k[1] for k in cache.store_._memory if k[0] != "feed"}

    assert held() == {"r2", "flat"}
    cache.release("u3")
    assert held() == {"flat"}
    assert "u3" not in cache.plans
    cache.store_.delete((0, "flat"))  # as if it had not fitted: recomputed once, then kept
    cache.lookup("ufc", feeds[0])
    cache.lookup("ufc", feeds[0])
    assert cache.recomputed == 1


def test_cache_mb_reaches_the_dictionary_from_the_api_and_the_cli(tmp_path):
    """cache_mb=0: every recorded activation goes to files, with the same scores and selection."""
    import json

    from refs import cli
    from test_resume import CANDIDATES, Interrupting, wide_cnn

    model = wide_cnn()
    runs = {mb: oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model, measure="cosine"),
                                 candidates=CANDIDATES, cache_mb=mb)[1].selection for mb in (None, 0)}
    assert runs[0]["cache"]["memory_budget_mb"] == 0 and runs[0]["cache"]["memory_mb"] == 0
    assert runs[0]["cache"]["disk_mb"] == runs[None]["cache"]["memory_mb"] > 0
    assert runs[0]["chosen"] == runs[None]["chosen"] and runs[0]["expected_score"] == runs[None]["expected_score"]
    with pytest.raises(oc.ParameterError, match="cache_mb must be"):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), cache_mb=-1)
    with pytest.raises(oc.ParameterError, match="cache_mb .* applies to the local executor"):
        oc.compress_auto(model, "weight_svd", 0.5, Interrupting(model), cache_mb=10, executor="ray")
    src = tmp_path / "m.onnx"
    ir.save(model, src)
    np.savez(tmp_path / "d.npz", x=np.asarray(__import__("nets").calib(model, 16)["x"]))
    r = cli("compress", str(src), "-o", str(tmp_path / "o.onnx"), "--scheme", "weight_svd", "--target", "0.5",
            "--eval-data", str(tmp_path / "d.npz"), "--candidates", "3", "--cache-mb", "0",
            "--stats", str(tmp_path / "s.json"), "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["selection"]["cache"]["memory_budget_mb"] == 0
