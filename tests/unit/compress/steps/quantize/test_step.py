"""The quantize step on tiny ONNX graphs built in-process: methods, target defaults,
advisories, fp16 conversion, model inspection, older opsets, scratch files and
accuracy-aware tuning.

The default path runs for real on the CPU that runs the tests (its own features, detected);
the VNNI and AVX2-without-VNNI choices are explicit parametrised cases that inject the CPU
(``quantize_for(..., cpu)``), never a faked default."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compress.core.types import Artifact
from compress.core.step import StepContext, StepResult
from compress.intake.data import Dataset, Split
from compress.intake.recipe import Recipe
from compress.steps.quantize.config import QuantizeConfig

X86_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 avx512f {extra}\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 {extra}\nCPU implementer\t: 0x41\n"


# --------------------------------------------------------------------------- tiny graphs


def _save(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, sparsity: float = 0.0) -> Path:
    """Conv(1->8, 3x3) + Relu + Conv(8->8) + global pool + Gemm(8->4): a tiny conv net."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 8
    if sparsity:
        w2[rng.random(w2.shape) < sparsity] = 0.0
        w1[rng.random(w1.shape) < sparsity] = 0.0
    fc = rng.standard_normal((4, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (fc, "fc"),
                                                       (np.zeros(4, np.float32), "fcb"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return _save(graph, path)


def outlier_model(path: Path, outliers: int = 4, factor: float = 1000.0) -> Path:
    """MatMul -> Relu -> Mul(scale) -> MatMul where a few hidden channels are ``factor`` times
    larger and the second MatMul divides them back: a float no-op, but a tensor whose range
    per-tensor int8 cannot share between the outliers and everything else."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 64)) / np.sqrt(32)).astype(np.float32)
    scale = np.ones(64, np.float32)
    scale[:outliers] = factor
    w2 = (rng.standard_normal((64, 16)) / 8 / scale[:, None]).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (scale, "scale"), (w2, "w2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["s"], name="outlier_scale"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)
    return _save(graph, path)


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def make_ctx(tmp_path: Path, x: np.ndarray, float_path: Path, target_arch: str = "x86") -> StepContext:
    """A StepContext whose evaluate() scores outputs by mean cosine to the float model's (embedding task)."""
    from bench.accuracy import embedding_metrics

    recipe = Recipe.model_validate({"version": 1, "name": "t", "model": {"onnx": str(float_path)},
                                    "task": {"kind": "embedding"}}, context={"check_files": False})
    split = Split([x[:64]])
    data = Dataset(train=Split([x]), calib=Split([x[64:128]]), eval=split, source="test")
    reference = run_onnx(float_path, split.x[0])

    def evaluate(art: Any) -> dict[str, Any]:
        m = embedding_metrics(run_onnx(art.path, split.x[0]), reference)
        return {**m, "accuracy": m["cosine_mean"]}

    return StepContext(recipe=recipe, run_dir=tmp_path, step_dir=tmp_path / "step", step_name="01-quantize",
                       data=data, reference=None, log=lambda msg: None, evaluate=evaluate, target_arch=target_arch)


@dataclass
class Ran:
    """A quantize step that ran: its context (evaluate, step folder) and its result."""

    ctx: StepContext
    result: StepResult

    @property
    def details(self) -> dict[str, Any]:
        return self.result.details

    @property
    def advisories(self) -> list[Any]:
        return self.result.advisories

    def evaluate(self, art: Any) -> dict[str, Any]:
        return self.ctx.evaluate(art)

    @property
    def step_dir(self) -> Path:
        return self.ctx.step_dir


def quantize_onnx(tmp_path: Path, model: Path, x: np.ndarray, arch: str = "x86", cpu: str | None = None,
                  **cfg: Any) -> tuple[Artifact, Ran]:
    """Quantize on this machine's own CPU, or on an explicitly named one (``vnni``, ``avx2``)."""
    from compress.core.env import NAMED_CPUS
    from compress.steps.quantize.step import quantize, quantize_for

    ctx = make_ctx(tmp_path, x, model, arch)
    source = Artifact(name="onnx-fp32", format="onnx", path=model)
    if cpu is None:
        res = quantize(source, QuantizeConfig(**cfg), ctx)
    else:
        res = quantize_for(source, QuantizeConfig(**cfg), ctx, NAMED_CPUS[cpu])
    return res.artifact, Ran(ctx, res)


def images(n: int = 160) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32)


def vectors(n: int = 160) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 32)).astype(np.float32)


