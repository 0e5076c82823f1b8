"""Train the quickstart teacher on sklearn's bundled digits; writes digits_teacher.pt.

Reproducible: fixed seed, deterministic split (the same split the recipe's data section
makes with seed 0), single thread. Run: ``python recipes/models/train_digits.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from compress.intake.data import load_dataset  # noqa: E402
from compress.intake.recipe import DataSpec  # noqa: E402

sys.path.insert(0, str(HERE))
from digits import teacher  # noqa: E402


def main(epochs: int = 30, out: Path = HERE / "digits_teacher.pt") -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset(DataSpec(source="builtin:digits", eval_fraction=0.2, seed=0))
    x, y = torch.from_numpy(data.train.x[0]), torch.from_numpy(data.train.y)
    model = teacher()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(data.eval.x[0])).argmax(1).numpy() == data.eval.y).mean()
    torch.save(model.state_dict(), out)
    print(f"eval accuracy {acc:.4f}; wrote {out} ({out.stat().st_size} bytes)")
    assert np.isfinite(acc)


if __name__ == "__main__":
    main()
