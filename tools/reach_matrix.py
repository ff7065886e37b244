#!/usr/bin/env python3
"""Real-world reach matrix: every corpus file x scheme x mode through the CLI.

For each file of ``tests/corpus/manifest.json`` (written by tools/build_corpus.py), each
scheme (weight_svd, spatial_svd, channel_pruning) and each mode

    manual: --ratio 0.5 (every layer the scheme takes)
    auto:   --target 0.5 --eval fidelity --candidates 5 (scored on --eval-data)

it writes random calibration data and separate held-out data (another seed) as .npz files
keyed by input name, runs ``python -m onnx_compress.cli -q compress ...`` with a timeout, and
classifies the run:

    ok              exit 0, the output passes onnx.checker, runs in ONNX Runtime on the
                    held-out inputs, and has the original's output names and shapes; records
                    the achieved MAC ratio (stats JSON) and the held-out error (max over
                    outputs of ||y' - y|| / ||y||)
    refused         exit 2 with a one-line ``onnx-compress: error: ...`` on stderr
    internal_error  exit 1 with ``internal error`` (the run is repeated with -v for the traceback)
    crash           any other exit status, or a traceback on stderr
    timeout         ran past --timeout
    noisy           exit 2 but stderr has more than the one error line
    bad_output      exit 0 but checker / ONNX Runtime / output names or shapes fail

    python tools/reach_matrix.py                        # whole matrix, writes docs/reach.md
    python tools/reach_matrix.py --only yolo_ts_op13.onnx --scheme weight_svd --mode manual
    python tools/reach_matrix.py --jobs 2 --json out/reach.json

Data (default ``--data-layout stacked``): N (default 16) samples stacked along each input's
batch axis (the manifest's ``batch_axis``: 0 for images, 1 for RNN states [2, B, 128]; scalar
inputs stay 0-d), as a user with N recordings would write them, also for models with a
fixed batch (the library feeds them in model-sized batches; the held-out check here too).
``--data-layout feed``: one feed of exactly the manifest's shapes; ``auto``: stacked only
where every input has a dynamic batch on axis 0, else feed. int64 inputs take values in the
manifest's ``range``; inputs with a ``value`` keep it.

From pytest: ``run_matrix(files=None) -> list[dict]`` (see tests/test_reach.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "tests" / "corpus"
SCHEMES = ("weight_svd", "spatial_svd", "channel_pruning")
MODES = {
    "manual": ["--ratio", "0.5"],
    "auto": ["--target", "0.5", "--eval", "fidelity", "--candidates", "5"],
}
OK_STATUSES = ("ok", "refused")
CALIB_SEED, EVAL_SEED = 1, 2


def load_manifest(corpus: Path = CORPUS) -> list[dict]:
    return json.loads((Path(corpus) / "manifest.json").read_text())


# --------------------------------------------------------------------------------------
# data


def _declared_dims(model_path: Path) -> dict[str, list]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    dims = {}
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims[i.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                        for d in i.type.tensor_type.shape.dim]
    return dims


def data_layout(entry: dict, corpus: Path = CORPUS, layout: str = "stacked") -> str:
    """'stacked' (N samples along each input's batch axis) or 'feed' (one feed of the manifest's
    shapes); 'auto': stacked only where every input has a dynamic batch on axis 0."""
    if layout != "auto":
        return layout
    dims = _declared_dims(Path(corpus) / entry["file"])
    for name, spec in entry["inputs"].items():
        if spec.get("batch_axis") != 0 or not spec["shape"] or dims[name][0] is not None:
            return "feed"
    return "stacked"


def chunks(entry: dict, feed: dict, corpus: Path = CORPUS) -> list[dict]:
    """`feed` cut along the batch axes into feeds a fixed-batch model takes (one feed when the
    batch is dynamic or already the model's)."""
    dims = _declared_dims(Path(corpus) / entry["file"])
    fixed, n = set(), set()
    for name, spec in entry["inputs"].items():
        ax = spec.get("batch_axis")
        if ax is None:
            continue
        n.add(feed[name].shape[ax])
        if dims[name][ax] is not None:
            fixed.add(dims[name][ax])
    if len(fixed) != 1 or len(n) != 1:
        return [feed]
    b, total = fixed.pop(), n.pop()
    if b == total or total % b:
        return [feed]
    out = []
    for start in range(0, total, b):
        part = {}
        for name, arr in feed.items():
            ax = entry["inputs"][name].get("batch_axis")
            part[name] = arr if ax is None else np.take(arr, range(start, start + b), axis=ax)
        out.append(part)
    return out


def make_feed(inputs: dict, seed: int, layout: str = "feed", n: int = 16) -> dict[str, np.ndarray]:
    """Random arrays for `inputs` (manifest spec). 'feed': the manifest's shapes; 'stacked':
    n samples along each input's batch axis (one sample = the manifest's shape with batch 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, spec in inputs.items():
        shape = list(spec["shape"])
        ax = spec.get("batch_axis")
        if layout == "stacked" and ax is not None:
            shape[ax] = n
        dtype = np.dtype(spec["dtype"])
        if "value" in spec:
            feed[name] = np.full(shape, spec["value"], dtype=dtype)
        elif dtype.kind in "iu":
            lo, hi = spec.get("range", [0, 2])
            feed[name] = rng.integers(lo, hi, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feed[name] = rng.random(shape) < 0.5
        else:
            feed[name] = rng.standard_normal(shape).astype(dtype)
    return feed


# --------------------------------------------------------------------------------------
# ONNX checks


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_model(path: Path, feed: dict) -> dict[str, np.ndarray]:
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed)))


def check_file(entry: dict, corpus: Path = CORPUS) -> dict[str, list]:
    """onnx.checker + one ONNX Runtime run on the manifest's shapes; {output: shape}."""
    import onnx

    path = Path(corpus) / entry["file"]
    onnx.checker.check_model(onnx.load(str(path)))
    outs = run_model(path, make_feed(entry["inputs"], 0))
    return {k: list(v.shape) for k, v in outs.items()}


# --------------------------------------------------------------------------------------
# one run


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _cli(args: list[str], timeout: float, env: dict) -> tuple[int | None, str, str, float]:
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "onnx_compress.cli", *args], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return None, out, err, time.monotonic() - t0


