#!/usr/bin/env python3
"""Auto mode at scale: the ResNet-50-class model (tools/build_resnet50.py) at 224x224, auto
weight SVD and auto channel pruning with the fidelity evaluator on K images.

Per scheme, in a process of its own: peak RSS (ru_maxrss; a sampler thread, per phase), the
bytes the dictionary's objects hold at its last candidate, the dictionary's wall and CPU
seconds and evaluations, and where they go (inclusive seconds and calls of the swapper,
sessions, cache look-ups, suffix runs, batches, the scheme's previews, calibration sampling;
`--profile`: cProfile's top entries). Reference, in processes of their own just before and
after the case: one full-model evaluation on a plain ready session (median of
`--full-repeats`) times the dictionary's evaluations. Also the model's cache plan: each unit's
suffix MAC share and boundary bytes per image, and the work a budgeted prefix cache leaves.

    python tools/bench_scale.py [--images 256] [--scheme weight_svd,channel_pruning]
        [--candidates 10] [--target 0.5] [--calib-images 64] [--profile] [--no-write]

A case past `--max-rss-gb` stops and reports its phase peaks. Results: stdout and
build/scale/results.json after each case. The model and data are built when missing (torch).
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "build" / "scale"
MODEL, EVAL, CALIB = SCALE / "resnet50.onnx", SCALE / "resnet50_eval.npz", SCALE / "resnet50_calib.npz"
GiB = 2**30


# ------------------------------------------------------------------ measuring instruments
def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler(threading.Thread):
    """This process's RSS every `interval` s: the peak overall and per phase; past `limit`
    bytes, `on_limit()` runs and the process exits (status 3)."""

    def __init__(self, limit: float, on_limit, interval: float = 0.02):
        super().__init__(daemon=True)
        self.limit, self.on_limit, self.interval = limit, on_limit, interval
        self.phase, self.peaks, self.peak, self.stop = "start", {}, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            if self.note() > self.limit:
                self.on_limit()
                os._exit(3)
            time.sleep(self.interval)

    def note(self) -> int:
        rss = rss_bytes()
        self.peak = max(self.peak, rss)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
        return rss

    def enter(self, phase: str) -> None:
        self.note(), setattr(self, "phase", phase)


class Probe:
    """Inclusive wall and CPU seconds and calls of wrapped callables (attributes missing from
    the package version measured are listed, not wrapped)."""

    def __init__(self):
        self.seconds, self.cpu, self.calls, self.missing = {}, {}, {}, []

    def add(self, label: str, seconds: float, cpu: float = 0.0) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        self.cpu[label] = self.cpu.get(label, 0.0) + cpu
        self.calls[label] = self.calls.get(label, 0) + 1

    def timed(self, label: str, fn):
        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t, time.process_time() - c)
        return wrapper

    def timed_iter(self, label: str, fn):  # generator functions: the time of producing each item
        def wrapper(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                t, c = time.perf_counter(), time.process_time()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.add(label, time.perf_counter() - t, time.process_time() - c)
                yield item
        return wrapper

    def patch(self, owner, attr: str, label: str) -> None:
        if getattr(owner, attr, None) is None:
            self.missing.append(label)
        else:
            setattr(owner, attr, self.timed(label, getattr(owner, attr)))

    def table(self) -> dict:
        return {k: {"seconds": round(v, 3), "cpu_seconds": round(self.cpu[k], 3), "calls": self.calls[k]}
                for k, v in sorted(self.seconds.items())}


def install(probe: Probe, sampler: Sampler, held: dict) -> None:
    """Wraps the dictionary's moving parts (inclusive timings; they nest)."""
    import onnxruntime as ort

    from onnx_compress import data as data_mod
    from onnx_compress import evaluators
    from onnx_compress.runtime import activations, swap
    from onnx_compress.search import dictionary

    probe.patch(ort.InferenceSession, "__init__", "ort.InferenceSession() (every session)")
    probe.patch(ort.InferenceSession, "run", "ort.run (every run)")
    probe.patch(ort.OrtValue, "ortvalue_from_numpy", "ort.OrtValue.ortvalue_from_numpy")
    for cls, attr in (("WeightSwapper", "__init__"), ("WeightSwapper", "session"), ("PrefixCache", "__init__"),
                      ("PrefixCache", "candidate"), ("PrefixCache", "store"), ("PrefixCache", "lookup"),
                      ("_Recorder", "run"), ("_SuffixSession", "run")):
        probe.patch(getattr(swap, cls, None), attr, f"swap.{cls}.{attr}")
    for name in ("_feed_key", "_same_feed", "suffix_model"):
        probe.patch(swap, name, f"swap.{name}")
    probe.patch(getattr(activations, "Sampler", None), "_run", "activations.Sampler._run (calibration tensors)")
    probe.patch(evaluators, "_agreement", "evaluators._agreement")
    view = types.SimpleNamespace(**{k: getattr(data_mod, k) for k in dir(data_mod) if not k.startswith("__")})
    view.model_feeds = probe.timed_iter("evaluators: model_feeds (cutting batches)", data_mod.model_feeds)
    evaluators.data_mod = view  # the evaluators' batches timed; nothing else sees the view
    for cls_name in ("PrefixCache", "WeightSwapper"):  # weak references, for the memory account
        cls = getattr(swap, cls_name, None)
        if cls is not None:
            def init(self, *args, _init=cls.__init__, _name=cls_name, **kwargs):
                _init(self, *args, **kwargs)
                held.setdefault(_name, []).append(weakref.ref(self))
            cls.__init__ = init
    _wrap_dictionary(dictionary, probe, sampler, held)


