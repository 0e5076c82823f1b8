"""The report's answer, first: per target, which artifact to ship, what it buys and costs.

For each target and setting (threads, at the smallest batch measured there), the
recommended artifact is the fastest by median latency among those that passed their
fidelity gates; beside it, its speed-up over the baseline's file of the same format (the
float model the run started from, exported) with a 95% CI, its size ratio and its accuracy
change. Every artifact that is slower than the model it was made from on some target is
flagged in words (a real slowdown when the CI of its speed-up lies below 1, "no faster"
when it only might be). Latencies from different targets are never compared.

Reads a :class:`~compress.core.report_schema.Report` only; the runner stores the result as
``report.summary`` and the Markdown and HTML reports put it first.
"""

from __future__ import annotations

from typing import Any

from bench.repeats import ratio_ci
from bench.tradeoff import _ms
from compress.core.report_schema import ArtifactReport, Report, TargetResult

# A speed-up below this whose CI still reaches 1 is "no faster", not a measured slowdown.
NO_FASTER = 0.95


def _setting(t: TargetResult) -> tuple[str, int]:
    return (t.target, t.threads)


def _device_results(art: ArtifactReport) -> dict[tuple[str, int], TargetResult]:
    """The artifact's latency per (target, threads) at the smallest batch measured there."""
    out: dict[tuple[str, int], TargetResult] = {}
    for t in art.targets:
        if t.latency_ms is None or t.error:
            continue
        key = _setting(t)
        if key not in out or t.batch < out[key].batch:
            out[key] = t
    return out


def baseline_files(report: Report) -> dict[str, ArtifactReport]:
    """Per format, the file that stands for the baseline: the baseline itself (an ONNX or
    TFLite model given as the model) or the float export of the model the run started from."""
    names = {a.name for a in report.artifacts}
    start = next((s.input for s in report.steps if s.input), None)
    roots = {"baseline"} | ({start} if start and start not in names else set())
    out: dict[str, ArtifactReport] = {}
    for a in report.artifacts:
        if a.format in out or a.precision != "fp32":
            continue
        if a.name == "baseline" or (a.parent in roots and a.step and a.step.startswith("export:")):
            out[a.format] = a
    return out


def _speedup(base: TargetResult, art: TargetResult) -> dict[str, Any]:
    """Base/art median ratio (> 1: faster) with the CI of the interleaved rounds."""
    paired = base.latency_ms.repeats == art.latency_ms.repeats  # type: ignore[union-attr]
    try:
        ratio, lo, hi = ratio_ci(base, art, paired=paired)
        return {"value": round(1 / ratio, 4), "ci95": [round(1 / hi, 4), round(1 / lo, 4)]}
    except ValueError:
        return {"value": round(base.latency_ms.p50 / art.latency_ms.p50, 4), "ci95": None}  # type: ignore[union-attr]


def _slower_than_parent(report: Report) -> list[dict[str, Any]]:
    flagged = []
    for a in report.artifacts:
        for t in a.targets:
            speed = t.details.get("speedup_vs_parent")
            if not speed or t.error:
                continue
            lo, hi = speed["ci95"]
            value = speed["speedup"]
            if hi < 1:
                kind = "slower"
                words = (f"{a.name} is {1 / value:.2f}x slower than its parent {speed['parent']} on {t.target} "
                         f"({t.threads} thread{'s' if t.threads != 1 else ''}, batch {t.batch}; speed-up {value:.2f}x, "
                         f"95% CI [{lo:.2f}, {hi:.2f}]): on this target it costs time instead of saving it")
            elif value < NO_FASTER:
                kind = "no_faster"
                words = (f"{a.name} is no faster than its parent {speed['parent']} on {t.target} "
                         f"({t.threads} thread{'s' if t.threads != 1 else ''}, batch {t.batch}; speed-up {value:.2f}x, "
                         f"95% CI [{lo:.2f}, {hi:.2f}])")
            else:
                continue
            flagged.append({"artifact": a.name, "parent": speed["parent"], "target": t.target, "threads": t.threads,
                            "batch": t.batch, "speedup": value, "ci95": [lo, hi], "kind": kind, "words": words})
    return flagged


