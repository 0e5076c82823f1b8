"""The qat step: the model is really quantized, exports as QDQ ONNX, and keeps its accuracy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compress.errors import RecipeError
from compress.models import count_macs, count_params
from compress.qat import qat
from compress.recipe import InputSpec, QatConfig
from compress.recipe_io import parse_recipe_text
from export.onnx import export_module_to_onnx
from tests.unit.compress_fixtures import DIGITS_RECIPE, MODELS, digits_runner, step_ctx

SPECS = [InputSpec(shape=[1, 1, 8, 8])]


def test_x86_qat_quantizes_and_exports_qdq(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    teacher = runner.baseline.module
    ctx = step_ctx(runner)
    out = qat(runner.baseline, QatConfig(epochs=1, freeze_bn_epoch=1), ctx)
    assert out.format == "torch" and out.precision == "int8"
    ops = ctx.details["quant_ops"]
    # 3 convs + 1 linear: per-channel int8 weights, activations quantized around each
    assert ops["dequantize_per_channel"] == 4 and ops["quantize_per_tensor"] >= 4
    assert ctx.details["quantizer"] == "X86InductorQuantizer"
    assert count_macs(out.module, SPECS) == count_macs(teacher, SPECS)
    assert count_params(out.module) == count_params(teacher)
    base_acc = runner.evaluate(teacher)["accuracy"]
    assert runner.evaluate(out.module)["accuracy"] >= base_acc - 0.02
    dest = tmp_path / "q.onnx"
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
    out = qat(runner.baseline, QatConfig(epochs=1, target="arm"), ctx)
    assert "XNNPACK" in ctx.details["quantizer"] and ctx.details["target"] == "arm"
    assert sum(ctx.details["quant_ops"].values()) >= 8
    assert [a.code for a in ctx.advisories] == ["qat_xnnpack_deprecated"]
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