# --------------------------------------------------------------------------- target facts


def test_cpu_flags_from_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    from compress.core.env import has_int8_dot, read_cpu_flags

    x86 = tmp_path / "x86"
    x86.write_text(X86_CPUINFO.format(extra="avx512_vnni"))
    arm = tmp_path / "arm"
    arm.write_text(ARM_CPUINFO.format(extra="asimddp"))
    old_arm = tmp_path / "a72"
    old_arm.write_text(ARM_CPUINFO.format(extra=""))
    assert "avx512_vnni" in read_cpu_flags(x86) and "asimddp" in read_cpu_flags(arm)
    assert has_int8_dot("x86", read_cpu_flags(x86)) is True
    assert has_int8_dot("arm", read_cpu_flags(arm)) is True
    assert has_int8_dot("arm", read_cpu_flags(old_arm)) is False
    assert has_int8_dot("x86", read_cpu_flags(tmp_path / "missing")) is None


def test_target_aware_defaults() -> None:
    from compress.steps.quantize.step import base_plan

    x86 = base_plan(QuantizeConfig(method="static"), "x86", True)
    assert (x86.activation_type, x86.weight_type, x86.per_channel, x86.reduce_range) == ("uint8", "int8", True, False)
    arm = base_plan(QuantizeConfig(method="static"), "arm", True)
    assert (arm.activation_type, arm.weight_type) == ("int8", "int8")
    old_x86 = base_plan(QuantizeConfig(method="static"), "x86", False)
    assert old_x86.reduce_range is True
    forced = base_plan(QuantizeConfig(method="static", activation_type="int8", calibration="entropy"), "x86", True)
    assert forced.activation_type == "int8" and forced.calibration == "entropy"
    assert base_plan(QuantizeConfig(method="dynamic"), "x86", True).activation_type is None


def test_target_config_overrides_the_run_target(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    art, ran = quantize_onnx(tmp_path, model, images(), arch="x86", method="static", target="arm")
    assert art.metadata["quantization"]["activation_type"] == "int8"
    assert art.metadata["quantization"]["target"] == "arm" and ran.details["target"] == "arm"


def test_check_reports_config_problems() -> None:
    from compress.steps.quantize.step import check

    baseline = Artifact(name="baseline", format="torch")
    recipe = Recipe.model_validate({"version": 1, "name": "t", "model": {"onnx": "m.onnx"},
                                    "task": {"kind": "classification"}}, context={"check_files": False})
    problems = dict(check(QuantizeConfig(method="static"), baseline, recipe, None))
    assert ("method",) in problems and "data" in problems[("method",)]
    problems = dict(check(QuantizeConfig(method="dynamic", tolerable_loss=0.01), baseline, recipe, None))
    assert ("tolerable_loss",) in problems
    assert dict(check(QuantizeConfig(method="fp16", weight_type="int8"), baseline, recipe, None))
    assert check(QuantizeConfig(method="dynamic"), baseline, recipe, None) == []


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("cpu", ["this-cpu", "vnni", "avx2"])
def test_static_is_u8s8_qdq_per_channel_on_x86(tmp_path: Path, cpu: str) -> None:
    """u8s8 QDQ with per-channel weights; 7-bit weights exactly where the CPU lacks VNNI."""
    import onnx
    from onnx import TensorProto

    from compress.core.env import NAMED_CPUS, detect_cpu

    model = conv_model(tmp_path / "conv.onnx")
    x = images()
    art, ran = quantize_onnx(tmp_path, model, x, method="static", cpu=None if cpu == "this-cpu" else cpu)
    features = detect_cpu("x86") if cpu == "this-cpu" else NAMED_CPUS[cpu]
    assert art.format == "onnx" and art.precision == "int8" and art.name == "onnx-static"
    q = onnx.load(str(art.path))
    zero_points = {i.name: i.data_type for i in q.graph.initializer if i.name.endswith("zero_point")}
    assert TensorProto.UINT8 in zero_points.values() and TensorProto.INT8 in zero_points.values()
    # per-channel weights: a weight scale with one entry per output channel
    scales = [i for i in q.graph.initializer if i.name.startswith("w2") and i.name.endswith("scale")]
    assert scales and scales[0].dims == [8]
    meta = art.metadata["quantization"]
    assert (meta["activation_type"], meta["weight_type"], meta["format"]) == ("uint8", "int8", "QDQ")
    assert meta["reduce_range"] is features.u8s8_saturates
    assert ran.details["cpu"]["int8_dot_product"] == features.int8_dot_product
    assert art.metadata["io_quantization"]["inputs"]["x"]["dtype"] == "uint8"
    cos = ran.evaluate(art)["cosine_mean"]
    assert cos > 0.99, cos
    # measured on the artifact on the CPU running the tests: int8 kernels vs the QDQ model in float
    on_cpu = ran.details["on_this_cpu"]
    assert on_cpu["int8_kernels_vs_qdq_float"]["cosine"] > 0.99 and on_cpu["fp32_ms"] > 0
    assert sorted(p.name for p in ran.step_dir.iterdir()) == ["model.onnx"], "scratch files are removed"


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_static_calibration_methods(tmp_path: Path, calibration: str) -> None:
    art, ran = quantize_onnx(tmp_path, conv_model(tmp_path / "conv.onnx"), images(), method="static",
                             calibration=calibration)
    assert art.metadata["quantization"]["calibration"] == calibration
    assert ran.evaluate(art)["cosine_mean"] > 0.95


def test_dynamic_quantizes_matmuls(tmp_path: Path) -> None:
    model = outlier_model(tmp_path / "mm.onnx", outliers=0)
    art, ran = quantize_onnx(tmp_path, model, vectors(), method="dynamic")
    ops = op_types(art.path)
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}, ops
    assert art.precision == "int8"
    assert ran.evaluate(art)["cosine_mean"] > 0.99