def run_one(entry: dict, scheme: str, mode: str, workdir: Path, *, corpus: Path = CORPUS, timeout: float = 300,
            n: int = 16, layout: str = "stacked", traceback: bool = True) -> dict:
    """Compress one corpus file with one scheme and mode through the CLI; a result dict."""
    src = Path(corpus) / entry["file"]
    stem = f"{Path(entry['file']).stem}.{scheme}.{mode}"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lay = data_layout(entry, corpus, layout)
    calib, held = workdir / f"{stem}.calib.npz", workdir / f"{stem}.eval.npz"
    calib_feed = make_feed(entry["inputs"], CALIB_SEED, lay, n)
    held_feed = make_feed(entry["inputs"], EVAL_SEED, lay, n)
    np.savez(calib, **calib_feed)
    np.savez(held, **held_feed)
    out, stats = workdir / f"{stem}.onnx", workdir / f"{stem}.stats.json"
    for p in (out, stats):
        p.unlink(missing_ok=True)
    args = ["compress", str(src), "-o", str(out), "--scheme", scheme, *MODES[mode], "--data", str(calib),
            "--stats", str(stats)]
    if mode == "auto":
        args += ["--eval-data", str(held)]
    res = {"file": entry["file"], "exporter": entry["exporter"], "opset": entry["opset"],
           "ir_version": entry["ir_version"], "scheme": scheme, "mode": mode, "data_layout": lay, "samples": n,
           "command": "onnx-compress -q " + " ".join(a if " " not in a else repr(a) for a in args)
           .replace(str(REPO_ROOT) + "/", "").replace(str(workdir) + "/", "")}
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    rc, stdout, stderr, secs = _cli(["-q", *args], timeout, env)
    res.update(rc=rc, seconds=round(secs, 1))
    err_lines = [ln for ln in stderr.splitlines() if ln.strip()]
    res["stderr_tail"] = "\n".join(err_lines[-20:])
    if rc is None:
        res.update(status="timeout", error=f"no result after {timeout:.0f}s")
        return res
    if rc == 0:
        if "Traceback (most recent call last)" in stderr:
            res.update(status="crash", error="exit 0 with a traceback: " + _one_line(stderr))
            return res
        return _check_output(res, src, out, stats, chunks(entry, held_feed, corpus))
    if rc == 2:
        if len(err_lines) == 1 and err_lines[0].startswith("onnx-compress: error:"):
            res.update(status="refused", error=err_lines[0][len("onnx-compress: error:"):].strip())
        else:
            res.update(status="noisy", error=f"exit 2 with {len(err_lines)} stderr lines; last: {_one_line(stderr)}")
        return res
    if rc == 1 and "internal error" in stderr and "Traceback" not in stderr:
        res.update(status="internal_error", error=_one_line(stderr).replace("onnx-compress: internal error: ", ""))
        if traceback:
            rc2, _, err2, _ = _cli(["-v", *args], timeout, env)
            tb = err2.split("Traceback (most recent call last):")
            if len(tb) > 1:
                tail = [ln for ln in tb[-1].splitlines() if ln.strip()]
                res["traceback_tail"] = "\n".join(tail[-14:])
        return res
    res.update(status="crash", error=f"exit {rc}: {_one_line(stderr) or _one_line(stdout)}")
    return res


