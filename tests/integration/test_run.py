"""`compress RECIPE` end to end: the quickstart, each intake path, each error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_RECIPE, write_recipe


def compress(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "run"
    res = compress(str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), "--set", "bench.runs=50")
    assert res.returncode == 0, res.stderr
    return out


def test_quickstart_report(quickstart: Path) -> None:
    report = json.loads((quickstart / "report.json").read_text())
    assert report["schema_version"] == 1 and report["status"] == "ok"
    assert report["baseline"]["accuracy"] >= 0.95
    onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
    for key in ("name", "format", "path", "size_bytes", "accuracy", "parity"):
        assert onnx[key] is not None, key
    assert abs(onnx["accuracy"] - report["baseline"]["accuracy"]) <= 0.005
    assert onnx["parity"]["passed"] and onnx["parity"]["max_abs_diff"] < 1e-4
    t = onnx["targets"][0]
    assert t["how"] == "measured" and t["threads"] == 1 and len(t["times_ms"]) == 50 * t["latency_ms"]["repeats"] and 3 <= t["latency_ms"]["repeats"] <= 6
    for key in ("p50", "p90", "p99", "mean", "ci95", "runs", "threads", "how"):
        assert key in t["latency_ms"], key
    assert (quickstart / onnx["path"]).is_file()
    md = (quickstart / "report.md").read_text()
    assert "onnx-fp32" in md and "measured" in md
    for name in ("recipe.resolved.yaml", "env.json", "log.txt"):
        assert (quickstart / name).is_file()
    assert not list(quickstart.rglob("*.part"))


def test_onnx_model_and_npz_data(tmp_path: Path, quickstart: Path) -> None:
    from compress.intake.data import load_dataset
    from compress.intake.recipe import DataSpec

    d = load_dataset(DataSpec(source="builtin:digits"))
    np.savez(tmp_path / "digits.npz", x=np.concatenate([d.train.x[0], d.eval.x[0]]),
             y=np.concatenate([d.train.y, d.eval.y]))
    onnx = next(quickstart.rglob("model.onnx"))
    recipe = write_recipe(tmp_path, f"""
        version: 1
        name: from-onnx
        model: {{onnx: {onnx}}}
        task: {{kind: classification}}
        data: {{source: digits.npz}}
        bench: {{runs: 5, warmup: 2}}
    """)
    res = compress(str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["artifacts"][0]["accuracy"] > 0.95


def test_exported_pt2_with_function_data(tiny_dir: Path) -> None:
    import torch

    sys.path.insert(0, str(tiny_dir))
    import tiny_model  # type: ignore[import-not-found]

    ep = torch.export.export(tiny_model.tiny(), (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, tiny_dir / "m.pt2")
    recipe = write_recipe(tiny_dir, TINY_RECIPE.replace("factory: tiny_model.py:tiny", "exported: m.pt2"))
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tiny_dir / "run" / "report.json").read_text())
    assert report["artifacts"][0]["parity"]["passed"]


def test_bad_recipe_exit_2_no_traceback(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE.replace("runs: 5", "runs: 0").replace("kind: classification", "kind: clasification"))
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "recipe.yaml:6 task.kind" in res.stderr and "recipe.yaml:9 bench.runs" in res.stderr
    assert not (tiny_dir / "run").exists()


def test_missing_recipe_file(tmp_path: Path) -> None:
    res = compress(str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_weights_exit_2(tiny_dir: Path) -> None:
    (tiny_dir / "w.pt").write_bytes(b"junk")
    recipe = write_recipe(tiny_dir, TINY_RECIPE.replace("factory: tiny_model.py:tiny", "factory: tiny_model.py:tiny\n  weights: w.pt"))
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    assert res.returncode == 2 and "w.pt" in res.stderr and "Traceback" not in res.stderr


def test_failed_step_exit_1_keeps_what_finished(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE + "parity: {atol: 1.0e-30}\n")
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    assert res.returncode == 1
    assert "export:onnx" in res.stderr and "Traceback" not in res.stderr
    report = json.loads((tiny_dir / "run" / "report.json").read_text())
    assert report["status"] == "failed" and "atol" in report["error"]
    assert (tiny_dir / "run" / "recipe.resolved.yaml").is_file()


def test_relaxed_parity_is_an_advisory(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE + "parity: {atol: 1.0e-30, fail: false}\n")
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tiny_dir / "run" / "report.json").read_text())
    assert any(a["code"] == "parity_failed" for a in report["advisories"])


BROKEN_IN_TRAINING = """
import torch
from torch import nn

class Fragile(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        if self.training:
            raise RuntimeError("this layer cannot train")
        return self.fc(x.flatten(1))

def fragile():
    return Fragile()
"""


def test_unexpected_error_in_a_step_names_the_step_and_logs_the_traceback(tiny_dir: Path) -> None:
    (tiny_dir / "fragile.py").write_text(BROKEN_IN_TRAINING)
    recipe = write_recipe(tiny_dir, TINY_RECIPE.replace("factory: tiny_model.py:tiny", "factory: fragile.py:fragile")
                          + "steps:\n  - prune: {method: unstructured, ratio: 0.5, epochs: 1}\n")
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    assert res.returncode == 1, res.stderr
    assert "01-prune" in res.stderr and "this layer cannot train" in res.stderr and "Traceback" not in res.stderr
    assert "Traceback" in (tiny_dir / "run" / "log.txt").read_text()
    report = json.loads((tiny_dir / "run" / "report.json").read_text())
    assert report["status"] == "failed" and report["steps"][0]["status"] == "failed"