def _target_entry(key: tuple[str, int], report: Report, bases: dict[str, ArtifactReport]) -> dict[str, Any]:
    target, threads = key
    measured = [(a, _device_results(a)[key]) for a in report.artifacts if key in _device_results(a)]
    ok = [(a, t) for a, t in measured if a.status == "ok"]
    entry: dict[str, Any] = {"target": target, "threads": threads, "how": measured[0][1].how,
                             "candidates": len(measured), "passed_gates": len(ok)}
    if not ok:
        entry["recommended"] = None
        entry["words"] = (f"{target} ({threads} thread{'s' if threads != 1 else ''}): no artifact passed its gates; "
                          "nothing to recommend")
        return entry
    art, res = min(ok, key=lambda at: at[1].latency_ms.p50)  # type: ignore[union-attr]
    entry.update({"recommended": art.name, "format": art.format, "precision": art.precision,
                  "latency_ms": res.latency_ms.p50, "batch": res.batch,  # type: ignore[union-attr]
                  "noisy": bool(res.latency_ms.noisy)})  # type: ignore[union-attr]
    base = bases.get(art.format) or next(iter(bases.values()), None)
    base_res = _device_results(base).get(key) if base is not None else None
    if base is not None:
        entry["baseline"] = base.name
        if base_res is not None and base is not art:
            entry["speedup"] = _speedup(base_res, res)
        if base.size_bytes and art.size_bytes:
            entry["size_ratio"] = round(art.size_bytes / base.size_bytes, 4)
    base_acc = report.baseline.accuracy if report.baseline is not None else None
    if base_acc is not None and art.accuracy is not None:
        entry["accuracy_delta"] = round(art.accuracy - base_acc, 6)
    entry["words"] = _words(entry)
    return entry


def _words(e: dict[str, Any]) -> str:
    threads = f"{e['threads']} thread{'s' if e['threads'] != 1 else ''}"
    parts = [f"{e['target']} ({threads}): ship {e['recommended']} ({e['format']} {e['precision']}), "
             f"{_ms(e['latency_ms'])} ms p50 {e['how']}" + (" (noisy)" if e.get("noisy") else "")]
    sp = e.get("speedup")
    if sp is not None:
        ci = f" [95% CI {sp['ci95'][0]:.2f}-{sp['ci95'][1]:.2f}]" if sp.get("ci95") else ""
        if sp.get("ci95") and sp["ci95"][0] <= 1 <= sp["ci95"][1]:
            parts.append(f"no measurable speed-up over {e['baseline']} ({sp['value']:.2f}x{ci})")
        else:
            parts.append(f"{sp['value']:.2f}x {'faster' if sp['value'] >= 1 else 'slower'} than {e['baseline']}{ci}")
    elif e.get("baseline") == e["recommended"]:
        parts.append("the baseline itself is the fastest that passed its gates")
    if e.get("size_ratio") is not None:
        parts.append(f"{e['size_ratio']:.2f}x its size")
    if e.get("accuracy_delta") is not None:
        parts.append(f"accuracy {100 * e['accuracy_delta']:+.2f} points")
    return ", ".join(parts)


def summary_section(report: Report) -> dict[str, Any]:
    """The summary of a finished run (see the module docstring): JSON-ready."""
    bases = baseline_files(report)
    keys: list[tuple[str, int]] = []
    for a in report.artifacts:
        for key in _device_results(a):
            if key not in keys:
                keys.append(key)
    targets = [_target_entry(k, report, bases) for k in keys]
    slower = _slower_than_parent(report)
    degraded = [a.name for a in report.artifacts if a.status != "ok"]
    lines = [t["words"] for t in targets] + [s["words"] for s in slower]
    if degraded:
        lines.append(f"failed their fidelity gates (never recommended): {', '.join(degraded)}")
    if not targets:
        lines.append("no artifact was timed: nothing to recommend")
    return {"status": report.status, "targets": targets, "slower_than_parent": slower, "degraded": degraded,
            "lines": lines}


def render_summary_markdown(summary: dict[str, Any]) -> list[str]:
    """The summary as the report's first Markdown section."""
    out = ["## Summary", ""]
    out += [f"- {line}" for line in summary.get("lines", [])]
    return out + [""]
