"""A self-contained HTML report of one compression run.

One page that opens anywhere without a network: the model summary, a per-layer chart of
cost before and after, every layer's eval-score curve with the chosen candidate marked
(auto mode), the chosen ratio per layer in graph order, the skipped layers with reasons,
optional further steps (quantization) and the command and parameters that reproduce the
run. Charts are drawn by matplotlib (the `report` extra) as inline SVG.

The page is built from `CompressionStats` alone (its `per_layer`, `selection`, `skipped`
and `parameters`), so a report can also be made later from a saved stats JSON
(`onnx-compress report STATS.json -o OUT.html`).
"""
from __future__ import annotations

import datetime
import html
import io
import json
import math
import os
from pathlib import Path

from . import __version__, files
from .errors import ParameterError
from .stats import format_count

SECTIONS = ("summary", "layer-costs", "score-curves", "chosen-ratios", "skipped", "reproduce")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#b9c1d0;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;margin:18px 0;padding:16px 22px}
h2{font-size:17px;margin:4px 0 12px} .note{color:#5b6577;font-size:13px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px} td,th{padding:4px 10px;border-bottom:1px solid #eceef2;text-align:right}
th{background:#f0f2f5} td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:12px}
.card{border:1px solid #e2e5ea;border-radius:6px;padding:8px 14px;min-width:150px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#5b6577}
pre{background:#f0f2f5;padding:10px 12px;border-radius:6px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
svg{max-width:100%;height:auto}
"""


def check_path(path: str | os.PathLike) -> None:
    """ParameterError unless a report can be written at `path` (checked before any work)."""
    files.check_writable(path, "report")
    _matplotlib()


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ParameterError("the HTML report draws its charts with matplotlib, which is not installed: "
                             "pip install 'onnx_compress[report]' (or pip install matplotlib)") from None
    from matplotlib.figure import Figure

    return Figure


def write(path: str | os.PathLike, stats, *, command: str | None = None, steps: list[dict] | None = None,
          title: str | None = None) -> None:
    """Write the report of `stats` (CompressionStats or its dict) to `path`, atomically.

    command: the command line that reproduced the run (the CLI passes its own).
    steps: further rows for the summary's pipeline table, e.g. quantization:
    [{"step": "quantized (int8 QDQ)", "score": 0.97, "bytes": 46270}].
    """
    check_path(path)
    files.write_text(path, render(stats, command=command, steps=steps, title=title))


def render(stats, *, command: str | None = None, steps: list[dict] | None = None, title: str | None = None) -> str:
    """The report page as one HTML string."""
    s = stats.to_dict() if hasattr(stats, "to_dict") else stats
    check_stats(s)
    if steps is not None:
        _check_list(steps, "pipeline", _STEP_FIELDS, "statistics")
    s = dict(s)
    model = s.get("parameters", {}).get("model") or "model"
    title = title or f"onnx-compress report: {Path(str(model)).name}"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [
        _summary(s, steps),
        _layer_costs(s),
        _score_curves(s),
        _chosen_ratios(s),
        _skipped(s),
        _reproduce(s, command),
    ]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>scheme {_e(s.get('scheme'))} · cost metric "
            f"{_e(s.get('cost_metric'))} · onnx-compress {__version__} · {stamp}</p></header>"
            f"<main>{''.join(body)}</main></body></html>\n")


# ----------------------------------------------------------------------------- checking
def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_str(x) -> bool:
    return isinstance(x, str)


def _num_list(x) -> bool:
    return isinstance(x, (list, tuple)) and all(_is_num(v) for v in x)


def _num_dict(x) -> bool:
    return isinstance(x, dict) and all(_is_num(v) or v is None for v in x.values())


#: field -> (test, what it must be, required); None is allowed for fields not required.
_KINDS = {"number": _is_num, "integer": _is_int, "string": _is_str, "object": lambda x: isinstance(x, dict),
          "list": lambda x: isinstance(x, (list, tuple)), "list of numbers": _num_list,
          "object of numbers": _num_dict,
          "object of objects of numbers": lambda x: isinstance(x, dict) and all(_num_dict(v) for v in x.values()),
          "object of lists of integers": lambda x: isinstance(x, dict) and all(
              isinstance(v, (list, tuple)) and all(_is_int(d) for d in v) for v in x.values())}
_TOP_FIELDS = {"scheme": ("string", True), "cost_metric": ("string", False), "mac_before": ("integer", False),
               "mac_after": ("integer", False), "memory_before": ("integer", False),
               "memory_after": ("integer", False), "mac_ratio": ("number", False), "memory_ratio": ("number", False),
               "baseline_score": ("number", False), "final_score": ("number", False),
               "input_dims": ("object of lists of integers", False), "selection": ("object", False),
               "per_layer": ("list", False), "skipped": ("list", False), "parameters": ("object", False),
               "pipeline": ("list", False), "command": ("string", False)}
_SELECTION_FIELDS = {"method": ("string", False), "rank_select": ("string", False), "target": ("number", False),
                     "baseline": ("number", False), "expected_score": ("number", False),
                     "evaluations": ("integer", False), "dictionary_seconds": ("number", False),
                     "scores": ("object of objects of numbers", False), "chosen": ("object of numbers", False),
                     "loaded_from": ("string", False)}
_LAYER_FIELDS = {"name": ("string", True), "op": ("string", True), "mac_before": ("integer", False),
                 "mac_after": ("integer", False), "memory_before": ("integer", False),
                 "memory_after": ("integer", False), "ratio": ("number", False), "status": ("string", True),
                 "requested": ("list of numbers", False)}
_SKIPPED_FIELDS = {"name": ("string", True), "op": ("string", False), "reason": ("string", False)}
_STEP_FIELDS = {"step": ("string", False), "score": ("number", False), "bytes": ("integer", False),
                "mac_ratio": ("number", False)}
_STATUSES = ("compressed", "reduced", "unchanged", "skipped")


def _fail(where: str, field: str, kind: str, value) -> None:
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ParameterError(f"{where}: field '{field}' must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}"
                         f"{'' if kind.startswith('object') or kind.startswith('list') else ' or null'}, got {shown}")


def _check_fields(d, fields: dict, prefix: str, where: str) -> None:
    for key, (kind, required) in fields.items():
        name = f"{prefix}{key}"
        if key not in d:
            if required:
                raise ParameterError(f"{where}: field '{name}' is missing")
            continue
        value = d[key]
        if value is None and not required:
            continue
        if not _KINDS[kind](value):
            _fail(where, name, kind, value)


def _check_list(items, name: str, fields: dict, where: str) -> None:
    if not isinstance(items, (list, tuple)):
        _fail(where, name, "list", items)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            _fail(where, f"{name}[{i}]", "object", item)
        _check_fields(item, fields, f"{name}[{i}].", where)


def check_stats(s, where: str = "statistics") -> None:
    """ParameterError naming the field when `s` (a stats dict, e.g. a saved JSON) has a field
    of the wrong type for the report; `where` names its source (the file)."""
    if not isinstance(s, dict):
        raise ParameterError(f"{where}: expected a JSON object of statistics, got {type(s).__name__}")
    _check_fields(s, _TOP_FIELDS, "", where)
    if s.get("selection") is not None:
        _check_fields(s["selection"], _SELECTION_FIELDS, "selection.", where)
    if s.get("per_layer") is not None:
        _check_list(s["per_layer"], "per_layer", _LAYER_FIELDS, where)
        for i, row in enumerate(s["per_layer"]):
            if row["status"] not in _STATUSES:
                raise ParameterError(f"{where}: field 'per_layer[{i}].status' must be one of {list(_STATUSES)}, "
                                     f"got {row['status']!r}")
    if s.get("skipped") is not None:
        _check_list(s["skipped"], "skipped", _SKIPPED_FIELDS, where)
    if s.get("pipeline") is not None:
        _check_list(s["pipeline"], "pipeline", _STEP_FIELDS, where)


# ----------------------------------------------------------------------------- sections
def _section(key: str, heading: str, content: str, note: str = "") -> str:
    note_html = f"<p class=\"note\">{note}</p>" if note else ""
    return f"<section id=\"{key}\"><h2>{_e(heading)}</h2>{note_html}{content}</section>"


def _summary(s: dict, steps: list[dict] | None) -> str:
    mac_ratio, mem_ratio = s.get("mac_ratio"), s.get("memory_ratio")
    cards = [
        ("MACs", f"{format_count(s.get('mac_before'))} → {format_count(s.get('mac_after'))}"),
        ("MAC ratio", _fmt(mac_ratio)),
        ("weights", f"{format_count(s.get('memory_before'))} → {format_count(s.get('memory_after'))}"),
        ("memory ratio", _fmt(mem_ratio)),
        ("eval score", f"{_fmt(s.get('baseline_score'))} → {_fmt(s.get('final_score'))}"),
    ]
    sel = s.get("selection") or {}
    if sel:
        cards.append(("target", f"{sel.get('target')} ({sel.get('method')})"))
        cards.append(("evaluations", f"{sel.get('evaluations')} in {sel.get('dictionary_seconds', 0):.1f} s"))
    rows = s.get("per_layer") or []
    compressed = sum(1 for r in rows if r["status"] == "compressed")
    cards.append(("layers compressed", f"{compressed} of {len(rows)}"))
    html_cards = "<div class=\"cards\">" + "".join(
        f"<div class=\"card\"><div class=\"k\">{_e(k)}</div><div class=\"v\">{_e(v)}</div></div>"
        for k, v in cards) + "</div>"
    dims = ", ".join(f"{k}={v}" for k, v in (s.get("input_dims") or {}).items())
    table = ""
    if steps:
        head = "<tr><th class=\"l\">step</th><th>eval score</th><th>file size</th><th>MAC ratio</th></tr>"
        body = "".join(
            f"<tr><td class=\"l\">{_e(st.get('step'))}</td><td>{_fmt(st.get('score'))}</td>"
            f"<td>{_bytes(st.get('bytes'))}</td><td>{_fmt(st.get('mac_ratio'))}</td></tr>" for st in steps)
        table = f"<h2>Pipeline</h2><table>{head}{body}</table>"
    note = f"Cost model input dims: {_e(dims)}. Ratios are after / before, measured on the compressed model."
    return _section("summary", "Summary", html_cards + table, note)


def _layer_costs(s: dict) -> str:
    rows = s.get("per_layer") or []
    if not rows:
        return _section("layer-costs", "Cost per layer", "<p>No layer data.</p>")
    use_mac = all(r["mac_before"] is not None for r in rows)
    key, unit = ("mac", "MACs") if use_mac else ("memory", "weights")
    names = [r["name"] for r in rows]
    before = [r[f"{key}_before"] or 0 for r in rows]
    after = [r[f"{key}_after"] if r[f"{key}_after"] is not None else 0 for r in rows]
    Figure = _matplotlib()
    height = max(2.6, 0.26 * len(rows) + 1.2)
    fig = Figure(figsize=(10, height))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    ax.barh([y - 0.2 for y in ys], before, height=0.4, color="#b9c1d0", label="before")
    ax.barh([y + 0.2 for y in ys], after, height=0.4, color="#2f6fde", label="after")
    ax.set_yticks(ys, [_short(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    table_rows = "".join(
        f"<tr><td class=\"l\">{_e(r['name'])}</td><td class=\"l\">{_e(r['op'])}</td><td>{format_count(r['mac_before'])}</td>"
        f"<td>{format_count(r['mac_after'])}</td><td>{format_count(r['memory_before'])}</td><td>{format_count(r['memory_after'])}</td>"
        f"<td>{_fmt(r['ratio'])}</td><td class=\"l\">{_e(r['status'])}</td></tr>" for r in rows)
    table = ("<details><summary>table</summary><table><tr><th class=\"l\">layer</th><th class=\"l\">op</th>"
             "<th>MACs before</th><th>MACs after</th><th>weights before</th><th>weights after</th>"
             f"<th>ratio</th><th class=\"l\">status</th></tr>{table_rows}</table></details>")
    return _section("layer-costs", f"Cost per layer ({unit}, graph order)", _svg(fig) + table,
                    "After-costs include channels removed upstream by pruning.")


def _score_curves(s: dict) -> str:
    sel = s.get("selection") or {}
    scores = sel.get("scores") or {}
    if not scores:
        return _section("score-curves", "Eval-score curves",
                        "<p>Manual mode: no eval-score dictionary (per-layer ratios were given).</p>")
    chosen = sel.get("chosen") or {}
    baseline = sel.get("baseline")
    tar = sel.get("rank_select") == "tar"
    units = list(scores)
    cols = min(4, len(units))
    nrows = math.ceil(len(units) / cols)
    Figure = _matplotlib()
    fig = Figure(figsize=(2.9 * cols, 2.2 * nrows + 0.3))
    for i, unit in enumerate(units):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pts = sorted((float(k), v) for k, v in scores[unit].items())
        xs = [p[0] for p in pts] + ([] if tar else [1.0])
        ys = [p[1] for p in pts] + ([] if tar else [baseline])
        ax.plot(xs, ys, marker="o", markersize=3, color="#2f6fde", linewidth=1.2)
        if baseline is not None:
            ax.axhline(baseline, color="#888", linewidth=0.8, linestyle="--")
        pick = chosen.get(unit)
        if pick is not None:
            pick = float(pick)
            y = baseline if pick == 1.0 else scores[unit].get(_key(pick), None)
            if y is None:
                y = min(pts, key=lambda p: abs(p[0] - pick))[1]
            ax.plot([pick], [y], marker="o", markersize=8, color="#e4572e", zorder=5)
            ax.annotate(f"{pick:g}", (pick, y), textcoords="offset points", xytext=(4, -12),
                        fontsize=7, color="#e4572e")
        ax.set_title(_short(unit, 34), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.supxlabel("relative error level (TAR)" if tar else "candidate ratio", fontsize=9)
    fig.supylabel("eval score", fontsize=9)
    fig.tight_layout()
    note = (f"Each layer alone at each candidate; dashed: baseline {_fmt(baseline)}; red: the chosen "
            f"candidate (1.0 = not compressed). Expected score of the selection "
            f"{_fmt(sel.get('expected_score'))}.")
    if sel.get("loaded_from"):
        note += f" Scores reloaded from {_e(sel['loaded_from'])}."
    return _section("score-curves", "Eval-score curves", _svg(fig), note)


def _chosen_ratios(s: dict) -> str:
    rows = s.get("per_layer") or []
    if not rows:
        return _section("chosen-ratios", "Chosen ratio per layer", "<p>No layer data.</p>")
    req = [min(r["requested"]) if r["requested"] else 1.0 for r in rows]
    got = [r["ratio"] if r["ratio"] is not None else 1.0 for r in rows]
    Figure = _matplotlib()
    fig = Figure(figsize=(10, 3.4))
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    colors = {"compressed": "#2f6fde", "reduced": "#8fb3f0", "unchanged": "#b9c1d0", "skipped": "#e4a72e"}
    ax.bar(xs, got, color=[colors[r["status"]] for r in rows], width=0.7)
    ax.plot(xs, req, linestyle="none", marker="_", markersize=12, color="#1d2330", label="requested")
    ax.set_xticks(xs, [_short(r["name"], 22) for r in rows], rotation=70, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("cost after / before")
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in colors.items()]
    handles.append(ax.lines[0])
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncols=4)
    fig.tight_layout()
    return _section("chosen-ratios", "Chosen ratio per layer (graph order)", _svg(fig),
                    "Bars: each layer's measured MAC ratio; ticks: the ratio chosen for it. "
                    "Reduced: not compressed itself, but smaller because channels it produces or "
                    "reads were pruned elsewhere (a consumer, or its channel group).")


def _skipped(s: dict) -> str:
    skipped = s.get("skipped") or []
    if not skipped:
        return _section("skipped", "Skipped layers", "<p>No layer was skipped.</p>")
    rows = "".join(f"<tr><td class=\"l\">{_e(k['name'])}</td><td class=\"l\">{_e(k['op'])}</td>"
                   f"<td class=\"l\">{_e(k['reason'])}</td></tr>" for k in skipped)
    return _section("skipped", f"Skipped layers ({len(skipped)})",
                    f"<table><tr><th class=\"l\">layer</th><th class=\"l\">op</th><th class=\"l\">reason</th></tr>"
                    f"{rows}</table>")


def _reproduce(s: dict, command: str | None) -> str:
    parts = []
    if command:
        parts.append(f"<p class=\"note\">Command</p><pre>{_e(command)}</pre>")
    params = s.get("parameters") or {}
    if params:
        parts.append(f"<p class=\"note\">Parameters</p><pre>{_e(json.dumps(params, indent=2, default=str))}</pre>")
    if not parts:
        parts.append("<p>No parameters recorded.</p>")
    return _section("reproduce", "Reproduce this run", "".join(parts))


# ------------------------------------------------------------------------------ helpers
def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "onnx_compress"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG


def _key(x: float) -> str:
    from .search.scores_io import format_ratio

    return format_ratio(x)


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _bytes(x) -> str:
    if x is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:.1f} {unit}"
    return f"{x} B"