def _wrap_dictionary(dictionary, probe: Probe, sampler: Sampler, held: dict) -> None:
    build = dictionary.build_dictionary

    def wrapper(proto, units, eval_callback, *args, **kwargs):
        label = "unit.preview (scheme's candidate weights)"
        units = [dataclasses.replace(u, preview=probe.timed(label, u.preview)) for u in units]
        calls, last = {"n": 0}, 1 + sum(len(u.candidates) for u in units)

        def callback(session, iterations, use_cuda):
            calls["n"] += 1
            sampler.enter("baseline (recording)" if calls["n"] == 1 else "candidates")
            try:
                return eval_callback(session, iterations, use_cuda)
            finally:
                if calls["n"] == last:  # the dictionary's objects are all alive here: kept, counted after
                    held["rss_at_last_candidate"] = rss_bytes()
                    held["alive"] = {k: [r() for r in held.get(k, []) if r() is not None] for k in ("PrefixCache",
                                                                                                    "WeightSwapper")}

        sampler.enter("dictionary set-up (swapper, prefix cache)")
        held["units"] = len(units)
        t, c = time.perf_counter(), time.process_time()
        result = build(proto, units, probe.timed("eval callback", callback), *args, **kwargs)
        probe.add("build_dictionary", time.perf_counter() - t, time.process_time() - c)
        held["account"] = account(held.pop("alive", {}), held.get("rss_at_last_candidate", 0))
        held["dictionary"] = result
        sampler.enter("after the dictionary (selection, final compression)")
        return result
    dictionary.build_dictionary = wrapper


def account(alive: dict, rss: int) -> dict:
    """Bytes the dictionary's objects held in Python at its last candidate (counted after the
    dictionary, outside its timing), and the RSS then."""
    out = {"rss_at_last_candidate": rss}
    for cache in alive.get("PrefixCache", []):
        plans, store = getattr(cache, "plans", {}), getattr(cache, "store_", None)
        stats = store.stats() if store is not None else {}
        out.update(cache_memory_bytes=int(stats.get("memory_mb", 0) * 2**20),
                   cache_disk_bytes=int(stats.get("disk_mb", 0) * 2**20), cache_dropped=stats.get("dropped"),
                   cache_memory_budget_bytes=int(stats.get("memory_budget_mb", 0) * 2**20),
                   cache_record_bytes=getattr(cache, "record_bytes", None),
                   cache_feeds_stored=len(getattr(cache, "_feed_names", {})), cache_recomputed=cache.recomputed,
                   cache_boundary_tensors=len(getattr(cache, "needed", ())), suffix_models=len(plans),
                   suffix_model_proto_bytes=int(sum(p[0].ByteSize() for p in plans.values())))
    swappers = alive.get("WeightSwapper", [])
    out["swappers"] = len(swappers)
    out["swapper_model_bytes"] = int(sum(len(s.model_bytes) for s in swappers if isinstance(s.model_bytes, bytes)))
    out["swapper_value_bytes"] = int(sum(v.nbytes for s in swappers for v in getattr(s, "values", {}).values()))
    return out


