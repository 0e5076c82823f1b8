"""Markdown of a shadow test (:mod:`bench.shadow`): the verdict first, then each output, the worst inputs, latency."""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _verdict_lines(result: dict[str, Any]) -> list[str]:
    v = result["verdict"]
    lines = [f"Verdict: **{'PASS' if v['passed'] else 'FAIL'}**", "",
             "| output | check | measured | limit | |", "|---|---|---|---|---|"]
    for c in v["checks"]:
        lines.append(f"| {c['output']} | {c['measure']} | {_f(c['value'])} | <= {_f(c['limit'])} "
                     f"| {'pass' if c['passed'] else '**fail**'} |")
    return lines


def _decision_lines(m: dict[str, Any]) -> list[str]:
    c = m["confidence"]
    lines = [f"- agreement {m['agreement']:.4f}; {m['flips']} flip(s) of {m['samples']} "
             f"(flip rate {m['flip_rate']:.4f}); decision: {m['decision']}",
             f"- confidence: baseline mean {_f(c['baseline_mean'])}, candidate mean {_f(c['candidate_mean'])}; "
             f"shift |p_c(b) - p_b(b)| mean {_f(c['shift_mean'])}, max {_f(c['shift_max'])}; "
             f"KL(p_b || p_c) mean {_f(c['kl_mean'])}; ECE of the candidate vs the baseline's decisions "
             f"{_f(c['ece_vs_baseline'])}"]
    lab = m.get("labels")
    if lab:
        lines.append(f"- against the labels: accuracy {_f(lab['baseline_accuracy'])} -> {_f(lab['candidate_accuracy'])}, "
                     f"ECE {_f(lab['baseline_ece'])} -> {_f(lab['candidate_ece'])} (15 bins)")
    if m["flips"]:
        pairs = ", ".join(f"{p['from']} -> {p['to']} ({p['count']})" for p in m["top_flips"])
        lines.append(f"- most frequent flips (baseline -> candidate): {pairs}")
        by = [f"{b['class']}: {b['flips']}/{b['support']}" for b in m["flips_by_class"] if b["flips"]]
        lines.append(f"- flips by baseline class: {', '.join(by)}")
    k = m["classes"]
    if k <= 20:
        lines += ["", "Confusion (rows: baseline decision, columns: candidate decision):", "",
                  "| b \\ c | " + " | ".join(str(j) for j in range(k)) + " |",
                  "|---" * (k + 1) + "|"]
        lines += [f"| {i} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(m["confusion_matrix"])]
    return lines


def _latency_lines(lat: dict[str, Any] | None) -> list[str]:
    if not lat:
        return ["Latency: not measured (--no-latency)."]
    if lat.get("from"):  # a recipe run quotes its own benchmark
        return [f"Latency ({lat['how']}, {lat['target']}, from {lat['from']}): baseline p50 "
                f"{_f(lat.get('baseline_p50_ms'))} ms, candidate p50 {_f(lat.get('candidate_p50_ms'))} ms"]
    lines = [f"Latency: {lat['how']}, {lat['target']} ({lat.get('device', '?')}), {lat['threads']} thread, batch "
             f"{lat['batch']}, {lat['repeats']} interleaved rounds of fresh processes x {lat['runs']} runs", ""]
    for role in ("baseline", "candidate"):
        r = lat.get(role) or {}
        if "error" in r:
            lines.append(f"- {role}: failed: {r['error']}")
        elif r:
            lines.append(f"- {role}: p50 {_f(r['p50_ms'])} ms [{_f(r['ci95_ms'][0])}, {_f(r['ci95_ms'][1])}]"
                         + (" (noisy)" if r.get("noisy") else ""))
    sp = lat.get("speedup")
    if sp:
        lines.append(f"- candidate speed-up over the baseline: {sp['speedup']:.2f}x "
                     f"[{sp['ci95'][0]:.2f}, {sp['ci95'][1]:.2f}]")
    return lines


def render_shadow_markdown(result: dict[str, Any], heading: str = "#") -> str:
    """The Markdown of one shadow test (``shadow.md``; a section of ``report.md`` with ``heading="###"``)."""
    b, c = result["baseline"], result["candidate"]
    lines = [f"{heading} Shadow test: {c['name']} vs {b['name']}", "",
             f"Baseline: {b['source']} ({b['format']}). Candidate: {c['source']} ({c['format']}).",
             f"Inputs: {result.get('inputs', {}).get('file', '-')}, {result.get('inputs', {}).get('samples', '-')} "
             f"samples; labels: {result.get('inputs', {}).get('labels') or 'none'}."]
    if result.get("outputs_matched_note"):
        lines.append(f"Note: {result['outputs_matched_note']}.")
    lines += [f"Note: {n}." for n in result.get("notes") or []]
    lines += [""] + _verdict_lines(result)
    for m in result["outputs"]:
        lines += ["", f"{heading}# Output {m['name']} ({m['task']})", ""]
        if m["decision"] is not None:
            lines += _decision_lines(m)
        else:
            lines.append(f"- mean |c - b| {_f(m['mean_abs_diff'])}, max {_f(m['max_abs_diff'])}, relative error "
                         f"{_f(m['rel_error'])}, cosine {_f(m['cosine'], 6)}")
        if m["nonfinite"]:
            lines.append(f"- the candidate gave {m['nonfinite']} NaN/inf values")
    w = result["worst"]
    lines += ["", f"{heading}# Worst-disagreeing inputs", "",
              f"Ranked by {w['ranked_by']}.", "",
              "Indices: " + (", ".join(str(i) for i in w["indices"][:20]) or "none (the outputs are identical)")
              + (f" (saved with both outputs in {w['file']})" if w.get("file") else "")]
    if "latency" in result:
        lines += [""] + _latency_lines(result["latency"])
    return "\n".join(lines) + "\n"
