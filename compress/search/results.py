"""What a search leaves in its folder: the trial table, the front, the best recipe, the pages.

``trials.json`` (every trial, the front, the best trial, the closest miss), ``trials.csv``,
``best.recipe.yaml`` (the best feasible trial's resolved recipe, runnable as is with
``compress``), ``search.md`` and ``search.html`` (an SVG plot: every trial, infeasible ones
marked, the front drawn). Every file is written atomically.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from compress.core.fileio import atomic_write_text
from compress.intake.search_spec import SearchSpec
from compress.search.front import best, closest_miss, describe_miss, pareto_front, value_of
from compress.search.space import describe

METRIC_UNITS = {"latency_ms": "ms", "accuracy": "", "accuracy_loss": "", "size_mb": "MB"}


def summarise(outcomes: list[dict[str, Any]], spec: SearchSpec) -> dict[str, Any]:
    """The front, the best feasible trial, and (when none is feasible) the closest miss."""
    front = pareto_front(outcomes, spec.objectives)
    top = best(outcomes, spec.objectives)
    miss = None if top is not None else closest_miss(outcomes, spec.constraints)
    return {"objectives": spec.objectives, "constraints": spec.constraints, "target": spec.target,
            "trials": len(outcomes), "feasible": sum(1 for o in outcomes if o.get("status") == "feasible"),
            "front": [o["number"] for o in front], "best": None if top is None else top["number"],
            "closest_miss": miss, "closest_miss_text": None if miss is None else describe_miss(miss)}


def write_results(folder: Path, outcomes: list[dict[str, Any]], spec: SearchSpec, env: dict[str, Any]) -> dict[str, Any]:
    """Write every result file; return the summary."""
    summary = summarise(outcomes, spec)
    summary["env"] = env
    atomic_write_text(folder / "trials.json", json.dumps({"summary": summary, "trials": outcomes}, indent=2))
    atomic_write_text(folder / "trials.csv", trials_csv(outcomes, spec))
    best_path = folder / "best.recipe.yaml"
    if summary["best"] is not None:
        top = next(o for o in outcomes if o["number"] == summary["best"])
        resolved = Path(top["run_dir"]) / "recipe.resolved.yaml"
        text = resolved.read_text(encoding="utf-8")
        header = (f"# The best feasible trial ({top['number']}) of the search in {folder}:\n"
                  f"# {describe(top['params'])}\n# Runnable as is: compress {best_path.name}\n")
        atomic_write_text(best_path, header + text)
    elif best_path.exists():
        best_path.unlink()  # a resumed search's earlier best must not outlive the table that had it
    atomic_write_text(folder / "search.md", markdown(outcomes, spec, summary))
    atomic_write_text(folder / "search.html", html_page(outcomes, spec, summary))
    return summary


def _cell(o: dict[str, Any], metric: str) -> str:
    m = (o.get("metrics") or {}).get(metric)
    if not m:
        return ""
    ci = m.get("ci95")
    text = f"{m['value']:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
    return text + (" (noisy)" if m.get("noisy") else "") + (f" ({m['how']})" if m.get("how") not in (None, "measured") else "")


def _cached(o: dict[str, Any]) -> str:
    steps = o.get("steps") or []
    return ", ".join(f"{s['name']} {'cached' if s['cached'] else 'fresh'}" for s in steps)


def trials_csv(outcomes: list[dict[str, Any]], spec: SearchSpec) -> str:
    keys = list(spec.space)
    metrics = ["latency_ms", "accuracy", "accuracy_loss", "size_mb"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", *keys, *[c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high")],
                "latency_noisy", "artifact", "artifact_sha256", "status", "reason", "steps", "run_dir"])
    for o in outcomes:
        row: list[Any] = [o["number"], *[(o.get("params") or {}).get(k) for k in keys]]
        for m in metrics:
            d = (o.get("metrics") or {}).get(m) or {}
            ci = d.get("ci95") or [None, None]
            row += [d.get("value"), ci[0], ci[1]]
        lat = (o.get("metrics") or {}).get("latency_ms") or {}
        row += [lat.get("noisy"), o.get("artifact"), o.get("artifact_sha256"), o.get("status"), o.get("reason"),
                _cached(o), o.get("run_dir")]
        w.writerow(row)
    return buf.getvalue()


def markdown(outcomes: list[dict[str, Any]], spec: SearchSpec, summary: dict[str, Any]) -> str:
    lines = [f"# Search on {spec.target}", ""]
    obj = ", ".join(f"{k} ({v})" for k, v in spec.objectives.items())
    lim = ", ".join(f"{k} {'>=' if k == 'accuracy' else '<='} {v:g}" for k, v in spec.constraints.items()) or "none"
    lines += [f"Objectives: {obj}. Hard limits: {lim}.",
              f"{summary['trials']} trials, {summary['feasible']} feasible. Latency: p50 of the final artifact, "
              "95% CI, measured with the run harness (noise flags as in the report).", ""]
    if summary["best"] is not None:
        lines += [f"**Best feasible trial: {summary['best']}** (best.recipe.yaml).", ""]
    else:
        lines += [f"**No trial met every limit.** {summary['closest_miss_text'] or ''}", ""]
    cols = ["trial", *spec.space, "latency_ms", "accuracy", "accuracy_loss", "size_mb", "status", "steps"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    front = set(summary["front"])
    for o in outcomes:
        p = o.get("params") or {}
        status = o.get("status", "")
        if status != "feasible":
            status += f": {o.get('reason', '')}"
        num = f"**{o['number']}**" if o["number"] in front else str(o["number"])
        cells = [num, *[_fmt(p.get(k)) for k in spec.space], *[_cell(o, m) for m in
                 ("latency_ms", "accuracy", "accuracy_loss", "size_mb")], status.replace("|", "/"), _cached(o)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold: on the Pareto front (feasible, measured values). Compare two trials with "
              "`compress compare trials/NNNN trials/MMMM`.", ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _plot(outcomes: list[dict[str, Any]], spec: SearchSpec, summary: dict[str, Any]) -> str:
    """The trials on the first two objectives (latency vs accuracy by default), as inline SVG
    (:mod:`bench.svgchart`, as the run report draws its plots)."""
    from bench.svgchart import Axis, Chart, circle, cross, line, text

    metrics = list(spec.objectives)
    x_metric = metrics[0]
    y_metric = metrics[1] if len(metrics) > 1 else ("accuracy" if x_metric != "accuracy" else "latency_ms")
    pts = [(value_of(o, x_metric), value_of(o, y_metric), o) for o in outcomes
           if value_of(o, x_metric) is not None and value_of(o, y_metric) is not None]
    limits = {m: spec.constraints.get(m) for m in (x_metric, y_metric)}
    xs = [p[0] for p in pts] + [v for v in (limits[x_metric],) if v is not None]
    ys = [p[1] for p in pts] + [v for v in (limits[y_metric],) if v is not None]
    if not xs or not ys:
        return "<p>No trial has both values to plot yet.</p>"
    pad_x, pad_y = (max(xs) - min(xs)) * 0.08 or abs(xs[0]) * 0.1 or 1.0, (max(ys) - min(ys)) * 0.08 or 0.01
    chart = Chart(680, 420, Axis(min(xs) - pad_x, max(xs) + pad_x), Axis(min(ys) - pad_y, max(ys) + pad_y))
    label = {m: f"{m} ({METRIC_UNITS[m]})" if METRIC_UNITS.get(m) else m for m in (x_metric, y_metric)}
    chart.axes(label[x_metric], label[y_metric])
    assert chart.y is not None
    front = [p for p in pts if p[2]["number"] in set(summary["front"])]
    if front:
        chart.add(line(sorted((chart.x(x), chart.y(y)) for x, y, _ in front), "#2ca02c", 1.5),
                  (line([(-8, 0), (8, 0)], "#2ca02c", 1.5), "Pareto front"))
    for x, y, o in pts:
        px, py = chart.x(x), chart.y(y)
        tip = f"trial {o['number']}: {x_metric} {x:.4g}, {y_metric} {y:.4g}"
        if o.get("status") == "feasible":
            chart.add(circle(px, py, 4.5, "#1f77b4", title=tip), (circle(0, 0, 4.5, "#1f77b4"), "feasible"))
        else:
            chart.add(cross(px, py, "#d62728"), (cross(0, 0, "#d62728"), "infeasible"))
        chart.add(text(px + 5, py - 4, str(o["number"]), 8))
    if limits[x_metric] is not None:
        lx = chart.x(limits[x_metric])
        chart.add(line([(lx, chart.top), (lx, chart.plot_bottom)], "#888", 1, "4 3"),
                  (line([(-8, 0), (8, 0)], "#888", 1, "4 3"), "limit"))
    if limits[y_metric] is not None:
        ly = chart.y(limits[y_metric])
        chart.add(line([(chart.left, ly), (chart.x.end, ly)], "#888", 1, "4 3"),
                  (line([(-8, 0), (8, 0)], "#888", 1, "4 3"), "limit"))
    return chart.render("search", f"trials: {y_metric} against {x_metric}")


def html_page(outcomes: list[dict[str, Any]], spec: SearchSpec, summary: dict[str, Any]) -> str:
    plot = _plot(outcomes, spec, summary)
    headline = (f"Best feasible trial: {summary['best']}" if summary["best"] is not None
                else f"No trial met every limit. {summary['closest_miss_text'] or ''}")
    rows = []
    front = set(summary["front"])
    for o in outcomes:
        p = o.get("params") or {}
        cells = [str(o["number"]) + (" ★" if o["number"] in front else ""), *[_fmt(p.get(k)) for k in spec.space],
                 *[_cell(o, m) for m in ("latency_ms", "accuracy", "accuracy_loss", "size_mb")],
                 o.get("status", "") + (f": {o.get('reason')}" if o.get("status") != "feasible" else ""), _cached(o)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["trial", *spec.space, "latency_ms", "accuracy",
                                                           "accuracy_loss", "size_mb", "status", "steps"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>search on {html.escape(spec.target)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body>"
            f"<h1>Search on {html.escape(spec.target)}</h1><p>{html.escape(headline)}</p>"
            f"{plot}"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            "<p>★ on the Pareto front (feasible trials, measured values; latency is the p50 with its 95% CI).</p>"
            "</body></html>")