# ------------------------------------------------------------------------------ the cases
def eval_data(images: int) -> dict:
    with np.load(EVAL) as npz:
        return {"input": np.ascontiguousarray(npz["input"][:images])}


def full_case(args) -> dict:
    """Full-model evaluations on a plain ready session (after the reference's recording)."""
    import onnx_compress as oc
    from onnx_compress import evaluators, runtime

    evaluate = evaluators.fidelity(eval_data(args.images), batch_size=args.batch, measure=args.measure)
    t = time.perf_counter()
    sess = runtime.session(oc.ir.load(str(MODEL)))
    create, t = time.perf_counter() - t, time.perf_counter()
    evaluate(sess, None, False)  # records the reference
    first, times, cpu = time.perf_counter() - t, [], []
    for _ in range(args.full_repeats):
        t, c = time.perf_counter(), time.process_time()
        evaluate(sess, None, False)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"case": "full", "images": args.images, "session_seconds": create, "record_seconds": first,
            "eval_seconds": times, "eval_median": statistics.median(times), "eval_cpu_seconds": cpu,
            "eval_cpu_median": statistics.median(cpu), "loadavg": os.getloadavg()}


def scheme_case(args) -> dict:
    import onnx_compress as oc
    from onnx_compress import evaluators

    probe, held = Probe(), {}
    out = {"case": args.case, "images": args.images, "candidates": args.candidates, "target": args.target,
           "calib_images": args.calib_images if args.case == "channel_pruning" else None}

    def snapshot(aborted: bool = False) -> dict:
        out.update(aborted=aborted, sampled_peak_bytes=sampler.peak, phase_peaks_bytes=dict(sampler.peaks),
                   ru_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   timing=probe.table(), not_instrumented=probe.missing, memory=held.get("account", {}))
        if aborted:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        return out

    sampler = Sampler(args.max_rss_gb * GiB, lambda: snapshot(aborted=True))
    sampler.start()
    evaluate = evaluators.fidelity(eval_data(args.images), batch_size=args.batch, measure=args.measure)
    install(probe, sampler, held)
    extra = {} if args.case != "channel_pruning" else dict(
        data={"input": np.load(CALIB)["input"][:args.calib_images].copy()}, num_reconstruction_samples=args.samples)
    sampler.enter("load, units (scheme set-up, calibration)")
    profiler = cProfile.Profile() if args.profile else None
    profiler.enable() if profiler else None
    t = time.perf_counter()
    _, stats = oc.compress_auto(str(MODEL), args.case, args.target, evaluate, candidates=args.candidates,
                                verify_finalists=False, **extra)
    out["compress_auto_seconds"] = time.perf_counter() - t
    if profiler is not None:
        profiler.disable()
        out["profile"] = profile_top(profiler, args)
    sampler.stop.set()
    d = held["dictionary"]
    out.update(units=held["units"], evaluations=d.evaluations, dictionary_seconds=d.seconds,
               dictionary_cpu_seconds=probe.cpu["build_dictionary"], dictionary_eval_seconds=d.eval_seconds,
               dictionary_session_seconds=d.session_seconds, final_score=stats.final_score,
               mac_ratio=stats.mac_ratio, package=oc.__file__)
    return snapshot()


def profile_top(profiler, args, count: int = 30) -> dict:
    path = SCALE / f"profile_{args.case}_{args.images}.prof"
    profiler.dump_stats(str(path))
    tops = {"file": str(path)}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(count)
        tops[key] = [line for line in buf.getvalue().split("\n")[6:] if line.strip()]  # header dropped
    return tops


