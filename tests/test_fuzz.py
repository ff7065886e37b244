"""Graph fuzzing: random valid graphs (tests/fuzzgraphs.py) x every scheme, manual and auto.

Each case must end in a CompressionError with a one-line message, or in a valid model:
onnx.checker passes, ONNX Runtime runs it, the output names and shapes are the original's,
the achieved ratio of every layer stays at or below the one requested, and a ratio of 1
reproduces the original outputs. Anything else (another exception, wrong statistics) is a
failure, reported with its seed so that `python tests/fuzzgraphs.py SEED-SEED` replays it
(ONNX_COMPRESS_FUZZ_SAVE=DIR keeps the failing graphs).

The default suite runs a fast slice; `pytest -m slow tests/test_fuzz.py` runs 2,000 more graphs.
"""
from __future__ import annotations

import os
import tempfile
import traceback
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest

import fuzzgraphs
import mac_count
import onnx_compress as oc
from onnx_compress import evaluators
from onnx_compress.errors import CompressionError

SCHEMES = ("weight_svd", "spatial_svd", "channel_pruning")
TOL = 1e-6  # achieved <= requested + TOL (ratios are exact fractions of integer costs)


def _check_case(model, feeds, expected, scheme: str, mode: str, rng, folder: Path) -> str | None:
    """None when the case ends as it must; else a line describing the failure."""
    data = folder / "data.npz"
    kwargs = {"data": str(data)} if scheme == "channel_pruning" or rng.random() < 0.3 else {}
    requested = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # NaN/overflow in our arithmetic is a failure
            if mode == "manual":
                requested = float(rng.choice([1.0, 0.5, round(float(rng.uniform(0.05, 1.0)), 3)]))
                out, stats = oc.compress(model, scheme, requested, num_reconstruction_samples=200, **kwargs)
            else:
                target = round(float(rng.uniform(0.3, 0.95)), 3)
                out, stats = oc.compress_auto(model, scheme, target, evaluators.fidelity(str(data)), 1,
                                              candidates=3, num_reconstruction_samples=200, **kwargs)
    except CompressionError as exc:
        text = str(exc)
        if "\n" in text.strip() or not text.strip():
            return f"CompressionError message is not one line: {text!r}"
        return None
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "onnx_compress" in f.filename]
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].name}:{frames[-1].lineno}" if frames else ""
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}{where}"
    try:
        onnx.checker.check_model(out)
        got = fuzzgraphs.run(out, feeds)
    except Exception as exc:
        return f"invalid output: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    if [o.name for o in out.graph.output] != [o.name for o in model.graph.output]:
        return "output names changed"
    if [g.shape for g in got] != [e.shape for e in expected]:
        return f"output shapes changed: {[g.shape for g in got]} != {[e.shape for e in expected]}"
    for layer in stats.layers:  # over the request only where a lock is named (one ratio for all layers)
        if (mode == "manual" and layer.requested_ratio is not None
                and layer.achieved_ratio > layer.requested_ratio + TOL and "(not " not in layer.note):
            return f"layer {layer.name}: achieved {layer.achieved_ratio} > requested {layer.requested_ratio}"
    if not any(n.op_type == "If" for n in out.graph.node):  # the statistics, counted independently
        dims = {k: tuple(v.shape) for k, v in feeds.items()}
        macs, weights = mac_count.count(out, dims)
        if stats.input_dims == dims and (macs, weights) != (stats.mac_after, stats.memory_after):
            return f"statistics: MACs/weights {stats.mac_after}/{stats.memory_after}, counted {macs}/{weights}"
    if mode == "auto" and stats.mac_ratio is not None and stats.mac_ratio > target + TOL:
        return f"auto: achieved MAC ratio {stats.mac_ratio} > target {target}"
    if mode == "manual" and requested == 1.0:
        for g, e in zip(got, expected):
            scale = max(float(np.abs(e).max()), 1e-3)
            if not np.allclose(g, e, rtol=1e-4, atol=1e-4 * scale):
                return f"ratio 1 changed the outputs (max diff {float(np.abs(g - e).max()):.3g})"
    return None


