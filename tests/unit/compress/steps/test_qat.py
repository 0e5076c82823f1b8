"""The qat step: the model is really quantized, exports as QDQ ONNX, and keeps its accuracy in
onnxruntime on the CPU that runs it (7-bit weights where the CPU lacks VNNI; the AVX2 path is
also run for real under ``qemu-x86_64-static -cpu Haswell`` when that is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compress.core.errors import RecipeError
from compress.intake.models import count_macs, count_params
from compress.steps.qat import QatConfig, qat, qat_for
from compress.intake.recipe import InputSpec
from compress.intake.recipe_io import parse_recipe_text
from export.onnx import export_module_to_onnx
from tests.unit.compress.steps.fixtures import DIGITS_RECIPE, MODELS, digits_runner, step_ctx

SPECS = [InputSpec(shape=[1, 1, 8, 8])]


def test_x86_qat_quantizes_and_exports_qdq(qat_onnx: dict[str, Any]) -> None:
    """The step as a recipe runs it (``qat``: this machine's CPU decides), from the shared fixture."""
    run = qat_onnx["host"]
    runner, res = run["runner"], run["result"]
    teacher = runner.baseline.module
    out = res.artifact
    assert out.format == "torch" and out.precision == "int8"
    ops = res.details["quant_ops"]
    # 3 convs + 1 linear: per-channel int8 weights, activations quantized around each
    assert ops["dequantize_per_channel"] == 4 and ops["quantize_per_tensor"] >= 4
    # 7-bit weights where the CPU has no VNNI (as PTQ's reduce_range); this machine's CPU decides
    from compress.core.env import detect_cpu

    seven_bit = detect_cpu().u8s8_saturates
    expected = "X86InductorQuantizer (7-bit weights)" if seven_bit else "X86InductorQuantizer"
    assert res.details["quantizer"] == expected
    assert count_macs(out.module, SPECS) == count_macs(teacher, SPECS)
    assert count_params(out.module) == count_params(teacher)
    base_acc = runner.evaluate(teacher)["accuracy"]
    assert runner.evaluate(out.module)["accuracy"] >= base_acc - 0.02
    dest = run["tmp"] / "q.onnx"
    export_module_to_onnx(out.module, SPECS, dest)
    kinds = Counter(n.op_type for n in onnx.load(str(dest)).graph.node)
    assert kinds["QuantizeLinear"] >= 4 and kinds["DequantizeLinear"] >= 8 and kinds["Conv"] == 3
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    x = runner.data.eval.x[0]
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert (logits.argmax(1) == runner.data.eval.y).mean() >= base_acc - 0.02


def test_arm_quantizer(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, train=256)
    ctx = step_ctx(runner)
    res = qat(runner.baseline, QatConfig(epochs=1, target="arm"), ctx)
    out = res.artifact
    assert "XNNPACK" in res.details["quantizer"] and res.details["target"] == "arm"
    assert sum(res.details["quant_ops"].values()) >= 8
    codes = {a.code for a in res.advisories}
    # (the digits CNN is small enough that int8 may run slower than fp32: measured, and said; the
    # ARM model's int8 kernels measured on an x86 host without VNNI lose accuracy: said, naming that CPU)
    from compress.core.env import host_cpu

    allowed = {"qat_xnnpack_deprecated", "int8_slower_than_fp32"}
    if host_cpu().u8s8_saturates:
        allowed.add("int8_kernels_lose_accuracy")
    assert "qat_xnnpack_deprecated" in codes and codes <= allowed
    if "int8_kernels_lose_accuracy" in codes:
        msg = next(a.message for a in res.advisories if a.code == "int8_kernels_lose_accuracy")
        assert "without VNNI" in msg
    assert np.isfinite(runner.evaluate(out.module)["accuracy"])


def test_qat_without_data_is_a_recipe_error(tmp_path: Path) -> None:
    text = DIGITS_RECIPE.format(models=MODELS, task="classification", steps="[{qat: {epochs: 1}}]")
    text = text.replace("data: {source: builtin:digits, eval_fraction: 0.2, calibration_samples: 64}\n", "")
    with pytest.raises(RecipeError) as e:
        parse_recipe_text(text, tmp_path / "r.yaml")
    assert e.value.problems[0].path == "steps[0].qat" and "training data" in e.value.problems[0].message


def test_freeze_bn_after_last_epoch_is_a_recipe_error(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, steps="[{qat: {epochs: 1, freeze_bn_epoch: 3}}]")
    with pytest.raises(RecipeError) as e:
        runner.preflight(runner.baseline)
    assert e.value.problems[0].path == "steps[0].qat.freeze_bn_epoch"


# --------------------------------------------------------------------------- CPU-aware weights


@pytest.mark.parametrize("cpu", ["vnni", "avx2"])
def test_x86_quantizer_weights_follow_the_cpu(cpu: str) -> None:
    """Full 8-bit weights with VNNI; 7-bit (-64..63) without, as PTQ's reduce_range."""
    from compress.steps.qat import make_quantizer
    from compress.core.env import NAMED_CPUS

    features = NAMED_CPUS[cpu]
    quantizer, name = make_quantizer("x86", True, reduce_range=features.u8s8_saturates)
    spec = quantizer.global_config.weight
    assert (spec.quant_min, spec.quant_max) == ((-64, 63) if cpu == "avx2" else (-128, 127))
    assert quantizer.global_config.input_activation.dtype == torch_uint8()
    assert ("7-bit" in name) is (cpu == "avx2")


def torch_uint8() -> Any:
    import torch

    return torch.uint8


@pytest.fixture(scope="module")
def qat_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The digits teacher QAT-trained with each CPU's settings (1 epoch) and its ONNX export.

    This machine's CPU through ``qat`` (as a recipe runs the step), the other named CPU
    through ``qat_for``: each setting trained once, shared by the tests of this module.
    """
    from compress.core.env import NAMED_CPUS, detect_cpu

    this_cpu = detect_cpu()
    host = ("avx2" if this_cpu.u8s8_saturates else "vnni") if this_cpu.arch == "x86" else this_cpu.arch
    out: dict[str, Any] = {}
    for cpu in (host, *(c for c in ("avx2", "vnni") if c != host)):
        tmp = tmp_path_factory.mktemp(cpu)
        runner = digits_runner(tmp)
        ctx = step_ctx(runner)
        config = QatConfig(epochs=1, freeze_bn_epoch=1)
        res = qat(runner.baseline, config, ctx) if cpu == host else qat_for(runner.baseline, config, ctx, NAMED_CPUS[cpu])
        art = res.artifact
        (onnx_art,) = [a for a in res.extras if a.step == "export:onnx" and a.parent == art.name]
        out[cpu] = {"result": res, "onnx": onnx_art, "torch_accuracy": runner.evaluate(art.module)["accuracy"],
                    "eval": runner.data.eval, "module": art.module, "runner": runner, "tmp": tmp}
    out["host"] = out[host]
    return out


def test_qat_onnx_is_measured_in_onnxruntime_on_this_cpu(qat_onnx: dict[str, Any]) -> None:
    """The step exports its ONNX once (the runner's export), with its accuracy as onnxruntime runs it,
    and times it against its float input's ONNX export, also offered as the run's export of that model."""
    for cpu in ("avx2", "vnni"):
        run = qat_onnx[cpu]
        d = run["result"].details
        assert d["reduce_range"] is (cpu == "avx2")
        int8, fp32 = run["result"].extras
        assert int8 is run["onnx"] and run["onnx"].precision == "int8"
        assert (fp32.step, fp32.precision, fp32.format, fp32.parent) == ("export:onnx", "fp32", "onnx", "baseline")
        assert fp32.path.is_file() and fp32.path.parent.name == "float"
        facts = d["onnx"]
        assert facts["torch_accuracy"] == pytest.approx(run["torch_accuracy"])
        assert facts["fp32_ms"] > 0 and facts["int8_ms"] > 0  # against the float model it was trained from
        slower = any(a.code == "int8_slower_than_fp32" for a in run["result"].advisories)
        assert slower is (facts["int8_ms"] > 1.1 * facts["fp32_ms"])
        # this machine's int8 kernels; with 7-bit weights nothing saturates on any x86 CPU
        if cpu == "avx2":
            assert facts["onnx_accuracy"] >= facts["torch_accuracy"] - 0.015, facts
            assert facts["int8_kernels_vs_qdq_float"]["agreement"] >= 0.98
    weights = [i for i in onnx.load(str(qat_onnx["avx2"]["onnx"].path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert weights and all(-64 <= int(v) <= 63 for w in weights for v in onnx.numpy_helper.to_array(w).reshape(-1))


QEMU = shutil.which("qemu-x86_64-static")
EVAL_SCRIPT = """
import json, sys
import numpy as np
import onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as f
data = np.load(sys.argv[1])
result = {"avx2": bool(f.get("AVX2")), "avx512_vnni": bool(f.get("AVX512VNNI"))}
for path in sys.argv[2:]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: data["x"]})[0]
    result[path] = float((logits.argmax(1) == data["y"]).mean())
