"""Repeated processes: hierarchical bootstrap, MDE, merging, ratios, and the interleaved schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.latency import (
    bootstrap_median_ci,
    hierarchical_ci,
    minimum_detectable_effect,
    summarize,
    summarize_processes,
)
from bench.repeats import merge_results, ratio_ci
from compress.core.report_schema import TargetResult
from compress.runner.benchmarks import benchmark_interleaved, results_and_errors
from compress.core.errors import TargetError
from compress.core.types import BenchSpec


def _process(median: float, seed: int, n: int = 200, within: float = 0.001) -> np.ndarray:
    return median * (1 + within * np.random.default_rng(seed).standard_normal(n))


def _result(times: np.ndarray, load: float | None = 0.1, switches: int = 0, stable: bool = True) -> TargetResult:
    reasons_load = 5.0 if load is None else load
    s = summarize(times, threads=1, loadavg=reasons_load, cores=2, involuntary_switches=switches, warmup_stable=stable)
    return TargetResult(target="local", how="measured", device="cpu (x86_64, 2 cores)", threads=1, latency_ms=s,
                        times_ms=times.tolist(), load_ms=10.0, memory_increase_mb=5.0, peak_rss_mb=50.0,
                        runtime="onnxruntime 1", details={"loadavg_before": reasons_load, "involuntary_switches": switches,
                                                           "warmup_runs": 20, "warmup_stable": stable})


def test_hierarchical_ci_is_wide_when_processes_disagree() -> None:
    groups = [_process(m, i) for i, m in enumerate([1.0, 1.15, 0.9])]
    pooled = bootstrap_median_ci(np.concatenate(groups))
    lo, hi = hierarchical_ci(groups)
    # Runs treated as independent: a CI a fraction of a percent wide; processes resampled: about the spread.
    assert (pooled[1] - pooled[0]) < 0.01 and (hi - lo) > 0.15
    assert lo <= 0.95 and hi >= 1.1


def test_mde_from_between_process_spread() -> None:
    medians = [1.0, 1.05, 0.97]
    s = float(np.std(np.log(medians), ddof=1))
    from scipy.stats import t

    expected = np.expm1((t.ppf(0.975, 4) + t.ppf(0.8, 4)) * s * np.sqrt(2 / 3))
    assert minimum_detectable_effect(medians) == pytest.approx(expected)
    assert minimum_detectable_effect([1.0]) is None
    # a lucky agreement of three processes is not believed below a 1% spread
    assert minimum_detectable_effect([1.0, 1.0, 1.0]) == pytest.approx(np.expm1(3.717 * 0.01 * np.sqrt(2 / 3)), rel=1e-3)
    # more processes, smaller MDE
    assert minimum_detectable_effect([1.0, 1.05, 0.97] * 3) < minimum_detectable_effect(medians)


def test_summarize_processes_fields() -> None:
    groups = [_process(1.0, 0, 100), _process(1.2, 1, 300)]
    s = summarize_processes(groups, threads=1)
    assert s.repeats == 2 and s.runs == 400 and s.process_runs == [100, 300]
    assert s.process_medians == pytest.approx([1.0, 1.2], rel=1e-3)
    assert s.p50 == pytest.approx(float(np.median(np.concatenate(groups))))
    assert s.mde_rel is not None and s.mde_rel > 0.3 and not s.noisy


def test_merge_pools_runs_and_keeps_process_medians() -> None:
    parts = [_result(_process(m, i)) for i, m in enumerate([1.0, 1.02, 0.99])]
    m = merge_results(parts)
    assert m.error is None and m.latency_ms.repeats == 3 and m.latency_ms.runs == 600 and len(m.times_ms) == 600
    assert m.latency_ms.process_medians == pytest.approx([1.0, 1.02, 0.99], rel=1e-3)
    assert m.latency_ms.mde_rel is not None and not m.latency_ms.noisy
    assert len(m.details["processes"]) == 3 and m.details["warmup_runs"] == 60 and m.peak_rss_mb == 50.0
    assert m.throughput_items_s == pytest.approx(1e3 / m.latency_ms.p50)
    # old reports still load: the new fields are optional
    from compress.core.report_schema import LatencyStats

    old = {k: v for k, v in m.latency_ms.model_dump().items()
           if k not in ("repeats", "process_medians", "process_runs", "between_spread", "mde_rel")}
    assert LatencyStats(**old).repeats == 1 and LatencyStats(**old).mde_rel is None


def test_merge_with_a_failed_process_says_so() -> None:
    parts = [_result(_process(1.0, 0)), TargetResult(target="local", how="measured", device="-", threads=1,
                                                     error="target local: benchmark agent failed: boom"),
             _result(_process(1.01, 2))]
    m = merge_results(parts)
    assert m.error is None and m.latency_ms.repeats == 2 and m.latency_ms.noisy
    assert "1 of 3 processes failed" in m.latency_ms.noise_reason and m.details["failed_processes"] == [parts[1].error]
    all_failed = merge_results([parts[1], parts[1]])
    assert all_failed.error == parts[1].error and len(all_failed.details["failed_processes"]) == 2


def test_merge_noise_is_the_environment_not_the_spread() -> None:
    loaded = merge_results([_result(_process(1.0, i), load=None) for i in range(3)])
    assert loaded.latency_ms.noisy and "load average 5.00" in loaded.latency_ms.noise_reason
    one_quiet = merge_results([_result(_process(1.0, 0), load=None), _result(_process(1.0, 1)),
                               _result(_process(1.0, 2), load=None)])
    assert not one_quiet.latency_ms.noisy  # the least loaded start was quiet
    preempted = merge_results([_result(_process(1.0, i), switches=20) for i in range(3)])
    assert "preempted 60 times during 600" in preempted.latency_ms.noise_reason
    spread = merge_results([_result(_process(m, i)) for i, m in enumerate([1.0, 1.3, 0.8])])
    assert not spread.latency_ms.noisy and spread.latency_ms.mde_rel > 0.5


def test_ratio_ci_between_process_variance() -> None:
    a = merge_results([_result(_process(m, i)) for i, m in enumerate([1.0, 1.1, 0.92])])
    b = merge_results([_result(_process(1.25 * m, 10 + i)) for i, m in enumerate([1.0, 1.1, 0.92])])
    ratio, lo, hi = ratio_ci(a, b, paired=True)
    assert ratio == pytest.approx(1.25, rel=0.02) and lo < 1.25 < hi and lo > 1.2  # the shared drift cancels
    _, lo_u, hi_u = ratio_ci(a, b)
    assert hi_u - lo_u > hi - lo and lo_u < 1.2


@dataclass
class _Art:
    name: str
    parent: str | None = None
    format: str = "onnx"

    @property
    def path(self) -> Path:
        return Path(f"/models/{self.name}.onnx")


class _FakeTarget:
    """Records each benchmark call; artifact C runs 20% faster than A; 'broken' always fails."""

    formats = ("onnx",)

    def __init__(self, name: str = "local", how: str = "measured") -> None:
        self.name, self.how, self.calls = name, how, []
        self.rng = np.random.default_rng(0)

    def benchmark(self, model: Path, spec: BenchSpec, inputs: Any = None) -> TargetResult:
        self.calls.append((model.stem, spec.threads, spec.batch))
        if model.stem == "broken":
            raise TargetError(self.name, "benchmark agent failed: cannot load")
        base = {"A": 1.0, "B": 2.0, "C": 0.8}.get(model.stem, 1.0) * float(np.exp(0.02 * self.rng.standard_normal()))
        times = base * (1 + 0.005 * self.rng.standard_normal(50))
        if self.how != "measured":
            s = summarize(times, threads=spec.threads, how=self.how)  # type: ignore[arg-type]
            return TargetResult(target=self.name, how=self.how, device="est", threads=spec.threads, batch=spec.batch,  # type: ignore[arg-type]
                                latency_ms=s)
        r = _result(times)
        r.threads, r.batch, r.target = spec.threads, spec.batch, self.name
        return r


def test_interleaving_order_and_merge() -> None:
    arts = [_Art("A"), _Art("B"), _Art("C", parent="A")]
    target = _FakeTarget()
    settings = [BenchSpec(threads=1, runs=50), BenchSpec(threads=2, runs=50)]
    seen_inputs: list[str] = []
    lines: list[str] = []
    out = benchmark_interleaved(arts, [("local", target)], settings, 3,
                                lambda a: seen_inputs.append(a.name) or [np.zeros((1, 4))], lines.append)
    names = [c[0] for c in target.calls]
    assert names == ["A", "B", "C"] * 6  # A B C A B C ..., never all of A first
    assert [c[1] for c in target.calls] == [1] * 9 + [2] * 9
    assert seen_inputs == ["A", "B", "C"]  # inputs prepared once per artifact
    assert list(out) == [("A", "local", 1, 1), ("A", "local", 2, 1), ("B", "local", 1, 1), ("B", "local", 2, 1),
                         ("C", "local", 1, 1), ("C", "local", 2, 1)]
    c = out[("C", "local", 1, 1)]
    assert c.latency_ms.repeats == 3 and c.latency_ms.runs == 150
    speed = c.details["speedup_vs_parent"]
    assert speed["parent"] == "A" and speed["speedup"] == pytest.approx(1.25, rel=0.05)
    assert speed["ci95"][0] <= speed["speedup"] <= speed["ci95"][1]
    assert "speedup_vs_parent" not in out[("A", "local", 1, 1)].details
    assert any("3 interleaved rounds" in x for x in lines) and any("detects changes above" in x for x in lines)


def test_estimated_targets_run_once_and_failures_stop_early() -> None:
    arts = [_Art("A"), _Art("broken")]
    est = _FakeTarget("estimate:pi4", how="estimated")
    local = _FakeTarget()
    out = benchmark_interleaved(arts, [("local", local), ("estimate:pi4", est)],
                                {"local": [BenchSpec()], "estimate:pi4": [BenchSpec()]}, 3, lambda a: None)
    assert [c[0] for c in est.calls] == ["A", "broken"]
    assert [c[0] for c in local.calls] == ["A", "broken", "A", "A"]  # broken on its first process: not retried
    assert out[("A", "estimate:pi4", 1, 1)].latency_ms.repeats == 1
    by_art, errors = results_and_errors(arts, out)
    assert errors == ["target local: benchmark agent failed: cannot load",
                      "target estimate:pi4: benchmark agent failed: cannot load"]
    assert [r.target for r in by_art["A"]] == ["local", "estimate:pi4"]


def test_each_latency_is_merged_once_for_the_same_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.runner.benchmarks as schedule

    merged: list[int] = []

    def counting(parts: list[TargetResult]) -> TargetResult:
        merged.append(len(parts))
        return merge_results(parts)

    monkeypatch.setattr(schedule, "merge_results", counting)
    arts = [_Art("A"), _Art("C", parent="A")]
    # an MDE target nothing reaches: every round asks for another, up to 4
    out = benchmark_interleaved(arts, [("local", _FakeTarget())], [BenchSpec(runs=50)], 3, lambda a: None,
                                max_repeats=4, target_mde=1e-6)
    assert out[("A", "local", 1, 1)].latency_ms.repeats == 4
    assert sorted(merged) == [3, 3, 4, 4]  # checked after rounds 3 and 4; the result is the round-4 merge
    again = benchmark_interleaved(arts, [("local", _FakeTarget())], [BenchSpec(runs=50)], 3, lambda a: None,
                                  max_repeats=4, target_mde=1e-6)
    assert again[("C", "local", 1, 1)] == out[("C", "local", 1, 1)]  # the same numbers from the same processes
