"""TFLite export: a tiny model to every precision, NHWC, the PT2E (QAT) path, and the errors.

Conversion imports jax and takes seconds, so conversions are shared through module
fixtures: one float conversion serves all four precisions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY_RECIPE, write_recipe

pytestmark = pytest.mark.slow


def make_context(folder: Path, body: str = TINY_RECIPE, step: str = "tflite") -> Any:
    """A StepContext for the tiny recipe, its data loaded, writing under ``folder/step``."""
    from compress.core.step import StepContext
    from compress.intake.data import load_dataset
    from compress.intake.recipe_io import parse_recipe

    recipe = parse_recipe(write_recipe(folder, body)).recipe
    return StepContext(recipe=recipe, run_dir=folder, step_dir=folder / step, step_name="export:tflite",
                       data=load_dataset(recipe.data), reference=None, log=lambda msg: None,
                       evaluate=lambda thing: {})


def tiny_artifact(ctx: Any, module: Any = None) -> Any:
    from compress.core.types import Artifact
    from compress.intake.models import load_model

    if module is None:
        return load_model(ctx.recipe.model)
    module.eval()
    return Artifact(name="baseline", format="torch", module=module, step="input")


def torch_outputs(module: Any, x: np.ndarray) -> np.ndarray:
    from compress.intake.models import torch_predict

    return torch_predict(module, [x])[0]


def tflite_outputs(art: Any, x: np.ndarray) -> np.ndarray:
    from bench.runtime import open_model, predict
    from export.tflite import from_model_layout, to_model_layout

    return from_model_layout(art.metadata, predict(open_model(art.path), to_model_layout(art.metadata, [x])))[0]


@pytest.fixture(scope="module")
def all_precisions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict[str, Any]]:
    from compress.intake.recipe import TfliteExportConfig
    from export.tflite import export_tflite
    from tests.conftest import TINY_MODEL

    folder = tmp_path_factory.mktemp("tfl")
    (folder / "tiny_model.py").write_text(TINY_MODEL)
    ctx = make_context(folder)
    art = tiny_artifact(ctx)
    cfg = TfliteExportConfig(precisions=["fp32", "fp16", "dynamic_int8", "int8"])
    arts = export_tflite(art, cfg, ctx).artifacts
    return ctx, art, {a.name: a for a in arts}


def test_every_precision_has_its_file_dtypes_and_parity(all_precisions: tuple[Any, Any, dict[str, Any]]) -> None:
    ctx, source, arts = all_precisions
    assert list(arts) == ["tflite-fp32", "tflite-fp16", "tflite-dynamic_int8", "tflite-int8"]
    x = ctx.data.eval.x[0]
    ref = torch_outputs(source.module, x)
    # (input dtype, output dtype, max abs diff allowed vs torch)
    expected = {"fp32": ("float32", "float32", 1e-4), "fp16": ("float32", "float32", 2e-2),
                "dynamic_int8": ("float32", "float32", 0.2), "int8": ("int8", "int8", 0.5)}
    for precision, (in_dtype, out_dtype, atol) in expected.items():
        a = arts[f"tflite-{precision}"]
        assert a.format == "tflite" and a.precision == precision and a.path.is_file()
        assert a.path.parent == ctx.step_dir and a.path.name == f"model-{precision}.tflite"
        assert a.metadata["layout"] == "NCHW"
        assert [t["dtype"] for t in a.metadata["inputs"]] == [in_dtype]
        assert [t["dtype"] for t in a.metadata["outputs"]] == [out_dtype]
        assert a.metadata["inputs"][0]["shape"] == [1, 1, 8, 8]
        out = tflite_outputs(a, x)
        diff = float(np.abs(out - ref).max())
        assert diff < atol, (precision, diff)
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9, precision
    # The runtime the runner and the benchmark agent use reports the same dtypes.
    from bench.agent import TfliteSession

    session = TfliteSession(str(arts["tflite-int8"].path), 1)
    assert [s["dtype"] for s in session.inputs] == ["int8"] and [s["dtype"] for s in session.outputs] == ["int8"]


def test_int8_metadata_has_io_quantization_and_no_float_ops(all_precisions: tuple[Any, Any, dict[str, Any]]) -> None:
    _, _, arts = all_precisions
    meta = arts["tflite-int8"].metadata
    for t in meta["inputs"] + meta["outputs"]:
        q = t["quantization"]
        assert q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    assert meta["float_ops"] == {}
    assert meta["calibration_samples"] == 16 and meta["calibration_source"] == "calibration split"
    assert "CONV_2D" in meta["ops"] and "FULLY_CONNECTED" in meta["ops"]
    assert meta["output_saturation"][0]["samples"] == 30
    # Weight-only fp16 keeps float16 tensors; the float model has none.
    assert arts["tflite-fp16"].metadata["tensor_dtypes"].get("float16", 0) > 0
    assert "float16" not in arts["tflite-fp32"].metadata["tensor_dtypes"]
    assert arts["tflite-fp32"].metadata["inputs"][0]["quantization"] is None
    # Quantized files are smaller than the float one.
    sizes = {n: a.size_bytes for n, a in arts.items()}
    assert sizes["tflite-int8"] < sizes["tflite-fp16"] < sizes["tflite-fp32"]


def test_channels_last_io_and_saturation_advisory(tiny_dir: Path) -> None:
    """NHWC inputs on request; a one-sample calibration clips the outputs and is advised."""
    from compress.intake.recipe import TfliteExportConfig
    from export.tflite import export_tflite

    ctx = make_context(tiny_dir)
    art = tiny_artifact(ctx)
    res = export_tflite(art, TfliteExportConfig(precisions=["fp32", "int8"], channels_last_io=True,
                                                calibration_samples=1), ctx)
    arts = res.artifacts
    fp32, int8 = arts
    for a in arts:
        assert a.metadata["layout"] == "NHWC" and a.metadata["inputs"][0]["shape"] == [1, 8, 8, 1]
    x = ctx.data.eval.x[0]
    assert np.abs(tflite_outputs(fp32, x) - torch_outputs(art.module, x)).max() < 1e-4
    assert int8.metadata["calibration_samples"] == 1
    sat = int8.metadata["output_saturation"][0]
    assert max(sat["share_at_max"], sat["share_at_min"]) > 0.01
    codes = [a.code for a in res.advisories]
    assert "int8_output_saturation" in codes
    adv = next(a for a in res.advisories if a.code == "int8_output_saturation")
    assert adv.artifact == "tflite-int8" and "range" in adv.message


def test_output_saturation_counts_samples_on_the_limits() -> None:
    from export.tflite import output_saturation

    scale, zero = 0.1, -28  # int8 range [-10.0, 15.5]
    y = np.array([[0.0, 1.0], [15.5, 0.0], [-10.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    found = output_saturation([y], [{"dtype": "int8", "quantization": {"scale": scale, "zero_point": zero}}])
    assert found == [{"output": 0, "share_at_max": 0.25, "share_at_min": 0.25, "range": pytest.approx([-10.0, 15.5]),
                      "samples": 4}]
    assert output_saturation([y], [{"dtype": "float32", "quantization": None}]) == []


UNSUPPORTED_OP_MODEL = """
import torch
from torch import nn