def test_fp16_keeps_float32_io(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    model = conv_model(tmp_path / "conv.onnx")
    x = images()
    art, _ = quantize_onnx(tmp_path, model, x, method="fp16")
    q = onnx.load(str(art.path))
    assert art.precision == "fp16"
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert q.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {i.data_type for i in q.graph.initializer} == {TensorProto.FLOAT16}
    ref, out = run_onnx(model, x[:8]), run_onnx(art.path, x[:8])
    assert out.dtype == np.float32 and np.abs(ref - out).max() < 1e-2 * np.abs(ref).max()
    assert art.path.stat().st_size < model.stat().st_size


def test_fp16_clamps_mask_constants_to_finite(tmp_path: Path) -> None:
    """float32's minimum as an additive mask must not become -inf (0 * -inf = NaN) in fp16."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.steps.quantize.fp16 import convert_to_fp16

    big = numpy_helper.from_array(np.array([np.finfo(np.float32).min], np.float32), "big")
    nodes = [helper.make_node("Sub", ["one", "m"], ["inv"]), helper.make_node("Mul", ["inv", "big"], ["fill"]),
             helper.make_node("Add", ["x", "fill"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                              helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [big, one])
    path = _save(graph, tmp_path / "mask.onnx")
    import onnx
    import onnxruntime as ort

    fp16 = tmp_path / "mask16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(path))), str(fp16))
    feed = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "m": np.array([[1, 1, 1, 0]], np.float32)}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    out = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.isfinite(out).all() and np.abs(out - ref).max() < 1e-3


def test_weight_only_uses_matmulnbits(tmp_path: Path) -> None:
    model = outlier_model(tmp_path / "mm.onnx", outliers=0)
    art, ran = quantize_onnx(tmp_path, model, vectors(), method="weight_only")
    assert "MatMulNBits" in op_types(art.path)
    assert art.metadata["weight_bits"] == 8 and art.precision == "mixed"
    assert ran.evaluate(art)["cosine_mean"] > 0.999


def test_a_second_quantize_step_starts_from_the_float_model(tmp_path: Path) -> None:
    from compress.steps.quantize.step import quantize

    model = conv_model(tmp_path / "conv.onnx")
    first, _ctx = quantize_onnx(tmp_path, model, images(), method="static")
    ctx2 = make_ctx(tmp_path / "2", images(), model)
    res2 = quantize(first, QuantizeConfig(method="fp16"), ctx2)
    second = res2.artifact
    assert second.parent == "onnx-fp32" and res2.details["source"] == "onnx-fp32"
    assert "QuantizeLinear" not in op_types(second.path)


# --------------------------------------------------------------------------- inspection


def test_summary_counts_conv_and_matmul_macs(tmp_path: Path) -> None:
    from export.onnx_inspect import summarize

    s = summarize(conv_model(tmp_path / "conv.onnx"))
    assert s.n_conv == 2 and s.n_matmul == 1
    # conv1: 8x8x8 outputs x 9 taps; conv2: 8x8x8 outputs x 8x9 taps; fc: 4 outputs x 8
    assert s.node_macs == {"conv1": 8 * 64 * 9, "conv2": 8 * 64 * 72, "fc": 32}
    assert s.conv_share > 0.99 and s.weight_sparsity == 0.0 and s.opset == 17
    m = summarize(outlier_model(tmp_path / "mm.onnx"))
    assert m.n_conv == 0 and m.matmul_macs == 32 * 64 + 64 * 16 and m.conv_share == 0.0


# --------------------------------------------------------------------------- advisories


def codes(ran: Ran | StepResult) -> set[str]:
    return {a.code for a in ran.advisories}


def test_advisory_dynamic_on_conv(tmp_path: Path) -> None:
    art, ran = quantize_onnx(tmp_path, conv_model(tmp_path / "conv.onnx"), images(), method="dynamic")
    assert "dynamic_on_conv" in codes(ran)
    assert "ConvInteger" not in op_types(art.path), "convolutions stay float under dynamic quantization"
    _, ran2 = quantize_onnx(tmp_path / "s", conv_model(tmp_path / "conv.onnx"), images(), method="static")
    assert "dynamic_on_conv" not in codes(ran2)


def test_advisory_sparsity_on_dense_runtime(tmp_path: Path) -> None:
    _, ran = quantize_onnx(tmp_path, conv_model(tmp_path / "sparse.onnx", sparsity=0.6), images(), method="static")
    assert "sparsity_on_dense_runtime" in codes(ran)
    assert ran.details["model"]["weight_sparsity"] > 0.3
    _, dense = quantize_onnx(tmp_path / "d", conv_model(tmp_path / "dense.onnx"), images(), method="static")
    assert "sparsity_on_dense_runtime" not in codes(dense)


def test_advisory_sparsity_from_parent_metadata(tmp_path: Path) -> None:
    from compress.steps.quantize.step import quantize

    model = conv_model(tmp_path / "conv.onnx")
    ctx = make_ctx(tmp_path, images(), model)
    parent = Artifact(name="onnx-fp32", format="onnx", path=model, metadata={"sparsity": 0.5})
    res = quantize(parent, QuantizeConfig(method="dynamic"), ctx)
    assert "sparsity_on_dense_runtime" in codes(res)


@pytest.mark.parametrize(("arch", "cpuinfo", "expect"), [
    ("x86", X86_CPUINFO.format(extra=""), True),
    ("x86", X86_CPUINFO.format(extra="avx512_vnni"), False),
    ("x86", X86_CPUINFO.format(extra="avx_vnni"), False),
    ("arm", ARM_CPUINFO.format(extra=""), True),
    ("arm", ARM_CPUINFO.format(extra="asimddp"), False),
])
def test_advisory_int8_without_dot_product(tmp_path: Path, arch: str, cpuinfo: str, expect: bool) -> None:
    from compress.core.env import features_from_flags, read_cpu_flags
    from compress.steps.quantize.step import quantize_for

    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo)
    cpu = features_from_flags(arch, read_cpu_flags(info))
    model = conv_model(tmp_path / "conv.onnx")
    ctx = make_ctx(tmp_path, images(), model, arch)
    res = quantize_for(Artifact(name="onnx-fp32", format="onnx", path=model), QuantizeConfig(method="static"), ctx, cpu)
    art = res.artifact
    assert ("int8_without_dot_product" in codes(res)) is expect
    assert res.details["int8_dot_product"] is (not expect)
    if arch == "x86":
        assert art.metadata["quantization"]["reduce_range"] is expect


def test_cpuinfo_env_describes_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$EDGEPACK_CPUINFO`` names the target CPU's cpuinfo: the default path follows it."""
    from compress.core.env import detect_cpu

    info = tmp_path / "cpuinfo"
    info.write_text(X86_CPUINFO.format(extra=""))
    monkeypatch.setenv("EDGEPACK_CPUINFO", str(info))
    assert detect_cpu("x86").u8s8_saturates and detect_cpu("x86").int8_dot_product is None
    art, ran = quantize_onnx(tmp_path, conv_model(tmp_path / "conv.onnx"), images(), method="static")
    assert art.metadata["quantization"]["reduce_range"] is True
    assert "int8_without_dot_product" in codes(ran)


def test_advisories_fp16_on_x86_and_weight_only_on_conv(tmp_path: Path) -> None:
    _, ran = quantize_onnx(tmp_path, conv_model(tmp_path / "conv.onnx"), images(), method="fp16")
    assert "fp16_on_x86_cpu" in codes(ran)
    _, ran2 = quantize_onnx(tmp_path / "w", conv_model(tmp_path / "conv.onnx"), images(), method="weight_only")
    assert "weight_only_no_matmul" in codes(ran2)


def test_engine_inc_without_neural_compressor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compress.core.errors import MissingDependencyError
    from compress.steps.quantize.step import quantize

    monkeypatch.setitem(sys.modules, "neural_compressor", None)  # import fails as if not installed
    model = conv_model(tmp_path / "conv.onnx")
    ctx = make_ctx(tmp_path, images(), model)
    with pytest.raises(MissingDependencyError, match=r"edgepack\[inc\]"):
        quantize(Artifact(name="baseline", format="torch"), QuantizeConfig(method="static", engine="inc"), ctx)


# --------------------------------------------------------------------------- tuning


def test_tuning_meets_tolerable_loss_where_full_int8_misses(tmp_path: Path) -> None:
    model = outlier_model(tmp_path / "outlier.onnx")
    art, ran = quantize_onnx(tmp_path, model, vectors(), method="static", tolerable_loss=0.01)
    d = ran.details
    trials = d["trials"]
    assert trials[0]["goal_met"] is False and trials[0]["loss"] > 0.01, trials[0]
    assert d["goal_met"] is True and d["require_goal"] is False
    chosen = trials[d["chosen_trial"] - 1]
    assert chosen["goal_met"] and chosen["loss"] <= 0.01 and chosen["config"]["exclude"]
    for t in trials:
        assert {"config", "accuracy", "loss", "latency_ms", "size_bytes", "goal_met", "phase"} <= set(t)
    assert d["sensitivity"][0]["node"] == "fc2"
    assert set(art.metadata["quantization"]["exclude"]) >= {"fc2", "outlier_scale"}
    assert art.precision == "mixed"
    assert ran.evaluate(art)["cosine_mean"] >= 1 - 0.01
    assert not codes(ran) & {"tuning_goal_unmet"}


def test_tuning_relative_loss(tmp_path: Path) -> None:
    from compress.steps.quantize.tuning import Goal

    assert Goal(baseline=0.8, tolerable_loss=0.01, kind="relative").allowed == pytest.approx(0.008)
    _, ran = quantize_onnx(tmp_path, outlier_model(tmp_path / "o.onnx"), vectors(), method="static",
                           tolerable_loss=0.01, loss_kind="relative")
    assert ran.details["goal_met"] is True and ran.details["allowed_loss"] == pytest.approx(0.01 * 1.0, abs=1e-3)


def test_tuning_unmet_goal_keeps_best_and_says_so(tmp_path: Path) -> None:
    model = outlier_model(tmp_path / "outlier.onnx")
    art, ran = quantize_onnx(tmp_path, model, vectors(), method="static", tolerable_loss=0.0, max_trials=2,
                             require_goal=True)
    d = ran.details
    assert d["goal_met"] is False and d["require_goal"] is True and len(d["trials"]) == 2
    assert art.path.is_file()
    best = max(t["accuracy"] for t in d["trials"])
    assert d["trials"][d["chosen_trial"] - 1]["accuracy"] == best
    adv = [a for a in ran.advisories if a.code == "tuning_goal_unmet"]
    assert adv and adv[0].severity == "error" and "tolerable_loss" in adv[0].message


def attention_like_model(path: Path) -> Path:
    """x -> MatMul -> Add(mask of float32's minimum) -> Softmax -> MatMul: attention's shape."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wq = (rng.standard_normal((32, 16)) / np.sqrt(32)).astype(np.float32)
    mask = np.zeros(16, np.float32)
    mask[12:] = np.finfo(np.float32).min
    wo = (rng.standard_normal((16, 8)) / 4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((wq, "wq"), (mask, "mask"), (wo, "wo"))]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["s"], name="scores"),
             helper.make_node("Add", ["s", "mask"], ["m"], name="masked"),
             helper.make_node("Softmax", ["m"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "wo"], ["y"], name="out")]
    # 3-d like a transformer's (batch, tokens, features): a 2-d MatMul + Add would fuse into Gemm
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])], inits)
    return _save(graph, path)


def test_static_on_a_transformer_quantizes_only_weight_operators(tmp_path: Path) -> None:
    import onnx

    from export.onnx_inspect import summarize
    from compress.steps.quantize.step import STATIC_TRANSFORMER_OPS, is_transformer

    model = attention_like_model(tmp_path / "attn.onnx")
    assert is_transformer(summarize(model)) and not is_transformer(summarize(conv_model(tmp_path / "c.onnx")))
    art, ran = quantize_onnx(tmp_path, model, vectors(640).reshape(-1, 4, 32), method="static")
    assert art.metadata["quantization"]["op_types"] == list(STATIC_TRANSFORMER_OPS)
    q = onnx.load(str(art.path))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    softmax = next(n for n in q.graph.node if n.op_type == "Softmax")
    assert producers[softmax.input[0]] == "Add", "the masked scores reach Softmax unquantized"
    assert ran.evaluate(art)["cosine_mean"] > 0.99


def test_fold_weight_quantize_keeps_outputs_and_shrinks_the_file(tmp_path: Path) -> None:
    """The INC path's export quantizes float weights at run time; folding stores them as int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.steps.quantize.inc import fold_weight_quantize

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["x", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    path = _save(graph, tmp_path / "qdq.onnx")
    model = onnx.load(str(path))
    assert fold_weight_quantize(model) == 1
    folded = tmp_path / "folded.onnx"
    onnx.save(model, str(folded))
    assert "QuantizeLinear" not in op_types(folded)
    assert {i.data_type for i in model.graph.initializer if i.name == "wq"} == {TensorProto.INT8}
    x = images(1)
    assert np.array_equal(run_onnx(path, x), run_onnx(folded, x))
    assert folded.stat().st_size < path.stat().st_size


# --------------------------------------------------------------------------- the CPU


def test_detect_cpu_reads_this_machine() -> None:
    from compress.core.env import detect_cpu, host_arch, read_cpu_flags

    cpu = detect_cpu()
    flags = read_cpu_flags("/proc/cpuinfo")
    assert cpu.arch == host_arch() and cpu.known is bool(flags)
    if cpu.arch == "x86" and flags:
        assert cpu.vnni is bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
        assert cpu.avx2 is ("avx2" in flags) and cpu.avx512 is ("avx512f" in flags)
        assert cpu.int8_dot_product == ("vnni" if cpu.vnni else None)
    assert detect_cpu() is cpu, "detected once"
    assert set(cpu.as_dict()) >= {"arch", "avx2", "avx512", "vnni", "asimddp", "int8_dot_product"}
    other = "arm" if cpu.arch == "x86" else "x86"
    assert detect_cpu(other).known is False and detect_cpu(other).has_int8_dot is None


# --------------------------------------------------------------------------- older opsets


def opset11_model(path: Path) -> Path:
    """Conv(1->8) + Relu + Conv(8->16) + Relu + GlobalAveragePool + Flatten + Gemm(16->10) + Squeeze-free,
    saved as opset 11 (no per-channel DequantizeLinear there), real weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 1, 3, 3)) / 3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)
    b2 = (rng.standard_normal(16) * 0.1).astype(np.float32)
    fc = (rng.standard_normal((10, 16)) / 4).astype(np.float32)
    fcb = np.zeros(10, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (fc, "fc"),
                                                       (fcb, "fcb"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _opset(path: Path) -> int:
    import onnx

    return next(i.version for i in onnx.load(str(path)).opset_import if i.domain in ("", "ai.onnx"))


def test_opset11_model_is_upgraded_and_quantized_per_channel(tmp_path: Path) -> None:
    import onnx

    model = opset11_model(tmp_path / "old.onnx")
    assert _opset(model) == 11
    art, ran = quantize_onnx(tmp_path, model, images(), method="static")
    up = ran.details["opset_upgrade"]
    assert (up["from_opset"], up["to_opset"], up["upgraded"]) == (11, 13, True)
    assert up["max_rel_diff"] <= 1e-4 and up["parity_batches"] > 0
    q = onnx.load(str(art.path))
    assert _opset(art.path) >= 13
    assert any(a.name == "axis" for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute)
    assert art.metadata["quantization"]["per_channel"] is True
    cos = ran.evaluate(art)["cosine_mean"]  # int8 artifact vs the opset-11 fp32 model, in onnxruntime
    assert cos > 0.99, cos
    assert "opset_upgrade_failed" not in codes(ran)


def test_opset11_model_falls_back_to_per_tensor_when_conversion_fails(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.version_converter

    def broken(model: Any, target: int) -> Any:
        raise RuntimeError("no adapter for this op")

    monkeypatch.setattr(onnx.version_converter, "convert_version", broken)
    model = opset11_model(tmp_path / "old.onnx")
    art, ran = quantize_onnx(tmp_path, model, images(), method="static")
    assert ran.details["opset_upgrade"]["upgraded"] is False and "no adapter" in ran.details["opset_upgrade"]["error"]
    assert art.metadata["quantization"]["per_channel"] is False
    assert "opset_upgrade_failed" in codes(ran)
    assert ran.evaluate(art)["cosine_mean"] > 0.98  # onnxruntime loads and runs it


def test_opset_upgrade_that_changes_outputs_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.version_converter
    from onnx import numpy_helper

    from compress.core.errors import StepError

    real = onnx.version_converter.convert_version

    def wrong(model: Any, target: int) -> Any:
        out = real(model, target)
        w = out.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
        return out

    monkeypatch.setattr(onnx.version_converter, "convert_version", wrong)
    with pytest.raises(StepError, match=r"upgraded from opset 11 to 13 differs"):
        quantize_onnx(tmp_path, opset11_model(tmp_path / "old.onnx"), images(), method="static")


# --------------------------------------------------------------------------- scratch files


def test_scratch_files_stay_in_the_step_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime writes ``sym_shape_infer_temp.onnx`` (+ external data) into the working directory
    and its temp folders into ``tempfile``'s: during the step both are inside the step folder."""
    import tempfile

    import onnxruntime.quantization.shape_inference as shape_inference

    models = tmp_path / "models"
    models.mkdir()
    model = conv_model(models / "conv.onnx")
    (models / "conv.onnx.data").write_bytes(b"not touched")
    before = sorted((p.name, p.stat().st_size) for p in models.iterdir())
    monkeypatch.chdir(models)  # the recipe's folder as the working directory
    seen: dict[str, str] = {}
    real = shape_inference.quant_pre_process

    def spy(*args: Any, **kwargs: Any) -> Any:
        Path("sym_shape_infer_temp.onnx").write_bytes(b"scratch")
        Path("sym_shape_infer_temp.onnx.data").write_bytes(b"\0" * 1024)
        seen["cwd"] = str(Path.cwd())
        seen["tmp"] = tempfile.gettempdir()
        return real(*args, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", spy)
    art, ran = quantize_onnx(tmp_path / "run", model, images(), method="static")
    step = ran.step_dir.resolve()
    assert Path(seen["cwd"]).parent == step and Path(seen["tmp"]).parent == step
    assert sorted((p.name, p.stat().st_size) for p in models.iterdir()) == before
    assert Path.cwd() == models and tempfile.gettempdir() != seen["tmp"]
    assert sorted(p.name for p in step.iterdir()) == ["model.onnx"]
    assert art.path.is_file()


def test_quantize_that_changes_nothing_says_fp32(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """weight_only on a model without MatMul leaves the float model: not 'mixed' precision."""
    info = tmp_path / "cpuinfo"
    info.write_text(X86_CPUINFO.format(extra="avx512_vnni"))
    monkeypatch.setenv("EDGEPACK_CPUINFO", str(info))
    model = conv_model(tmp_path / "conv.onnx")
    art, ran = quantize_onnx(tmp_path, model, images(), method="weight_only")
    assert "MatMulNBits" not in op_types(art.path)
    assert art.precision == "fp32" and ran.details["quantized"] is False
    assert [a.code for a in ran.advisories if a.code == "nothing_quantized"] == ["nothing_quantized"]
    static, ran2 = quantize_onnx(tmp_path / "s", model, images(), method="static")
    assert static.precision == "int8" and ran2.details["quantized"] is True
    assert not [a for a in ran2.advisories if a.code == "nothing_quantized"]
