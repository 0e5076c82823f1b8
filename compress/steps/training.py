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

from compress.core.progress import ProgressFn, no_progress
from compress.intake.data import Split
from compress.intake.recipe import Recipe, TrainConfig

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


def model_outputs(out: Any) -> list[Any]:
    """Every tensor a model returns, in order (nested tuples, lists and dicts flattened).

    The order is the one :func:`compress.intake.models.torch_predict` and the exported ONNX model use.
    """
    if isinstance(out, dict):
        return [t for v in out.values() for t in model_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in model_outputs(v)]
    return [out] if hasattr(out, "grad_fn") else []


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
    targets: dict[int, np.ndarray] | None = None,
    progress: ProgressFn = no_progress,
) -> TrainResult:
    """Train ``model`` on ``split`` with the optimizer and schedule of ``cfg``.

    Args:
        model: The module to train (a plain module or a pt2e exported one).
        loss_fn: ``loss_fn(inputs, targets) -> scalar loss``; it runs the model itself, so
            it can also run a teacher or read feature hooks. ``targets`` is the batch of
            ``split.y`` (None without labels), or, when ``targets`` is given here, a dict of
            label batches by output index (see :func:`multi_output_loss`).
        split: Training data (numpy arrays, batch first).
        cfg: Epochs, learning rate, batch size, optimizer, schedule, weight decay.
        seed: Seeds the shuffling and the torch RNG, so the result is reproducible.
        log: Where the per-epoch line goes.
        desc: Label of the progress bar and log lines.
        extra_params: Further trainable parameters (feature adapters).
        after_step: Called after every optimizer step (e.g. to re-apply sparsity masks).
        on_epoch_end: Called with the finished epoch's index (e.g. to freeze BN statistics).
        epochs: Overrides ``cfg.epochs``.
        targets: Labels by output index (:attr:`OutputPlan.targets`), one row per sample of
            ``split``; the loss then receives ``{index: batch}`` instead of ``split.y``.
        progress: The run's progress (``ctx.progress``): a bar over every batch of every epoch.

    Raises:
        KeyboardInterrupt: After Ctrl-C, at the next batch boundary.
    """
    import torch

    from compress.intake.models import set_mode

    n_epochs = cfg.epochs if epochs is None else epochs
    result = TrainResult()
    if n_epochs <= 0 or len(split) == 0:
        return result
    seed_everything(seed)
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in split.x]
    ys = None if split.y is None else torch.from_numpy(np.ascontiguousarray(split.y))
    per_output = None if targets is None else {i: torch.from_numpy(np.ascontiguousarray(a)) for i, a in targets.items()}
    n = len(split)
    per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    optimizer = make_optimizer(list(model.parameters()) + list(extra_params), cfg)
    scheduler = make_scheduler(optimizer, cfg, per_epoch * n_epochs)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    set_mode(model, True)
    try:
        with stop_at_batch_boundary() as stop, progress(f"{desc} ({n_epochs} epochs)", per_epoch * n_epochs) as bar:
            for epoch in range(n_epochs):
                total, count = 0.0, 0
                for idx in torch.randperm(n, generator=generator).split(cfg.batch_size):
                    if stop.requested:
                        log(f"{desc}: interrupted at epoch {epoch + 1}, after a whole batch; nothing was written")
                        raise KeyboardInterrupt
                    optimizer.zero_grad(set_to_none=True)
                    if per_output is not None:
                        batch_targets: Any = {i: a[idx] for i, a in per_output.items()}
                    else:
                        batch_targets = None if ys is None else ys[idx]
                    loss = loss_fn([a[idx] for a in xs], batch_targets)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    if after_step is not None:
                        after_step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                    result.steps += 1
                    bar(1, note=f"loss {total / count:.4f}")
                result.epoch_losses.append(total / max(count, 1))
                log(f"  {desc} epoch {epoch + 1}/{n_epochs}: loss {result.epoch_losses[-1]:.4f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch)
    finally:
        set_mode(model, False)
        result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- every output, its own loss

# Probabilities are clamped before their log: a student's softmax can underflow to 0.
_PROB_EPS = 1e-7


@dataclass
class OutputPlan:
    """What each model output is, how spread out it is, and which labels train it.

    Attributes:
        outputs: Each output resolved (:func:`bench.outputs.resolve_outputs`).
        spreads: Per output, the reference's variance per channel (broadcastable over a batch);
            regression, detection and MSE-embedding losses are divided by it, so a head in
            pixels and a head in [0, 1] weigh alike.
        targets: Labels of the training split by output index (classification: class indices
            or 0/1; regression: values of the output's shape).
        label_spreads: Per regression output with labels, the labels' variance per channel:
            the label loss is divided by it (the reference's own spread may be anything, e.g.
            near zero for an untrained head).
    """

    outputs: list[Any]
    spreads: list[np.ndarray]
    targets: dict[int, np.ndarray] = field(default_factory=dict)
    label_spreads: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, labels in self.targets.items():
            o = self.outputs[i] if i < len(self.outputs) else None
            if o is not None and o.task == "regression" and i not in self.label_spreads and len(labels):
                ref = self.spreads[i]  # the output's broadcast shape: [1, C, 1, ...]
                flat = np.asarray(labels, dtype=np.float64).reshape(len(labels), ref.shape[1] if ref.ndim > 1 else 1, -1)
                self.label_spreads[i] = output_spread(flat, o).reshape(ref.shape)

    def has_labels(self, index: int) -> bool:
        """Whether output ``index`` has labels its task can use (detection and embedding cannot)."""
        return index in self.targets and self.outputs[index].task in ("classification", "regression")

    def needs_teacher(self) -> bool:
        """Whether some output can only be trained against a teacher (it has no usable labels)."""
        return any(not self.has_labels(o.index) for o in self.outputs)

    def describe(self, teacher: bool, alpha: float) -> list[dict[str, Any]]:
        """Per output: its task, whether it holds probabilities, its weight and what trains it."""
        rows = []
        for o in self.outputs:
            labels = self.has_labels(o.index)
            soft = teacher and (not labels or alpha > 0)
            hard = labels and (not teacher or alpha < 1)
            trained_by = "+".join(k for k, on in (("teacher", soft), ("labels", hard)) if on) or "untrained"
            rows.append({"name": o.name, "task": o.task, "probabilities": o.probabilities, "weight": o.weight,
                         "loss": _loss_name(o), "trained_by": trained_by})
        return rows


def _loss_name(out: Any) -> str:
    if out.task == "classification":
        kind = "bernoulli-kl" if out.decision == "threshold" else "kl"
        return f"{kind} on {'probabilities' if out.probabilities else 'logits'}"
    if out.task == "embedding":
        return "embedding"
    return "mse/variance"


def output_spread(a: np.ndarray, out: Any) -> np.ndarray:
    """Variance per channel of a reference output, shaped to broadcast over a batch.

    The channel axis is 1 (``[N, C, ...]``), or the last one for a channels-last detection
    output. Channels that barely vary get a floor (1% of the median), so a constant channel
    cannot blow the loss up.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 2:
        var = np.array([a.var()]) if a.size else np.ones(1)
        return np.maximum(var, 1e-8).astype(np.float32)
    axis = 1
    if out.task == "detection" and getattr(out.detection, "layout", "channels_first") == "channels_last":
        axis = a.ndim - 1
    others = tuple(i for i in range(a.ndim) if i != axis)
    var = a.var(axis=others, keepdims=True)
    floor = max(0.01 * float(np.median(var)), 1e-8)
    shape = [1] * a.ndim
    shape[axis] = a.shape[axis]
    return np.maximum(var, floor).reshape(shape).astype(np.float32)


def output_targets(split: Split, outputs: list[Any], task_kind: str) -> dict[int, np.ndarray]:
    """Labels by output index: ``split.y`` for the primary output, ``split.targets`` by name.

    The primary output is the first whose task is the recipe's ``task.kind`` (output 0 as a
    rule). ``split.targets`` (labels by output name, from ``y_<name>`` arrays) may also name
    an output by position as ``output_<index>``.

    Raises:
        ValueError: When a label array names no output, or has another number of samples.
    """
    found: dict[int, np.ndarray] = {}
    if split.y is not None and outputs:
        primary = next((o.index for o in outputs if o.task == task_kind), 0)
        found[primary] = split.y
    named = getattr(split, "targets", {}) or {}
    by_name = {f"output_{o.index}": o.index for o in outputs} | {o.name: o.index for o in outputs}
    for name, labels in named.items():
        if name not in by_name:
            raise ValueError(f"labels y_{name} name no model output (outputs: {', '.join(o.name for o in outputs)})")
        if len(labels) != len(split):
            raise ValueError(f"labels y_{name} have {len(labels)} rows for {len(split)} samples")
        found[by_name[name]] = labels
    return found


def plan_outputs(reference: Any, recipe: Recipe, split: Split, samples: int = 512) -> OutputPlan:
    """Resolve every output of ``reference`` on (up to ``samples`` of) ``split``.

    Args:
        reference: The torch module whose outputs define the tasks (the teacher, or the model
            before pruning / quantization).
        recipe: Its ``model.outputs``, ``task.kind`` and ``task.detection`` are used.
        split: The training split; its labels become :attr:`OutputPlan.targets`.
        samples: How many samples the reference runs on to see its outputs.
    """
    from bench.outputs import resolve_outputs
    from compress.intake.models import set_mode, torch_predict

    was_training = bool(getattr(reference, "training", False))
    set_mode(reference, False)
    try:
        outs = torch_predict(reference, [a[:samples] for a in split.x])
    finally:
        if was_training:
            set_mode(reference, True)
    resolved = resolve_outputs(outs, recipe.model.outputs, recipe.task.kind, recipe.task.detection)
    return OutputPlan(resolved, [output_spread(a, o) for a, o in zip(outs, resolved)],
                      output_targets(split, resolved, recipe.task.kind))


def _plan_from_batch(outs: list[Any], task_kind: str) -> OutputPlan:
    from bench.outputs import resolve_outputs

    arrays = [t.detach().float().cpu().numpy() for t in outs]
    resolved = resolve_outputs(arrays, None, task_kind)
    return OutputPlan(resolved, [output_spread(a, o) for a, o in zip(arrays, resolved)])


def class_scores(v: Any, out: Any) -> Any:
    """A classification output in logit space: logits as they are; probabilities as their log.

    Softmax probabilities become log-probabilities (softmax of them gives the probabilities
    back, so temperature re-normalises ``p ** (1 / T)``); a one-value probability becomes its
    logit ``log p - log(1 - p)``. Never a softmax on top of a softmax.
    """
    import torch

    if not out.probabilities:
        return v
    p = v.clamp(_PROB_EPS, 1.0 - (_PROB_EPS if out.decision == "threshold" else 0.0))
    if out.decision == "threshold":
        return torch.log(p) - torch.log1p(-p)
    return torch.log(p)


def soft_loss(s: Any, t: Any, out: Any, temperature: float, spread: Any = None, embedding: str = "cosine") -> Any:
    """How far a student output is from the teacher's, for what the output is.

    Classification: ``T^2 * KL(teacher_T || student_T)`` over the class axis (1), or the
    Bernoulli KL of a one-value score; probabilities are compared as probabilities
    (:func:`class_scores`). Embedding: cosine distance or MSE. Regression and detection:
    mean squared error divided by the teacher's variance per channel (``spread``).
    """
    import torch
    import torch.nn.functional as F

    if out.task == "classification":
        T = temperature
        zs, zt = class_scores(s, out) / T, class_scores(t, out) / T
        if out.decision == "threshold":
            zs, zt = zs.reshape(-1), zt.reshape(-1)
            p = torch.sigmoid(zt)
            kl = F.binary_cross_entropy_with_logits(zs, p) - F.binary_cross_entropy_with_logits(zt, p)
            return kl * (T * T)
        lt, ls = F.log_softmax(zt, dim=1), F.log_softmax(zs, dim=1)
        return (lt.exp() * (lt - ls)).sum(dim=1).mean() * (T * T)
    if out.task == "embedding":
        a, b = s.flatten(1), t.flatten(1)
        if embedding == "mse":
            return F.mse_loss(a, b)
        return (1.0 - F.cosine_similarity(a, b, dim=1)).mean()
    d = (s - t) ** 2
    return (d / spread).mean() if spread is not None else d.mean()


def hard_loss(s: Any, y: Any, out: Any, spread: Any = None) -> Any | None:
    """The loss of a student output on its labels; None where the task has no label loss.

    Classification: cross-entropy on class indices (or on soft labels of the output's shape),
    which on probabilities is the NLL of their log; binary cross-entropy for a one-value
    output with 0/1 labels. Regression: MSE divided by the reference's variance per channel.
    """
    import torch.nn.functional as F

    if out.task == "classification":
        z = class_scores(s, out)
        if out.decision == "threshold":
            return F.binary_cross_entropy_with_logits(z.reshape(-1), y.reshape(-1).to(z.dtype))
        if y.shape == z.shape and y.dtype.is_floating_point:
            return F.cross_entropy(z, y.to(z.dtype))
        return F.cross_entropy(z, y.long())
    if out.task == "regression":
        d = (s - y.reshape(s.shape).to(s.dtype)) ** 2
        return (d / spread).mean() if spread is not None else d.mean()
    return None


class MultiOutputLoss:
    """The loss of every output of a model, weighted and summed: ``loss(inputs, targets)``.

    Per output, with labels: ``alpha * soft + (1 - alpha) * hard`` (hard alone without a
    teacher or with ``alpha == 0``); without labels: the soft (teacher) term alone; an
    output with neither is left out (and :meth:`OutputPlan.describe` says ``untrained``).
    ``targets`` is a dict of label batches by output index (``fit(..., targets=plan.targets)``),
    or a plain label batch (``split.y``) that belongs to the primary output.

    With ``plan`` None, the outputs are resolved from the first batch (undeclared: inferred
    from ``task_kind`` and the values), for callers that have no recipe at hand.
    """

    def __init__(self, student: Any, teacher: Any | None, plan: OutputPlan | None, *, temperature: float = 1.0,
                 alpha: float = 0.5, embedding: str = "cosine", task_kind: str = "classification") -> None:
        self.student, self.teacher, self.plan = student, teacher, plan
        self.temperature, self.alpha, self.embedding, self.task_kind = temperature, alpha, embedding, task_kind
        self.recent: dict[str, list[float]] = {}
        self._spreads: list[Any] | None = None
        self._label_spreads: dict[int, Any] = {}
        if plan is not None:
            self._check(plan)

    def _check(self, plan: OutputPlan) -> None:
        from compress.core.errors import StepError

        if self.teacher is None and not any(plan.has_labels(o.index) for o in plan.outputs):
            tasks = ", ".join(sorted({o.task for o in plan.outputs}))
            raise StepError("train", f"fine-tuning a {tasks} model without a teacher needs labels (data y)")

    def _targets(self, targets: Any, plan: OutputPlan) -> dict[int, Any]:
        if targets is None:
            return {}
        if isinstance(targets, dict):
            return targets
        primary = next((o.index for o in plan.outputs if o.task == self.task_kind), 0)
        return {primary: targets}

    def __call__(self, xs: list[Any], targets: Any) -> Any:
        import torch

        s_outs = model_outputs(self.student(*xs))
        t_outs = None
        if self.teacher is not None:
            with torch.no_grad():
                t_outs = model_outputs(self.teacher(*xs))
        if self.plan is None:
            self.plan = _plan_from_batch(t_outs if t_outs is not None else s_outs, self.task_kind)
        plan = self.plan
        labels = self._targets(targets, plan)
        if len(s_outs) != len(plan.outputs):
            from compress.core.errors import StepError

            raise StepError("train", f"the model returns {len(s_outs)} outputs, {len(plan.outputs)} expected")
        if self._spreads is None:
            self._spreads = [torch.from_numpy(sp) for sp in plan.spreads]
        total: Any = 0.0
        for o, s in zip(plan.outputs, s_outs):
            value = self._one(o, s, None if t_outs is None else t_outs[o.index], labels.get(o.index))
            if value is None:
                continue
            self.recent.setdefault(o.name, []).append(float(value.detach()))
            self.recent[o.name] = self.recent[o.name][-20:]
            total = total + o.weight * value
        if not torch.is_tensor(total):
            from compress.core.errors import StepError

            tasks = ", ".join(sorted({o.task for o in plan.outputs}))
            raise StepError("train", f"fine-tuning a {tasks} model without a teacher needs labels (data y)")
        return total

    def _label_spread(self, o: Any, s: Any, y: Any) -> Any:
        import torch

        if o.index not in self._label_spreads:
            spread = self.plan.label_spreads.get(o.index) if self.plan is not None else None
            if spread is None:  # planned from a batch: the first batch's labels
                spread = output_spread(y.detach().reshape(s.shape).double().numpy(), o)
            self._label_spreads[o.index] = torch.from_numpy(spread)
        return self._label_spreads[o.index]

    def _one(self, o: Any, s: Any, t: Any | None, y: Any | None) -> Any | None:
        spread = self._spreads[o.index] if self._spreads is not None else None
        hard = None
        if y is not None and o.task == "classification":
            hard = hard_loss(s, y, o)
        elif y is not None and o.task == "regression":
            hard = hard_loss(s, y, o, self._label_spread(o, s, y))
        if t is None or (hard is not None and self.alpha <= 0.0):
            return hard
        soft = soft_loss(s, t, o, self.temperature, spread, self.embedding)
        if hard is None or self.alpha >= 1.0:
            return soft
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def summary(self) -> dict[str, float]:
        """Mean loss of each output over its last 20 batches."""
        return {name: round(float(np.mean(v)), 6) for name, v in self.recent.items() if v}


def multi_output_loss(student: Any, teacher: Any | None, plan: OutputPlan | None, *, temperature: float = 1.0,
                      alpha: float = 0.5, embedding: str = "cosine", task_kind: str = "classification",
                      ) -> MultiOutputLoss:
    """The loss that trains every output of ``student`` (see :class:`MultiOutputLoss`).

    Args:
        student: The module trained.
        teacher: The module imitated (run without gradients), or None for labels only.
        plan: From :func:`plan_outputs`; pass ``plan.targets`` to :func:`fit` as ``targets``.
        temperature: Softens class distributions in the teacher term.
        alpha: Weight of the teacher term on outputs that have labels.
        embedding: ``cosine`` or ``mse`` for embedding outputs.
        task_kind: The recipe's ``task.kind`` (used when ``plan`` is None).

    Raises:
        StepError: Without a teacher, when no output has labels.
    """
    return MultiOutputLoss(student, teacher, plan, temperature=temperature, alpha=alpha, embedding=embedding,
                           task_kind=task_kind)
