"""Shared fixtures: tiny models and recipes written into a temp folder."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One step cache for the whole session (never the user's ~/.cache/edgepack): tests that run the
# same steps share them, as a user's reruns would; a test about the cache sets its own.
if "EDGEPACK_CACHE" not in os.environ:
    import tempfile

    os.environ["EDGEPACK_CACHE"] = tempfile.mkdtemp(prefix="edgepack-test-cache-")

TINY_MODEL = textwrap.dedent(
    '''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            x = torch.relu(self.conv2(x))
            return self.fc(x.mean(dim=(2, 3)))

    def tiny(classes=10):
        torch.manual_seed(0)
        return Tiny(classes)

    def data():
        import numpy as np
        rng = np.random.default_rng(0)
        x = rng.standard_normal((120, 1, 8, 8)).astype("float32")
        y = (x.mean(axis=(1, 2, 3)) > 0).astype("int64")
        return x, y

    def loader():
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        x, y = data()
        return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    '''
)


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Path:
    """A folder with tiny_model.py (factory ``tiny``, data functions ``data`` and ``loader``)."""
    (tmp_path / "tiny_model.py").write_text(TINY_MODEL)
    return tmp_path


def write_recipe(folder: Path, body: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


TINY_RECIPE = """
version: 1
name: tiny
model:
  factory: tiny_model.py:tiny
  input_shape: [1, 1, 8, 8]
task: {kind: classification}
data: {source: tiny_model.py:data, eval_fraction: 0.25, calibration_samples: 16}
export: [onnx]
bench: {targets: [local], threads: [1], warmup: 2, runs: 5}
"""
