"""Regenerate docs/results.md: every shipped recipe run here, its figures in one table per recipe.

    python docs/results.py [--recipes quickstart mobilenet-digits ...] [--out docs/results.md]

Each recipe runs once with the step cache off (``--no-cache``: the wall time is a fresh
run's) into a temporary folder; the page lists the CPU (model name and the int8 features
that choose defaults), the load before and after, tool versions, and per recipe the wall
time, the steps (MACs and accuracy before and after), every artifact (size, accuracy,
status, latency p50 with its 95% CI and how it was obtained, speed-up over its parent) and
the report's summary. Figures from another CPU differ: that is why the page names this one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_line() -> str:
    from compress.core.env import describe_cpu, host_cpu

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, {describe_cpu(host_cpu())}"


def _ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}")


def _size(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB")


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def run_recipe(recipe: Path, work: Path) -> tuple[float, dict[str, Any] | None, str]:
    out = work / recipe.stem
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "compress", str(recipe), "--out", str(out), "--no-cache", "-q"],
                         capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    report = out / "report.json"
    return took, (json.loads(report.read_text()) if report.is_file() else None), res.stderr.strip()[-500:]


def recipe_section(name: str, took: float, report: dict[str, Any] | None, err: str) -> list[str]:
    lines = [f"## {name}", ""]
    if report is None:
        return lines + [f"did not finish in {took:.0f} s: {err}", ""]
    lines.append(f"Wall time {took:.0f} s (fresh run, step cache off), status `{report['status']}`.")
    lines.append("")
    for s in (report.get("summary") or {}).get("lines", []):
        lines.append(f"- {s}")
    lines.append("")
    if report["steps"]:
        lines += ["| step | MACs before -> after | accuracy before -> after | time |", "|---|---|---|---|"]
        for s in report["steps"]:
            b, a = s.get("before") or {}, s.get("after") or {}
            lines.append(f"| {s['name']} | {b.get('macs') or '-'} -> {a.get('macs') or '-'} | "
                         f"{_acc(b.get('accuracy'))} -> {_acc(a.get('accuracy'))} | {s.get('duration_s') or 0:.1f} s |")
        lines.append("")
    lines += ["| artifact | size | accuracy | status | target | p50 ms [95% CI] | how | speed-up vs parent [95% CI] |",
              "|---|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        timed = [t for t in a["targets"] if t.get("latency_ms")] or [None]
        for t in timed:
            if t is None:
                lines.append(f"| {a['name']} | {_size(a['size_bytes'])} | {_acc(a['accuracy'])} | {a['status']} "
                             "| - | - | - | - |")
                continue
            s = t["latency_ms"]
            ci = s.get("ci95") or [None, None]
            runs = f"{s.get('repeats', 1)} processes, {s['runs']} runs" + (", noisy" if s.get("noisy") else "")
            sp = t["details"].get("speedup_vs_parent")
            speed = f"{sp['speedup']:.2f}x vs {sp['parent']} [{sp['ci95'][0]:.2f}, {sp['ci95'][1]:.2f}]" if sp else "-"
            lines.append(f"| {a['name']} | {_size(a['size_bytes'])} | {_acc(a['accuracy'])} | {a['status']} | "
                         f"{t['target']} ({t['threads']} thr, batch {t['batch']}) | {_ms(s['p50'])} "
                         f"[{_ms(ci[0])}, {_ms(ci[1])}] | {t['how']}: {runs} | {speed} |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", help="recipe names under recipes/ (default: all but searches)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = ap.parse_args()
    # a recipe with a `search:` section is a search (hours of trials): docs/search.md has its figures
    names = args.recipes or sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")
                                   if "\nsearch:" not in "\n" + p.read_text(encoding="utf-8"))
    load_before = os.getloadavg()
    sections: list[str] = []
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgepack-results-") as tmp:
        for name in names:
            print(f"running {name} ...", flush=True)
            took, report, err = run_recipe(ROOT / "recipes" / f"{name}.yaml", Path(tmp))
            if report is not None:
                versions = report.get("tool") or versions
            sections += recipe_section(name, took, report, err)
    load_after = os.getloadavg()
    head = [
        "# Measured results",
        "",
        f"Regenerated by `python docs/results.py` on {dt.date.today().isoformat()}.",
        "",
        f"- CPU: **{cpu_line()}** ({platform.machine()}); every latency below was measured on it",
        f"- load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)",
        "- tools: " + (", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "-"),
        "- latencies are medians of runs pooled from several fresh processes, with a hierarchical-bootstrap 95% CI; "
        "'estimated' comes from a device profile, never from a measurement",
        "",
    ]
    args.out.write_text("\n".join(head + sections).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
