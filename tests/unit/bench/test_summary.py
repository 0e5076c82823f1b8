"""The report's summary: the artifact to ship per target, and every slowdown said in words."""

from __future__ import annotations

import numpy as np
import pytest

from bench.latency import summarize
from bench.repeats import merge_results
from bench.summary import baseline_files, render_summary_markdown, summary_section
from compress.core.report_schema import ArtifactReport, ModelFacts, Report, StepReport, TargetResult
from compress.runner.benchmarks import speedup_vs_parent


def _timed(p50: float, target: str = "local", threads: int = 1, batch: int = 1, seed: int = 0,
           spread: float = 0.02) -> TargetResult:
    """Three processes of 60 runs around ``p50`` (log-normal noise), merged as a run merges them."""
    rng = np.random.default_rng(seed)
    procs = []
    for _ in range(3):
        times = list(p50 * np.exp(rng.normal(0, spread, 60)))
        procs.append(TargetResult(target=target, how="measured", device="x", threads=threads, batch=batch,
                                  latency_ms=summarize(times, threads=threads, batch=batch), times_ms=times))
    return merge_results(procs)


def _art(name: str, fmt: str, precision: str, parent: str, step: str, size: int, acc: float,
         targets: list[TargetResult], status: str = "ok") -> ArtifactReport:
    return ArtifactReport(name=name, format=fmt, path=f"{name}.{fmt}", size_bytes=size, precision=precision,
                          parent=parent, step=step, accuracy=acc, targets=targets, status=status)


def _report(fp32_ms: float, int8_ms: float, tfl_ms: float, int8_status: str = "ok") -> Report:
    fp32 = _timed(fp32_ms, seed=1)
    int8 = _timed(int8_ms, seed=2)
    int8.details["speedup_vs_parent"] = speedup_vs_parent(int8, fp32, "onnx-fp32")
    arts = [
        _art("onnx-fp32", "onnx", "fp32", "baseline", "export:onnx", 100_000, 0.97, [fp32]),
        _art("onnx-int8", "onnx", "int8", "onnx-fp32", "01-quantize", 30_000, 0.96, [int8], status=int8_status),
        _art("tflite-fp32", "tflite", "fp32", "baseline", "export:tflite", 101_000, 0.97,
             [_timed(tfl_ms, seed=3), _timed(tfl_ms * 2, target="estimate:rpi4", seed=4)]),
    ]
    return Report(recipe={"name": "t"}, created="now", baseline=ModelFacts(accuracy=0.97, size_bytes=103_000),
                  steps=[StepReport(index=1, kind="quantize", name="01-quantize", config={}, input="onnx-fp32",
                                    output="onnx-int8")], artifacts=arts)


def test_the_fastest_that_passed_is_recommended_with_its_speedup_over_the_baseline() -> None:
    s = summary_section(_report(fp32_ms=1.0, int8_ms=0.5, tfl_ms=0.8))
    local = next(t for t in s["targets"] if t["target"] == "local")
    assert (local["recommended"], local["baseline"], local["candidates"]) == ("onnx-int8", "onnx-fp32", 3)
    sp = local["speedup"]
    assert sp["value"] == pytest.approx(2.0, rel=0.05) and sp["ci95"][0] < sp["value"] < sp["ci95"][1]
    assert sp["ci95"][0] > 1.5
    assert local["size_ratio"] == pytest.approx(0.3) and local["accuracy_delta"] == pytest.approx(-0.01)
    assert "ship onnx-int8" in local["words"] and "2.0" in local["words"] and "-1.00 points" in local["words"]
    # a target is judged on its own latencies: the estimate names only what it timed
    rpi = next(t for t in s["targets"] if t["target"] == "estimate:rpi4")
    assert rpi["recommended"] == "tflite-fp32" and "speedup" not in rpi
    assert s["slower_than_parent"] == [] and s["degraded"] == []


def test_an_artifact_slower_than_its_parent_is_flagged_in_words() -> None:
    s = summary_section(_report(fp32_ms=0.034, int8_ms=0.074, tfl_ms=0.05))
    (flag,) = s["slower_than_parent"]
    assert (flag["artifact"], flag["parent"], flag["kind"]) == ("onnx-int8", "onnx-fp32", "slower")
    assert flag["ci95"][1] < 1
    assert "onnx-int8 is 2.1" in flag["words"] and "slower than its parent onnx-fp32" in flag["words"]
    local = next(t for t in s["targets"] if t["target"] == "local")
    assert local["recommended"] == "onnx-fp32"  # the fastest: the slow int8 is not recommended
    md = "\n".join(render_summary_markdown(s))
    assert md.startswith("## Summary") and "slower than its parent onnx-fp32" in md


def test_within_noise_is_no_faster_not_slower() -> None:
    fp32, int8 = _timed(1.0, seed=1, spread=0.3), _timed(0.97, seed=2, spread=0.3)
    speed = speedup_vs_parent(int8, fp32, "onnx-fp32")
    assert speed is not None and speed["ci95"][0] < 1 < speed["ci95"][1]
    int8.details["speedup_vs_parent"] = {**speed, "speedup": 0.9}  # below NO_FASTER, CI still reaching 1
    r = Report(recipe={"name": "t"}, created="now", artifacts=[
        _art("onnx-fp32", "onnx", "fp32", "baseline", "export:onnx", 10, 0.9, [fp32]),
        _art("onnx-int8", "onnx", "int8", "onnx-fp32", "01-quantize", 5, 0.9, [int8])])
    (flag,) = summary_section(r)["slower_than_parent"]
    assert flag["kind"] == "no_faster" and "no faster than its parent" in flag["words"]


def test_a_degraded_artifact_is_never_recommended() -> None:
    s = summary_section(_report(fp32_ms=1.0, int8_ms=0.2, tfl_ms=0.8, int8_status="degraded"))
    local = next(t for t in s["targets"] if t["target"] == "local")
    assert local["recommended"] == "tflite-fp32" and local["passed_gates"] == 2
    assert s["degraded"] == ["onnx-int8"] and any("onnx-int8" in line for line in s["lines"])


def test_nothing_timed_says_so() -> None:
    r = Report(recipe={"name": "t"}, created="now", artifacts=[
        _art("onnx-fp32", "onnx", "fp32", "baseline", "export:onnx", 10, 0.9, [])])
    s = summary_section(r)
    assert s["targets"] == [] and s["lines"] == ["no artifact was timed: nothing to recommend"]


def test_an_onnx_model_given_as_the_baseline_is_its_own_baseline_file() -> None:
    r = Report(recipe={"name": "t"}, created="now", artifacts=[
        _art("baseline", "onnx", "fp32", None, "input", 10, 0.9, [_timed(1.0)]),  # type: ignore[arg-type]
        _art("onnx-static", "onnx", "int8", "baseline", "01-quantize", 4, 0.9, [_timed(0.5, seed=5)])])
    assert baseline_files(r)["onnx"].name == "baseline"
    (local,) = summary_section(r)["targets"]
    assert local["recommended"] == "onnx-static" and local["speedup"]["value"] == pytest.approx(2.0, rel=0.05)
