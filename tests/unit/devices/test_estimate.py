"""The estimator: profiles, per-layer work from ONNX graphs, the roofline, calibration, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.core.errors import TargetError
from compress.core.types import BenchSpec
from devices.estimate import (
    EstimateTarget,
    calibrate,
    efficiencies_for,
    estimate_ms,
    host_profile,
    layer_times_s,
    list_profiles,
    load_profile,
)
from devices.graph_cost import Layer, onnx_layers


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def conv_model(path: Path, cout: int = 16, size: int = 16, qdq: bool = False) -> Path:
    """x[1,8,S,S] -> Conv 3x3 (8->cout) -> Relu -> depthwise 3x3 -> GlobalAveragePool -> Flatten -> Gemm(10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((cout, 8, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((cout, 1, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((10, cout)).astype(np.float32), "fc"),
    ]
    nodes = []
    x = "x"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(128, np.uint8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
    nodes += [
        helper.make_node("Conv", [x, "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=cout),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_shipped_profiles_are_complete() -> None:
    names = list_profiles()
    for required in ("rpi4", "rpi5", "pixel7", "jetson_orin_nano", "cloud_x86", "host"):
        assert required in names
    for name in names:
        p = load_profile(name)
        assert p.sources and p.cores >= 1 and p.peak_gops_per_core.int8 >= p.peak_gops_per_core.fp32
    with pytest.raises(TargetError, match="no device profile 'pi9'"):
        load_profile("pi9")


def test_layer_work_from_onnx(tmp_path: Path) -> None:
    layers = onnx_layers(conv_model(tmp_path / "m.onnx"), batch=2)
    by_op = {la.op: la for la in layers}
    assert [la.kind for la in layers] == ["conv", "depthwise", "pool", "gemm"]  # Relu fused, Flatten free
    assert layers[0].macs == 2 * 16 * 16 * 16 * 8 * 9
    assert layers[1].macs == 2 * 16 * 16 * 16 * 9
    assert by_op["Gemm"].macs == 2 * 10 * 16
    # bytes: input + weights + output of the first conv, fp32
    assert layers[0].bytes == 4 * (2 * 8 * 16 * 16 + 16 * 8 * 9 + 2 * 16 * 16 * 16)
    assert not any(la.int8 for la in layers)
    q = onnx_layers(conv_model(tmp_path / "q.onnx", qdq=True))
    assert q[0].int8 and q[0].bytes < onnx_layers(tmp_path / "m.onnx")[0].bytes


def test_roofline_compute_and_memory_bound() -> None:
    prof = load_profile("rpi4")
    params = {"eff_conv": 0.5, "eff_depthwise": 0.2, "eff_gemm": 0.5, "eff_elementwise": 0.1, "eff_pool": 0.1,
              "eff_other": 0.1, "eff_mem": 0.5, "eff_parallel": 1.0, "overhead_kcycles": 0.0}
    compute = Layer("c", "Conv", "conv", macs=10**8, bytes=10**3, int8=False)
    memory = Layer("m", "Add", "elementwise", macs=10, bytes=10**8, int8=False)
    t1 = layer_times_s([compute, memory], prof, params, threads=1)
    t4 = layer_times_s([compute, memory], prof, params, threads=4)
    assert t1[0] == pytest.approx(2e8 / (prof.peak_gops_per_core.fp32 * 1e9 * 0.5))
    assert t4[0] == pytest.approx(t1[0] / 4)  # compute-bound scales with threads
    assert t4[1] == pytest.approx(t1[1]) == pytest.approx(1e8 / (prof.memory_bandwidth_gbs * 1e9 * 0.5))
    int8 = Layer("q", "Conv", "conv", macs=10**8, bytes=10**3, int8=True)
    assert layer_times_s([int8], prof, params, 1)[0] < t1[0]


def test_estimate_target_labels_and_band(tmp_path: Path) -> None:
    small, big = conv_model(tmp_path / "s.onnx", cout=16), conv_model(tmp_path / "b.onnx", cout=64)
    target = EstimateTarget("rpi4")
    res = target.benchmark(small, BenchSpec(threads=1))
    assert res.how == "estimated" and res.latency_ms.how == "estimated" and res.target == "estimate:rpi4"
    lo, hi = res.estimate_band_ms
    assert lo < res.latency_ms.p50 < hi and res.latency_ms.runs == 0
    assert "Raspberry Pi 4" in res.device and res.details["profile_sources"]
    assert res.details["graph"]["macs"] == sum(la.macs for la in onnx_layers(small) if la.kind in ("conv", "depthwise", "gemm"))
    assert target.benchmark(big, BenchSpec(threads=1)).latency_ms.p50 > res.latency_ms.p50
    orin = EstimateTarget("jetson_orin_nano").benchmark(small, BenchSpec())
    assert orin.details["energy_mj"] == pytest.approx(15.0 * orin.latency_ms.p50, rel=1e-3)


def _synthetic_report(folder: Path, params: dict[str, float]) -> Path:
    """A saved run whose 'measured' latencies follow known efficiencies on this host's profile."""
    from bench.agent import device_facts
    from bench.latency import summarize
    from compress.core.report_schema import ArtifactReport, Report, TargetResult

    env = device_facts()
    prof = host_profile(env)
    arts = []
    for cout in (8, 16, 32, 64):
        path = conv_model(folder / f"m{cout}.onnx", cout=cout, size=32)
        ms = estimate_ms(onnx_layers(path), prof, params, 1)
        stats = summarize([ms] * 5, threads=1)
        arts.append(ArtifactReport(name=f"m{cout}", format="onnx", path=path.name, size_bytes=1,
                                   targets=[TargetResult(target="local", how="measured", device="here", threads=1,
                                                         latency_ms=stats)]))
    report = Report(recipe={"name": "synthetic"}, created="now", env=env, artifacts=arts)
    (folder / "report.json").write_text(report.model_dump_json())
    return folder


def test_calibrate_recovers_known_efficiencies(tmp_path: Path) -> None:
    truth = {"eff_conv": 0.6, "eff_depthwise": 0.1, "eff_gemm": 0.3, "eff_elementwise": 0.05, "eff_pool": 0.05,
             "eff_other": 0.05, "eff_mem": 0.4, "eff_parallel": 0.8, "overhead_kcycles": 3.0}
    run = _synthetic_report(tmp_path, truth)
    cal = calibrate([run], log=lambda _: None)
    assert cal["profile"] == "host" and cal["samples"] == 4
    assert cal["rms_log_error"] < 0.1  # the prior pulls a little against 4 samples
    for f in cal["fit"]:
        assert f["fitted_ms"] == pytest.approx(f["measured_ms"], rel=0.15)
    used = efficiencies_for(host_profile())
    assert used["source"] == cal["path"] and not used["transfer"]
    # An ARM profile does not borrow an x86 host's efficiencies.
    assert not efficiencies_for(load_profile("rpi4"))["source"].endswith("host.json")


def test_cli_list_and_calibrate(tmp_path: Path) -> None:
    from compress.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["devices", "list"])
    assert res.exit_code == 0, res.output
    for name in ("estimate:rpi4", "estimate:pixel7", "emulated:aarch64", "local"):
        assert name in res.output
    truth = {"eff_conv": 0.5, "eff_depthwise": 0.2, "eff_gemm": 0.3, "eff_elementwise": 0.05, "eff_pool": 0.05,
             "eff_other": 0.05, "eff_mem": 0.5, "eff_parallel": 0.8, "overhead_kcycles": 2.0}
    run = _synthetic_report(tmp_path, truth)
    res = runner.invoke(app, ["devices", "calibrate", str(run / "report.json")])
    assert res.exit_code == 0, res.output
    assert "calibrated host from 4 measurements" in res.output
    saved = json.loads(next((tmp_path / "cache" / "calibration").glob("host.json")).read_text())
    assert saved["samples"] == 4
    res = runner.invoke(app, ["devices", "calibrate", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no report.json" in res.output
