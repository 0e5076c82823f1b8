"""`compress RECIPE` with ``export: [onnx, tflite]``: the quickstart, the MobileNetV2-style
model, NHWC inputs through the runner, and an op the TFLite converter rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TINY_RECIPE, write_recipe
from tests.integration.test_run import compress
from tests.unit.export.test_tflite import UNSUPPORTED_OP_MODEL

pytestmark = pytest.mark.slow

MOBILENET_WEIGHTS = ROOT / "recipes" / "models" / "mobilenet_digits.pt"


def check_tflite_report(report: dict[str, Any], run: Path) -> dict[str, dict[str, Any]]:
    """The acceptance checks shared by the recipes: fp32 and int8 .tflite beside ONNX,
    accuracy within 0.01 of the PyTorch model, fp32 parity below 1e-4, timed in LiteRT."""
    assert report["status"] == "ok", report.get("error")
    arts = {a["name"]: a for a in report["artifacts"]}
    assert {"onnx-fp32", "tflite-fp32", "tflite-int8"} <= set(arts)
    base = report["baseline"]["accuracy"]
    for name in ("tflite-fp32", "tflite-int8"):
        a = arts[name]
        assert a["format"] == "tflite" and (run / a["path"]).is_file()
        assert abs(a["accuracy"] - base) <= 0.01, (name, a["accuracy"], base)
        t = a["targets"][0]
        assert t["how"] == "measured" and t["runtime"].startswith("ai-edge-litert") and t["latency_ms"]["p50"] > 0
    fp32 = arts["tflite-fp32"]["parity"]
    assert fp32["passed"] and fp32["max_abs_diff"] < 1e-4 and fp32["tolerance"] == pytest.approx(1e-4)
    int8 = arts["tflite-int8"]
    assert int8["parity"]["passed"] is None and int8["parity"]["agreement"] >= 0.95  # recorded, not gated
    assert [t["dtype"] for t in int8["metadata"]["inputs"]] == ["int8"]
    assert int8["metadata"]["inputs"][0]["quantization"]["scale"] > 0
    assert arts["tflite-fp32"]["metadata"]["layout"] == "NCHW"
    return arts


def test_quickstart_exports_tflite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = compress(str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(run), "--set", "bench.runs=20",
                   "--set", "bench.repeats=2", "--set", "bench.max_repeats=2", "--set", "tradeoff.cloud.batch=1",
                   "--set", "export=[onnx, tflite]")
    assert res.returncode == 0, res.stderr
    report = json.loads((run / "report.json").read_text())
    arts = check_tflite_report(report, run)
    assert arts["tflite-int8"]["size_bytes"] < arts["tflite-fp32"]["size_bytes"] / 2
    md = (run / "report.md").read_text()
    assert "tflite-int8" in md and "tflite-fp32" in md
    # Converter chatter lands in the run folder, not on the terminal.
    assert "flatbuffer_export" not in res.stdout + res.stderr
    assert (run / "exports" / "tflite-fp32" / "converter.log").is_file()


@pytest.mark.skipif(not MOBILENET_WEIGHTS.is_file(),
                    reason="recipes/models/mobilenet_digits.pt not trained (python recipes/models/train_mobilenet.py)")
def test_mobilenet_exports_tflite(tmp_path: Path) -> None:
    models = ROOT / "recipes" / "models"
    recipe = write_recipe(tmp_path, f"""
        version: 1
        name: mobilenet-tflite
        model:
          factory: {models / 'mobilenet.py'}:mobilenet_v2
          weights: {MOBILENET_WEIGHTS}
          input_shape: [1, 1, 64, 64]
        task: {{kind: classification}}
        data: {{source: "builtin:digits", eval_fraction: 0.2, image_size: 64, calibration_samples: 128}}
        export: [onnx, tflite]
        bench: {{targets: [local], threads: [1], warmup: 5, runs: 20, repeats: 2, max_repeats: 2}}
        tradeoff: {{cloud: {{batch: 1}}}}
    """)
    run = tmp_path / "run"
    res = compress(str(recipe), "--out", str(run))
    assert res.returncode == 0, res.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["baseline"]["accuracy"] >= 0.9
    arts = check_tflite_report(report, run)
    assert arts["tflite-int8"]["metadata"]["float_ops"] == {}


def test_channels_last_io_through_the_runner(tiny_dir: Path) -> None:
    """NHWC inputs: the runner feeds the model its layout for parity, accuracy and timing."""
    body = TINY_RECIPE.replace("export: [onnx]", "export: [onnx, {tflite: {channels_last_io: true}}]") \
        .replace("runs: 5}", "runs: 5, repeats: 2, max_repeats: 2}\ntradeoff: {cloud: {batch: 1}}")
    run = tiny_dir / "run"
    res = compress(str(write_recipe(tiny_dir, body)), "--out", str(run))
    assert res.returncode == 0, res.stderr
    report = json.loads((run / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    fp32 = arts["tflite-fp32"]
    assert fp32["metadata"]["layout"] == "NHWC" and fp32["metadata"]["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert fp32["parity"]["passed"] and fp32["accuracy"] == arts["onnx-fp32"]["accuracy"]
    assert fp32["targets"][0]["latency_ms"]["p50"] > 0


def test_unsupported_op_keeps_onnx_and_names_the_step(tmp_path: Path) -> None:
    (tmp_path / "unsupported_op_model.py").write_text(UNSUPPORTED_OP_MODEL)
    body = TINY_RECIPE.replace("factory: tiny_model.py:tiny", "factory: unsupported_op_model.py:model") \
        .replace("data: {source: tiny_model.py:data", "data: {source: tiny_data.py:data") \
        .replace("export: [onnx]", "export: [onnx, tflite]")
    (tmp_path / "tiny_data.py").write_text(
        "import numpy as np\n\n\ndef data():\n    rng = np.random.default_rng(0)\n"
        "    x = rng.standard_normal((80, 1, 8, 8)).astype('float32')\n"
        "    return x, (x.mean(axis=(1, 2, 3)) > 0).astype('int64')\n")
    run = tmp_path / "run"
    res = compress(str(write_recipe(tmp_path, body)), "--out", str(run))
    assert res.returncode == 1, res.stderr
    err = res.stdout + res.stderr
    assert "step export:tflite failed" in err and "aten.logcumsumexp" in err and "pool (LogSumPool)" in err
    assert "Traceback" not in err
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "failed" and "export:tflite" in report["error"]
    onnx = next(a for a in report["artifacts"] if a["name"] == "onnx-fp32")
    assert onnx["parity"]["passed"] and (run / onnx["path"]).is_file()
    assert not [a for a in report["artifacts"] if a["format"] == "tflite"]
