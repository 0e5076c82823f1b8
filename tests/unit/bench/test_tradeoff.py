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


def _t(target: str, p50: float, batch: int = 1, threads: int = 1, how: str = "measured") -> TargetResult:
    return TargetResult(target=target, how=how, device="x", threads=threads, batch=batch,
                        latency_ms=summarize([p50] * 20, threads=threads, batch=batch, how=how))


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


FAST_RECIPE = """
version: 1
name: t
model: {factory: 'os.path:join', input_shape: [1, 1, 8, 8]}
task: {kind: classification, labels: [a, b]}
tradeoff:
  network: [lab]
  networks: {lab: {rtt_ms: 0.01, up_mbps: 100000, down_mbps: 100000}}
  budgets: {latency_ms: 30, size_mb: 1}
  cloud: {price_per_hour: 3.6, cores: 2, batch: 8}
"""


def test_microsecond_latencies_keep_their_digits() -> None:
    recipe = parse_recipe_text(FAST_RECIPE, None).recipe
    art = ArtifactReport(name="m", format="tflite", path="m.tflite", size_bytes=34_152,
                         targets=[_t("local", 0.00365), _t("local", 0.028, batch=8), _t("estimate:rpi4", 0.0431,
                                                                                        how="estimated")])
    section = tradeoff_section(Report(recipe={"name": "t"}, created="now", artifacts=[art]), recipe)
    (s,) = section["scenarios"]
    md = section["markdown"]
    assert "0.0431 ms (estimated" in md and "0.00 ms" not in md
    assert s["break_even_rtt_ms"] > 0 and f"{s['break_even_rtt_ms']:.3g} ms" in md
    assert "0.0 ms" not in md


def test_server_side_from_multi_thread_runs_only() -> None:
    """bench.threads: [2] still gives a cloud side, at two cores' time per item."""
    recipe = parse_recipe_text(FAST_RECIPE, None).recipe
    art = ArtifactReport(name="m", format="onnx", path="m.onnx", size_bytes=1000,
                         targets=[_t("local", 2.0, threads=2), _t("local", 8.0, batch=8, threads=2)])
    section = tradeoff_section(Report(recipe={"name": "t"}, created="now", artifacts=[art]), recipe)
    (s,) = section["scenarios"]
    assert s["cloud"]["server_ms"] == 1.0
    # 1 ms per item on 2 threads = 500 items/s per core; 2 cores at $3.6/h -> $1 per 1M
    assert abs(s["cloud"]["throughput_items_s"] - 1000.0) < 1e-9
    assert abs(s["cloud"]["cost_per_million_usd"] - 1.0) < 1e-9
    assert "2 threads" in s["cloud"]["server_source"]


def test_verdict_shows_energy_when_the_profile_has_power() -> None:
    text = FAST_RECIPE.replace("  cloud:", "  device: estimate:jetson_orin_nano\n  cloud:")
    recipe = parse_recipe_text(text + "bench: {targets: [local, estimate:jetson_orin_nano]}\n", None).recipe
    art = ArtifactReport(name="m", format="onnx", path="m.onnx", size_bytes=1000,
                         targets=[_t("local", 1.0), _t("estimate:jetson_orin_nano", 2.0, how="estimated")])
    (s,) = tradeoff_section(Report(recipe={"name": "t"}, created="now", artifacts=[art]), recipe)["scenarios"]
    assert s["device"]["energy_mj"] == 15.0 * 2.0  # 15 W for 2 ms
    assert "30.00 mJ per inference" in s["verdict"]
