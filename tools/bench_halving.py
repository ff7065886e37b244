"""Successive halving against the exhaustive eval-score dictionary (issue 17 item 5): on the
reference models and AIMET's anchor, auto weight SVD, spatial SVD and channel pruning, 10
candidates, top-1 accuracy on the digits32 test set in batches of 64, the knapsack's
selection at each target from the exhaustive dictionary and from the halving one (the same
`choose`); equal rows, the evaluation work (batches) and the wall times.

    python tools/bench_halving.py               # writes its section of docs/benchmarks.md
    python tools/bench_halving.py --no-write --models resnet_small --targets 0.5
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import onnx_compress as oc
from onnx_compress import ir, layers
from onnx_compress.errors import ParameterError
from onnx_compress.evaluators import accuracy
from onnx_compress.options import Settings
from onnx_compress.runtime.activations import Activations
from onnx_compress.search import dictionary as greedy
from onnx_compress.search import halving

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from _docs import write_section  # noqa: E402

ANCHOR = Path(os.environ.get("ONNX_COMPRESS_ANCHORS", ROOT.parent / "shared" / "anchors"))
BEGIN, END = "<!-- bench_halving:begin -->", "<!-- bench_halving:end -->"
MODELS = ("vgg_small", "resnet_small", "mobilenet_small", "anchor")
SCHEMES = ("weight_svd", "spatial_svd", "channel_pruning")


def paths(model: str) -> tuple[Path, Path, Path]:
    if model == "anchor":
        return ANCHOR / "resnet_small.onnx", ANCHOR / "digits32_calib.npz", ANCHOR / "digits32_test.npz"
    return ROOT / "models" / f"{model}.onnx", ROOT / "models/digits32_calib.npz", ROOT / "models/digits32_test.npz"


def make_units(model: str, scheme: str, candidates: int):
    """(proto, units, total MACs, test data path); the anchor without its first conv, as in AIMET's runs."""
    path, calib, test = paths(model)
    proto = ir.load(path)
    analysis = layers.analyze(proto)
    names = [l.name for l in analysis.compressible][1 if model == "anchor" else 0:]
    settings = Settings(data=str(calib), num_reconstruction_samples=500) if scheme == "channel_pruning" else None
    ctx = oc.schemes.Context("mac", 1, analysis.input_dims, settings, Activations(settings) if settings else None)
    units, _ = oc.schemes.SCHEMES[scheme].units(analysis.proto, analysis, names, greedy.candidate_keys(candidates), ctx)
    return proto, units, analysis.total("mac"), test


def chooser(units, total: int, target: float):
    return lambda d: greedy.choose(units, d, total, total, target, "knapsack", False)


def rows_for(model: str, scheme: str, targets, args) -> list[dict]:
    proto, units, total, test = make_units(model, scheme, args.candidates)
    if len(units) < 2:
        print(f"{model} {scheme}: {len(units)} unit(s), skipped", file=sys.stderr, flush=True)
        return []
    evaluate = accuracy(test, batch_size=64)
    out = []
    for target in targets:  # each target's exhaustive dictionary and halving timed side by side
        t = time.perf_counter()
        exhaustive = greedy.build_dictionary(proto, units, evaluate, None, False)
        exhaustive_s = time.perf_counter() - t
        choose = chooser(units, total, target)
        try:
            best = choose(exhaustive)
        except ParameterError:
            print(f"{model} {scheme} {target}: unreachable", file=sys.stderr, flush=True)
            continue
        t = time.perf_counter()
        halved = halving.build_halving(proto, units, evaluate, None, False, choose, fraction=args.fraction,
                                       max_work=args.max_work)
        halving_s = time.perf_counter() - t
        sel, meta = choose(halved), halved.meta["halving"]
        out.append(dict(model=model, scheme=scheme, target=target, units=len(units), candidates=meta["slice_evaluations"] - 1,
                        equal={u: o.ratio for u, o in sel.choices.items()} == {u: o.ratio for u, o in best.choices.items()},
                        exhaustive_score=best.expected_score, halving_score=sel.expected_score, ratio=sel.ratio,
                        best_ratio=best.ratio, full=meta["full_evaluations"] - 1, work=meta["work"], rounds=meta["rounds"],
                        exhaustive_s=exhaustive_s, halving_s=halving_s, n=meta["full_batches"], k=meta["slice_batches"]))
        print(line(out[-1]), flush=True)
    return out


