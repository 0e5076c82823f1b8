"""Data and model intake: every path, and every way it can go wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compress.intake.data import import_ref, load_dataset
from compress.core.errors import InputFileError
from compress.intake.models import load_model, torch_predict
from compress.intake.recipe import DataSpec, ModelSpec
from tests.conftest import ROOT


def _spec(tiny_dir: Path, **kw) -> ModelSpec:
    return ModelSpec.model_validate({"input_shape": [1, 1, 8, 8], **kw}, context={"base_dir": tiny_dir})


def test_builtin_digits_split_is_deterministic() -> None:
    a = load_dataset(DataSpec(source="builtin:digits", seed=3))
    b = load_dataset(DataSpec(source="builtin:digits", seed=3))
    c = load_dataset(DataSpec(source="builtin:digits", seed=4))
    assert len(a.train) + len(a.eval) == 1797
    assert np.array_equal(a.eval.y, b.eval.y) and not np.array_equal(a.eval.y, c.eval.y)
    assert a.train.x[0].shape[1:] == (1, 8, 8) and a.train.x[0].dtype == np.float32
    assert len(a.calib) == 128


def test_image_size_resizes() -> None:
    d = load_dataset(DataSpec(source="builtin:digits", image_size=32, max_eval=10))
    assert d.eval.x[0].shape == (10, 1, 32, 32)


def test_npz_intake(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3), np.float32), y=np.arange(10))
    spec = DataSpec.model_validate({"source": "d.npz", "eval_fraction": 0.3}, context={"base_dir": tmp_path})
    d = load_dataset(spec)
    assert len(d.eval) == 3 and len(d.train) == 7


def test_npz_without_x_is_a_clear_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", features=np.zeros((10, 3)))
    spec = DataSpec.model_validate({"source": "d.npz"}, context={"base_dir": tmp_path})
    with pytest.raises(InputFileError, match="needs an array 'x'"):
        load_dataset(spec)


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    spec = DataSpec.model_validate({"source": "d.npz"}, context={"base_dir": tmp_path})
    with pytest.raises(InputFileError, match="not a readable .npz"):
        load_dataset(spec)


def test_function_returning_arrays_and_dataloader(tiny_dir: Path) -> None:
    for fn in ("data", "loader"):
        spec = DataSpec.model_validate({"source": f"tiny_model.py:{fn}"}, context={"base_dir": tiny_dir})
        d = load_dataset(spec)
        assert len(d.train) + len(d.eval) == 120 and d.train.y is not None


def test_import_ref_errors(tiny_dir: Path) -> None:
    with pytest.raises(InputFileError, match="no function"):
        import_ref(f"{tiny_dir / 'tiny_model.py'}:nope")
    with pytest.raises(InputFileError, match="cannot import module"):
        import_ref("no_such_module_xyz:f")


def test_factory_with_weights(tiny_dir: Path) -> None:
    art = load_model(_spec(tiny_dir, factory="tiny_model.py:tiny"))
    torch.save(art.module.state_dict(), tiny_dir / "w.pt")
    art2 = load_model(_spec(tiny_dir, factory="tiny_model.py:tiny", weights="w.pt"))
    x = [np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)]
    assert np.allclose(torch_predict(art.module, x)[0], torch_predict(art2.module, x)[0])


def test_quickstart_weights_load() -> None:
    spec = ModelSpec.model_validate(
        {"factory": "recipes/models/digits.py:teacher", "weights": "recipes/models/digits_teacher.pt",
         "input_shape": [1, 1, 8, 8]}, context={"base_dir": ROOT})
    assert load_model(spec).format == "torch"


def test_mismatched_and_corrupt_weights(tiny_dir: Path) -> None:
    torch.save({"other.weight": torch.zeros(1)}, tiny_dir / "bad.pt")
    with pytest.raises(InputFileError, match="does not match"):
        load_model(_spec(tiny_dir, factory="tiny_model.py:tiny", weights="bad.pt"))
    (tiny_dir / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="junk.pt"):
        load_model(_spec(tiny_dir, factory="tiny_model.py:tiny", weights="junk.pt"))


def test_weights_refuse_pickled_objects(tiny_dir: Path) -> None:
    art = load_model(_spec(tiny_dir, factory="tiny_model.py:tiny"))
    torch.save(art.module, tiny_dir / "full.pt")
    with pytest.raises(InputFileError, match="weights_only"):
        load_model(_spec(tiny_dir, factory="tiny_model.py:tiny", weights="full.pt"))
    trusted = load_model(_spec(tiny_dir, pickle="full.pt", trust_pickle=True))
    assert isinstance(trusted.module, torch.nn.Module)


def test_exported_program(tiny_dir: Path) -> None:
    art = load_model(_spec(tiny_dir, factory="tiny_model.py:tiny"))
    ep = torch.export.export(art.module, (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, tiny_dir / "m.pt2")
    loaded = load_model(_spec(tiny_dir, exported="m.pt2"))
    x = [np.ones((2, 1, 8, 8), np.float32)]
    assert np.allclose(torch_predict(loaded.module, x)[0], torch_predict(art.module, x)[0], atol=1e-5)
    (tiny_dir / "bad.pt2").write_bytes(b"nope")
    with pytest.raises(InputFileError, match="not a torch.export program"):
        load_model(_spec(tiny_dir, exported="bad.pt2"))


def test_onnx_file(tiny_dir: Path) -> None:
    from export.onnx import export_module_to_onnx
    from compress.intake.recipe import InputSpec

    art = load_model(_spec(tiny_dir, factory="tiny_model.py:tiny"))
    export_module_to_onnx(art.module, [InputSpec(shape=[1, 1, 8, 8])], tiny_dir / "m.onnx")
    loaded = load_model(_spec(tiny_dir, onnx="m.onnx"))
    assert loaded.format == "onnx"
    (tiny_dir / "bad.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputFileError, match="not a valid ONNX model"):
        load_model(_spec(tiny_dir, onnx="bad.onnx"))
