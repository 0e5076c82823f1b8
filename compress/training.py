"""The training loop every torch step shares: seeded, with progress, stoppable by Ctrl-C.

Distillation, pruning fine-tunes and QAT all train through :func:`fit`. Ctrl-C sets a flag
that the loop reads between batches, so the model never stops half-way through an
optimizer update; the loop then raises ``KeyboardInterrupt`` and the runner marks the run
``interrupted``. Steps write their files only after training, atomically, so nothing
half-written is left in the run folder.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.data import Split
from compress.recipe import TrainConfig

LossFn = Callable[[list[Any], Any], Any]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that a step gives the same model twice."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def primary_output(out: Any) -> Any:
    """The first output of a model that returns a tensor, tuple, list or dict."""
    if isinstance(out, dict):
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def make_optimizer(params: Iterable[Any], cfg: TrainConfig) -> Any:
    """The optimizer the config names, over ``params``."""
    import torch

    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: Any, cfg: TrainConfig, total_steps: int) -> Any:
    """Per-batch learning-rate schedule: cosine to zero, constant, or /10 at 1/2 and 3/4."""
    import torch

    total = max(1, total_steps)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[total // 2, (3 * total) // 4], gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class _StopFlag:
    """Set by SIGINT; read by the loop between batches."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_at_batch_boundary() -> Iterator[_StopFlag]:
    """Turn the first Ctrl-C into a request the loop honours between batches.

    A second Ctrl-C interrupts at once (the previous handler is back by then). Outside the
    main thread signals cannot be caught; there a Ctrl-C interrupts wherever it lands, which
    is still safe because steps write files only after training.
    """
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        flag.requested = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainResult:
    """What a training run did."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"epoch_losses": [round(v, 6) for v in self.epoch_losses], "steps": self.steps,
                "seconds": round(self.seconds, 3)}


def _progress(total: int, desc: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    # Piped output (CI, tests) gets the per-epoch log lines only, not progress frames.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), console=console, transient=True,
                    disable=not console.is_terminal)


def fit(
    model: Any,
    loss_fn: LossFn,
    split: Split,
    cfg: TrainConfig,
    *,
    seed: int,
    log: Callable[[str], None] = lambda _m: None,
    desc: str = "train",
    extra_params: Iterable[Any] = (),
    after_step: Callable[[], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``split`` with the optimizer and schedule of ``cfg``.

    Args:
        model: The module to train (a plain module or a pt2e exported one).
        loss_fn: ``loss_fn(inputs, targets) -> scalar loss``; it runs the model itself, so
            it can also run a teacher or read feature hooks. ``targets`` is None without labels.
        split: Training data (numpy arrays, batch first).
        cfg: Epochs, learning rate, batch size, optimizer, schedule, weight decay.
        seed: Seeds the shuffling and the torch RNG, so the result is reproducible.
        log: Where the per-epoch line goes.
        desc: Label of the progress bar and log lines.
        extra_params: Further trainable parameters (feature adapters).
        after_step: Called after every optimizer step (e.g. to re-apply sparsity masks).
        on_epoch_end: Called with the finished epoch's index (e.g. to freeze BN statistics).
        epochs: Overrides ``cfg.epochs``.

    Raises:
        KeyboardInterrupt: After Ctrl-C, at the next batch boundary.
    """
    import torch

    from compress.models import set_mode

    n_epochs = cfg.epochs if epochs is None else epochs
    result = TrainResult()
    if n_epochs <= 0 or len(split) == 0:
        return result
    seed_everything(seed)
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in split.x]
    ys = None if split.y is None else torch.from_numpy(np.ascontiguousarray(split.y))
    n = len(split)
    per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    optimizer = make_optimizer(list(model.parameters()) + list(extra_params), cfg)
    scheduler = make_scheduler(optimizer, cfg, per_epoch * n_epochs)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    set_mode(model, True)
    try:
        with stop_at_batch_boundary() as stop, _progress(per_epoch * n_epochs, desc) as bar:
            task = bar.add_task(desc, total=per_epoch * n_epochs, loss=float("nan"))
            for epoch in range(n_epochs):
                total, count = 0.0, 0
                for idx in torch.randperm(n, generator=generator).split(cfg.batch_size):
                    if stop.requested:
                        log(f"{desc}: interrupted at epoch {epoch + 1}, after a whole batch; nothing was written")
                        raise KeyboardInterrupt
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn([a[idx] for a in xs], None if ys is None else ys[idx])
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    if after_step is not None:
                        after_step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                    result.steps += 1
                    bar.update(task, advance=1, loss=total / count)
                result.epoch_losses.append(total / max(count, 1))
                log(f"  {desc} epoch {epoch + 1}/{n_epochs}: loss {result.epoch_losses[-1]:.4f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
    finally:
        set_mode(model, False)
        result.seconds = time.perf_counter() - t0
    return result
