"""`compress compare`: matching, deltas, the real-change verdict, gates and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.compare import compare_reports, parse_gate, real_latency_changes, render_markdown
from bench.latency import summarize
from bench.report import ArtifactReport, Report, TargetResult
from compress.cli import app
from compress.errors import InputFileError


def _times(median_ms: float, seed: int, n: int = 300) -> np.ndarray:
    """Run times shaped like real ones: a tight body and a few slow outliers."""
    rng = np.random.default_rng(seed)
    t = median_ms * (1 + 0.01 * rng.standard_normal(n))
    t[rng.random(n) < 0.03] *= 1.5
    return t


def _target(times: np.ndarray, batch: int = 1, loadavg: float | None = None) -> TargetResult:
    stats = summarize(times, threads=1, batch=batch, loadavg=loadavg, cores=2)
    return TargetResult(target="local", how="measured", device="cpu", threads=1, batch=batch, latency_ms=stats,
                        times_ms=times.tolist(), throughput_items_s=1e3 * batch / stats.p50, load_ms=20.0,
                        memory_increase_mb=10.0)


def _report(path: Path, artifacts: list[ArtifactReport], status: str = "ok") -> Path:
    r = Report(recipe={"name": "r"}, created="now", status=status, artifacts=artifacts,
               env={"cpu": "cpu", "cores": 2})
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(r.model_dump_json())
    return path


def _art(name: str, times: np.ndarray, accuracy: float = 0.9, size: int = 1000, **kw: object) -> ArtifactReport:
    return ArtifactReport(name=name, format="onnx", path=f"{name}.onnx", size_bytes=size, accuracy=accuracy,
                          metrics={"accuracy": accuracy, "macro_f1": accuracy - 0.01},
                          targets=[_target(times, **kw)])  # type: ignore[arg-type]


def test_same_distribution_is_no_real_change(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(2.0, 1))])
    cmp = compare_reports([a, b], ["latency_p50:+5%", "accuracy:-0.005", "size:+10%"])
    assert cmp.passed and not real_latency_changes(cmp)
    p50 = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_p50")
    assert p50.tested and p50.p_value is not None and p50.p_value > 0.01 and p50.verdict.startswith("no real change")


def test_slower_model_is_flagged_and_gate_fails(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(2.6, 1))])
    cmp = compare_reports([a, b], ["latency_p50:+5%", "accuracy:-0.005"])
    assert not cmp.passed
    gate = cmp.gates[0]
    assert not gate.passed and "latency_p50 +30" in gate.failures[0] and "(local, 1 thread, batch 1)" in gate.failures[0]
    assert cmp.gates[1].passed
    real = {d.metric for _, _, d in real_latency_changes(cmp)}
    assert real == {"latency_p50"}
    mean = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_mean")
    assert not mean.tested and mean.real is None and "tail statistic: not judged" in mean.verdict
    p50 = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_p50")
    assert p50.verdict == "slower" and p50.ci_a[1] < p50.ci_b[0] and p50.p_value < 1e-10
    thr = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "throughput")
    assert thr.real and thr.delta < 0 and thr.ci_a[0] > thr.ci_b[1]
    md = render_markdown(cmp)
    assert "✗ FAIL `latency_p50:+5%`" in md and "**slower (p=" in md and "| m | local, 1 thread, batch 1 | latency_p50 |" in md


def test_small_significant_shift_is_below_min_effect(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(2.04, 1))])
    cmp = compare_reports([a, b], ["latency_p50:+10%"])
    p50 = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_p50")
    assert p50.significant and not p50.real and "below 5%" in p50.verdict
    assert cmp.passed
    # A tighter effect floor makes the same 2% shift real, and a 1% gate fails on it.
    strict = compare_reports([a, b], ["latency_p50:+1%"], min_effect=0.01)
    assert real_latency_changes(strict) and not strict.passed


def test_noisy_run_needs_a_larger_change(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(2.5, 1), loadavg=5.0)])
    cmp = compare_reports([a, b], ["latency_p50:+5%"])
    p50 = next(d for r in cmp.pairs[0].rows for d in r.metrics if d.metric == "latency_p50")
    assert p50.noisy and p50.significant and not p50.real and p50.verdict.startswith("unclear")
    assert cmp.passed and cmp.gates[0].let_pass and "noisy run" in cmp.gates[0].let_pass[0]
    c = _report(tmp_path / "c", [_art("m", _times(6.0, 2), loadavg=5.0)])
    assert not compare_reports([a, c], ["latency_p50:+5%"]).passed


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
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(3.0, 1))])
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


def test_gate_on_a_tail_statistic_compares_the_figures(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", [_art("m", _times(2.0, 0))])
    b = _report(tmp_path / "b", [_art("m", _times(2.6, 1))])
    cmp = compare_reports([a, b], ["latency_p90:+5%"])
    assert not cmp.passed and "latency_p90" in cmp.gates[0].failures[0]