def cache_plan(images=(64, 256, 1024), budgets=(1, 2, 4)) -> dict:
    """Per Conv/Gemm unit: the suffix's share of the model's MACs and the bytes per image of
    the boundary tensors its suffix reads; the work left (in full-model evaluations per
    candidate) when boundaries are cached by saved work per byte within a budget."""
    import onnx

    g = onnx.shape_inference.infer_shapes(onnx.load(str(MODEL))).graph
    dims = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in [*g.value_info, *g.input]}
    inits = {t.name: list(t.dims) for t in g.initializer}
    readers: dict = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def macs(n):
        w = inits.get(n.input[1], []) if len(n.input) > 1 else []
        return int(np.prod(dims[n.output[0]]) * np.prod(w[1:])) if n.op_type == "Conv" else \
            int(np.prod(w)) if n.op_type == "Gemm" else 0
    total, units = sum(macs(n) for n in g.node), []
    for start in (n for n in g.node if n.op_type in ("Conv", "Gemm")):
        seen, stack = set(), [start]
        while stack:
            m = stack.pop()
            if id(m) not in seen:
                seen.add(id(m))
                stack.extend(r for o in m.output for r in readers.get(o, []))
        nodes = [m for m in g.node if id(m) in seen]
        made = {o for m in nodes for o in m.output}
        edge = {i: int(np.prod(dims[i])) * 4 for m in nodes for i in m.input if i and i not in made and i not in inits}
        units.append((start.name, sum(macs(m) for m in nodes) / total, edge))
    plan = {"units": len(units), "mean_suffix_share": float(np.mean([u[1] for u in units])),
            "union_boundary_bytes_per_image": sum({b: s for u in units for b, s in u[2].items()}.values()),
            "max_unit_boundary_bytes_per_image": max(sum(u[2].values()) for u in units),
            "per_unit": [(n, round(s, 4), sum(e.values())) for n, s, e in units]}
    order = sorted(units, key=lambda u: -(1 - u[1]) / max(1, sum(u[2].values())))
    for n in images:
        for gb in budgets:
            held, used, work = set(), 0, 0.0
            for _, share, edge in order:
                extra = sum(s for b, s in edge.items() if b not in held) * n
                fits = used + extra <= gb * GiB
                held, used = (held | set(edge), used + extra) if fits else (held, used)
                work += share if fits else 1.0
            plan[f"work_{n}img_{gb}GiB"] = round(work / len(units), 3)
    return plan