class LogSumPool(nn.Module):
    \"\"\"A soft max-pool over width: aten.logcumsumexp exports to ONNX, but litert-torch has no lowering.\"\"\"

    def forward(self, x):
        return torch.logcumsumexp(x, dim=-1)[..., -1].mean(dim=-1)


class WithLogSumPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = LogSumPool()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


def model():
    torch.manual_seed(0)
    return WithLogSumPool()
"""


def unsupported_op_model(folder: Path) -> Any:
    """A module whose ``pool`` layer uses an op the TFLite converter rejects."""
    from compress.intake.data import import_ref

    (folder / "unsupported_op_model.py").write_text(UNSUPPORTED_OP_MODEL)
    return import_ref(f"{folder / 'unsupported_op_model.py'}:model")()


def test_unsupported_op_names_the_op_and_the_layer(tiny_dir: Path) -> None:
    from compress.core.errors import StepError
    from compress.intake.recipe import TfliteExportConfig
    from export.tflite import export_tflite

    ctx = make_context(tiny_dir)
    with pytest.raises(StepError) as info:
        export_tflite(tiny_artifact(ctx, unsupported_op_model(tiny_dir)), TfliteExportConfig(), ctx)
    msg = str(info.value)
    assert msg.startswith("step export:tflite failed")
    assert "aten.logcumsumexp" in msg and "pool (LogSumPool)" in msg and "unsupported_op_model.py:" in msg
    assert "Traceback" not in msg and (ctx.step_dir / "converter.log").is_file()


def test_missing_converter_is_a_missing_dependency(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compress.core.errors import MissingDependencyError
    from compress.intake.recipe import TfliteExportConfig
    from export.tflite import export_tflite

    ctx = make_context(tiny_dir)
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # makes `import litert_torch` raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        export_tflite(tiny_artifact(ctx), TfliteExportConfig(), ctx)
    assert "litert-torch" in str(info.value) and "pip install" in str(info.value)


def test_onnx_model_is_refused_with_a_reason(tiny_dir: Path) -> None:
    from compress.core.types import Artifact
    from compress.core.errors import StepError
    from compress.intake.recipe import TfliteExportConfig
    from export.tflite import export_tflite

    ctx = make_context(tiny_dir)
    with pytest.raises(StepError, match="converts PyTorch models"):
        export_tflite(Artifact(name="baseline", format="onnx", path=tiny_dir / "m.onnx"), TfliteExportConfig(), ctx)


def _pt2e_quantized(module: Any, x: np.ndarray, target: str) -> Any:
    """The tiny model through torchao pt2e as a qat step leaves it (weights folded to int8).

    x86: X86InductorQuantizer (uint8 activations); arm: the XNNPACK quantizer (int8).
    """
    import warnings

    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from compress.intake.models import set_mode

    if target == "x86":
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    batch = torch.export.Dim("batch", min=1, max=4096)
    captured = torch.export.export(module.eval(), (torch.from_numpy(x[:2]),), dynamic_shapes=({0: batch},)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            prepared(torch.from_numpy(x))
        converted = convert_pt2e(prepared)
    set_mode(converted, False)
    return converted


@pytest.mark.parametrize("target", ["x86", "arm"])
def test_pt2e_quantized_model_converts_with_its_own_parameters(tiny_dir: Path, target: str) -> None:
    """A QAT (pt2e) model: only int8 is exported, from its own quantization parameters."""
    from compress.core.types import Artifact
    from compress.intake.recipe import TfliteExportConfig
    from export.tflite import export_tflite, is_pt2e_quantized, pt2e_for_litert

    ctx = make_context(tiny_dir)
    float_module = tiny_artifact(ctx).module
    converted = _pt2e_quantized(float_module, ctx.data.calib.x[0], target)
    assert is_pt2e_quantized(converted) and not is_pt2e_quantized(float_module)
    _, rewrites = pt2e_for_litert(converted)
    assert rewrites["unfolded_weights"] >= 3
    assert (rewrites["uint8_to_int8"] > 0) == (target == "x86")  # x86 quantizes activations as uint8

    art = Artifact(name="qat", format="torch", module=converted, precision="int8", step="01-qat")
    res = export_tflite(art, TfliteExportConfig(precisions=["fp32", "int8"]), ctx)
    arts = res.artifacts
    assert [a.name for a in arts] == ["tflite-int8"]
    assert "tflite_precision_skipped" in [a.code for a in res.advisories]
    meta = arts[0].metadata
    assert meta["inputs"][0]["dtype"] == "int8" and meta["inputs"][0]["quantization"]["scale"] > 0
    assert meta["quantization"].startswith("pt2e")
    x = ctx.data.eval.x[0]
    ref = torch_outputs(converted, x)
    out = tflite_outputs(arts[0], x)
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
