"""The machine yardstick: a fixed model timed beside each artifact, and compare judging by it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench import yardstick
from bench.agent import benchmark as agent_benchmark
from bench.compare import compare_reports
from compress.core.report_schema import ArtifactReport, Report, TargetResult
from bench.repeats import merge_results, yardstick_ratio_ci
from compress.core.types import BenchSpec
from devices.local import result_from_agent


def test_yardstick_bytes_are_fixed_and_file_is_rewritten_when_damaged(tmp_path: Path) -> None:
    a, b = yardstick.model_bytes(), yardstick.model_bytes()
    assert a == b
    p = yardstick.path(tmp_path)
    assert p.read_bytes() == a and hashlib.sha256(a).hexdigest()[:16] in p.name
    p.write_bytes(b"damaged")
    assert yardstick.path(tmp_path).read_bytes() == a
    assert not list(tmp_path.glob("*.part"))


def test_an_intact_yardstick_file_is_used_without_building_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = yardstick.path(tmp_path)
    assert first.name.startswith("edgepack-yardstick-1-")

    def build() -> bytes:
        raise AssertionError("the model was built again")

    monkeypatch.setattr(yardstick, "model_bytes", build)
    assert yardstick.path(tmp_path) == first  # every benchmark process asks: no onnx import
    (tmp_path / f"{first.stem[:-16]}{'0' * 16}.onnx").write_bytes(first.read_bytes())  # name and bytes disagree
    first.write_bytes(b"damaged")
    monkeypatch.undo()
    again = yardstick.path(tmp_path)
    assert again == first and again.read_bytes() == yardstick.model_bytes()


def test_agent_times_the_yardstick_in_blocks_beside_the_model(tmp_path: Path) -> None:
    model = yardstick.path(tmp_path)  # any small ONNX model; the yardstick is one
    out = agent_benchmark({"model": str(model), "runs": 37, "warmup": 5, "yardstick": str(model),
                           "yardstick_version": yardstick.VERSION})
    y = out["yardstick"]
    assert len(out["times_ms"]) == 37
    assert y["version"] == yardstick.VERSION and 1 <= y["block_runs"] <= 10
    assert len(y["model_ms"]) == len(y["yardstick_ms"]) == -(-37 // y["block_runs"])
    # the model is the yardstick itself: block ratios about 1 (same work, same moments)
    ratios = np.array(y["model_ms"]) / np.array(y["yardstick_ms"])
    assert 0.5 < float(np.median(ratios)) < 2.0
    # without a yardstick path the agent times as before
    plain = agent_benchmark({"model": str(model), "runs": 20, "warmup": 5})
    assert "yardstick" not in plain and len(plain["times_ms"]) == 20


def _process(state: float, ratio: float, seed: int, blocks: int = 20, block_runs: int = 10) -> dict:
    """One agent result: the machine at speed ``state`` (1 = fast), the artifact ``ratio`` x the yardstick."""
    rng = np.random.default_rng(seed)
    yard = 0.02 * state * (1 + 0.01 * rng.standard_normal(blocks))
    model = yard * ratio * (1 + 0.01 * rng.standard_normal(blocks))
    times = np.repeat(model, block_runs) * (1 + 0.005 * rng.standard_normal(blocks * block_runs))
    return {"ok": True, "times_ms": times.tolist(), "device": {"cores": 2},
            "yardstick": {"version": yardstick.VERSION, "block_runs": block_runs,
                          "model_ms": model.tolist(), "yardstick_ms": yard.tolist()}}


def _run(states: list[float], ratio: float, seed: int) -> TargetResult:
    spec = BenchSpec(runs=200)
    return merge_results([result_from_agent(_process(s, ratio, seed * 10 + i), "local", "measured", spec)
                          for i, s in enumerate(states)])


def _report(path: Path, res: TargetResult) -> Path:
    art = ArtifactReport(name="onnx-fp32", format="onnx", path="m.onnx", size_bytes=1000, targets=[res])
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(Report(recipe={"name": "r"}, created="now", artifacts=[art]).model_dump_json())
    return path


def _p50(cmp: object) -> object:
    return next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_p50")  # type: ignore[attr-defined]


@pytest.mark.parametrize("states_a, states_b", [
    ([1.0, 1.7, 1.0], [1.6, 1.7, 1.8]),   # B ran in a slow phase of the machine: +60% raw
    ([1.7, 1.6, 1.0], [1.0, 1.0, 1.0]),   # A did: -35% raw
])
def test_machine_phases_are_no_real_change(tmp_path: Path, states_a: list[float], states_b: list[float]) -> None:
    a = _report(tmp_path / "a", _run(states_a, 1.2, 1))
    b = _report(tmp_path / "b", _run(states_b, 1.2, 2))
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    d = _p50(cmp)
    assert d.judged_by == "yardstick" and abs(d.raw_ratio - 1) > 0.3
    assert d.verdict.startswith("no real change") and not d.real and cmp.passed


@pytest.mark.parametrize("states_a, states_b", [
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
    ([1.7, 1.6, 1.7], [1.0, 1.0, 1.0]),   # the slower model ran in a fast phase: raw medians say faster
    ([1.0, 1.6, 1.0], [1.7, 1.0, 1.6]),
])
def test_quarter_slower_is_real_whatever_the_phase(tmp_path: Path, states_a: list[float], states_b: list[float]) -> None:
    a = _report(tmp_path / "a", _run(states_a, 1.2, 3))
    b = _report(tmp_path / "b", _run(states_b, 1.5, 4))
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    d = _p50(cmp)
    assert d.judged_by == "yardstick" and d.ratio == pytest.approx(1.25, rel=0.03)
    assert d.real and "slower" in d.verdict and not cmp.passed


def test_other_yardstick_versions_fall_back_to_the_median(tmp_path: Path) -> None:
    ra, rb = _run([1.0, 1.0, 1.0], 1.2, 5), _run([1.0, 1.0, 1.0], 1.2, 6)
    rb.details["yardstick"]["version"] = "edgepack-yardstick-0"
    assert yardstick_ratio_ci(ra, rb) is None
    cmp = compare_reports([_report(tmp_path / "a", ra), _report(tmp_path / "b", rb)], ["latency_p50:+10%"])
    assert _p50(cmp).judged_by == "median"


def test_merged_stats_carry_the_yardstick_ratio_and_its_mde() -> None:
    r = _run([1.0, 1.6, 1.2], 1.3, 7)
    s = r.latency_ms
    assert s is not None and s.repeats == 3
    assert s.yardstick_ratio == pytest.approx(1.3, rel=0.02)
    assert s.yardstick_ci95[0] <= s.yardstick_ratio <= s.yardstick_ci95[1]
    assert len(s.yardstick_process_ratios) == 3 and s.yardstick_mde is not None and s.yardstick_mde < 0.1
    # the raw medians disagree by the machine's phases, the ratio does not
    assert s.mde_rel is not None and s.mde_rel > 0.3
    assert len(r.details["yardstick"]["processes"]) == 3
