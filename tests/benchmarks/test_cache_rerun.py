"""Acceptance of the step cache: the same recipe twice, the second run from the cache.

``compress recipes/quickstart-compressed.yaml`` (distill 30 epochs, prune, QAT, ONNX, timed on
this machine) into a fresh cache, then again into a new folder: the second run trains
nothing and takes a fraction of the first's time (both printed, and their ratio). The
benchmarks still run in full both times: latencies are never cached.

Run: ``python -m pytest tests/benchmarks/test_cache_rerun.py --benchmark-only -s`` (about 2
minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

RECIPE = ROOT / "recipes" / "quickstart-compressed.yaml"


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
            "step_seconds": {s["kind"]: s["duration_s"] for s in first["steps"]}}


def test_second_run_from_the_cache(benchmark: Any, tmp_path: Path) -> None:
    r = benchmark.pedantic(rerun, args=(tmp_path,), rounds=1, iterations=1)
    print(f"\nfirst run {r['first_s']:.1f} s (steps {r['step_seconds']}), second run {r['second_s']:.1f} s: "
          f"{100 * r['ratio']:.1f}% of the first; cached {r['cached']}; same files: {r['same_files']}")
    benchmark.extra_info.update(r)
    assert all(r["cached"].values()) and r["same_files"]
