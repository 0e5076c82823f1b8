"""Review regressions in what the reports say: tradeoff figures for microsecond models and
multi-thread-only runs, HTML lineage through torch steps, estimated rows, inherited state."""

from __future__ import annotations

from bench.latency import summarize
from compress.core.report_schema import ArtifactReport, Report, StepReport, TargetResult
from bench.tradeoff import tradeoff_section
from compress.core.types import Artifact
from compress.intake.recipe_io import parse_recipe_text

RECIPE = """
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


def _t(target: str, p50: float, batch: int = 1, threads: int = 1, how: str = "measured") -> TargetResult:
    return TargetResult(target=target, how=how, device="x", threads=threads, batch=batch,
                        latency_ms=summarize([p50] * 20, threads=threads, batch=batch, how=how))


def test_microsecond_latencies_keep_their_digits() -> None:
    recipe = parse_recipe_text(RECIPE, None).recipe
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
    recipe = parse_recipe_text(RECIPE, None).recipe
    art = ArtifactReport(name="m", format="onnx", path="m.onnx", size_bytes=1000,
                         targets=[_t("local", 2.0, threads=2), _t("local", 8.0, batch=8, threads=2)])
    section = tradeoff_section(Report(recipe={"name": "t"}, created="now", artifacts=[art]), recipe)
    (s,) = section["scenarios"]
    assert s["cloud"]["server_ms"] == 1.0
    # 1 ms per item on 2 threads = 500 items/s per core; 2 cores at $3.6/h -> $1 per 1M
    assert abs(s["cloud"]["throughput_items_s"] - 1000.0) < 1e-9
    assert abs(s["cloud"]["cost_per_million_usd"] - 1.0) < 1e-9
    assert "2 threads" in s["cloud"]["server_source"]


def test_html_lineage_walks_through_torch_steps_and_estimates_show_no_runs() -> None:
    from bench.html import render_html

    steps = [StepReport(index=1, kind="prune", name="01-prune", config={}, input="baseline", output="pruned"),
             StepReport(index=2, kind="qat", name="02-qat", config={}, input="pruned", output="qat")]
    art = ArtifactReport(name="onnx-int8", format="onnx", path=None, size_bytes=1000, parent="qat", step="export:onnx",
                         targets=[_t("estimate:rpi4", 0.2, how="estimated")])
    html = render_html(Report(recipe={"name": "t"}, created="now", steps=steps, artifacts=[art]))
    lineage = html[html.index('class="lineage"'):]
    chain = lineage[:lineage.index("</li>")]
    assert "baseline → pruned" in chain
    for name, step in (("pruned", "01-prune"), ("qat", "02-qat"), ("onnx-int8", "export:onnx")):
        assert f"{name} <span class='muted'>({step})</span>" in chain
    assert chain.index("baseline") < chain.index("pruned") < chain.index("qat") < chain.index("onnx-int8")
    latency = html[html.index('id="latency"'):]
    assert "0 runs" not in latency and "estimated: no timed runs" in latency


def test_derived_artifact_does_not_inherit_run_private_state() -> None:
    parent = Artifact(name="pruned", format="torch", metadata={"layout": "NCHW", "_onnx_export": object(),
                                                                "_parity": "x", "_targets": [1]})
    child = parent.derive(name="qat")
    assert child.metadata == {"layout": "NCHW"} and child.parent == "pruned"


def test_qat_model_size_counts_only_what_its_graph_reads() -> None:
    """A pt2e-converted model keeps dead float weights beside its int8 ones: they are not its size."""
    import torch
    from torch import nn
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from compress.intake.models import torch_size_bytes
    from compress.steps.qat import capture, make_quantizer

    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 10)).eval()
    example = (torch.randn(2, 1, 8, 8),)
    quantizer, _ = make_quantizer("x86", True)
    prepared = prepare_qat_pt2e(capture(float_model, example, dynamic_batch=True), quantizer)
    prepared(*example)
    converted = convert_pt2e(prepared)
    float_size = torch_size_bytes(float_model)
    assert torch_size_bytes(converted) < 0.5 * float_size  # int8 weights: about a quarter
    assert torch.allclose(converted(*example), converted(*example))  # still a working module


def test_quantize_that_changes_nothing_says_fp32(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """weight_only on a model without MatMul leaves the float model: not 'mixed' precision."""
    from tests.unit.test_quantize_onnx import X86_CPUINFO, conv_model, images, op_types, quantize_onnx

    info = tmp_path / "cpuinfo"
    info.write_text(X86_CPUINFO.format(extra="avx512_vnni"))
    monkeypatch.setenv("EDGEPACK_CPUINFO", str(info))
    model = conv_model(tmp_path / "conv.onnx")
    art, ctx = quantize_onnx(tmp_path, model, images(), method="weight_only")
    assert "MatMulNBits" not in op_types(art.path)
    assert art.precision == "fp32" and ctx.details["quantized"] is False
    assert [a.code for a in ctx.advisories if a.code == "nothing_quantized"] == ["nothing_quantized"]
    static, ctx2 = quantize_onnx(tmp_path / "s", model, images(), method="static")
    assert static.precision == "int8" and ctx2.details["quantized"] is True
    assert not [a for a in ctx2.advisories if a.code == "nothing_quantized"]


def test_arm_targets_follow_the_profile_arch(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A user's own ARM board profile gets ARM int8 defaults, whatever its name."""
    import yaml

    import devices.estimate as est
    from compress.runner.run import is_arm_target

    shipped = est.PROFILES_DIR
    for src, name in (("rpi4", "myboard"), ("cloud_x86", "rpi-like-name-but-x86")):
        data = yaml.safe_load((shipped / f"{src}.yaml").read_text())
        data["name"] = name
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(est, "_user_profiles_dir", lambda: tmp_path)
    assert is_arm_target("estimate:myboard") and is_arm_target("estimate:rpi4") and is_arm_target("emulated:aarch64")
    assert not is_arm_target("estimate:rpi-like-name-but-x86") and not is_arm_target("estimate:cloud_x86")
    assert not is_arm_target("estimate:no-such-profile") and not is_arm_target("local")