def line(r: dict) -> str:
    same = "yes" if r["equal"] else ("tie" if abs(r["halving_score"] - r["exhaustive_score"]) < 1e-12 else "no")
    return (f"| {r['model']} | {r['scheme']} | {r['target']} | {r['units']} / {r['candidates']} | {same} | {r['best_ratio']:.3f} / {r['exhaustive_score']:.3f} | "
            f"{r['ratio']:.3f} / {r['halving_score']:.3f} | {r['full']} of {r['candidates']} | {r['work']:.3f} | "
            f"{r['rounds']} | {r['exhaustive_s']:.1f} | {r['halving_s']:.1f} ({r['halving_s'] / r['exhaustive_s']:.2f}) |")


HEADER = ["| model | scheme | target | units / candidates | same selection | exhaustive: ratio / expected | "
          "halving: ratio / expected | full re-scores | work | rounds | exhaustive s | halving s (x) |",
          "|---|---|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|"]


def summary(rows: list[dict]) -> list[str]:
    equal = sum(r["equal"] for r in rows)
    ties = sum(not r["equal"] and abs(r["halving_score"] - r["exhaustive_score"]) < 1e-12 for r in rows)
    work = [r["work"] for r in rows]
    wall = sum(r["halving_s"] for r in rows) / sum(r["exhaustive_s"] for r in rows)
    return [f"Same selection in **{equal} of {len(rows)}** rows ({ties} more with the same expected score: a tie); "
            f"work at most **{max(work):.3f}** (mean {sum(work) / len(work):.3f}) of the exhaustive dictionary's batches; "
            f"halving's wall time {wall:.2f}x the exhaustive dictionary's, all rows together."]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--fraction", type=float, default=halving.FRACTION)
    p.add_argument("--max-work", type=float, default=halving.MAX_WORK)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    print("\n".join(HEADER), flush=True)
    rows = [r for model in args.models for scheme in args.schemes for r in rows_for(model, scheme, args.targets, args)]
    print("\n".join(summary(rows)))
    if not args.no_write:
        n, k = rows[0]["n"], rows[0]["k"]
        head = [BEGIN, "## Fewer evaluations: successive halving for the dictionary", "",
                f"`python tools/bench_halving.py`: {args.candidates} candidates, top-1 accuracy on the digits32 test "
                f"set in batches of 64 ({n} batches; the anchor's own 497 images, without its first conv as in AIMET's "
                f"runs), the knapsack's selection (product objective) at each target from the exhaustive dictionary "
                f"and from `search.halving.build_halving` with the same `choose` (slice: the first {k} of {n} "
                f"batches, fraction {args.fraction}; work budget {args.max_work}). *same selection*: every unit's "
                "candidate equal (*tie*: another selection of the same expected score); *full re-scores*: "
                "candidates scored on the full data besides the slice; *work*: batches evaluated (session.run "
                "calls: baselines, slices, full re-scores) / the exhaustive dictionary's; wall times on this "
                "machine's 2 shared cores (other work running beside), the exhaustive dictionary and halving "
                "built one after the other for each row. Wall time gains less than the work: the full re-scores are "
                "mostly of the dearer candidates (early layers, whose suffix is long) and every evaluation has a "
                "fixed cost (search/halving.py's doc has the figures). Rows with fewer than 2 units (mobilenet_small's spatial SVD) "
                "are left out.", ""]
        write_section("\n".join(head + HEADER + [r_line for r_line in map(line, rows)] + [""] + summary(rows) + [END]),
                      BEGIN, END)


if __name__ == "__main__":
    main()
