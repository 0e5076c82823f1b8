"""The run report rendered as Markdown (the schema is :mod:`compress.core.report_schema`)."""

from __future__ import annotations

from typing import Any

from compress.core.report_schema import ModelFacts, Report, TargetResult


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _fmt_load(load: Any) -> str:
    if not load:
        return "?"
    return ", ".join(f"{x:.2f}" for x in load) if isinstance(load, (list, tuple)) else str(load)


def _runtimes(env: dict[str, Any]) -> str:
    versions = env.get("versions") or {}
    return ", ".join(f"{k} {versions[k]}" for k in ("onnxruntime", "ai-edge-litert") if k in versions)


def latency_cell(t: TargetResult) -> str:
    if t.error:
        return f"error: {t.error}"
    if t.latency_ms is None:
        if t.parity is not None:
            return f"parity {'ok' if t.parity.passed else 'FAILED'} (max diff {t.parity.max_abs_diff:.1e}; {t.how}, no latency)"
        return t.how
    s = t.latency_ms
    if t.how == "estimated" and t.estimate_band_ms:
        return f"~{s.p50:.2f} ms ({t.estimate_band_ms[0]:.2f}-{t.estimate_band_ms[1]:.2f}) estimated"
    noisy = ", noisy" if s.noisy else ""
    runs = f"{s.repeats} processes x {s.runs // s.repeats} runs" if s.repeats > 1 else f"{s.runs} runs"
    tail = " ".join(f"{label} {_fmt_ms(v)}" for label, v in (("p90", s.p90), ("p95", s.p95), ("p99", s.p99), ("max", s.max))
                    if v is not None and (label != "max" or s.p99 is None))  # max: when no p99 was printed
    return f"{_fmt_ms(s.p50)} ms [{_fmt_ms(s.ci95[0])}, {_fmt_ms(s.ci95[1])}] {tail} ({s.how}, {runs}{noisy})"


def repeats_cell(t: TargetResult) -> str:
    """Per-process medians, the minimum detectable effect, and the speed-up over the parent."""
    s = t.latency_ms
    if s is None or t.error or t.how != "measured":
        return "-"
    parts = []
    if s.process_medians and s.repeats > 1:
        parts.append("medians " + ", ".join(_fmt_ms(m) for m in s.process_medians) + " ms")
    parts.append(f"detects changes above {100 * s.mde_rel:.0f}%" if s.mde_rel is not None
                 else "MDE unknown (one process)")
    if s.yardstick_ratio is not None:
        parts.append(f"{s.yardstick_ratio:.3f}x the machine yardstick"
                     + (f" [{s.yardstick_ci95[0]:.3f}, {s.yardstick_ci95[1]:.3f}]" if s.yardstick_ci95 else "")
                     + (f", detects changes above {100 * s.yardstick_mde:.0f}% relative to it" if s.yardstick_mde is not None else ""))
    speed = t.details.get("speedup_vs_parent")
    if speed:
        parts.append(f"{speed['speedup']:.2f}x vs {speed['parent']} [{speed['ci95'][0]:.2f}, {speed['ci95'][1]:.2f}]")
    return "; ".join(parts)


def _fmt_ms(x: float) -> str:
    """Milliseconds to four significant figures: 0.01132 and 7.346 alike."""
    return f"{x:.4g}" if x < 1000 else f"{x:.0f}"


FIDELITY_COLUMNS = (("agreement", "agreement", ".4f"), ("sqnr_db", "SQNR dB", ".1f"), ("cosine", "cosine", ".5f"),
                    ("dead_fraction", "dead", ".3f"), ("detection_f1", "det. F1", ".3f"))


