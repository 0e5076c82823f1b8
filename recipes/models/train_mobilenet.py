"""Train the MobileNetV2-style reference model on the digits upscaled to 64x64.

Writes ``mobilenet_digits.pt`` beside this file. Reproducible: fixed seed, the same split
the recipe's data section makes (``builtin:digits``, seed 0, ``image_size: 64``), the
shared training loop of :mod:`compress.steps.training`. About 2 minutes an epoch on 2 cores.
Run: ``python recipes/models/train_mobilenet.py [--epochs 6]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402 (after the sys.path set-up)
from mobilenet import mobilenet_v2  # noqa: E402 (after the sys.path set-up)

from compress.core.fileio import atomic_write_with  # noqa: E402 (after the sys.path set-up)
from compress.intake.data import load_dataset  # noqa: E402 (after the sys.path set-up)
from compress.intake.models import torch_predict  # noqa: E402 (after the sys.path set-up)
from compress.intake.recipe import DataSpec, TrainConfig  # noqa: E402 (after the sys.path set-up)
from compress.steps.training import fit  # noqa: E402 (after the sys.path set-up)

IMAGE_SIZE = 64


def main(epochs: int = 6, out: Path = HERE / "mobilenet_digits.pt", seed: int = 0) -> float:
    """Train, report eval accuracy, save the state_dict; returns the eval accuracy."""
    data = load_dataset(DataSpec(source="builtin:digits", eval_fraction=0.2, seed=0, image_size=IMAGE_SIZE))
    torch.manual_seed(seed)
    model = mobilenet_v2()
    cfg = TrainConfig(epochs=epochs, lr=3e-3, batch_size=64, optimizer="adamw", schedule="cosine", weight_decay=1e-4)

    def loss_fn(xs, y):
        return torch.nn.functional.cross_entropy(model(*xs), y)

    fit(model, loss_fn, data.train, cfg, seed=seed, log=print, desc="mobilenet")
    model.eval()
    acc = float((torch_predict(model, data.eval.x)[0].argmax(1) == data.eval.y).mean())
    atomic_write_with(out, lambda tmp: torch.save(model.state_dict(), tmp))
    print(f"eval accuracy {acc:.4f}; wrote {out} ({out.stat().st_size} bytes)")
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "mobilenet_digits.pt")
    args = parser.parse_args()
    main(args.epochs, args.out)
