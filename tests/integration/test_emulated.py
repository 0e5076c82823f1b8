"""The emulated aarch64 target, and the quickstart on local + emulated + estimated targets.

The real aarch64 builds of onnxruntime and LiteRT run under qemu-user in a root built once
per machine (``compress devices setup aarch64``, cached under $EDGEPACK_CACHE or
~/.cache/edgepack) and reused by every test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compress.core.errors import TargetError
from compress.core.types import BenchSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def aarch64_root() -> Path:
    if not shutil.which("mmdebstrap") or not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        pytest.skip("mmdebstrap and qemu-user-static are needed (.ci/run installs them)")
    from devices.emulated import root_dir, setup_root

    setup_root(log=lambda _: None)
    return root_dir()


@pytest.fixture(scope="module")
def three_targets(aarch64_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart, exported to ONNX and TFLite, on local, emulated:aarch64 and estimate:rpi4."""
    out = tmp_path_factory.mktemp("q3") / "run"
    res = subprocess.run(
        [sys.executable, "-m", "compress", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out),
         "--set", "bench.targets=[local, emulated:aarch64, estimate:rpi4]", "--set", "export=[onnx, tflite]",
         "--set", "bench.emulated_cpus=[cortex-a53, cortex-a76]", "--set", "bench.runs=20",
         # one local timing process, at batch 1 only (the trade-off is not what this module checks)
         "--set", "bench.warmup=2", "--set", "bench.repeats=1", "--set", "tradeoff.cloud.batch=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return out


def test_each_artifact_has_measured_emulated_and_estimated(three_targets: Path) -> None:
    report = json.loads((three_targets / "report.json").read_text())
    arts = [a for a in report["artifacts"] if a["format"] in ("onnx", "tflite")]
    assert {a["format"] for a in arts} == {"onnx", "tflite"}
    for art in arts:
        by = {t["target"]: t for t in art["targets"]}
        local, emu, est = by["local"], by["emulated:aarch64"], by["estimate:rpi4"]
        assert local["how"] == "measured" and local["latency_ms"]["p50"] > 0 and len(local["times_ms"]) == 20 * local["latency_ms"]["repeats"]
        assert emu["how"] == "emulated" and emu["latency_ms"] is None and emu["error"] is None
        assert emu["parity"]["passed"] and emu["parity"]["max_abs_diff"] <= 1e-4
        assert est["how"] == "estimated" and est["latency_ms"]["how"] == "estimated"
        lo, hi = est["estimate_band_ms"]
        assert lo < est["latency_ms"]["p50"] < hi
    md = (three_targets / "report.md").read_text()
    assert "emulated, no latency" in md and "estimated" in md and "measured" in md


def test_aarch64_parity_per_cpu_for_onnx_and_tflite(three_targets: Path) -> None:
    report = json.loads((three_targets / "report.json").read_text())
    for art in report["artifacts"]:
        if art["format"] not in ("onnx", "tflite"):
            continue
        emu = next(t for t in art["targets"] if t["target"] == "emulated:aarch64")
        per_cpu = emu["details"]["per_cpu"]
        assert set(per_cpu) == {"cortex-a53", "cortex-a76"}
        assert all(v["passed"] and v["agreement"] == 1.0 for v in per_cpu.values())
        assert emu["details"]["machine"] == "aarch64"
        assert "aarch64" in emu["runtime"]


def test_missing_root_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devices.emulated import EmulatedTarget

    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "empty"))
    with pytest.raises(TargetError, match="compress devices setup aarch64"):
        EmulatedTarget("aarch64").benchmark(tmp_path / "m.onnx", BenchSpec())


def test_guest_crash_is_an_error_not_a_pass(aarch64_root: Path, tmp_path: Path) -> None:
    """A model the aarch64 runtime cannot load fails loudly (the JSON is trusted, not the exit code)."""
    from devices.emulated import EmulatedTarget

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(TargetError, match="benchmark agent failed"):
        EmulatedTarget("aarch64").run(bad, [])
