"""The model card's Kotlin snippet, compiled and run, gives bench/drift.py's numbers (when kotlinc is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.drift import compare
from bench.fingerprint import make_fingerprint
from export.bundle_drift import KOTLIN_SNIPPET

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("kotlinc") is None or shutil.which("java") is None,
                                 reason="kotlinc not installed (Debian: apt-get install kotlin)")]


def _floats(values: np.ndarray) -> str:
    return ", ".join(f"{float(v)!r}f" for v in values)


def _doubles(values: list[float]) -> str:
    return ", ".join(repr(float(v)) for v in values)


def _longs(values: list[int]) -> str:
    return ", ".join(f"{int(v)}L" for v in values)


def test_the_kotlin_snippet_matches_the_toolkit(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = rng.random((300, 1, 4, 4)).astype(np.float32)
    w = rng.standard_normal((16, 5))
    y = ((x.reshape(300, -1) - 0.5) @ w).astype(np.float32)
    fp = make_fingerprint([{"name": "x", "batch_axis": 0}], [x], [{"name": "y", "classification": True}], [y],
                          layout="NCHW")
    new = (rng.random((120, 1, 4, 4)) * 1.2).astype(np.float32)
    y_new = ((new.reshape(120, -1) - 0.5) @ w).astype(np.float32)
    report = compare(fp, [new], [y_new])
    tests = sum(1 for c in report.checks if c.ks is not None)
    body = ["fun main() {"]

    def emit(name: str, edges: list[float], counts: list[int], add: list[str]) -> None:
        body.extend(["    run {", f"        val w = FeatureWindow(doubleArrayOf({_doubles(edges)}))", *add,
                     f"        val ref = longArrayOf({_longs(counts)})",
                     f'        println("{name} " + psi(ref, w.counts) + " " + ksBinned(ref, w.counts) + " " + '
                     f"ksCritical(300L, 120L, 0.01, {tests}))", "    }"])

    for f in fp["inputs"][0]["features"]:  # 4x4 pixels, one channel: a cell is a pixel
        values = new[:, 0].reshape(-1) if f["kind"] == "channel" else new[:, 0, f["cell"][0], f["cell"][1]]
        emit(f["name"].replace(" ", "_"), f["edges"], f["counts"],
             [f"        for (v in floatArrayOf({_floats(values)})) w.add(v.toDouble())"])
    score = fp["outputs"][0]["score"]
    rows = ", ".join(f"floatArrayOf({_floats(r)})" for r in y_new)
    emit("score", score["edges"], score["counts"],
         [f"        val rows = arrayOf({rows})", "        for (r in rows) w.add(maxSoftmax(r))"])
    body.append("}")
    (tmp_path / "Check.kt").write_text(KOTLIN_SNIPPET + "\n" + "\n".join(body) + "\n")
    subprocess.run(["kotlinc", "Check.kt", "-include-runtime", "-d", "check.jar"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    out = subprocess.run(["java", "-jar", "check.jar"], cwd=tmp_path, check=True, capture_output=True, text=True,
                         timeout=60).stdout
    got = {name: [float(v) for v in vals] for name, *vals in (line.split() for line in out.splitlines())}
    want = {c.name.replace(" ", "_"): [c.psi, c.ks, c.ks_critical] for c in report.checks if c.ks is not None}
    assert set(got) == set(want) and len(want) == 1 + 16 + 1
    for name, values in want.items():
        assert np.allclose(got[name], values, rtol=0, atol=1e-9), name
