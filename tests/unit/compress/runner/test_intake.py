"""The baseline from the step cache: which models may be cached, and the check of a model loaded late."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import EdgepackError
from compress.intake.models import load_model
from compress.intake.recipe import ModelSpec
from compress.runner.intake import _load_checked, intake_cacheable, load_outputs, save_outputs
from compress.runner.stepkey import model_hash
from tests.conftest import ROOT

MODELS = ROOT / "recipes" / "models"


@pytest.mark.parametrize("fields, cacheable", [
    ({"factory": f"{MODELS}/digits.py:teacher", "weights": f"{MODELS}/digits_teacher.pt"}, True),
    # weights drawn at random by the factory: each load is another model
    ({"factory": f"{MODELS}/digits.py:teacher"}, False),
    # code from an installed package: not a file the key hashes
    ({"factory": "tests.conftest:teacher", "weights": f"{MODELS}/digits_teacher.pt"}, False),
    ({"exported": "model.pt2"}, True),
    # a pickle names classes in modules the key does not hash
    ({"pickle": "model.pkl", "trust_pickle": True}, False),
    ({"onnx": "model.onnx"}, False),  # no torch to spare: its intake always runs
])
def test_only_models_made_from_hashed_files_are_cached(fields: dict[str, object], cacheable: bool) -> None:
    assert intake_cacheable(ModelSpec.model_construct(**fields)) is cacheable


def test_a_model_loaded_late_must_be_the_one_the_entry_describes() -> None:
    spec = ModelSpec(factory=f"{MODELS}/digits.py:teacher", weights=MODELS / "digits_teacher.pt", input_shape=[1, 1, 8, 8])
    module = _load_checked(spec, model_hash(load_model(spec).module))
    assert sum(p.numel() for p in module.parameters()) > 0
    with pytest.raises(EdgepackError, match="not the one its step-cache entry describes.*--no-cache"):
        _load_checked(spec, "0" * 64)


def test_outputs_round_trip_and_odd_outputs_are_not_stored(tmp_path: Path) -> None:
    outs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)]
    assert save_outputs(outs, tmp_path / "o.npz")
    back = load_outputs(tmp_path / "o.npz")
    assert [b.dtype for b in back] == [o.dtype for o in outs] and all(np.array_equal(a, b) for a, b in zip(outs, back))
    assert not save_outputs([np.array(["a"], dtype=object)], tmp_path / "x.npz")
    assert not save_outputs([], tmp_path / "y.npz")
