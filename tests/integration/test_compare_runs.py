"""`compress compare` on real runs: the same recipe twice, and against a deliberately slowed model.

The slowed variant is the quickstart's model with a ballast branch multiplied by zero: the
same weights and answers (so accuracy and agreement do not move), about five times the time.
Each latency comes from ``bench.repeats`` fresh processes; ``compress compare`` judges a
change against the variance between them (see ``bench/compare.py``), so the same recipe run
twice never fails a gate by noise: a change is real only beyond both runs' minimum detectable
effect, and unclear (never a gate failure) on a noisy run. The full acceptance (ten reruns,
a 25% slowdown) is ``tests/benchmarks/test_rerun_verdicts.py``.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_run import compress

pytestmark = pytest.mark.slow

LATENCY = ("latency_p50", "latency_p90", "latency_p99", "latency_mean")

SLOW_MODEL = textwrap.dedent(
    '''
    import importlib.util

    import torch
    from torch import nn

    MODELS = {models!r}


    def _digits():
        spec = importlib.util.spec_from_file_location("digits_ref", MODELS + "/digits.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


    class Slowed(nn.Module):
        def __init__(self):
            super().__init__()
            d = _digits()
            self.teacher = d.teacher()
            self.teacher.load_state_dict(torch.load(MODELS + "/digits_teacher.pt", weights_only=True))
            self.ballast = d.DigitsCNN(width=48)

        def forward(self, x):
            # onnxruntime does not fold a product with zero, so the ballast is computed every time
            # (litert's converter does: the test benchmarks ONNX only).
            return self.teacher(x) + 0.0 * self.ballast(x)


    def slowed():
        torch.manual_seed(0)
        return Slowed()
    '''
)


def _run(recipe: Path, out: Path) -> Path:
    # ONNX fp32 only: TFLite's converter folds the ballast branch away (x * 0.0), and the
    # quantized artifacts would only repeat what the fp32 one shows.
    res = compress(str(recipe), "--out", str(out), "--set", "bench.runs=100", "--set", "bench.repeats=3", "--set", "bench.max_repeats=3",
                   "--set", "steps=[]", "--set", "export=[onnx]", "--set", "tradeoff=null")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cmp")
    quickstart = ROOT / "recipes" / "quickstart.yaml"
    (tmp / "slow_digits.py").write_text(SLOW_MODEL.format(models=str(ROOT / "recipes" / "models")))
    text = quickstart.read_text().replace("factory: models/digits.py:teacher", "factory: slow_digits.py:slowed")
    slow = tmp / "slow.yaml"
    slow.write_text("\n".join(line for line in text.splitlines() if not line.strip().startswith("weights:")) + "\n")
    return {"a": _run(quickstart, tmp / "a"), "a2": _run(quickstart, tmp / "a2"), "slow": _run(slow, tmp / "slow")}


def _latency_deltas(cmp: dict) -> list[dict]:
    return [d | {"setting": row["setting"]} for row in cmp["pairs"][0]["rows"] for d in row["metrics"]
            if d["metric"] in LATENCY]


def _repeated() -> bool:
    """Whether the runner times through the interleaved, repeated schedule (reports carry repeats)."""
    from compress.runner.run import Runner

    return "bench_schedule" in inspect.getsource(Runner.benchmark_all)


def test_same_recipe_twice_no_significant_change(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "same.json"
    # +50%: a gate this test can keep on any machine (the acceptance benchmark checks +10% ten times)
    res = compress("compare", str(runs["a"]), str(runs["a2"]), "--fail-on", "latency_p50:+50%",
                   "--fail-on", "accuracy:-0.005", "--fail-on", "size:+10%", "--format", "json", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    cmp = json.loads(out.read_text())
    p50 = [d for d in _latency_deltas(cmp) if d["metric"] == "latency_p50"]
    assert p50 and all(d["tested"] and d["ratio_ci"] for d in p50)
    if _repeated():
        assert all(d["repeats"] == [3, 3] and d["mde"] is not None for d in p50), p50
    real = [f"{d['setting']} {d['metric']} {d['rel']:+.1%} ({d['verdict']})" for d in p50 if d["real"]]
    assert all(abs(d["ratio"] - 1) >= 0.5 for d in p50 if d["real"]), real
    assert cmp["passed"] and all(g["passed"] for g in cmp["gates"])


def test_slowed_model_is_a_regression_and_the_gate_fails(runs: dict[str, Path]) -> None:
    # --strict: on a busy machine the runs are flagged noisy and the 5x change is "unclear"
    res = compress("compare", str(runs["a"]), str(runs["slow"]), "--fail-on", "latency_p50:+5%",
                   "--fail-on", "accuracy:-0.005", "--strict")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ FAIL `latency_p50:+5%`" in res.stdout and "✓ pass `accuracy:-0.005`" in res.stdout
    failing = res.stderr.split("gates failed:", 1)[1]
    assert "latency_p50" in failing and "onnx-fp32 (local, 1 thread, batch 1)" in failing
    assert "accuracy" not in failing


def test_slowed_model_verdicts_in_json(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "slow.json"
    res = compress("compare", str(runs["a"]), str(runs["slow"]), "--format", "json", "--out", str(out))
    assert res.returncode == 0, res.stderr  # no gate given: a report, not a verdict on the exit code
    cmp = json.loads(out.read_text())
    p50 = [d for d in _latency_deltas(cmp) if d["metric"] == "latency_p50"]
    # real, or unclear when a run was flagged noisy (a busy machine): never "no real change". The
    # judged ratio is the machine yardstick's when both runs timed it (the raw medians beside it).
    assert p50 and all(d["ratio"] > 1.5 and (d["real"] and d["verdict"].startswith("slower") or d["noisy"] and d["unclear"])
                       for d in p50), p50
    assert all(d["judged_by"] in ("yardstick", "median") for d in p50)
    assert all(d["ratio_ci"][0] > 1 and (d["mde"] is None or d["ratio"] - 1 > d["mde"]) for d in p50)
    acc = next(d for row in cmp["pairs"][0]["rows"] for d in row["metrics"] if d["metric"] == "accuracy")
    assert acc["delta"] == 0.0
