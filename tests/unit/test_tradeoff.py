"""Cloud-vs-device arithmetic on a hand-made report."""

from __future__ import annotations

from bench.latency import summarize
from compress.core.report_schema import ArtifactReport, Report, TargetResult
from bench.tradeoff import tradeoff_section
from compress.intake.recipe_io import parse_recipe_text

RECIPE = """
version: 1
name: t
model: {factory: 'os.path:join', input_shape: [1, 3, 32, 32]}
task: {kind: classification, labels: [a, b]}
tradeoff:
  network: [4g, lab]
  networks: {lab: {rtt_ms: 1, up_mbps: 1000, down_mbps: 1000}}
  budgets: {latency_ms: 30, size_mb: 1}
  cloud: {price_per_hour: 3.6, cores: 1, batch: 4}
"""


def _t(target: str, p50: float, batch: int = 1, how: str = "measured") -> TargetResult:
    return TargetResult(target=target, how=how, device="x", threads=1, batch=batch,
                        latency_ms=summarize([p50] * 20, threads=1, batch=batch, how=how))


def test_scenarios_and_break_even() -> None:
    recipe = parse_recipe_text(RECIPE, None).recipe
    art = ArtifactReport(name="m", format="onnx", path="m.onnx", size_bytes=2_000_000,
                         targets=[_t("local", 2.0), _t("local", 4.0, batch=4), _t("estimate:rpi4", 25.0, how="estimated")])
    section = tradeoff_section(Report(recipe={"name": "t"}, created="now", artifacts=[art]), recipe)
    by_net = {s["network"]: s for s in section["scenarios"]}
    s4g, lab = by_net["4g"], by_net["lab"]
    assert s4g["device_target"] == "estimate:rpi4" and s4g["device"]["how"] == "estimated"
    assert s4g["cloud"]["server_ms"] == 1.0  # 4 ms for a batch of 4
    assert s4g["cloud"]["upload_bytes"] == 3 * 32 * 32 * 4
    # 1 item/ms on one core at $3.6/h -> $1 per 1M
    assert abs(s4g["cloud"]["cost_per_million_usd"] - 1.0) < 1e-9
    assert s4g["wins"]["latency"] == "device" and lab["wins"]["latency"] == "cloud"
    assert s4g["wins"]["size"] == "cloud"  # 2 MB over the 1 MB budget
    assert abs(lab["break_even_rtt_ms"] - (25.0 - 1.0 - lab["cloud"]["transfer_ms"])) < 1e-9
    assert lab["meets_latency_budget"] == {"device": True, "cloud": True}
    assert "lab" in section["markdown"] and section["assumptions"]
