"""The eval-score dictionary on Ray (executor="ray", CLI --ray): the same dictionary and
selection as the local executor, a killed worker's task retried, the evaluator's own error
raised as it is, the CLI starting and stopping its own local Ray. Skipped without Ray."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

ray = pytest.importorskip("ray")

import nets  # noqa: E402
import onnx_compress as oc  # noqa: E402
from onnx_compress.evaluators import fidelity  # noqa: E402
from refs import cli  # noqa: E402
from test_auto import wide_cnn  # noqa: E402

TESTS = Path(__file__).resolve().parent


class Fidelity:
    """Cosine fidelity (scores that differ in the last digits), with hooks for the tests:
    `die_at`: os._exit on that call in a Ray worker, once in all (a marker file);
    `raise_in_workers`: ValueError on every call in a Ray worker."""

    def __init__(self, model, marker=None, die_at=None, raise_in_workers=False):
        self.fn = fidelity(nets.calib(model, 16), measure="cosine")
        self.driver, self.marker, self.die_at, self.raise_in_workers = os.getpid(), marker, die_at, raise_in_workers
        self.calls = 0

    def __call__(self, session, iterations, use_cuda):
        self.calls += 1
        worker = os.getpid() != self.driver
        if worker and self.raise_in_workers:
            raise ValueError("bad batch in the evaluator")
        if worker and self.calls == self.die_at:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return self.fn(session, iterations, use_cuda)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module (2 CPUs); test classes importable in workers."""
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _auto(scheme, ev, **kw):
    model = wide_cnn()
    data = nets.calib(model, 16) if scheme == "channel_pruning" else None
    return oc.compress_auto(model, scheme, 0.5, ev, candidates=5, data=data, **kw)[1]


def _same(local, remote):
    a, b = local.selection, remote.selection
    assert b["scores"] == a["scores"]  # exact floats
    assert list(b["scores"]) == list(a["scores"]) and all(list(b["scores"][u]) == list(s) for u, s in a["scores"].items())
    assert b["baseline"] == a["baseline"] and b["chosen"] == a["chosen"]
    assert b["evaluations"] == a["evaluations"]
    assert remote.final_score == local.final_score and remote.mac_ratio == local.mac_ratio


def test_cli_ray_starts_and_stops_its_own_local_ray(tmp_path):
    """--ray with no address: a local Ray for the run, shut down after; the scores file
    equals the local executor's, byte for byte."""
    model = wide_cnn()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "calib.npz", **nets.calib(model, 16))
    runs = {}
    for name, extra in (("local", ()), ("ray", ("--ray", "--workers", "2"))):
        scores = tmp_path / f"{name}.json"
        r = cli("compress", str(path), "-o", str(tmp_path / f"{name}.onnx"), "--scheme", "weight_svd", "--target",
                "0.5", "--data", str(tmp_path / "calib.npz"), "--candidates", "4", "--scores-out", str(scores), *extra)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads(scores.read_text())
    assert runs["ray"] == runs["local"] and runs["local"]["evaluations"] > 10
    assert (tmp_path / "ray.json").read_text() == (tmp_path / "local.json").read_text()


@pytest.mark.parametrize("scheme", ["weight_svd", "channel_pruning"])
def test_dictionary_and_selection_equal_local(cluster, scheme):
    model = wide_cnn()
    local = _auto(scheme, Fidelity(model))
    remote = _auto(scheme, Fidelity(model), executor="ray", ray_workers=2)
    assert len({v for s in local.selection["scores"].values() for v in s.values()}) > 5  # scores that differ
    _same(local, remote)
    assert ray.is_initialized()  # the caller's Ray is left running


def test_killed_worker_task_is_retried(cluster, tmp_path):
    model = wide_cnn()
    marker = tmp_path / "died"
    local = _auto("weight_svd", Fidelity(model))
    remote = _auto("weight_svd", Fidelity(model, marker=str(marker), die_at=3), executor="ray", ray_workers=2)
    assert marker.exists()  # a worker did die on its third call
    _same(local, remote)


def test_evaluator_error_propagates_as_locally(cluster):
    model = wide_cnn()
    with pytest.raises(ValueError, match="^bad batch in the evaluator$") as caught:
        _auto("weight_svd", Fidelity(model, raise_in_workers=True), executor="ray", ray_workers=2)
    assert type(caught.value) is ValueError  # the evaluator's own error, not Ray's wrapper


def test_interrupted_scores_out_resumes_on_ray(cluster, tmp_path):
    """A local run's checkpoint cut short resumes on Ray: only the missing scores are
    evaluated, and the dictionary and selection equal the uninterrupted run's."""
    model = wide_cnn()
    path = tmp_path / "scores.json"
    local = _auto("weight_svd", Fidelity(model), scores_out=path)
    table = json.loads(path.read_text())
    missing = sum(len(table["scores"].pop(u)) for u in ("c3", "c4"))
    table["meta"] = {"complete": False, "baseline_scored": True}
    path.write_text(json.dumps(table))
    remote = _auto("weight_svd", Fidelity(model), executor="ray", ray_workers=2, scores_out=path)
    assert remote.selection["evaluations"] == missing + 1
    assert remote.selection["scores"] == local.selection["scores"]
    assert remote.selection["chosen"] == local.selection["chosen"]


def test_unpicklable_callback_is_a_parameter_error():
    model = wide_cnn()
    lock = threading.Lock()
    ev = Fidelity(model)

    def callback(session, iterations, use_cuda):
        with lock:
            return ev(session, iterations, use_cuda)

    with pytest.raises(oc.ParameterError, match="cannot be pickled") as caught:
        _auto("weight_svd", callback, executor="ray")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kw,match", [
    ({"executor": "spark"}, "executor must be"), ({"executor": "ray", "ray_workers": 0}, "ray_workers"),
    ({"executor": "ray", "ray_cpus": 1.5}, "ray_cpus"), ({"ray_address": "auto"}, "executor='ray' only"),
    ({"executor": "ray", "ray_gpus": 0.5}, "use_cuda"),
])
def test_bad_ray_options_are_refused(kw, match):
    model = wide_cnn()
    with pytest.raises(oc.ParameterError, match=match):
        oc.compress_auto(model, "weight_svd", 0.5, Fidelity(model), candidates=5, **kw)


def test_cli_ray_flags(capsys):
    from onnx_compress.cli import build_parser, main

    p = build_parser()
    args = p.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--scheme", "weight_svd", "--target", "0.5",
                         "--ray", "HOST:6379", "--ray-cpus", "2"])
    assert (args.ray, args.ray_cpus, args.workers) == ("HOST:6379", 2, None)
    assert p.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--scheme", "weight_svd", "--target", "0.5",
                         "--ray"]).ray == "local"
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    assert "--ray [ADDRESS]" in capsys.readouterr().out
    assert main(["compress", "m.onnx", "-o", "o.onnx", "--scheme", "weight_svd", "--ratio", "0.5", "--ray"]) == 2
    assert "--ray applies to auto mode" in capsys.readouterr().err
