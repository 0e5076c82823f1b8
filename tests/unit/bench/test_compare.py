"""`compress compare`: matching, deltas, the real-change verdict, gates and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.compare import compare_reports, parse_gate, real_latency_changes, render_markdown
from bench.latency import summarize, summarize_processes
from compress.core.report_schema import LatencyStats
from compress.core.report_schema import ArtifactReport, Report, TargetResult
from compress.cli import app
from compress.core.errors import InputFileError


def _times(median_ms: float, seed: int, n: int = 300) -> np.ndarray:
    """Run times of one process shaped like real ones: a tight body and a few slow outliers."""
    rng = np.random.default_rng(seed)
    t = median_ms * (1 + 0.01 * rng.standard_normal(n))
    t[rng.random(n) < 0.03] *= 1.5
    return t


def _processes(median_ms: float, seed: int, k: int = 3, spread: float = 0.02, n: int = 300) -> list[np.ndarray]:
    """``k`` processes whose medians scatter by ``spread`` (relative) around ``median_ms``."""
    rng = np.random.default_rng(10_000 + seed)
    return [_times(median_ms * float(np.exp(spread * rng.standard_normal())), seed * 100 + i, n) for i in range(k)]


def _target(times: np.ndarray | list[np.ndarray], batch: int = 1, loadavg: float | None = None) -> TargetResult:
    """A result of several processes (a list of arrays) or of one (an old, single-process report)."""
    if isinstance(times, list):
        stats = summarize_processes(times, threads=1, batch=batch,
                                    reasons=[f"load average {loadavg} on 2 cores"] if loadavg else None)
        flat = np.concatenate(times)
    else:
        stats = summarize(times, threads=1, batch=batch, loadavg=loadavg, cores=2)
        # as written before repeated processes: no process fields at all
        stats = LatencyStats(**stats.model_dump(exclude={"repeats", "process_medians", "process_runs",
                                                         "between_spread", "mde_rel"}))
        flat = times
    return TargetResult(target="local", how="measured", device="cpu", threads=1, batch=batch, latency_ms=stats,
                        times_ms=flat.tolist(), throughput_items_s=1e3 * batch / stats.p50, load_ms=20.0,
                        memory_increase_mb=10.0)


def _report(path: Path, artifacts: list[ArtifactReport], status: str = "ok") -> Path:
    r = Report(recipe={"name": "r"}, created="now", status=status, artifacts=artifacts,
               env={"cpu": "cpu", "cores": 2})
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(r.model_dump_json())
    return path


def _art(name: str, times: np.ndarray | list[np.ndarray], accuracy: float = 0.9, size: int = 1000, **kw: object) -> ArtifactReport:
    return ArtifactReport(name=name, format="onnx", path=f"{name}.onnx", size_bytes=size, accuracy=accuracy,
                          metrics={"accuracy": accuracy, "macro_f1": accuracy - 0.01},
                          targets=[_target(times, **kw)])  # type: ignore[arg-type]


def _p50(cmp: object) -> object:
    return next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_p50")  # type: ignore[attr-defined]


def test_same_distribution_is_no_real_change(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _processes(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _processes(2.0, 1))])
    cmp = compare_reports([a, b], ["latency_p50:+5%", "accuracy:-0.005", "size:+10%"])
    assert cmp.passed and not real_latency_changes(cmp)
    p50 = _p50(cmp)
    assert p50.tested and p50.repeats == (3, 3) and p50.mde is not None and 0 < p50.mde < 0.5
    assert p50.verdict.startswith("no real change") and not p50.unclear
    assert "Median latency: no real change" in render_markdown(cmp)


def test_slower_model_is_flagged_and_gate_fails(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _processes(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _processes(2.6, 1))])
    cmp = compare_reports([a, b], ["latency_p50:+5%", "accuracy:-0.005"])
    assert not cmp.passed
    gate = cmp.gates[0]
    assert not gate.passed and "latency_p50 +" in gate.failures[0] and "(local, 1 thread, batch 1)" in gate.failures[0]
    assert cmp.gates[1].passed
    real = {d.metric for _, _, d in real_latency_changes(cmp)}
    assert real == {"latency_p50"}
    mean = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_mean")
    assert not mean.tested and mean.real is None and "tail statistic: not judged" in mean.verdict
    p50 = _p50(cmp)
    assert p50.verdict == "slower" and p50.ratio_ci[0] > 1.1 and p50.rel > p50.mde
    thr = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "throughput")
    assert thr.real and thr.delta < 0 and thr.ratio_ci[1] < 1
    md = render_markdown(cmp)
    assert "✗ FAIL `latency_p50:+5%`" in md and "**slower (B/A 1." in md and "3 vs 3 processes" in md
    assert "| m | local, 1 thread, batch 1 | latency_p50 |" in md and "Median latency: 1 real change" in md


def test_quarter_slower_with_modest_process_spread_is_real(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _processes(2.0, 3, spread=0.03))])
    b = _report(tmp_path / "b", [_art("m", _processes(2.5, 4, spread=0.03))])
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    p50 = _p50(cmp)
    assert p50.real and p50.verdict == "slower" and not cmp.passed


def test_between_process_spread_is_not_a_change(tmp_path: Path) -> None:
    """Within-process spread tiny, between-process spread large: the old within-run tests called it real."""
    def procs(medians: list[float], seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [m * (1 + 0.001 * rng.standard_normal(300)) for m in medians]

    a = _report(tmp_path / "a", [_art("m", procs([2.0, 2.3, 1.8], 0))])
    b = _report(tmp_path / "b", [_art("m", procs([2.25, 1.9, 2.4], 1))])
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    p50 = _p50(cmp)
    assert p50.rel > 0.10 and p50.p_value < 1e-10  # what the old rule judged by
    assert not p50.real and p50.verdict.startswith("no real change") and cmp.passed
    assert p50.ratio_ci[0] < 1 < p50.ratio_ci[1] and p50.mde > 0.3


def test_change_past_the_ci_but_below_the_mde_is_unclear(tmp_path: Path) -> None:
    def procs(medians: list[float], seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [m * (1 + 0.001 * rng.standard_normal(300)) for m in medians]

    a = _report(tmp_path / "a", [_art("m", procs([2.0, 2.3, 1.85], 0))])
    b = _report(tmp_path / "b", [_art("m", procs([2.45, 2.6, 2.5], 1))])
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    p50 = _p50(cmp)
    assert p50.significant and p50.rel < p50.mde and p50.unclear and not p50.real
    assert "these runs can only detect changes above" in p50.verdict and cmp.passed
    assert not compare_reports([a, b], ["latency_p50:+10%"], strict=True).passed


def test_small_shift_is_below_min_effect(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _processes(2.0, 0, spread=0.001))])
    b = _report(tmp_path / "b", [_art("m", _processes(2.08, 1, spread=0.001))])
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    p50 = _p50(cmp)
    # the MDE never goes below what a 1% between-process spread allows (about 3% with 3 processes)
    assert p50.significant and 0.025 < p50.mde < 0.035 and not p50.real and "below 5%" in p50.verdict
    assert cmp.passed
    # A tighter effect floor makes the same 4% shift real, and a 1% gate fails on it.
    strict = compare_reports([a, b], ["latency_p50:+1%"], min_effect=0.01)
    assert real_latency_changes(strict) and not strict.passed


def test_noisy_run_is_unclear_and_fails_only_with_strict(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _processes(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _processes(2.5, 1), loadavg=5.0)])
    cmp = compare_reports([a, b], ["latency_p50:+5%"])
    p50 = _p50(cmp)
    assert p50.noisy and p50.significant and not p50.real and p50.unclear and p50.verdict.startswith("unclear")
    assert cmp.passed and cmp.gates[0].let_pass and "unclear, a run was flagged noisy" in cmp.gates[0].let_pass[0]
    assert "1 unclear" in render_markdown(cmp)
    strict = compare_reports([a, b], ["latency_p50:+5%"], strict=True)
    assert not strict.passed and "--strict" in strict.gates[0].failures[0]
    # at any size: a neighbour starting between two runs slows all processes of one of them
    c = _report(tmp_path / "c", [_art("m", _processes(6.0, 2), loadavg=5.0)])
    huge = compare_reports([a, c], ["latency_p50:+5%"])
    assert huge.passed and _p50(huge).unclear and "flagged noisy" in _p50(huge).verdict
    assert not compare_reports([a, c], ["latency_p50:+5%"], strict=True).passed


def test_single_process_reports_are_judged_honestly(tmp_path: Path) -> None:
    """Reports from before repeated processes: MDE unknown, so only a huge change is real."""
    a = _report(tmp_path / "a", [_art("m", _times(0.05575, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(0.06793, 1))])  # the +21.8%, p=2e-26 of issue 12
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    p50 = _p50(cmp)
    assert p50.repeats == (1, 1) and p50.mde is None and p50.p_value < 1e-20
    assert p50.unclear and not p50.real and "MDE unknown" in p50.verdict and cmp.passed
    assert not compare_reports([a, b], ["latency_p50:+10%"], strict=True).passed
    c = _report(tmp_path / "c", [_art("m", _times(0.2, 2))])
    assert not compare_reports([a, c], ["latency_p50:+10%"]).passed
    # an old report against a new one: still MDE unknown
    d = _report(tmp_path / "d", [_art("m", _processes(0.06793, 3))])
    assert _p50(compare_reports([a, d])).mde is None


def test_accuracy_size_and_metric_gates(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0), accuracy=0.95, size=1000)])
    b = _report(tmp_path / "b", [_art("m", _times(2.0, 1), accuracy=0.94, size=1200)])
    cmp = compare_reports([a, b], ["accuracy:-0.005", "size:+10%", "macro_f1:-0.02", "accuracy:-2%"])
    verdicts = {g.gate: g.passed for g in cmp.gates}
    assert verdicts == {"accuracy:-0.005": False, "size:+10%": False, "macro_f1:-0.02": True, "accuracy:-2%": True}
    acc_fail = cmp.gates[0].failures[0]
    assert "accuracy -0.0100" in acc_fail and "0.9500 → 0.9400" in acc_fail
    assert "size +20.0%" in cmp.gates[1].failures[0]


def test_matching_by_name_and_three_reports(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("fp32", _times(2.0, 0)), _art("int8", _times(1.0, 1))])
    b = _report(tmp_path / "b", [_art("fp32", _times(2.0, 2)), _art("fp16", _times(1.5, 3))])
    c = _report(tmp_path / "c", [_art("int8", _times(1.0, 4))], status="failed")
    cmp = compare_reports([a, b / "report.json", c], ["accuracy:-0.005"])
    assert len(cmp.pairs) == 2
    ab, ac = cmp.pairs
    assert ab.only_in_a == ["int8"] and ab.only_in_b == ["fp16"] and {r.artifact for r in ab.rows} == {"fp32"}
    assert {r.artifact for r in ac.rows} == {"int8"} and any("failed run" in n for n in ac.notes)
    # A failed run never passes a gate.
    assert not cmp.passed and any("failed" in f for f in cmp.gates[0].failures)


def test_timing_settings_are_matched_not_mixed(tmp_path: Path) -> None:
    art_a = _art("m", _times(2.0, 0))
    art_a.targets.append(_target(_times(8.0, 5), batch=8))
    art_b = _art("m", _times(2.0, 1))
    art_b.targets.append(_target(_times(8.0, 6), batch=8))
    cmp = compare_reports([_report(tmp_path / "a", [art_a]), _report(tmp_path / "b", [art_b])], ["latency_p50:+5%"])
    settings = [r.setting for r in cmp.pairs[0].rows if r.setting]
    assert settings == ["local, 1 thread, batch 1", "local, 1 thread, batch 8"]
    assert cmp.passed and cmp.gates[0].checked == 2


def test_gate_parsing() -> None:
    g = parse_gate("latency_p50:+5%")
    assert (g.metric, g.direction, g.threshold, g.relative) == ("latency_p50", 1, 0.05, True)
    g = parse_gate("accuracy:-0.005")
    assert (g.metric, g.direction, g.threshold, g.relative) == ("accuracy", -1, 0.005, False)
    for bad in ("latency_p50:5%", "latency_p50", "latency_p50:+x%", ":+5%"):
        with pytest.raises(InputFileError):
            parse_gate(bad)


def test_gate_on_absent_metric_is_an_error(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    with pytest.raises(InputFileError, match="roc_auc"):
        compare_reports([a, a], ["roc_auc:-0.01"])
    with pytest.raises(InputFileError, match="at least two"):
        compare_reports([a])


def test_cli_exit_codes_and_formats(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _processes(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _processes(3.0, 1))])
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(a), str(b), "--fail-on", "latency_p50:+5%", "--fail-on", "accuracy:-0.005"])
    assert res.exit_code == 1, res.output
    assert "gates failed: latency_p50:+5%" in res.stderr and "accuracy" not in res.stderr.split("gates failed:")[1]
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, ["compare", str(a), str(a), "--fail-on", "latency_p50:+5%", "--format", "json",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["passed"] and data["gates"][0]["gate"] == "latency_p50:+5%"
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no report.json" in res.stderr
    res = runner.invoke(app, ["compare", str(a), str(b), "--fail-on", "latency:5"])
    assert res.exit_code == 2 and "METRIC:+N%" in res.stderr
    noisy = _report(tmp_path / "noisy", [_art("m", _processes(2.5, 1), loadavg=5.0)])
    res = runner.invoke(app, ["compare", str(a), str(noisy), "--fail-on", "latency_p50:+10%"])
    assert res.exit_code == 0 and "unclear" in res.stdout, res.output
    res = runner.invoke(app, ["compare", str(a), str(noisy), "--fail-on", "latency_p50:+10%", "--strict"])
    assert res.exit_code == 1 and "--strict" in res.stderr, res.output


def test_gate_on_a_tail_statistic_compares_the_figures(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(2.6, 1))])
    cmp = compare_reports([a, b], ["latency_p90:+5%"])
    assert not cmp.passed and "latency_p90" in cmp.gates[0].failures[0]
