"""Acceptance of the step cache: the same recipe twice, the second run from the cache.

``compress recipes/quickstart-compressed.yaml`` (distill 30 epochs, prune, QAT, ONNX, timed on
this machine) into a fresh cache, then again into a new folder: the second run trains
nothing and takes a fraction of the first's time (both printed, and their ratio). The
benchmarks still run in full both times: latencies are never cached.

Run: ``python -m pytest tests/benchmarks/test_cache_rerun.py --benchmark-only -s`` (about 2
minutes on 2 cores).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


from tests.conftest import ROOT

RECIPE = ROOT / "recipes" / "quickstart-compressed.yaml"


def phases(log: str, took: float) -> dict[str, float]:
    """Seconds of a run's phases from its log.txt (whole seconds): until the first step, the steps
    and exports with their checks, the benchmarks, and the rest (the report, exit), of ``took``."""
    stamps = [(dt.datetime.strptime(line[:8], "%H:%M:%S"), line[9:]) for line in log.splitlines()
              if len(line) > 9 and line[2] == ":" and line[5] == ":"]
    if not stamps:
        return {}

    def first(prefix: str) -> dt.datetime:
        return next((t for t, msg in stamps if msg.startswith(prefix)), stamps[-1][0])

    t0, steps, bench, end = stamps[0][0], first("step "), first("bench "), stamps[-1][0]
    out = {"intake": (steps - t0).total_seconds(), "steps and checks": (bench - steps).total_seconds(),
           "benchmarks": (end - bench).total_seconds()}
    out["start, report, exit"] = round(took - sum(out.values()), 1)
    return out


def _timed_run(cache: Path, out: Path) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "compress", str(RECIPE), "--out", str(out)], capture_output=True,
                         text=True, cwd=ROOT, env=dict(os.environ, EDGEPACK_CACHE=str(cache)), timeout=1800)
    took = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    return took, json.loads((out / "report.json").read_text())


def rerun(tmp: Path) -> dict[str, Any]:
    first_s, first = _timed_run(tmp / "cache", tmp / "first")
    second_s, second = _timed_run(tmp / "cache", tmp / "second")
    return {"first_s": first_s, "second_s": second_s, "ratio": second_s / first_s,
            "cached": {s["kind"]: s["cached"] for s in second["steps"]},
            "same_files": {a["name"]: a["sha256"] for a in first["artifacts"]}
            == {a["name"]: a["sha256"] for a in second["artifacts"]},
            "step_seconds": {s["kind"]: s["duration_s"] for s in first["steps"]},
            "second_phases": phases((tmp / "second" / "log.txt").read_text(), second_s)}


def test_second_run_from_the_cache(benchmark: Any, tmp_path: Path) -> None:
    r = benchmark.pedantic(rerun, args=(tmp_path,), rounds=1, iterations=1)
    print(f"\nfirst run {r['first_s']:.1f} s (steps {r['step_seconds']}), second run {r['second_s']:.1f} s: "
          f"{100 * r['ratio']:.1f}% of the first; cached {r['cached']}; same files: {r['same_files']}; "
          f"second run by phase (s): {r['second_phases']}")
    benchmark.extra_info.update(r)
    assert all(r["cached"].values()) and r["same_files"]
