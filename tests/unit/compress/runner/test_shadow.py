"""compress.runner.shadow without models: labels files, sides that are not there, the family baseline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from compress.core.errors import InputFileError
from compress.runner.shadow import read_labels, resolve_side
from compress.runner.shadowing import family_baseline


def test_labels_from_npy_npz_and_npz_key(tmp_path: Path) -> None:
    y = np.array([0, 2, 1])
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "y.npz", y=y, other=np.zeros(3))
    np.savez(tmp_path / "one.npz", labels=y.astype(np.float32))
    assert read_labels(str(tmp_path / "y.npy"), 3).tolist() == [0, 2, 1]
    assert read_labels(str(tmp_path / "y.npz"), 3).tolist() == [0, 2, 1]
    assert read_labels(f"{tmp_path / 'y.npz'}:other", 3).tolist() == [0, 0, 0]
    assert read_labels(str(tmp_path / "one.npz"), 3).dtype == np.int64  # integral floats are class indices


@pytest.mark.parametrize("make, spec, message", [
    (lambda p: np.savez(p / "two.npz", a=np.zeros(3), b=np.zeros(3)), "two.npz", "FILE.npz:KEY"),
    (lambda p: np.save(p / "frac.npy", np.array([0.5, 1, 2])), "frac.npy", "class indices"),
    (lambda p: np.save(p / "short.npy", np.zeros(2, np.int64)), "short.npy", "2 labels for 3"),
    (lambda p: np.save(p / "scalar.npy", np.int64(1)), "scalar.npy", "1 labels for 3"),
    (lambda p: (p / "text.npy").write_text("not numpy"), "text.npy", "not a readable"),
    (lambda p: None, "missing.npy", "file not found"),
])
def test_bad_labels_are_named(tmp_path: Path, make, spec: str, message: str) -> None:  # noqa: ANN001
    make(tmp_path)
    with pytest.raises(InputFileError, match=message) as e:
        read_labels(str(tmp_path / spec), 3, "shadow.labels")
    assert str(e.value).startswith("shadow.labels ")


def test_sides_that_are_not_models(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputFileError, match="expected a .onnx or .tflite model"):
        resolve_side("baseline", str(tmp_path / "notes.txt"), tmp_path)
    with pytest.raises(InputFileError, match="no report.json"):
        resolve_side("candidate", f"{tmp_path}:onnx-fp32", tmp_path)
    with pytest.raises(InputFileError, match="RUN_DIR:ARTIFACT"):
        resolve_side("candidate", str(tmp_path / "nothing"), tmp_path)
    (tmp_path / "bad.zip").write_bytes(b"PK not a zip")
    with pytest.raises(InputFileError, match="not a zip file"):
        resolve_side("candidate", str(tmp_path / "bad.zip"), tmp_path)


def _art(name: str, fmt: str, precision: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, format=fmt, precision=precision)


def test_each_artifact_is_tested_against_the_fp32_export_of_its_format() -> None:
    onnx32, onnx8 = _art("onnx-fp32", "onnx", "fp32"), _art("onnx-static", "onnx", "int8")
    tfl32, tfl8 = _art("tflite-fp32", "tflite", "fp32"), _art("tflite-int8", "tflite", "int8")
    files = [onnx32, onnx8, tfl32, tfl8]
    assert family_baseline(onnx8, files) is onnx32 and family_baseline(tfl8, files) is tfl32
    assert family_baseline(onnx32, files) is None and family_baseline(tfl32, files) is None
    assert family_baseline(tfl8, [onnx32, tfl8]) is onnx32  # no fp32 TFLite: the fp32 ONNX