def rank_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every weight of 2 or more dims (initializers and Constant nodes named w_*)
    made rank 1 in the factorisation weight SVD takes (a matrix; a conv's out x kernel by in
    reshape, w[o, i, k] = a[o, k] b[i]): a split of any rank reproduces it exactly."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)

    def flat(t: onnx.TensorProto) -> None:
        w = numpy_helper.to_array(t)
        if w.ndim >= 2 and t.name.split("_")[-2] == "w":  # w_N, and then_w_N / else_w_N in If branches
            # rank 1 as weight SVD factorises it: a matrix, or a conv's (out x kernel, in) reshape
            a = w[:, :1].copy()  # (out, 1, *kernel)
            b = w[:1].copy()  # (1, in, *kernel) -> (1, in, 1, ...)
            b = b[(slice(None), slice(None)) + (slice(0, 1),) * (w.ndim - 2)]
            a[a == 0], b[b == 0] = 0.5, 0.5
            t.CopyFrom(numpy_helper.from_array((a * b).astype(w.dtype), t.name))

    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0].startswith("w_"):
            node.attribute[0].t.name = node.output[0]
            flat(node.attribute[0].t)
    graphs = [out.graph] + [a.g for n in out.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    for t in (t for g in graphs for t in g.initializer):
        flat(t)
    return out


def _check_rank_one(model, feeds, rng) -> str | None:
    """Weight SVD of a model whose weights are all rank 1 is exact at every ratio."""
    model = rank_one(model)
    expected = fuzzgraphs.run(model, feeds)
    ratio = round(float(rng.uniform(0.05, 1.0)), 3)
    try:
        out, stats = oc.compress(model, "weight_svd", ratio, data_aware=False)
    except CompressionError:
        return None
    except Exception as exc:
        return f"rank-1: {type(exc).__name__}: {str(exc).strip()[:200]}"
    if not stats.layers:
        return None
    for g, e in zip(fuzzgraphs.run(out, feeds), expected):
        scale = max(float(np.abs(e).max()), 1e-3)
        if not np.allclose(g, e, rtol=1e-4, atol=1e-4 * scale):
            return f"rank-1 weights at ratio {ratio}: outputs differ by {float(np.abs(g - e).max()):.3g}"
    return None


def run_seeds(seeds, modes=("manual", "auto"), schemes=SCHEMES) -> list[tuple[int, str, str, str]]:
    """Every (seed, scheme, mode) that failed, with its description."""
    failures = []
    save = os.environ.get("ONNX_COMPRESS_FUZZ_SAVE")
    for seed in seeds:
        model, feeds = fuzzgraphs.generate(seed)
        expected = fuzzgraphs.run(model, feeds)
        rng = np.random.default_rng(10_000 + seed)
        with tempfile.TemporaryDirectory(prefix="fuzz_") as tmp:
            folder = Path(tmp)
            dynamic = not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
            extra = np.random.default_rng(seed)
            np.savez(folder / "data.npz", **{  # a dynamic batch gets more samples than the feeds
                k: np.concatenate([v, extra.standard_normal(v.shape).astype(np.float32)]) if dynamic else v
                for k, v in feeds.items()})
            for scheme in schemes:
                for mode in modes:
                    if mode == "auto" and seed % 3:  # auto mode on every third graph (it costs more)
                        continue
                    why = _check_case(model, feeds, expected, scheme, mode, rng, folder)
                    if why is not None:
                        failures.append((seed, scheme, mode, why))
                        if save:
                            onnx.save(model, str(Path(save) / f"fuzz_{seed}.onnx"))
            if "manual" in modes and seed % 2 == 0 and "weight_svd" in schemes:
                why = _check_rank_one(model, feeds, rng)
                if why is not None:
                    failures.append((seed, "weight_svd", "rank-1", why))
    return failures


def summary(failures) -> str:
    if not failures:
        return "fuzz: 0 failures"
    groups = defaultdict(list)
    for seed, scheme, mode, why in failures:
        groups[why.split(":")[0] + ":" + why.split(":")[1][:60] if ":" in why else why].append(f"{seed}/{scheme}/{mode}")
    lines = [f"fuzz: {len(failures)} failures in {len(groups)} kinds"]
    for kind, cases in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {len(cases):4d}  {kind}   e.g. {', '.join(cases[:4])}")
    lines += [f"  {seed}/{scheme}/{mode}: {why}" for seed, scheme, mode, why in failures[:30]]
    return "\n".join(lines)


def test_generated_graphs_are_valid():
    """The generator's own promise, and that it draws the ops it claims to."""
    seen = set()
    for seed in range(300):
        model, feeds = fuzzgraphs.generate(seed)  # checks full_check itself
        fuzzgraphs.run(model, feeds)
        seen |= {n.op_type for n in model.graph.node}
        seen |= {f"opset{model.opset_import[0].version}"}
    wanted = {"Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Concat", "Split", "Slice", "Reshape",
              "Flatten", "Transpose", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Pad", "Mul",
              "If", "Constant", "Identity", "Clip", "HardSwish"} | {f"opset{v}" for v in fuzzgraphs.OPSETS}
    assert wanted <= seen, wanted - seen


FAST = [range(i, i + 25) for i in range(0, 200, 25)]
SLOW = [range(i, i + 100) for i in range(100_000, 102_000, 100)]


@pytest.mark.parametrize("seeds", FAST, ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_fuzz_fast(seeds):
    failures = run_seeds(seeds)
    assert not failures, summary(failures)


@pytest.mark.slow
@pytest.mark.parametrize("seeds", SLOW, ids=lambda r: f"seeds{r.start}-{r.stop - 1}")
def test_fuzz_slow(seeds):
    failures = run_seeds(seeds)
    assert not failures, summary(failures)