def test_onnx_export_carries_no_source_paths(tmp_path) -> None:  # noqa: ANN001
    """The dynamo exporter's per-node stack traces (the user's file paths and code) are not shipped."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from torch import nn

    from compress.intake.recipe import InputSpec
    from export.onnx import export_module_to_onnx

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    dest = tmp_path / "m.onnx"
    export_module_to_onnx(module, [InputSpec(name="x", shape=[1, 1, 8, 8])], dest)
    model = onnx.load(str(dest))
    assert not any(n.metadata_props for n in model.graph.node)
    assert __file__.encode() not in dest.read_bytes() and b"stack_trace" not in dest.read_bytes()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    out = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(out - module(torch.from_numpy(x)).detach().numpy()).max() < 1e-5


def test_parity_cosine_of_zero_outputs_is_zero() -> None:
    """An artifact that outputs zeros (a broken int8 model) has cosine 0 to a real model, not 1."""
    import numpy as np

    from bench.parity import compare_outputs

    ref = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    broken = np.zeros_like(ref)
    assert abs(compare_outputs(ref, broken, "m", "embedding").cosine - 1 / 3) < 1e-12  # only the zero row matches
    assert abs(compare_outputs(ref, ref, "m", "embedding").cosine - 1.0) < 1e-12


def test_verdict_shows_energy_when_the_profile_has_power() -> None:
    text = RECIPE.replace("  cloud:", "  device: estimate:jetson_orin_nano\n  cloud:")
    recipe = parse_recipe_text(text + "bench: {targets: [local, estimate:jetson_orin_nano]}\n", None).recipe
    art = ArtifactReport(name="m", format="onnx", path="m.onnx", size_bytes=1000,
                         targets=[_t("local", 1.0), _t("estimate:jetson_orin_nano", 2.0, how="estimated")])
    (s,) = tradeoff_section(Report(recipe={"name": "t"}, created="now", artifacts=[art]), recipe)["scenarios"]
    assert s["device"]["energy_mj"] == 15.0 * 2.0  # 15 W for 2 ms
    assert "30.00 mJ per inference" in s["verdict"]
