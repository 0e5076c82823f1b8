"""TFLite metadata written without tflite-support, read back, and the model still runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.tflite_metadata import ModelInfo, TensorInfo, add_metadata, read_metadata


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import litert_torch
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)).eval()
    path = tmp_path_factory.mktemp("tfl") / "m.tflite"
    litert_torch.convert(model, (torch.randn(1, 1, 8, 8),)).export(str(path))
    return path


def test_metadata_round_trip_and_model_unchanged(tflite_model: Path, tmp_path: Path) -> None:
    from bench.agent import TfliteSession

    info = ModelInfo(name="m", description="test", inputs=[TensorInfo("x", "image", image=True, channels=1, size=(8, 8),
                                                                       mean=[0.0], std=[16.0])],
                     outputs=[TensorInfo("y", "logits", labels_file="labels.txt")])
    data = add_metadata(tflite_model.read_bytes(), info, {"labels.txt": b"a\nb\nc\n"})
    out = tmp_path / "with_md.tflite"
    out.write_bytes(data)
    md = read_metadata(data)
    assert md["name"] == "m" and md["min_parser_version"] == "1.0.0"
    assert md["inputs"][0]["mean"] == [0.0] and md["inputs"][0]["std"] == [16.0]
    assert md["outputs"][0]["associated_files"] == ["labels.txt"] and md["packed_files"] == ["labels.txt"]
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    a, b = TfliteSession(str(tflite_model), 1).run([x])[0], TfliteSession(str(out), 1).run([x])[0]
    assert np.array_equal(a, b)
    # writing twice replaces, not duplicates
    again = read_metadata(add_metadata(data, info, {"labels.txt": b"a\nb\nc\n"}))
    assert again["packed_files"] == ["labels.txt"]


def test_no_metadata_reads_none(tflite_model: Path) -> None:
    assert read_metadata(tflite_model.read_bytes()) is None
