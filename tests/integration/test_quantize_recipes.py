"""`compress RECIPE` with quantize steps, end to end through the CLI: the report carries the
quantized artifacts, tuning trials, goal and advisories; the exit code follows
``require_goal``; and the MiniLM recipe meets its fidelity and size figures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, write_recipe

OUTLIER_MODEL = textwrap.dedent(
    '''
    import numpy as np
    import torch
    from torch import nn

    class Outlier(nn.Module):
        """A few hidden channels 1000x larger, divided back by the next layer: a float no-op
        that per-tensor int8 cannot represent (the outliers stretch the range)."""

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.fc1 = nn.Linear(32, 64)
            self.fc2 = nn.Linear(64, 16)
            scale = torch.ones(64)
            scale[:4] = 1000.0
            self.register_buffer("scale", scale)
            with torch.no_grad():
                self.fc1.weight.copy_(torch.randn(64, 32, generator=g) / 32 ** 0.5)
                self.fc1.bias.copy_(torch.randn(64, generator=g) * 0.1)
                self.fc2.weight.copy_(torch.randn(16, 64, generator=g) / 8 / scale)
                self.fc2.bias.zero_()

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)) * self.scale)

    def outlier():
        return Outlier()

    def data():
        rng = np.random.default_rng(0)
        return {"x": rng.standard_normal((400, 32)).astype("float32")}
    '''
)

OUTLIER_RECIPE = """
version: 1
name: outlier
model: {factory: outlier_model.py:outlier, input_shape: [1, 32]}
task: {kind: embedding}
data: {source: outlier_model.py:data, calibration_samples: 64}
steps:
  - quantize: {method: static, tolerable_loss: 0.01}
  - quantize: {method: fp16}
