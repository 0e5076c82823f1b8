"""``report.html``: one self-contained page a user reads to decide what to ship.

Everything is inside the file: plots are drawn as inline SVG by :mod:`bench.svgchart`
(text, no plotting library to import on every run), styles are inline, there is no script, and a
Content-Security-Policy forbids the page from fetching anything, so it opens the same
offline, in a mail attachment or as a CI artifact.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import _fmt, _fmt_bytes
from compress.core.report_schema import ArtifactReport, Report, TargetResult

# The page may load nothing at all: inline styles and data: images only, no script.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:1.2rem 1.6rem;color:#1d2430;background:#fff;line-height:1.45}
h1{font-size:1.55rem;margin:.2rem 0 .4rem}h2{font-size:1.2rem;margin:1.8rem 0 .6rem;border-bottom:1px solid #dde3ea;
padding-bottom:.2rem}h3{font-size:1rem;margin:1rem 0 .4rem}
table{border-collapse:collapse;font-size:.86rem;margin:.4rem 0 .8rem}th,td{border:1px solid #dde3ea;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f6f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-ok{color:#17803d;font-weight:600}.status-degraded{color:#b54708;font-weight:600}.status-failed,.status-interrupted{color:#b42318;font-weight:600}
.muted{color:#5f6b7a}.pill{display:inline-block;border-radius:.6rem;padding:0 .45rem;font-size:.75rem;
background:#eef2f6;margin-right:.25rem}.noisy{background:#fff1d6;color:#8a5300}.bad{background:#fde2e1;color:#9b1c1c}ul.summary li{margin:.3rem 0}ul.summary li.ok{font-weight:600}
.good{background:#e0f4e8;color:#17603a}.plot svg{max-width:100%;height:auto}.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 520px}figcaption{font-size:.8rem;color:#5f6b7a}
ul.adv li{margin:.2rem 0}.sev-warning{color:#8a5300}.sev-error{color:#b42318}.sev-info{color:#35557a}
.lineage{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}code{font-size:.85em}
details{margin:.3rem 0}summary{cursor:pointer}
"""

_COLORS = ["#3b6fb6", "#d9822b", "#2f9e6a", "#b6463b", "#7b5cb8", "#8c6d46", "#c9589b", "#6b7280"]


# --------------------------------------------------------------------------- formatting


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


# The Markdown report's formatters, so both renderings print the same figures.
_bytes = _fmt_bytes
_num = _fmt


def _ms(x: float | None) -> str:
    """Milliseconds with three significant figures whatever the magnitude."""
    if x is None:
        return "-"
    return f"{x:#.3g}" if x < 100 else f"{x:.0f}"