# -------------------------------------------------------------------------------- driver
def child(args, case: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    keep = ("images", "candidates", "target", "batch", "measure", "full_repeats", "samples", "calib_images",
            "max_rss_gb")
    cmd = [sys.executable, __file__, "--case", case, "--json", str(out)]
    cmd += [x for k in keep for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    cmd += ["--profile"] if args.profile and case != "full" else []
    print(f"[{time.strftime('%H:%M:%S')}] {case}: {' '.join(cmd[2:])}", flush=True)
    rc = subprocess.run(cmd).returncode
    result = json.loads(out.read_text()) if out.stat().st_size else {"case": case}
    out.unlink()
    return {**result, "failed": rc} if rc else result


def compare(row: dict, before: dict, after: dict) -> dict:
    """The dictionary against its evaluations as full-model evaluations timed just before and
    just after it (wall: the mean of the two medians; CPU: process CPU seconds, all threads,
    which other jobs on the machine inflate much less than wall time)."""
    row["full"] = {"before": before, "after": after}
    if "evaluations" not in row or "eval_median" not in before or "eval_median" not in after:
        return row
    row["full_eval_median"] = (before["eval_median"] + after["eval_median"]) / 2
    row["full_eval_cpu_median"] = (before["eval_cpu_median"] + after["eval_cpu_median"]) / 2
    row["full_equivalent_seconds"] = row["evaluations"] * row["full_eval_median"]
    row["full_equivalent_cpu_seconds"] = row["evaluations"] * row["full_eval_cpu_median"]
    row["ratio"] = row["dictionary_seconds"] / row["full_equivalent_seconds"]
    row["cpu_ratio"] = row["dictionary_cpu_seconds"] / row["full_equivalent_cpu_seconds"]
    return row


def show(r: dict) -> None:
    gib = lambda n: f"{n / GiB:.2f}"  # noqa: E731
    print(f"\n== {r['case']}, {r['images']} images" + (" (STOPPED at --max-rss-gb)" if r.get("aborted") else "")
          + (f" (exit status {r['failed']})" if r.get("failed") else ""))
    if "ratio" in r:
        print(f"dictionary: {r['units']} units, {r['evaluations']} evaluations, {r['dictionary_seconds']:.1f}s wall "
              f"({r['dictionary_cpu_seconds']:.1f}s CPU); full evaluation {r['full_eval_median']:.3f}s "
              f"({r['full_eval_cpu_median']:.3f}s CPU) x {r['evaluations']} = {r['full_equivalent_seconds']:.1f}s "
              f"({r['full_equivalent_cpu_seconds']:.1f}s CPU); ratio {r['ratio']:.2f} wall, {r['cpu_ratio']:.2f} CPU; "
              f"score {r['final_score']:.4f} at MAC ratio {r['mac_ratio']:.4f}")
    print(f"peak RSS {gib(r.get('sampled_peak_bytes', 0))} GiB sampled, ru_maxrss {gib(r.get('ru_maxrss_bytes', 0))} GiB;"
          " by phase: " + ", ".join(f"{k} {gib(v)}" for k, v in r.get("phase_peaks_bytes", {}).items()))
    print("held at the last candidate: " + ", ".join(
        f"{k} {gib(v) + ' GiB' if 'bytes' in k else v}" for k, v in r.get("memory", {}).items()))
    print("inclusive timings (they nest): wall, CPU, calls")
    for k, v in sorted(r.get("timing", {}).items(), key=lambda kv: -kv[1]["seconds"]):
        print(f"  {v['seconds']:9.2f}s {v['cpu_seconds']:9.2f}s {v['calls']:7d}x  {k}")
    for key in ("tottime", "cumulative") if "profile" in r else ():
        print(f"cProfile top by {key} ({r['profile']['file']}):\n" + "\n".join(r["profile"][key][:22]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="evaluation images (fidelity evaluator)")
    ap.add_argument("--scheme", default="weight_svd,channel_pruning", help="comma-separated schemes")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64, help="the evaluator's batch size")
    ap.add_argument("--measure", default="auto", choices=("auto", "top1", "cosine"), help="fidelity measure")
    ap.add_argument("--full-repeats", type=int, default=3, help="timed full-model evaluations (median)")
    ap.add_argument("--calib-images", type=int, default=64, help="channel pruning's calibration images")
    ap.add_argument("--samples", type=int, default=2000, help="channel pruning's reconstruction samples")
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="stop a case past this RSS")
    ap.add_argument("--profile", action="store_true", help="cProfile each case (slower; top entries printed)")
    ap.add_argument("--no-write", action="store_true", help="do not write build/scale/results.json")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        result = full_case(args) if args.case == "full" else scheme_case(args)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        return
    build = [sys.executable, str(ROOT / "tools" / "build_resnet50.py"), "--images", str(max(256, args.images))]
    if not (MODEL.exists() and EVAL.exists() and CALIB.exists()):
        subprocess.run(build, check=True)
    if len(np.load(EVAL)["input"]) < args.images:  # more evaluation images: the data again, the same model
        subprocess.run(build + ["--data-only"], check=True)
    doc = {"start": {"loadavg": os.getloadavg(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S")},
           "args": vars(args), "cache_plan": cache_plan(), "rows": []}
    print("cache plan: " + ", ".join(f"{k} {v}" for k, v in doc["cache_plan"].items() if k != "per_unit"))
    for scheme in [s.strip() for s in args.scheme.split(",") if s.strip()]:
        before = child(args, "full")
        row = child(args, scheme)
        doc["rows"].append(compare(row, before, child(args, "full")))
        show(row)
        doc["end"] = {"loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        if not args.no_write:
            (SCALE / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nmachine: {doc['start']['cpus']} CPUs; load average at start {doc['start']['loadavg']}, at end "
          f"{doc['end']['loadavg']}: other jobs inflate wall seconds; CPU seconds much less")
    print("" if args.no_write else f"wrote {SCALE / 'results.json'}")


if __name__ == "__main__":
    main()