def fidelity_rows(name: str, fid: dict[str, Any] | None, gate: dict[str, Any] | None) -> list[list[str]]:
    """Cells of the fidelity table: one row per output of one comparison."""
    rows = []
    for o in (fid or {}).get("outputs", []):
        cells = [name, str(fid.get("reference", "-")), f"{o.get('name', '-')} ({o.get('task', '-')})"]
        for key, _, spec in FIDELITY_COLUMNS:
            v = o.get(key)
            cells.append("-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v))
        rows.append(cells)
    return rows


def fidelity_markdown(r: Report) -> list[str]:
    """The per-output fidelity of every gated artifact and step model, and the reasons of a failed gate."""
    rows: list[list[str]] = []
    reasons: list[str] = []
    for s in r.steps:
        if s.fidelity:
            rows += fidelity_rows(s.output or s.name, s.fidelity, s.gate)
        if s.gate and not s.gate.get("passed", True):
            reasons += [f"- {s.output or s.name}: {x}" for x in s.gate.get("reasons", [])]
    for a in r.artifacts:
        fid = a.fidelity or {}
        for key in ("vs_parent", "vs_baseline"):
            if fid.get(key) and (key == "vs_parent" or fid[key].get("reference") != (fid.get("vs_parent") or {}).get("reference")):
                rows += fidelity_rows(a.name, fid[key], a.gate)
        if a.gate and not a.gate.get("passed", True):
            reasons += [f"- {a.name}: {x}" for x in a.gate.get("reasons", [])]
            reasons += [f"  - fix: {x}" for x in a.gate.get("fixes", [])]
    if not rows:
        return []
    head = ["model", "vs", "output"] + [label for _, label, _ in FIDELITY_COLUMNS]
    out = ["", "## Fidelity (per output)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c) + " |" for c in rows]
    if reasons:
        out += ["", "Failed gates (the artifact is kept, marked degraded, never recommended):", "", *reasons]
    return out


def render_markdown(report: Report) -> str:
    """A Markdown summary fit for a pull-request comment."""
    r = report
    lines = [f"# edgepack report: {r.recipe.get('name')}", ""]
    lines.append(f"Status: **{r.status}**" + (f" — {r.error}" if r.error else "") + f" · created {r.created}")
    env = r.env
    if env:
        lines.append(
            f"Host: {env.get('cpu', '?')} · {env.get('cores', '?')} cores · "
            f"flags {', '.join(env.get('cpu_flags', [])) or '-'} · load {_fmt_load(env.get('loadavg'))}"
            + (f" · {runtimes}" if (runtimes := _runtimes(env)) else "")
            + (f" · int8 dot product: {(env.get('cpu_features') or {}).get('host', {}).get('int8_dot_product') or 'none'}"
               if env.get("cpu_features") else "")
        )
    lines.append("")
    if r.summary:
        from bench.summary import render_summary_markdown

        lines += render_summary_markdown(r.summary)
    if r.baseline:
        b = r.baseline
        lines.append(
            f"Baseline: accuracy {_fmt(b.accuracy)}, {b.params or '-'} params, "
            f"{b.macs or '-'} MACs, {_fmt_bytes(b.size_bytes)}"
        )
        lines.append("")
    if r.steps:
        lines += ["## Steps", "", "| # | step | params | MACs | size | accuracy | time |", "|---|---|---|---|---|---|---|"]
        for s in r.steps:
            b, a = s.before or ModelFacts(), s.after or ModelFacts()
            lines.append(
                f"| {s.index} | {s.kind} ({s.status}) | {b.params or '-'} → {a.params or '-'} | {b.macs or '-'} → {a.macs or '-'} "
                f"| {_fmt_bytes(b.size_bytes)} → {_fmt_bytes(a.size_bytes)} | {_fmt(b.accuracy)} → {_fmt(a.accuracy)} "
                f"| {_fmt(s.duration_s, '.1f')} s |"
            )
        lines.append("")
    lines += ["## Artifacts", "", "| artifact | status | format | precision | size | zipped | accuracy | parity (max abs diff / agreement) |",
              "|---|---|---|---|---|---|---|---|"]
    for a in r.artifacts:
        par = "-" if a.parity is None else (
            f"{a.parity.max_abs_diff:.2e} / {_fmt(a.parity.agreement, '.3f')}"
            + ("" if a.parity.passed is None else (" ✓" if a.parity.passed else " ✗"))
        )
        status = "**degraded**" if a.status == "degraded" else ("ok" if a.gate is not None else "-")
        lines.append(
            f"| {a.name} | {status} | {a.format} | {a.precision} | {_fmt_bytes(a.size_bytes)} | {_fmt_bytes(a.zipped_bytes)} "
            f"| {_fmt(a.accuracy)} | {par} |"
        )
    lines += fidelity_markdown(r)
    lines += ["", "## Latency", "",
              "| artifact | target | threads | batch | p50 [95% CI] and tail | processes, MDE, vs parent | throughput "
              "| memory | load |",
              "|---|---|---|---|---|---|---|---|---|"]
    noise_notes = []
    for a in r.artifacts:
        for t in a.targets:
            mem = "-" if t.memory_increase_mb is None else f"+{t.memory_increase_mb:.1f} MB"
            load = "-" if t.load_ms is None else f"{t.load_ms:.0f} ms"
            thr = "-" if t.throughput_items_s is None else f"{t.throughput_items_s:,.0f}/s"
            lines.append(f"| {a.name} | {t.target} ({t.device}) | {t.threads} | {t.batch} | {latency_cell(t)} "
                         f"| {repeats_cell(t)} | {thr} | {mem} | {load} |")
            if t.latency_ms is not None and t.latency_ms.noisy:
                noise_notes.append(f"- {a.name} ({t.target}, {t.threads} thread(s), batch {t.batch}): "
                                   f"{t.latency_ms.noise_reason}")
    if noise_notes:
        lines += ["", "Noisy measurements (compare with care):", "", *noise_notes]
    if r.advisories:
        lines += ["", "## Advisories", ""]
        for adv in r.advisories:
            where = f" ({adv.artifact or adv.step})" if (adv.artifact or adv.step) else ""
            lines.append(f"- **{adv.severity}** `{adv.code}`{where}: {adv.message}")
    if r.tradeoff and r.tradeoff.get("markdown"):
        lines += ["", r.tradeoff["markdown"]]
    if r.shadow and r.shadow.get("markdown"):
        lines += ["", r.shadow["markdown"]]
    lines.append("")
    lines.append("Latency is `measured` on the named device unless marked `estimated` (from a device profile) or "
                 "`emulated` (correctness only, never a latency). A measured p50 pools the runs of several fresh "
                 "processes, run interleaved with the other artifacts; its CI resamples processes, then runs; "
                 "\"detects changes above N%\" is the smallest change a comparison with an equally precise run "
                 "can tell from noise (minimum detectable effect).")
    return "\n".join(lines) + "\n"
