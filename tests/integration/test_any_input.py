"""Any input, end to end: a recurrent model with a fixed state and a scalar sample rate, a token
model with a mask and a sequence length only the data gives, dynamic dims refused where nothing
resolves them, and ``compress bench --shape``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, write_recipe

MODELS = textwrap.dedent(
    '''
    import numpy as np
    import torch
    from torch import nn

    T, F, H = 6, 8, 16

    class Vad(nn.Module):
        """One speech probability per clip of frames; the GRU state and sample rate are fed as given."""

        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(F, H, batch_first=True)
            self.head = nn.Linear(H, 1)

        def forward(self, frames, state, sr):
            out, _ = self.gru(frames * (sr.to(frames.dtype) / 16000.0), state)
            return torch.sigmoid(self.head(out[:, -1]))

    def vad():
        torch.manual_seed(0)
        return Vad()

    def vad_data():
        rng = np.random.default_rng(0)
        frames = rng.standard_normal((64, T, F)).astype("float32")
        return {"frames": frames, "state": np.zeros((1, 1, H), "float32"), "sr": np.int64(16000),
                "y": (frames.mean(axis=(1, 2)) > 0).astype("int64")}

    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.fc = nn.Linear(16, 3)

        def forward(self, ids, mask):
            m = mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.emb(ids) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            return self.fc(pooled)

    def tok():
        torch.manual_seed(0)
        return Tok()
    '''
)


def compress(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path


def test_recurrent_model_with_fixed_state_and_scalar_runs_end_to_end(folder: Path) -> None:
    recipe = write_recipe(folder, """
        version: 1
        name: vad
        model:
          factory: models.py:vad
          inputs:
            - {name: frames, shape: [1, -1, 8]}
            - {name: state, shape: [1, 1, 16], batch_axis: null}
            - {name: sr, shape: [], dtype: int64, batch_axis: null}
        task: {kind: classification}
        data: {source: models.py:vad_data, eval_fraction: 0.25, calibration_samples: 16}
        steps:
          - quantize: {method: static}
        export: [onnx]
        gate: warn
        bench: {targets: [local], threads: [1], warmup: 2, runs: 5, repeats: 2, max_repeats: 2}
        """)
    out = folder / "run"
    res = compress(str(recipe), "--out", str(out), "-q")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert {"onnx-fp32", "onnx-static"} <= set(arts)
    import onnx

    graph = onnx.load(str(out / arts["onnx-fp32"]["path"])).graph
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    # the frames' length resolved from the data; the state ties the model to batch 1
    assert shapes == {"frames": [1, 6, 8], "state": [1, 1, 16], "sr": []}
    for name in ("onnx-fp32", "onnx-static"):
        (t,) = [t for t in arts[name]["targets"] if t["batch"] == 1]
        assert t["latency_ms"]["p50"] > 0
        fed = {i["name"]: i["request_shape"] for i in t["details"]["inputs"]}
        assert fed == {"frames": [1, 6, 8], "state": [1, 1, 16], "sr": []}
    assert arts["onnx-fp32"]["parity"]["max_abs_diff"] < 1e-4
    # one value per sample: judged on its decisions (the 0.5 threshold of a probability), not a
    # per-row cosine (always 1.0 for one value); the verdict follows the agreement
    (row,) = arts["onnx-static"]["fidelity"]["vs_parent"]["outputs"]
    assert row["task"] == "classification" and row["probabilities"] is True and row["agreement"] is not None
    assert row["cosine_per_sample_mean"] is None
    assert (arts["onnx-static"]["status"] == "ok") == (row["agreement"] >= 0.99 and row["sqnr_db"] >= 20)
    ups = {s["cloud"]["upload_bytes"] for s in report["tradeoff"]["scenarios"]}
    assert ups == {6 * 8 * 4 + 16 * 4 + 8}


def test_token_model_with_mask_and_a_length_from_the_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (80, 12)).astype(np.int64)
    mask = np.arange(12)[None, :] < rng.integers(3, 13, (80, 1))
    np.savez(folder / "tokens.npz", x_ids=ids, mask=mask, y=(ids * mask).sum(1) % 3)
    recipe = write_recipe(folder, """
        version: 1
        name: tok
        model:
          factory: models.py:tok
          inputs:
            - {name: ids, shape: [1, -1], dtype: int64}
            - {name: mask, shape: [1, -1], dtype: bool}
        task: {kind: classification}
        data: {source: tokens.npz, eval_fraction: 0.25}
        export: [onnx]
        gate: warn
        bench: {targets: [local], threads: [1], warmup: 2, runs: 5, repeats: 2, max_repeats: 2}
        tradeoff: {cloud: {batch: 1}}
        package: {artifact: onnx-fp32, golden_vectors: 2}
        """)
    out = folder / "run"
    res = compress(str(recipe), "--out", str(out), "-q")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    (art,) = [a for a in report["artifacts"] if a["name"] == "onnx-fp32"]
    assert art["parity"]["max_abs_diff"] < 1e-4 and art["accuracy"] is not None
    with zipfile.ZipFile(report["bundle"]["path"]) as z:
        manifest = json.loads(z.read(report["bundle"]["prefix"] + "manifest.json"))
    inputs = {i["name"]: i for i in manifest["inputs"]}
    assert inputs["ids"]["shape"] == [1, 12] and inputs["ids"]["dtype"] == "int64"
    assert inputs["mask"]["shape"] == [1, 12] and inputs["mask"]["dtype"] == "bool"
    assert inputs["ids"]["dynamic_axes"] == {"0": "batch"}  # exported with a dynamic batch, length 12
    assert compress("verify", report["bundle"]["path"]).returncode == 0


def test_validate_names_a_dynamic_dim_nothing_resolves(folder: Path) -> None:
    recipe = write_recipe(folder, """
        version: 1
        name: tok
        model:
          factory: models.py:tok
          inputs:
            - {name: ids, shape: [1, -1], dtype: int64}
            - {name: mask, shape: [1, -1], dtype: bool, dynamic: {1: 12}}
        task: {kind: classification}
        """)
    res = compress("validate", str(recipe))
    assert res.returncode == 2
    assert "recipe.yaml:6 model.inputs[0].shape: axis 1 of input 'ids' is dynamic" in res.stderr, res.stderr
    assert "model.inputs[0].dynamic" in res.stderr and "inputs[1]" not in res.stderr


def test_bench_an_onnx_model_with_dynamic_dims_needs_a_shape(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph([helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    res = compress("bench", str(tmp_path / "m.onnx"), "--runs", "3", "--warmup", "1", "--json", str(tmp_path / "r.json"))
    assert res.returncode == 2, res.stderr
    assert "input 'input' has shape [N, 3, H, W]: H (axis 2) and W (axis 3) are dynamic" in res.stderr, res.stderr
    assert "--shape input=1x3xHxW" in res.stderr and not (tmp_path / "r.json").exists()
    res = compress("bench", str(tmp_path / "m.onnx"), "--runs", "3", "--warmup", "1", "--shape", "input=1x3x48x64",
                   "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    assert "inputs (random): input=1x3x48x64" in res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["data"]["inputs"] == "input=1x3x48x64"  # the report says the shape it timed
    (t,) = report["artifacts"][0]["targets"]
    assert t["details"]["inputs"][0]["request_shape"] == [1, 3, 48, 64]
    res = compress("bench", str(tmp_path / "m.onnx"), "--shape", "input=1x4x48x64")
    assert res.returncode == 2 and "does not fit" in res.stderr
