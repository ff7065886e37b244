"""Behaviour digest: prove that a refactor left compression behaviour unchanged.

Claim checked: with the same seeds, the bundled reference models (models/*.onnx) and
AIMET's anchor model (../shared/anchors/resnet_small.onnx) compress to byte-identical
models. A fixed list of deterministic jobs runs through the public API
(`onnx_compress.compress` / `compress_auto`); for each job it records the sha256 of
`model.SerializeToString()` (the primary check) and, from the statistics, mac_before,
mac_after, memory_after, final_score and, in auto mode, the chosen ratios
(stats.selection["chosen"]).

The input files (models, calibration and test data) are always those of the checkout this
script lives in, whichever library version runs them; their sha256 are in the JSON too.

Usage (from the repository root, venv active):

    python tools/behaviour_digest.py --list                 # the jobs
    python tools/behaviour_digest.py --out FILE.json        # run on the importable onnx_compress
    python tools/behaviour_digest.py --ref b0a4b52 --out FILE.json
                                     # run on a temporary git worktree of b0a4b52
    python tools/behaviour_digest.py --against b0a4b52      # REF vs the current working tree
    python tools/behaviour_digest.py --against b0a4b52 --current HEAD
                                     # REF vs a second worktree (working tree mid-edit)
    python tools/behaviour_digest.py --against b0a4b52 --jobs resnet_small.weight_svd,anchor.manual_cp

--against prints one row per job (same / DIFFERENT, both hashes, mac_after and final score
on each side) and exits 1 if any model hash differs or a job failed on either side, 0 when
all are the same. Worktrees are made with `git worktree add --detach` in a temporary folder
outside the repository and removed afterwards; each side runs in its own subprocess with
PYTHONPATH pointing at its tree, and the subprocess checks that `onnx_compress.__file__`
lies under that tree. Usage errors exit 2. Progress goes to stderr.

Running every job takes about 4-5 minutes per side on a 2-core machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
ANCHORS = (ROOT / ".." / "shared" / "anchors").resolve()
CALIB = MODELS / "digits32_calib.npz"
TEST = MODELS / "digits32_test.npz"
ANCHOR_MODEL = ANCHORS / "resnet_small.onnx"
ANCHOR_CALIB = ANCHORS / "digits32_calib.npz"
ANCHOR_TEST = ANCHORS / "digits32_test.npz"

REFERENCE_MODELS = ("resnet_small", "vgg_small", "mobilenet_small")  # all three are in README's loop
SAMPLES = 500
SEED = 0
CANDIDATES = 10  # compress_auto's default


def _jobs() -> list[dict]:
    """The fixed job list: name -> what to run. Every job is seeded (seed=0)."""
    jobs = []
    for m in REFERENCE_MODELS:
        model = MODELS / f"{m}.onnx"
        base = dict(model=model, mode="manual", test=TEST)
        jobs += [
            dict(base, name=f"{m}.weight_svd", scheme="weight_svd", ratio=0.5),
            dict(base, name=f"{m}.spatial_svd", scheme="spatial_svd", ratio=0.5),
            dict(base, name=f"{m}.weight_svd_data", scheme="weight_svd", ratio=0.5, data=CALIB,
                 samples=SAMPLES),
            dict(base, name=f"{m}.channel_pruning", scheme="channel_pruning", ratio=0.5, data=CALIB,
                 samples=SAMPLES),
        ]
    jobs += [
        dict(name="resnet_small.channel_pruning_greedy", model=MODELS / "resnet_small.onnx", mode="manual",
             scheme="channel_pruning", ratio=0.5, data=CALIB, samples=SAMPLES, test=TEST, selection="greedy"),
        dict(name="resnet_small.weight_svd_mult8", model=MODELS / "resnet_small.onnx", mode="manual",
             scheme="weight_svd", ratio=0.5, test=TEST, multiplicity=8),
        dict(name="resnet_small.pipeline_ssvd_cp", model=MODELS / "resnet_small.onnx", mode="manual",
             scheme=["spatial_svd", "channel_pruning"], ratio=0.7, data=CALIB, samples=SAMPLES, test=TEST),
        dict(name="resnet_small.auto_cp", model=MODELS / "resnet_small.onnx", mode="auto",
             scheme="channel_pruning", target=0.5, data=CALIB, samples=SAMPLES, test=TEST,
             candidates=CANDIDATES),
        dict(name="vgg_small.auto_weight_svd", model=MODELS / "vgg_small.onnx", mode="auto",
             scheme="weight_svd", target=0.5, test=TEST, candidates=CANDIDATES),
        dict(name="vgg_small.auto_spatial_svd_data", model=MODELS / "vgg_small.onnx", mode="auto",
             scheme="spatial_svd", target=0.6, data=CALIB, samples=SAMPLES, test=TEST, candidates=CANDIDATES),
        # AIMET's anchor (README of ../shared/anchors): manual mode on layer2's two conv2s,
        # and auto-mode channel pruning with the first conv ignored, as AIMET was run.
        dict(name="anchor.manual_cp", model=ANCHOR_MODEL, mode="manual", scheme="channel_pruning",
             ratio={"/layer2/layer2.0/conv2/Conv": 0.5, "/layer2/layer2.1/conv2/Conv": 0.5},
             data=ANCHOR_CALIB, samples=SAMPLES, test=ANCHOR_TEST),
        dict(name="anchor.manual_spatial_svd", model=ANCHOR_MODEL, mode="manual", scheme="spatial_svd",
             ratio=0.5, ignore=["/conv1/Conv"], test=ANCHOR_TEST),
        dict(name="anchor.auto_cp", model=ANCHOR_MODEL, mode="auto", scheme="channel_pruning", target=0.5,
             data=ANCHOR_CALIB, samples=SAMPLES, test=ANCHOR_TEST, candidates=CANDIDATES,
             ignore=["/conv1/Conv"]),
        dict(name="anchor.auto_weight_svd", model=ANCHOR_MODEL, mode="auto", scheme="weight_svd", target=0.5,
             test=ANCHOR_TEST, candidates=CANDIDATES, ignore=["/conv1/Conv"]),
    ]
    return jobs


JOBS = _jobs()
JOB_NAMES = [j["name"] for j in JOBS]


def _describe(job: dict) -> str:
    scheme = "+".join(job["scheme"]) if isinstance(job["scheme"], list) else job["scheme"]
    parts = [job["mode"], scheme]
    if job["mode"] == "auto":
        parts.append(f"target={job['target']} candidates={job['candidates']}")
    elif isinstance(job["ratio"], dict):
        parts.append("ratios=" + ",".join(f"{k}={v}" for k, v in job["ratio"].items()))
    else:
        parts.append(f"ratio={job['ratio']}")
    if job.get("data"):
        parts.append(f"data={Path(job['data']).name} samples={job['samples']}")
    for key in ("selection", "multiplicity"):
        if key in job:
            parts.append(f"{key}={job[key]}")
    if job.get("ignore"):
        parts.append("ignore=" + ",".join(job["ignore"]))
    parts.append(f"model={job['model'].relative_to(job['model'].parents[1])}")
    return " ".join(parts)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _selected(spec: str | None) -> list[dict]:
    if not spec:
        return JOBS
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in JOB_NAMES]
    if unknown:
        raise SystemExit(_usage_error(f"unknown job(s): {', '.join(unknown)} (see --list)"))
    if not names:
        raise SystemExit(_usage_error("--jobs is empty"))
    return [j for j in JOBS if j["name"] in names]


def _usage_error(msg: str) -> int:
    print(f"behaviour_digest: error: {msg}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------- one side, in-process
def _run_job(oc, evaluators, job: dict) -> dict:
    evaluate = evaluators.accuracy(str(job["test"]))
    common = dict(data=str(job["data"]) if job.get("data") else None, seed=SEED,
                  modules_to_ignore=job.get("ignore"))
    if job.get("data"):
        common["num_reconstruction_samples"] = job["samples"]
    for key in ("selection", "multiplicity"):
        if key in job:
            common[key] = job[key]
    if job["mode"] == "manual":
        model, stats = oc.compress(str(job["model"]), job["scheme"], job["ratio"], eval_callback=evaluate,
                                   **common)
    else:
        model, stats = oc.compress_auto(str(job["model"]), job["scheme"], job["target"], evaluate,
                                        candidates=job["candidates"], **common)
    chosen = None
    if job["mode"] == "auto":
        selection = getattr(stats, "selection", None) or {}
        chosen = {str(k): float(v) for k, v in (selection.get("chosen") or {}).items()}
    return dict(
        sha256=hashlib.sha256(model.SerializeToString()).hexdigest(),
        mac_before=stats.mac_before, mac_after=stats.mac_after, memory_after=stats.memory_after,
        final_score=stats.final_score, chosen=chosen,
    )


def run_here(jobs: list[dict], expect_root: Path | None) -> dict:
    """Run `jobs` on the onnx_compress importable here; the digest as a dict."""
    missing = sorted({str(p) for j in jobs for p in (j["model"], j.get("data"), j["test"])
                      if p is not None and not Path(p).is_file()})
    if missing:
        raise SystemExit(_usage_error(f"input file(s) missing: {', '.join(missing)}"))
    try:
        import onnx_compress as oc
        from onnx_compress import evaluators
    except Exception as exc:  # noqa: BLE001 - reported as a clear error
        raise SystemExit(_usage_error(f"cannot import onnx_compress: {type(exc).__name__}: {exc}"))
    package = Path(oc.__file__).resolve()
    if expect_root is not None:
        root = expect_root.resolve()
        if root not in package.parents:
            raise SystemExit(_usage_error(f"onnx_compress was imported from {package}, not from under {root} "
                                          f"(PYTHONPATH={os.environ.get('PYTHONPATH')!r})"))
    _log(f"behaviour_digest: onnx_compress from {package.parent}")
    import numpy
    import onnx
    import onnxruntime

    inputs = sorted({Path(p) for j in jobs for p in (j["model"], j.get("data"), j["test"]) if p is not None})
    out = dict(meta=dict(onnx_compress=str(package.parent), python=platform.python_version(),
                         numpy=numpy.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                         inputs={str(p): _sha256_file(p) for p in inputs}),
               jobs={})
    start = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        _log(f"[{i}/{len(jobs)}] {job['name']}: {_describe(job)}")
        try:
            result = _run_job(oc, evaluators, job)
        except Exception as exc:  # noqa: BLE001 - a failing job is a result, not a crash
            result = dict(sha256=None, error=f"{type(exc).__name__}: {exc}")
        result["seconds"] = round(time.perf_counter() - t0, 2)
        out["jobs"][job["name"]] = result
        status = result["sha256"][:12] if result["sha256"] else "ERROR " + result["error"]
        _log(f"[{i}/{len(jobs)}] {job['name']}: {status}  ({result['seconds']:.1f} s)")
    out["meta"]["seconds"] = round(time.perf_counter() - start, 1)
    _log(f"behaviour_digest: {len(jobs)} jobs in {out['meta']['seconds']:.1f} s")
    return out


def _write(path: str, digest: dict) -> None:
    Path(path).write_text(json.dumps(digest, indent=1, sort_keys=True) + "\n")
    _log(f"behaviour_digest: wrote {path}")


# --------------------------------------------------------------------- worktrees, subprocesses
def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


class Worktree:
    """A detached `git worktree` of `ref` in a temporary folder outside the repo, removed on exit."""

    def __init__(self, ref: str):
        self.ref = ref
        self.parent = None
        self.path = None

    def __enter__(self) -> "Worktree":
        try:
            self.commit = _git("rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}")
        except RuntimeError:
            raise SystemExit(_usage_error(f"{self.ref!r} is not a commit of {ROOT}"))
        self.parent = Path(tempfile.mkdtemp(prefix="behaviour_digest_"))
        self.path = self.parent / "tree"
        _log(f"behaviour_digest: worktree of {self.ref} ({self.commit[:10]}) at {self.path}")
        try:
            _git("worktree", "add", "--detach", str(self.path), self.commit)
        except RuntimeError as exc:
            shutil.rmtree(self.parent, ignore_errors=True)
            raise SystemExit(_usage_error(str(exc)))
        return self

    def __exit__(self, *exc) -> None:
        try:
            _git("worktree", "remove", "--force", str(self.path))
        except RuntimeError as err:
            _log(f"behaviour_digest: warning: {err}")
        shutil.rmtree(self.parent, ignore_errors=True)
        try:
            _git("worktree", "prune")
        except RuntimeError:
            pass


def run_side(label: str, tree: Path, jobs: list[dict], commit: str | None = None) -> dict:
    """Run `jobs` in a subprocess whose onnx_compress is the one under `tree`."""
    with tempfile.TemporaryDirectory(prefix="behaviour_digest_out_") as tmp:
        out = Path(tmp) / "digest.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(tree)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--expect-root", str(tree),
               "--jobs", ",".join(j["name"] for j in jobs)]
        _log(f"behaviour_digest: == side {label}: {tree}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=tmp)  # cwd outside both trees
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(_usage_error(f"side {label} ({tree}) failed with exit status {proc.returncode}"))
        digest = json.loads(out.read_text())
        digest["meta"]["label"] = label
        digest["meta"]["commit"] = commit  # None: the working tree
        digest["meta"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return digest


def _short(h) -> str:
    return h[:12] if h else "ERROR"


def _score(x) -> str:
    return "-" if x is None else f"{x:.4f}"


STAT_KEYS = ("mac_before", "mac_after", "memory_after", "final_score", "chosen")


def compare(a: dict, b: dict, jobs: list[dict]) -> int:
    la, lb = a["meta"]["label"], b["meta"]["label"]
    rows = [("job", "result", f"sha256 {la}", f"sha256 {lb}", f"mac_after {la}", f"mac_after {lb}",
             f"score {la}", f"score {lb}")]
    different = 0
    for job in jobs:
        ra, rb = a["jobs"][job["name"]], b["jobs"][job["name"]]
        same = ra.get("sha256") is not None and ra.get("sha256") == rb.get("sha256")
        different += not same
        stats_differ = any(ra.get(k) != rb.get(k) for k in STAT_KEYS)
        rows.append((job["name"], ("same*" if stats_differ else "same") if same else "DIFFERENT", _short(ra.get("sha256")),
                     _short(rb.get("sha256")), str(ra.get("mac_after", "-")), str(rb.get("mac_after", "-")),
                     _score(ra.get("final_score")), _score(rb.get("final_score"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for job in jobs:
        for side, r in ((la, a["jobs"][job["name"]]), (lb, b["jobs"][job["name"]])):
            if r.get("error"):
                print(f"{job['name']} failed on {side}: {r['error']}")
    for job in jobs:  # same model, different figures: worth a look even when the hash agrees
        ra, rb = a["jobs"][job["name"]], b["jobs"][job["name"]]
        keys = [k for k in STAT_KEYS if ra.get(k) != rb.get(k)]
        if keys and ra.get("sha256") and rb.get("sha256"):
            print(f"{job['name']}: statistics differ ({', '.join(keys)})"
                  + (" with the same model bytes (same*): not counted as a difference" if
                     ra["sha256"] == rb["sha256"] else ""))
    if a["meta"]["inputs"] != b["meta"]["inputs"]:
        print("warning: the two sides read different input files (meta.inputs differ)")
    print(f"{la}: {a['meta']['seconds']} s of jobs, {b['meta']['label']}: {b['meta']['seconds']} s of jobs")
    if different:
        print(f"{different} of {len(jobs)} jobs DIFFERENT")
        return 1
    print(f"all {len(jobs)} jobs same")
    return 0


# --------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Digest of onnx_compress behaviour on fixed seeded jobs "
                                            "(see the module docstring).")
    p.add_argument("--out", help="write the digest JSON here (with --ref or alone; with --against: "
                                 "both sides' digests)")
    p.add_argument("--against", metavar="REF", help="compare REF (a worktree) with the current tree")
    p.add_argument("--current", metavar="REF2", help="with --against: use a worktree of REF2 instead of "
                                                     "the working tree")
    p.add_argument("--ref", metavar="REF", help="run one side on a worktree of REF (with --out)")
    p.add_argument("--jobs", help="comma-separated job names (default: all)")
    p.add_argument("--list", action="store_true", help="list the jobs and exit")
    p.add_argument("--expect-root", type=Path, help=argparse.SUPPRESS)  # subprocess: check the import
    args = p.parse_args(argv)

    if args.list:
        for job in JOBS:
            print(f"{job['name']:32s} {_describe(job)}")
        return 0
    jobs = _selected(args.jobs)
    if args.current and not args.against:
        return _usage_error("--current needs --against")
    if args.against and args.ref:
        return _usage_error("--ref and --against exclude each other (--ref runs one side)")
    if args.out:
        out_dir = Path(args.out).resolve().parent
        if not out_dir.is_dir():
            return _usage_error(f"--out: folder {out_dir} does not exist")
    if args.against:
        with Worktree(args.against) as ref_tree:
            a = run_side(args.against, ref_tree.path, jobs, ref_tree.commit)
        if args.current:
            with Worktree(args.current) as cur_tree:
                b = run_side(args.current, cur_tree.path, jobs, cur_tree.commit)
        else:
            b = run_side("current", ROOT, jobs)
        if args.out:
            _write(args.out, {"against": a, "current": b})
        return compare(a, b, jobs)
    if not args.out:
        return _usage_error("give --out FILE.json, --against REF or --list")
    if args.ref:
        with Worktree(args.ref) as tree:
            digest = run_side(args.ref, tree.path, jobs, tree.commit)
    else:
        digest = run_here(jobs, args.expect_root)
    _write(args.out, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