print(json.dumps(result))
"""


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64-static (Debian qemu-user-static) is not installed")
@pytest.mark.skipif(sys.platform != "linux" or Path(sys.executable).suffix != "", reason="needs a Linux x86 python")
def test_qat_onnx_on_an_avx2_cpu_without_vnni_under_qemu(qat_onnx: dict[str, Any], tmp_path: Path) -> None:
    """The 7-bit QAT ONNX run by onnxruntime's AVX2 kernels (QEMU Haswell: no AVX-512, no VNNI)
    stays within 1.5 points of its torch QAT model. Correctness only: emulated time means nothing."""
    run = qat_onnx["avx2"]
    ev = run["eval"]
    n = min(360, len(ev.y))
    np.savez(tmp_path / "eval.npz", x=ev.x[0][:n], y=ev.y[:n])
    (tmp_path / "eval.py").write_text(EVAL_SCRIPT)
    paths = [str(run["onnx"].path), str(qat_onnx["vnni"]["onnx"].path)]
    res = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, str(tmp_path / "eval.py"),
                          str(tmp_path / "eval.npz"), *paths], capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert lines, res.stdout + res.stderr[-2000:]
    result = json.loads(lines[-1])  # a crashed guest can still exit 0: read what it printed
    assert result["avx2"] is True and result["avx512_vnni"] is False, "the guest CPU is AVX2 without VNNI"
    torch_acc = _torch_accuracy(qat_onnx, torch_tensor(ev.x[0][:n]), ev.y[:n])  # same samples
    print(f"\nHaswell (qemu): QAT ONNX 7-bit {result[paths[0]]:.4f}, 8-bit {result[paths[1]]:.4f}; "
          f"torch QAT 7-bit {torch_acc:.4f}")
    assert result[paths[0]] >= torch_acc - 0.015


def torch_tensor(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(x)


def _torch_accuracy(qat_onnx: dict[str, Any], x: Any, y: np.ndarray) -> float:
    """Accuracy of the avx2-settings torch QAT model (the module behind its ONNX export)."""
    import torch

    module = qat_onnx["avx2"]["module"]
    with torch.no_grad():
        return float((module(x).argmax(1).numpy() == y).mean())


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


def test_conv_bn_folding_skips_only_conv_kinds_the_graph_lacks() -> None:
    """The conversion's fold pass runs for the conv kinds the graph holds; with none at all, every pass
    runs (each also tidies dequantize nodes). Outside the context torchao's own helper is back."""
    import types

    import torch
    import torch.nn.functional as F
    import torchao.quantization.pt2e.qat_utils as qu

    from compress.steps.qat import _fold_only_present_convs

    def graph(*targets: Any) -> Any:
        return types.SimpleNamespace(graph=types.SimpleNamespace(nodes=[types.SimpleNamespace(target=t)
                                                                        for t in targets]))

    original, calls = qu._fold_conv_bn_qat_helper, []
    qu._fold_conv_bn_qat_helper = lambda m, fn, example, is_cuda: calls.append(fn) or m
    try:
        with _fold_only_present_convs():
            for fn in (F.conv1d, F.conv2d, F.conv_transpose1d, F.conv_transpose2d):
                qu._fold_conv_bn_qat_helper(graph(torch.ops.aten.conv2d.default, torch.ops.aten.relu.default),
                                            fn, (), False)
            assert calls == [F.conv2d]
            calls.clear()
            qu._fold_conv_bn_qat_helper(graph(torch.ops.aten.linear.default), F.conv1d, (), False)
            assert calls == [F.conv1d]  # no conv anywhere: the pass runs as torchao wrote it
        fake = qu._fold_conv_bn_qat_helper
    finally:
        qu._fold_conv_bn_qat_helper = original
    assert fake is not original and fake.__name__ == "<lambda>"  # the context put back what it found