def _inline_md(text: str) -> str:
    """Escape, then apply the inline Markdown the reports use: `code` and **bold**."""
    s = _e(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def markdown_to_html(md: str) -> str:
    """The Markdown subset report sections are written in: headings, tables, lists, paragraphs."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)  # the page's h1/h2 are taken
            out.append(f"<h{level}>{_inline_md(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            if rows:
                head = "".join(f"<th>{_inline_md(c)}</th>" for c in rows[0])
                body = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                item = re.sub(r"^\s*[-*] ", "", lines[i])
                items.append(f"<li>{_inline_md(item)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "#", "- ", "* ")):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline_md(' '.join(para))}</p>")
    return "\n".join(out)


# --------------------------------------------------------------------------- measurements


def measurement_label(t: TargetResult) -> str:
    """``local, 1 thread, batch 1``: what distinguishes one measurement of an artifact."""
    return f"{t.target}, {t.threads} thread{'s' if t.threads != 1 else ''}, batch {t.batch}"


def timed(report: Report) -> list[tuple[ArtifactReport, TargetResult]]:
    """Every (artifact, target result) that has a latency figure, in report order."""
    return [(a, t) for a in report.artifacts for t in a.targets if t.latency_ms is not None]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both latency (lower) and accuracy (higher).

    Args:
        points: (latency, accuracy) pairs.

    Returns:
        Indices of the front, ordered by latency.
    """
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (lat2 <= lat and acc2 >= acc) and (lat2 < lat or acc2 > acc) for j, (lat2, acc2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


# --------------------------------------------------------------------------- plots


class _Plotter:
    """Renders charts into inline SVG, counting them (each chart names its own class)."""

    def __init__(self) -> None:
        self.count = 0

    def svg(self, chart: Any, name: str, title: str) -> str:
        self.count += 1
        return chart.render(name, title)


def place_label(px: float, py: float, label: str, placed: list[tuple[float, float, float, float]],
                size: float = 8.0) -> tuple[float, float]:
    """Where to write a point's label so that it overlaps no label placed before (boxes in
    ``placed``, which gets this one): beside the point, then further above and below it."""
    w, h = 0.6 * size * len(label), size + 1
    offsets = [(6, -5), (6, 11), (-6 - w, -5), (-6 - w, 11)] + [(6, -5 - k * h) for k in range(1, 6)] \
        + [(6, 11 + k * h) for k in range(1, 6)]
    for dx, dy in offsets:
        box = (px + dx, py + dy - size, px + dx + w, py + dy + 1)
        if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            placed.append(box)
            return px + dx, py + dy
    dx, dy = offsets[0]
    placed.append((px + dx, py + dy - size, px + dx + w, py + dy + 1))
    return px + dx, py + dy


def scatter_plot(report: Report, plotter: _Plotter) -> str | None:
    """Accuracy against p50 latency, one series per measurement setting, Pareto front marked."""
    from bench.svgchart import Axis, Chart, circle, cross, line, text

    rows = timed(report)
    if not rows:
        return None
    use_acc = any(a.accuracy is not None for a, _ in rows)
    series: dict[str, list[tuple[ArtifactReport, TargetResult]]] = {}
    for a, t in rows:
        y = a.accuracy if use_acc else a.size_bytes
        if y is not None:
            series.setdefault(measurement_label(t), []).append((a, t))
    if not series:
        return None
    pts_all = [(t.latency_ms, a.accuracy if use_acc else a.size_bytes / 1e6) for s in series.values() for a, t in s]
    xs_all = [v for s, _ in pts_all for v in (s.ci95[0], s.ci95[1], s.p50) if v > 0] or [1.0]
    ys_all = [y for _, y in pts_all]
    base = report.baseline.accuracy if use_acc and report.baseline and report.baseline.accuracy is not None else None
    if base is not None:
        ys_all.append(base)
    log_x = max(xs_all) / max(min(xs_all), 1e-12) > 20
    xlo, xhi = min(xs_all), max(xs_all)
    pad_x = (xhi - xlo) * 0.08 or xhi * 0.1
    ylo, yhi = min(ys_all), max(ys_all)
    pad_y = (yhi - ylo) * 0.1 or abs(yhi) * 0.01 or 0.01
    chart = Chart(640, 400, Axis(xlo / 1.3 if log_x else max(0.0, xlo - pad_x), xhi * 1.3 if log_x else xhi + pad_x, log_x),
                  Axis(ylo - pad_y, yhi + pad_y))
    chart.axes("p50 latency (ms), bars: 95% CI of the median", "accuracy" if use_acc else "size (MB)")
    X, Y = chart.x, chart.y
    if Y is None:  # a value chart always has its y axis
        return None
    if base is not None:
        chart.add(line([(X.start, Y(base)), (X.end, Y(base))], "#6b7280", 1, "2 3"),
                  (line([(-7, 0), (7, 0)], "#6b7280", 1, "2 3"), "baseline accuracy"))
    labels_at: list[tuple[float, float, float, float]] = []
    for k, (label, pts) in enumerate(series.items()):
        color = _COLORS[k % len(_COLORS)]
        xs = [t.latency_ms.p50 for _, t in pts]
        ys = [a.accuracy if use_acc else a.size_bytes / 1e6 for a, _ in pts]
        ok = [i for i, (a, _) in enumerate(pts) if a.status != "degraded"]
        # Lower latency is better; so is higher accuracy, or lower size when there is no accuracy.
        # A degraded artifact (failed its fidelity gate) is crossed out and never on the front.
        front = [ok[i] for i in pareto_front([(xs[i], ys[i] if use_acc else -ys[i]) for i in ok])]
        steps: list[tuple[float, float]] = []
        for i in front:
            if steps and use_acc:
                steps.append((X(xs[i]), steps[-1][1]))
            steps.append((X(xs[i]), Y(ys[i])))
        if len(steps) > 1:
            chart.add(line(steps, color, 1, "4 3"))
        for (a, t), x, y in zip(pts, xs, ys):
            s = t.latency_ms
            px, py = X(x), Y(y)
            chart.add(line([(X(max(s.ci95[0], 1e-12)), py), (X(s.ci95[1]), py)], color, 1.2))
            chart.add(circle(px, py, 3.5, color, title=f"{a.name}: {x:.4g} ms, {y:.4g}"), (circle(0, 0, 3.5, color), label))
            chart.add(text(*place_label(px, py, a.name, labels_at), a.name, 8))
            if a.status == "degraded":
                chart.add(cross(px, py, "#b42318"), (cross(0, 0, "#b42318"), "degraded (failed its gate)"))
        for i in front:
            chart.add(circle(X(xs[i]), Y(ys[i]), 7, color, hollow=True), (circle(0, 0, 6, color, hollow=True),
                                                                          f"Pareto front ({label})"))
    title = "accuracy vs latency" if use_acc else "size vs latency (no accuracy: the recipe has no labels)"
    return plotter.svg(chart, "scatter", title)


def size_plot(report: Report, plotter: _Plotter) -> str | None:
    """Horizontal bars of file size (zipped size where known), baseline size as a line."""
    from bench.svgchart import Axis, Chart, line, rect, text

    arts = [a for a in report.artifacts if a.size_bytes is not None]
    if not arts:
        return None
    biggest = max([a.size_bytes for a in arts] + [report.baseline.size_bytes if report.baseline and
                                                  report.baseline.size_bytes else 0])
    unit, scale = ("MB", 1e6) if biggest >= 1e6 else ("kB", 1e3)  # the axis in the unit the bars are labelled in
    base = report.baseline.size_bytes / scale if report.baseline and report.baseline.size_bytes else None
    sizes = [a.size_bytes / scale for a in arts]
    chart = Chart(640, 110 + 30 * len(arts), Axis(0.0, max(sizes + [base or 0.0]) * 1.25 or 1.0),
                  rows=[a.name for a in arts], left=110)
    chart.axes(f"size ({unit})")
    X = chart.x
    band = (chart.plot_bottom - chart.top) / len(arts)
    for i, (a, size) in enumerate(zip(arts, sizes)):
        cy = chart.row_y(i)
        chart.add(rect(X(0), cy - 0.3 * band, X(size) - X(0), 0.6 * band, _COLORS[0]), (rect(-6, -5, 12, 10, _COLORS[0]), "file"))
        if a.zipped_bytes:
            z = a.zipped_bytes / scale
            chart.add(rect(X(0), cy - 0.15 * band, X(z) - X(0), 0.3 * band, _COLORS[1]),
                      (rect(-6, -3, 12, 6, _COLORS[1]), "zipped"))
        chart.add(text(X(size) + 4, cy + 3, _bytes(a.size_bytes), 8))
    if base is not None:
        chart.add(line([(X(base), chart.top), (X(base), chart.plot_bottom)], "#6b7280", 1, "2 3"),
                  (line([(-7, 0), (7, 0)], "#6b7280", 1, "2 3"), "baseline (torch)"))
    return plotter.svg(chart, "size", "model size per artifact")


def _box(chart: Any, i: int, d: np.ndarray, half: float) -> None:
    """A horizontal box plot of row ``i``: quartiles, whiskers to p1 and p99, the median as a line."""
    from bench.svgchart import line, rect

    X, cy = chart.x, chart.row_y(i)
    p1, q1, med, q3, p99 = np.percentile(d, [1, 25, 50, 75, 99])
    chart.add(line([(X(p1), cy), (X(q1), cy)], "#333", 0.9) + line([(X(q3), cy), (X(p99), cy)], "#333", 0.9))
    for v in (p1, p99):
        chart.add(line([(X(v), cy - half / 2), (X(v), cy + half / 2)], "#333", 0.9))
    chart.add(rect(X(q1), cy - half, X(q3) - X(q1), 2 * half, "none", "#333"))
    chart.add(line([(X(med), cy - half), (X(med), cy + half)], "#111", 1.6))


def distribution_plot(report: Report, plotter: _Plotter, max_rows: int = 40) -> str | None:
    """Every kept run time per measurement: a box (quartiles, whiskers to p1/p99) over the points."""
    from bench.svgchart import Axis, Chart, circle

    rows = [(a, t) for a, t in timed(report) if t.times_ms][:max_rows]
    if not rows:
        return None
    data = [np.asarray(t.times_ms, dtype=float) for _, t in rows]
    # A few stalls of 100x the median would squash every box into a line: the axis ends at
    # the largest p99.5 and the label says how many runs lie beyond it.
    lo = min(float(d.min()) for d in data)
    hi = max(float(np.percentile(d, 99.5)) for d in data)
    beyond = [int((d > hi * 1.05).sum()) for d in data]
    labels = [f"{a.name}\n{measurement_label(t)}" + (" (noisy)" if t.latency_ms.noisy else "")
              + (f"\n{k} run{'s' if k > 1 else ''} off the axis" if k else "") for (a, t), k in zip(rows, beyond)]
    # Log scale when the spread (across settings or within one) spans more than a decade.
    log_x = hi / max(lo, 1e-12) > 10
    pad = 0.05 * (hi - lo) or 0.05 * hi
    axis = Axis(lo / 1.1, hi * 1.1, True) if log_x else Axis(max(0.0, lo - pad), hi + pad)
    chart = Chart(680, 100 + 44 * len(rows), axis, rows=labels, left=190)
    chart.axes("time per run (ms); box: quartiles, whiskers: p1-p99, line: median")
    half = 0.27 * (chart.plot_bottom - chart.top) / len(rows)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        color = _COLORS[i % len(_COLORS)]
        shown = d[(d >= axis.lo) & (d <= axis.hi)]
        jitter = rng.uniform(-0.65, 0.65, size=shown.size) * half
        cy = chart.row_y(i)
        chart.add("".join(circle(axis(v), cy + j, 1.5, color, opacity=0.45) for v, j in zip(shown, jitter)))
        _box(chart, i, d, half)
    return plotter.svg(chart, "distribution", "latency distribution per artifact")


# --------------------------------------------------------------------------- sections


def _header(r: Report) -> str:
    status = f'<span class="status-{_e(r.status)}">{_e(r.status)}</span>'
    err = f" &mdash; {_e(r.error)}" if r.error else ""
    data = r.data or {}
    data_txt = ", ".join(f"{k} {v}" for k, v in data.items() if v is not None)
    base = ""
    if r.baseline:
        b = r.baseline
        base = (f"<p>Baseline (PyTorch): accuracy {_num(b.accuracy)}, {b.params or '-'} parameters, "
                f"{b.macs or '-'} MACs, {_bytes(b.size_bytes)}</p>")
    return (f"<header><h1>edgepack report: {_e(r.recipe.get('name'))}</h1>"
            f"<p>Status: {status}{err} · created {_e(r.created)} · task {_e(r.task.get('kind', '-'))}"
            f" · data: {_e(data_txt or '-')}</p>{base}</header>")


def _env_section(r: Report) -> str:
    env = r.env or {}
    if not env:
        return ""
    load = env.get("loadavg")
    versions = env.get("versions") or r.tool or {}
    runtime_keys = ("onnxruntime", "ai-edge-litert", "tflite-runtime", "torch", "numpy")
    rows = [
        ("CPU", f"{env.get('cpu', '?')} ({env.get('machine', '?')})"),
        ("cores", f"{env.get('cores', '?')}; affinity {env.get('affinity', '-')}"),
        ("CPU flags that matter", ", ".join(env.get("cpu_flags") or []) or "-"),
        ("load average (1, 5, 15 min)", ", ".join(f"{x:.2f}" for x in load) if load else "-"),
        ("system", f"{env.get('system', '?')} {env.get('release', '')}, Python {env.get('python', '?')}"),
        ("runtimes", ", ".join(f"{k} {versions[k]}" for k in runtime_keys if k in versions) or "-"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<section id="environment"><h2>Environment</h2><table>{body}</table></section>'


def _parity_cell(a: ArtifactReport) -> str:
    p = a.parity
    if p is None:
        return "-"
    verdict = "" if p.passed is None else (' <span class="pill good">ok</span>' if p.passed
                                           else ' <span class="pill bad">failed</span>')
    return f"max diff {p.max_abs_diff:.2e} vs {_e(p.reference)}{verdict}"


def _artifacts_section(r: Report) -> str:
    base_acc = r.baseline.accuracy if r.baseline else None
    head = ("<tr><th>artifact</th><th>format</th><th>precision</th><th>size</th><th>zipped</th><th>accuracy</th>"
            "<th>vs baseline</th><th>agreement</th><th>parity</th><th>p50 (ms)</th><th>from</th></tr>")
    rows = []
    for a in r.artifacts:
        delta = "-" if a.accuracy is None or base_acc is None else f"{a.accuracy - base_acc:+.4f}"
        agree = a.metrics.get("agreement")
        first = next((t for t in a.targets if t.latency_ms is not None), None)
        p50 = "-" if first is None else f"{_ms(first.latency_ms.p50)} ({_e(first.how)})"
        rows.append(
            f"<tr><td>{_e(a.name)}</td><td>{_e(a.format)}</td><td>{_e(a.precision)}</td>"
            f'<td class="num">{_bytes(a.size_bytes)}</td><td class="num">{_bytes(a.zipped_bytes)}</td>'
            f'<td class="num">{_num(a.accuracy)}</td><td class="num">{delta}</td>'
            f'<td class="num">{_num(agree, ".4f")}</td><td>{_parity_cell(a)}</td><td class="num">{p50}</td>'
            f"<td>{_e(a.step or '-')}</td></tr>"
        )
    return (f'<section id="artifacts"><h2>Artifacts</h2><table><thead>{head}</thead><tbody>{"".join(rows)}'
            "</tbody></table></section>")


def _latency_row(a: ArtifactReport, t: TargetResult) -> str:
    pre = f"<td>{_e(a.name)}</td><td>{_e(t.target)}<br><span class='muted'>{_e(t.device)}</span></td>"
    if t.latency_ms is None:
        what = f"error: {t.error}" if t.error else (
            f"parity {'ok' if t.parity and t.parity.passed else 'checked'}, no latency ({t.how})" if t.parity else t.how)
        return f"<tr>{pre}<td>{_e(t.how)}</td><td>{t.threads}</td><td>{t.batch}</td><td colspan='8'>{_e(what)}</td></tr>"
    s = t.latency_ms
    band = f" band {_ms(t.estimate_band_ms[0])}-{_ms(t.estimate_band_ms[1])}" if t.estimate_band_ms else ""
    noise = f'<span class="pill noisy" title="{_e(s.noise_reason)}">noisy</span> {_e(s.noise_reason)}' if s.noisy else (
        '<span class="pill good">steady</span>')
    mem = "-" if t.memory_increase_mb is None else f"+{t.memory_increase_mb:.1f} MB"
    thr = "-" if t.throughput_items_s is None else f"{t.throughput_items_s:,.0f}/s"
    warm = t.details.get("warmup_runs")
    return (f"<tr>{pre}<td>{_e(t.how)}</td><td>{t.threads}</td><td>{t.batch}</td>"
            f'<td class="num">{_ms(s.p50)} [{_ms(s.ci95[0])}, {_ms(s.ci95[1])}]{band}</td>'
            f'<td class="num">{_ms(s.p90)}</td><td class="num">{_ms(s.p99)}</td>'
            f'<td class="num">{_ms(s.mean)} ± {_ms(s.std)}</td><td class="num">{thr}</td><td class="num">{mem}</td>'
            f'<td class="num">{"-" if t.load_ms is None else f"{t.load_ms:.0f} ms"}</td>'
            + (f"<td>{s.runs} runs{f' after {warm} warmup' if warm else ''}<br>{noise}</td></tr>" if t.how == "measured"
               else f"<td>{_e(t.how)}: no timed runs</td></tr>"))


def _latency_section(r: Report, plotter: _Plotter) -> str:
    head = ("<tr><th>artifact</th><th>target</th><th>how</th><th>threads</th><th>batch</th>"
            "<th>p50 [95% CI] ms</th><th>p90</th><th>p99</th><th>mean ± std</th><th>throughput</th>"
            "<th>memory</th><th>load + 1st run</th><th>runs</th></tr>")
    rows = "".join(_latency_row(a, t) for a in r.artifacts for t in a.targets)
    if not rows:
        return '<section id="latency"><h2>Latency</h2><p class="muted">No benchmark results.</p></section>'
    dist = distribution_plot(r, plotter)
    fig = (f'<figure class="plot" id="plot-distribution">{dist}<figcaption>Every kept run, per artifact and setting. '
           "A wide box or a long tail means the median alone hides something.</figcaption></figure>") if dist else ""
    return (f'<section id="latency"><h2>Latency</h2><table><thead>{head}</thead><tbody>{rows}</tbody></table>'
            f'<h3>Latency distributions</h3>{fig}</section>')


def _tradeoff_plots(r: Report, plotter: _Plotter) -> str:
    scatter = scatter_plot(r, plotter)
    size = size_plot(r, plotter)
    figs = []
    if scatter:
        figs.append(f'<figure class="plot" id="plot-scatter">{scatter}<figcaption>Each point an artifact; the ringed '
                    "points form the Pareto front (nothing else is both faster and more accurate).</figcaption></figure>")
    if size:
        figs.append(f'<figure class="plot" id="plot-size">{size}<figcaption>File size on disk.</figcaption></figure>')
    if not figs:
        return ""
    return f'<section id="overview"><h2>Accuracy, latency and size</h2><div class="plots">{"".join(figs)}</div></section>'


def _metrics_section(r: Report) -> str:
    keys: list[str] = []
    for a in r.artifacts:
        for k, v in a.metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    if not keys:
        return ""
    head = "<tr><th>artifact</th>" + "".join(f"<th>{_e(k)}</th>" for k in keys) + "</tr>"
    rows = []
    for a in r.artifacts:
        cells = "".join(f'<td class="num">{_num(a.metrics.get(k))}</td>' for k in keys)
        rows.append(f"<tr><td>{_e(a.name)}</td>{cells}</tr>")
    cms = []
    labels = r.task.get("labels") or []
    for a in r.artifacts:
        cm = a.metrics.get("confusion_matrix")
        if not cm:
            continue
        names = [labels[i] if i < len(labels) else str(i) for i in range(len(cm))]
        head_cm = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
        body_cm = "".join(
            f"<tr><th>{_e(names[i])}</th>" + "".join(f'<td class="num">{v}</td>' for v in row) + "</tr>"
            for i, row in enumerate(cm)
        )
        cms.append(f"<details><summary>confusion matrix: {_e(a.name)}</summary><table>{head_cm}{body_cm}</table></details>")
    return (f'<section id="metrics"><h2>Task metrics</h2><table><thead>{head}</thead><tbody>{"".join(rows)}'
            f'</tbody></table>{"".join(cms)}</section>')


def _chain(a: ArtifactReport, by_name: dict[str, ArtifactReport], torch_parents: dict[str, str] | None = None) -> list[str]:
    """Names from the root to ``a`` following parent links (cycles cut).

    ``torch_parents`` links a torch model made by a step to the model that step received.
    """
    chain, seen = [a.name], {a.name}
    parent = a.parent
    while parent and parent not in seen:
        chain.append(parent)
        seen.add(parent)
        parent = by_name[parent].parent if parent in by_name else (torch_parents or {}).get(parent)
    return chain[::-1]


def _lineage_section(r: Report) -> str:
    parts = []
    if r.steps:
        head = ("<tr><th>#</th><th>step</th><th>status</th><th>time</th><th>params</th><th>MACs</th><th>size</th>"
                "<th>accuracy</th><th>details</th></tr>")
        rows = []
        for s in r.steps:
            b, a = s.before, s.after

            def arrow(field: str, fmt: Any = str, b: Any = b, a: Any = a) -> str:
                x = getattr(b, field) if b else None
                y = getattr(a, field) if a else None
                return f"{'-' if x is None else fmt(x)} → {'-' if y is None else fmt(y)}"

            details = ", ".join(f"{k}: {v}" for k, v in s.details.items() if isinstance(v, (int, float, str, bool)))
            err = f"<br><span class='sev-error'>{_e(s.error)}</span>" if s.error else ""
            rows.append(
                f"<tr><td>{s.index}</td><td>{_e(s.kind)}</td><td class='status-{_e(s.status)}'>{_e(s.status)}</td>"
                f"<td class='num'>{_num(s.duration_s, '.1f')} s</td><td>{arrow('params')}</td><td>{arrow('macs')}</td>"
                f"<td>{arrow('size_bytes', _bytes)}</td><td>{arrow('accuracy', lambda v: format(v, '.4f'))}</td>"
                f"<td>{_e(details[:400])}{err}</td></tr>"
            )
        parts.append(f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    else:
        parts.append('<p class="muted">No compression steps: the artifacts are exports of the baseline.</p>')
    by_name = {a.name: a for a in r.artifacts}
    # torch models are not artifacts of the report: the step that made each one names it
    made_by = {s.output: s.name for s in r.steps if s.output}
    chains = []
    for a in r.artifacts:
        links = []
        for n in _chain(a, by_name, {s.output: s.input for s in r.steps if s.output and s.input}):
            step = by_name[n].step if n in by_name else made_by.get(n)
            links.append(f"{_e(n)}" + (f" <span class='muted'>({_e(step)})</span>" if step else ""))
        sha = f" <span class='muted'>sha256 {_e(a.sha256[:12])}</span>" if a.sha256 else ""
        chains.append(f"<li>{' → '.join(links)}{sha}</li>")
    parts.append(f'<h3>Artifact lineage</h3><ul class="lineage">{"".join(chains)}</ul>')
    return f'<section id="lineage"><h2>Steps and lineage</h2>{"".join(parts)}</section>'


def _advisories_section(r: Report) -> str:
    if not r.advisories:
        return '<section id="advisories"><h2>Advisories</h2><p class="muted">None.</p></section>'
    items = []
    for adv in r.advisories:
        where = adv.artifact or adv.step
        items.append(f"<li class='sev-{_e(adv.severity)}'><strong>{_e(adv.severity)}</strong> <code>{_e(adv.code)}</code>"
                     + (f" ({_e(where)})" if where else "") + f": {_e(adv.message)}</li>")
    return f'<section id="advisories"><h2>Advisories</h2><ul class="adv">{"".join(items)}</ul></section>'


def _tradeoff_section(r: Report) -> str:
    t = r.tradeoff
    if not t:
        return ""
    if t.get("markdown"):
        body = markdown_to_html(t["markdown"])
    else:
        body = "<table>" + "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in t.items() if not isinstance(v, (dict, list))
        ) + "</table>"
    return f'<section id="tradeoff"><h2>Cloud or device</h2>{body}</section>'


def _shadow_section(r: Report) -> str:
    """The recipe's shadow tests (``shadow:``): each artifact against its baseline on logged inputs."""
    sh = r.shadow
    if not sh or not sh.get("markdown"):
        return ""
    md = "\n".join(line for line in sh["markdown"].splitlines() if line.strip() != "## Shadow tests")
    return f'<section id="shadow"><h2>Shadow tests</h2>{markdown_to_html(md)}</section>'


def _summary_section(r: Report) -> str:
    """The answer first: per target the artifact to ship, and every slowdown in words."""
    s = r.summary
    if not s:
        return ""
    items = []
    for t in s.get("targets", []):
        items.append(f'<li class="{"ok" if t.get("recommended") else "bad"}">{_e(t["words"])}</li>')
    for f in s.get("slower_than_parent", []):
        items.append(f'<li class="bad">{_e(f["words"])}</li>')
    if s.get("degraded"):
        items.append(f'<li class="bad">failed their fidelity gates (never recommended): {_e(", ".join(s["degraded"]))}</li>')
    if not items:
        items = [f"<li>{_e(line)}</li>" for line in s.get("lines", [])]
    return f'<section id="summary"><h2>Summary</h2><ul class="summary">{"".join(items)}</ul></section>'


def render_html(report: Report, run_dir: Path | None = None) -> str:
    """The whole page for one report.

    Args:
        report: The run's report.
        run_dir: The run folder (artifact paths in the report are relative to it); unused
            for now beyond the page footer, kept so callers need not change when the page
            links run files.

    Returns:
        A self-contained HTML document.
    """
    plotter = _Plotter()
    r = report
    sections = [
        _header(r),
        _summary_section(r),
        _tradeoff_plots(r, plotter),
        _artifacts_section(r),
        _latency_section(r, plotter),
        _metrics_section(r),
        _lineage_section(r),
        _shadow_section(r),
        _advisories_section(r),
        _tradeoff_section(r),
        _env_section(r),
    ]
    where = f" · run folder {_e(run_dir)}" if run_dir is not None else ""
    footer = (f'<footer class="muted"><p>Latency is <code>measured</code> on the named device (each artifact in a fresh '
              "process, warmup until stable, every run kept, median with a bootstrap 95% CI) unless marked "
              "<code>estimated</code> (from a device profile) or <code>emulated</code> (correctness only, never a "
              f"latency). Report schema {r.schema_version} · edgepack {_e(r.tool.get('edgepack', '?'))}{where}</p></footer>")
    title = f"edgepack report: {r.recipe.get('name')}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(s for s in sections if s)
        + f"\n{footer}\n</body></html>\n"
    )