def _check_output(res: dict, src: Path, out: Path, stats: Path, held_feeds: list[dict]) -> dict:
    import onnx

    if not out.exists():
        res.update(status="bad_output", error="exit 0 but no output file")
        return res
    try:
        onnx.checker.check_model(onnx.load(str(out)))
    except Exception as exc:
        res.update(status="bad_output", error=f"onnx.checker: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return res
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for feed in held_feeds:
        try:
            ref = run_model(src, feed)
        except Exception as exc:  # the original itself does not take the held-out data (a bug here)
            res.update(status="bad_output", error=f"original does not run on the held-out data: {exc}"[:300])
            return res
        try:
            got = run_model(out, feed)
        except Exception as exc:
            res.update(status="bad_output",
                       error=f"ONNX Runtime: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            return res
        if list(got) != list(ref):
            res.update(status="bad_output", error=f"output names {list(got)} != original {list(ref)}")
            return res
        bad = {k: (list(ref[k].shape), list(got[k].shape)) for k in ref if ref[k].shape != got[k].shape}
        if bad:
            res.update(status="bad_output", error=f"output shapes differ (original, compressed): {bad}")
            return res
        for k in ref:
            if np.issubdtype(ref[k].dtype, np.floating):
                a, b = np.asarray(ref[k], np.float64), np.asarray(got[k], np.float64)
                num[k] = num.get(k, 0.0) + float(np.sum((a - b) ** 2))
                den[k] = den.get(k, 0.0) + float(np.sum(a ** 2))
    errs = {k: float(np.sqrt(num[k] / den[k])) if den[k] > 0 else float(np.sqrt(num[k])) for k in num}
    res["held_out_err"] = max(errs.values()) if errs else 0.0
    res["per_output_err"] = errs
    try:
        st = json.loads(stats.read_text())
        res["mac_ratio"] = st.get("mac_ratio")
        res["memory_ratio"] = st.get("memory_ratio")
        res["layers_compressed"] = len(st.get("layers", []))
        res["layers_skipped"] = len(st.get("skipped", []))
        if st.get("channel_groups"):
            res["channel_groups"] = st["channel_groups"]
        reasons = {}
        for s in st.get("skipped", []):
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        res["skip_reasons"] = reasons
    except Exception as exc:
        res.update(status="bad_output", error=f"stats JSON unreadable: {exc}")
        return res
    if not np.isfinite(res["held_out_err"]):
        res.update(status="bad_output", error=f"non-finite outputs on held-out data: {errs}")
        return res
    res["status"] = "ok"
    return res


# --------------------------------------------------------------------------------------
# the matrix


def run_matrix(files=None, schemes=SCHEMES, modes=tuple(MODES), *, corpus: Path = CORPUS, jobs: int = 1,
               timeout: float = 300, n: int = 16, layout: str = "stacked", workdir=None, traceback: bool = True,
               progress=None) -> list[dict]:
    """Run every (file, scheme, mode); results in matrix order. `files`: names in the manifest."""
    manifest = load_manifest(corpus)
    if files:
        names = {Path(f).name for f in files}
        unknown = names - {e["file"] for e in manifest}
        if unknown:
            raise ValueError(f"not in the manifest: {sorted(unknown)}")
        manifest = [e for e in manifest if e["file"] in names]
    tasks = [(e, s, m) for e in manifest for s in schemes for m in modes]
    ctx = tempfile.TemporaryDirectory(prefix="reach_") if workdir is None else None
    wd = Path(ctx.name if ctx else workdir)
    try:
        def work(t):
            e, s, m = t
            r = run_one(e, s, m, wd / Path(e["file"]).stem, corpus=corpus, timeout=timeout, n=n, layout=layout,
                        traceback=traceback)
            if progress:
                progress(r)
            return r

        if jobs <= 1:
            return [work(t) for t in tasks]
        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(work, tasks))
    finally:
        if ctx:
            ctx.cleanup()


def counts(results: list[dict]) -> dict[str, int]:
    c: dict[str, int] = {}
    for r in results:
        c[r["status"]] = c.get(r["status"], 0) + 1
    return c


# --------------------------------------------------------------------------------------
# output


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _norm(err: str) -> str:
    """An error message with its numbers and quoted names masked: similar failures group together."""
    err = re.sub(r"'[^']*'", "'…'", err)
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", err)


def _cell(r: dict, notes: dict) -> str:
    if r["status"] == "ok":
        mac = "?" if r.get("mac_ratio") is None else f"{r['mac_ratio']:.2f}"
        cell = f"{mac} / {r['held_out_err']:.1e}"
        if r.get("layers_compressed") == 0:
            cell += " (0 layers)"
        if r.get("channel_groups"):
            g = r["channel_groups"]
            cell += f", {g['locked']}/{g['groups']} locked"
        return cell
    key = (r["status"], _norm(r.get("error", "")))
    if key not in notes:
        prefix = "R" if r["status"] == "refused" else "F"
        notes[key] = f"{prefix}{sum(1 for k in notes if (k[0] == 'refused') == (prefix == 'R')) + 1}"
    label = {"refused": "refused", "internal_error": "**internal error**", "crash": "**crash**",
             "timeout": "**timeout**", "noisy": "**noisy stderr**", "bad_output": "**bad output**"}[r["status"]]
    return f"{label} [{notes[key]}]"


def markdown(results: list[dict], schemes=SCHEMES, modes=tuple(MODES)) -> str:
    by = {(r["file"], r["scheme"], r["mode"]): r for r in results}
    files = list(dict.fromkeys(r["file"] for r in results))
    meta = {r["file"]: r for r in results}
    c = counts(results)
    layouts = {r.get("data_layout") for r in results}
    lines = [
        "# Real-world reach",
        "",
        "Every file of `tests/corpus/` (small graphs as real exporters write them, built by "
        "`tools/build_corpus.py`; see `tests/corpus/manifest.json`) through every scheme in manual mode "
        f"(`{' '.join(MODES['manual'])}`) and auto mode (`{' '.join(MODES['auto'])}`), by "
        "`python tools/reach_matrix.py`. Calibration and held-out data are random (separate seeds): "
        + ("one feed of the manifest's shapes per file" if layouts == {"feed"} else
           f"{results[0].get('samples', 16)} samples stacked along each input's batch axis"
           + ("" if layouts == {"stacked"} else " where every input has a dynamic batch on axis 0, else one feed "
                                                 "of the manifest's shapes")) + ".",
        "",
        "A cell is the achieved MAC ratio / the relative L2 error of the outputs on held-out inputs "
        "(max over outputs) when the run succeeded and its output passed onnx.checker, ran in ONNX Runtime "
        "and kept the original's output names and shapes; otherwise the refusal (exit 2, one line) or the "
        "failure, numbered below. Channel pruning cells add the channel groups locked whole / all groups "
        "(one per layer the scheme could take; the stats' `channel groups` line). Random weights and data: "
        "the errors show the runs are sound, not what accuracy a trained model keeps.",
        "",
        "Counts: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + f" (of {len(results)} runs).",
        "",
    ]
    head = ["file", "exporter", "opset", "IR"] + [f"{s} {m}" for s in schemes for m in modes]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    notes: dict = {}
    for f in files:
        m = meta[f]
        row = [f"`{f}`", m["exporter"], str(m["opset"]), str(m["ir_version"])]
        for s in schemes:
            for md in modes:
                r = by.get((f, s, md))
                row.append("-" if r is None else _cell(r, notes))
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", "## Refusals and failures", ""]
        for (status, norm), key in sorted(notes.items(), key=lambda kv: (kv[1][0], int(kv[1][1:]))):
            group = [r for r in results if r["status"] == status and _norm(r.get("error", "")) == norm]
            where = sorted({f"{r['file']} ({r['scheme']} {r['mode']})" for r in group})
            msgs = list(dict.fromkeys(r.get("error", "") for r in group))
            vary = f" (and {len(msgs) - 1} variant(s) with other numbers/names)" if len(msgs) > 1 else ""
            lines.append(f"- **{key}** ({status}, {len(group)}x): `{_short(msgs[0], 400)}`{vary}")
            lines.append(f"  - {', '.join(where)}")
            tb = next((r.get("traceback_tail") for r in group if r.get("traceback_tail")), None)
            if tb:
                lines.append("  - traceback tail:")
                lines.append("")
                lines.append("    ```")
                lines += ["    " + ln for ln in tb.splitlines()]
                lines.append("    ```")
    return "\n".join(lines) + "\n"


def summary_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        if r["status"] == "ok":
            mac = "?" if r.get("mac_ratio") is None else f"{r['mac_ratio']:.3f}"
            what = f"mac {mac}  err {r['held_out_err']:.2e}  layers {r.get('layers_compressed')}"
        else:
            what = _short(r.get("error", ""), 110)
        rows.append(f"{r['file']:36s} {r['scheme']:16s} {r['mode']:6s} {r['status']:14s} {r['seconds']:6.1f}s  {what}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run the corpus x scheme x mode matrix through the CLI")
    ap.add_argument("--only", action="append", metavar="FILE", help="only this corpus file (repeatable)")
    ap.add_argument("--scheme", action="append", choices=SCHEMES, help="only this scheme (repeatable)")
    ap.add_argument("--mode", action="append", choices=list(MODES), help="only this mode (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run (default 300)")
    ap.add_argument("--samples", type=int, default=16, help="samples per .npz when stacked (default 16)")
    ap.add_argument("--data-layout", choices=["stacked", "feed", "auto"], default="stacked",
                    help="stacked (default): --samples samples along each input's batch axis; feed: one feed "
                         "of the manifest's shapes; auto: stacked only where every input has a dynamic batch "
                         "on axis 0")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", default=str(REPO_ROOT / "docs" / "reach.md"), help="markdown matrix ('' to skip)")
    ap.add_argument("--merge", type=Path, metavar="OLD.json",
                    help="results of an earlier --json: runs not repeated now are kept from it (rerun a few "
                         "files, rewrite the whole matrix)")
    ap.add_argument("--json", type=Path, help="also write the result dicts as JSON")
    ap.add_argument("--keep", type=Path, help="keep data, outputs and stats in this folder")
    ap.add_argument("--no-traceback", action="store_true", help="do not rerun internal errors with -v")
    args = ap.parse_args(argv)

    def progress(r):
        print(summary_table([r]), flush=True)

    results = run_matrix(args.only, tuple(args.scheme or SCHEMES), tuple(args.mode or MODES), corpus=args.corpus,
                         jobs=args.jobs, timeout=args.timeout, n=args.samples, layout=args.data_layout,
                         workdir=args.keep, traceback=not args.no_traceback, progress=progress)
    if args.merge:
        new = {(r["file"], r["scheme"], r["mode"]) for r in results}
        order = {e["file"]: k for k, e in enumerate(load_manifest(args.corpus))}
        old = [r for r in json.loads(args.merge.read_text()) if (r["file"], r["scheme"], r["mode"]) not in new
               and r["file"] in order]
        key = {(s, m): k for k, (s, m) in enumerate((s, m) for s in SCHEMES for m in MODES)}
        results = sorted(old + results, key=lambda r: (order[r["file"]], key[(r["scheme"], r["mode"])]))
    print()
    print(summary_table(results))
    c = counts(results)
    print("\ncounts:", ", ".join(f"{k} {v}" for k, v in sorted(c.items())), f"(of {len(results)})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = (SCHEMES, tuple(MODES)) if args.merge else (tuple(args.scheme or SCHEMES), tuple(args.mode or MODES))
        out.write_text(markdown(results, *shown))
        print("wrote", args.out)
    return 0 if all(r["status"] in OK_STATUSES for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