export: [onnx]
# two timing processes, no batch-8 trade-off benchmark: neither is what these tests check
bench: {targets: [local], threads: [1], warmup: 2, runs: 5, repeats: 2, max_repeats: 2}
tradeoff: {cloud: {batch: 1}}
"""


def compress(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *args], check=False, capture_output=True, text=True,
                          cwd=cwd, timeout=1800)


def artifact(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in report["artifacts"] if a["name"] == name)


@pytest.fixture()
def outlier_dir(tmp_path: Path) -> Path:
    (tmp_path / "outlier_model.py").write_text(OUTLIER_MODEL)
    return tmp_path


def test_tuning_recipe_reports_trials_and_meets_goal(outlier_dir: Path) -> None:
    recipe = write_recipe(outlier_dir, OUTLIER_RECIPE)
    res = compress(str(recipe), "--out", str(outlier_dir / "run"))
    assert res.returncode == 0, res.stderr
    report = json.loads((outlier_dir / "run" / "report.json").read_text())
    assert report["status"] == "ok"
    step = report["steps"][0]
    d = step["details"]
    assert d["goal_met"] is True and d["require_goal"] is False
    assert d["trials"][0]["goal_met"] is False, "naive full int8 must miss the goal on this model"
    assert len(d["trials"]) >= 2 and all("latency_ms" in t and "accuracy" in t for t in d["trials"])
    static = artifact(report, "onnx-static")
    assert static["precision"] == "mixed" and static["accuracy"] >= 0.99
    assert static["metadata"]["quantization"]["exclude"]
    assert static["parity"] is not None and static["parity"]["passed"] is None  # recorded, not gated
    # the float model was exported once, inside the quantize step, and parity-checked like any export
    fp32 = [a for a in report["artifacts"] if a["precision"] == "fp32"]
    assert len(fp32) == 1 and fp32[0]["parity"]["passed"] is True
    # the second quantize step started again from the float model
    fp16 = artifact(report, "onnx-fp16")
    assert fp16["parent"] == fp32[0]["name"] and report["steps"][1]["details"]["source"] == fp32[0]["name"]
    assert fp16["targets"] and fp16["targets"][0]["how"] == "measured"


def test_unmet_goal_exits_1_only_when_required(outlier_dir: Path) -> None:
    body = OUTLIER_RECIPE.replace("{method: static, tolerable_loss: 0.01}",
                                  "{method: static, tolerable_loss: 0.0, max_trials: 2, require_goal: true}")
    body = body.replace("  - quantize: {method: fp16}\n", "")
    recipe = write_recipe(outlier_dir, body)
    res = compress(str(recipe), "--out", str(outlier_dir / "run"))
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((outlier_dir / "run" / "report.json").read_text())
    d = report["steps"][0]["details"]
    assert d["goal_met"] is False and len(d["trials"]) == 2
    assert any(a["code"] == "tuning_goal_unmet" for a in report["advisories"])
    assert (outlier_dir / "run" / artifact(report, "onnx-static")["path"]).is_file(), "the best model is kept"
    # the kept model (2 trials: full int8) is also degraded by its fidelity gate: with gate: warn
    # the exit code follows require_goal alone
    res = compress(str(recipe), "--out", str(outlier_dir / "run2"), "--set", "steps[0].quantize.require_goal=false",
                   "--set", "gate=warn")
    assert res.returncode == 0, res.stderr


HIDDEN_OUTLIER_MODEL = textwrap.dedent(
    '''
    import numpy as np
    import torch
    from torch import nn

    class HiddenOutlier(nn.Module):
        """Hidden unit 3 scaled 1000x inside fc1's weights and bias, divided back in fc2's column:
        the same function as without, and no separate Mul node to find."""

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.fc1 = nn.Linear(32, 64)
            self.fc2 = nn.Linear(64, 10)
            with torch.no_grad():
                self.fc1.weight.copy_(torch.randn(64, 32, generator=g) / 32 ** 0.5)
                self.fc1.bias.copy_(torch.randn(64, generator=g) * 0.1)
                self.fc2.weight.copy_(torch.randn(10, 64, generator=g) / 8)
                self.fc2.bias.zero_()
                self.fc1.weight[3] *= 1000.0
                self.fc1.bias[3] *= 1000.0
                self.fc2.weight[:, 3] /= 1000.0

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    def model():
        return HiddenOutlier()

    def data():
        """Labels are the float model's decisions (float accuracy 1.0), on samples whose top two
        scores differ by a tenth of the scores' spread: near-ties that any rounding flips would
        measure int8's noise floor, not whether the outlier is handled."""
        x = np.random.default_rng(0).standard_normal((800, 32)).astype("float32")
        with torch.no_grad():
            logits = HiddenOutlier()(torch.from_numpy(x)).numpy()
        top2 = np.sort(logits, axis=1)[:, -2:]
        keep = (top2[:, 1] - top2[:, 0]) > 0.1 * logits.std()
        return {"x": x[keep], "y": logits[keep].argmax(1)}
    '''
)


def test_tuning_folds_an_outlier_inside_the_weights(tmp_path: Path) -> None:
    """The issue's MLP through the CLI: full int8 collapses, cross-layer equalization folds the
    outlier back, the goal (tolerable_loss 0.01) is met at full int8 and every trial is reported."""
    (tmp_path / "hidden.py").write_text(HIDDEN_OUTLIER_MODEL)
    recipe = write_recipe(tmp_path, """
        version: 1
        name: hidden-outlier
        model: {factory: hidden.py:model, input_shape: [1, 32]}
        task: {kind: classification}
        data: {source: hidden.py:data, calibration_samples: 64}
        steps:
          - quantize: {method: static, tolerable_loss: 0.01}
        bench: {targets: [local], threads: [1], warmup: 2, runs: 5, repeats: 2, max_repeats: 2}
        tradeoff: {cloud: {batch: 1}}
    """)
    res = compress(str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    d = report["steps"][0]["details"]
    trials = d["trials"]
    assert d["baseline_accuracy"] == 1.0 and trials[0]["accuracy"] < 0.5 and d["goal_met"] is True
    chosen = trials[d["chosen_trial"] - 1]
    assert "cle" in chosen["config"]["equalize"] and chosen["loss"] <= 0.01
    static = artifact(report, "onnx-static")
    assert static["precision"] == "int8" and static["accuracy"] >= 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hidden.py", "recipe.yaml", "run"], "no stray files"


def test_validate_reports_static_without_data(tmp_path: Path) -> None:
    (tmp_path / "outlier_model.py").write_text(OUTLIER_MODEL)
    recipe = write_recipe(tmp_path, """
        version: 1
        name: nodata
        model: {factory: outlier_model.py:outlier, input_shape: [1, 32]}
        task: {kind: embedding}
        steps:
          - quantize: {method: static}
    """)
    res = compress(str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "steps[0].quantize.method" in res.stderr + res.stdout and "calibrat" in res.stderr + res.stdout


@pytest.mark.slow
def test_minilm_recipe(tmp_path: Path) -> None:
    """The MiniLM recipe, its static step given fewer trials: int8 dynamic is >= 2x smaller than
    fp32 with mean cosine >= 0.98; every figure (sizes, latencies, retrieval metrics) is in
    report.json. (The speed claim is checked in tests/benchmarks/test_quantize_speed.py.)

    Reduced: 120 eval sentences instead of 300 (every trial, parity and fidelity check runs the
    eval set through the 90 MB model), two timing processes, and no batch-8 trade-off benchmark
    (the trade-off is not checked here)."""
    out = tmp_path / "run"
    res = compress(str(ROOT / "recipes" / "minilm-embedding.yaml"), "--out", str(out),
                   "--set", "bench.runs=10", "--set", "bench.warmup=2", "--set", "bench.repeats=2",
                   "--set", "bench.max_repeats=2", "--set", "tradeoff.cloud.batch=1",
                   "--set", "data.eval_fraction=0.1", "--set", "steps[1].quantize.max_trials=2")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["train"] + report["data"]["eval"] >= 1000
    fp32 = next(a for a in report["artifacts"] if a["precision"] == "fp32")
    dyn = artifact(report, "onnx-int8-dynamic")
    assert fp32["size_bytes"] / dyn["size_bytes"] >= 2.0
    m = dyn["metrics"]
    assert m["cosine_mean"] >= 0.98
    for key in ("top10_overlap", "ndcg@10", "mrr"):
        assert 0.0 <= m[key] <= 1.0, key
    assert report["steps"][0]["details"]["goal_met"] is True
    # static int8 loses 0.06 of cosine: degraded (gate: warn keeps exit 0); dynamic passes its gate
    assert dyn["status"] == "ok" and artifact(report, "onnx-int8-static")["status"] == "degraded"
    assert report["status"] == "degraded"
    for art in (fp32, dyn, artifact(report, "onnx-int8-static")):
        assert art["targets"] and art["targets"][0]["latency_ms"]["p50"] > 0
    assert len(report["steps"][1]["details"]["trials"]) == 2


def test_engine_inc_when_installed(tmp_path: Path) -> None:
    """neural-compressor's autotune on the digits teacher, exported to ONNX (needs the [inc] extra)."""
    pytest.importorskip("neural_compressor.torch.quantization")
    recipe = write_recipe(tmp_path, f"""
        version: 1
        name: inc
        model:
          factory: {ROOT / 'recipes' / 'models' / 'digits.py'}:teacher
          weights: {ROOT / 'recipes' / 'models' / 'digits_teacher.pt'}
          input_shape: [1, 1, 8, 8]
        task: {{kind: classification}}
        data: {{source: "builtin:digits", calibration_samples: 64}}
        steps:
          - quantize: {{engine: inc, tolerable_loss: 0.01}}
        bench: {{runs: 5, warmup: 2, repeats: 2, max_repeats: 2}}
        tradeoff: {{cloud: {{batch: 1}}}}
    """)
    res = compress(str(recipe), "--out", str(tmp_path / "run"))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    inc = artifact(report, "onnx-inc-static")
    d = report["steps"][0]["details"]
    assert d["engine"] == "inc" and d["folded_weight_quantizers"] > 0 and inc["precision"] == "int8"
    from compress.core.env import host_cpu

    if res.returncode != 0 and host_cpu().u8s8_saturates:
        # x86 without VNNI: neural-compressor's int8 model, run by onnxruntime here, can miss the
        # goal (measured: accuracy -1.39 points, SQNR 12.9 dB). Then it must never be called ok.
        assert report["status"] == "degraded" and inc["status"] == "degraded" and d["goal_met"] is False
        assert "failed their fidelity gate" in res.stderr
        return
    assert res.returncode == 0, res.stderr[-3000:]
    assert d["goal_met"] is True and inc["accuracy"] >= report["baseline"]["accuracy"] - 0.01


def test_quantize_after_unstructured_prune(tmp_path: Path) -> None:
    """The step exports the pruned module itself (parity against it, not the unpruned model)
    and warns that the zeros buy nothing on a dense runtime."""
    recipe = write_recipe(tmp_path, f"""
        version: 1
        name: sparse-int8
        model:
          factory: {ROOT / 'recipes' / 'models' / 'digits.py'}:teacher
          weights: {ROOT / 'recipes' / 'models' / 'digits_teacher.pt'}
          input_shape: [1, 1, 8, 8]
        task: {{kind: classification}}
        data: {{source: "builtin:digits", calibration_samples: 64}}
        steps:
          - prune: {{method: unstructured, ratio: 0.6, epochs: 0}}
          - quantize: {{method: static}}
        bench: {{runs: 5, warmup: 2, repeats: 2, max_repeats: 2}}
        tradeoff: {{cloud: {{batch: 1}}}}
        # 60% pruned without fine-tuning fails its fidelity gate (degraded, reported): not the point here
        gate: warn
    """)
    res = compress(str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert any(a["code"] == "sparsity_on_dense_runtime" and a["step"] == "02-quantize" for a in report["advisories"])
    assert report["steps"][1]["details"]["model"]["weight_sparsity"] > 0.3
    fp32 = artifact(report, "onnx-fp32")
    assert fp32["parity"]["passed"] is True and fp32["parity"]["reference"] != "baseline"
