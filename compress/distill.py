"""The ``distill`` step: train a smaller student to imitate the teacher.

Classification and regression use the standard knowledge-distillation objective (Hinton
et al. 2015): the KL divergence between temperature-softened teacher and student outputs,
scaled by T^2 so its gradients keep their size as T changes, blended by ``alpha`` with the
loss on the true labels. Embedding models match the teacher's embeddings (cosine or MSE).
Intermediate layers can be matched too; where their widths differ, a learned 1x1
convolution (or linear map) projects the student's features onto the teacher's, and is
dropped after training.

The student is the recipe's ``student: file.py:function``, or the teacher itself with its
channels pruned (structurally) to ``width``, which starts the student from the teacher's
most important filters rather than from random weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from compress.artifact import Artifact
from compress.context import StepContext
from compress.errors import StepError
from compress.recipe import DistillConfig, FeaturePair, Recipe
from compress.training import primary_output

Problems = list[tuple[tuple[Any, ...], str]]
LossFn = Callable[[list[Any], Any], Any]


# --------------------------------------------------------------------------- losses


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any | None, temperature: float, alpha: float) -> Any:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    Without labels only the soft term is used.
    """
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)
    if labels is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def embedding_loss(student_emb: Any, teacher_emb: Any, kind: str) -> Any:
    """Cosine distance (``1 - cos``, mean over the batch) or mean squared error."""
    import torch.nn.functional as F

    s, t = student_emb.flatten(1), teacher_emb.flatten(1)
    if kind == "mse":
        return F.mse_loss(s, t)
    return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()


def regression_kd_loss(student_out: Any, teacher_out: Any, targets: Any | None, alpha: float) -> Any:
    import torch.nn.functional as F

    soft = F.mse_loss(student_out, teacher_out)
    if targets is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.mse_loss(student_out, targets.reshape(student_out.shape).to(student_out.dtype))


def supervised_loss(model: Any, task: str) -> LossFn:
    """Plain fine-tuning on the labels: cross-entropy (classification) or MSE (regression)."""
    import torch.nn.functional as F

    def loss(xs: list[Any], y: Any) -> Any:
        if y is None:
            raise StepError("train", f"fine-tuning a {task} model without a teacher needs labels (data y)")
        out = primary_output(model(*xs))
        if task == "classification":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, y.reshape(out.shape).to(out.dtype))

    return loss


def distill_loss(student: Any, teacher: Any, task: str, temperature: float, alpha: float,
                 embedding: str = "cosine") -> LossFn:
    """The output-matching loss for ``task``; the teacher runs without gradients."""
    import torch

    def loss(xs: list[Any], y: Any) -> Any:
        with torch.no_grad():
            t_out = primary_output(teacher(*xs))
        s_out = primary_output(student(*xs))
        if task == "embedding":
            return embedding_loss(s_out, t_out, embedding)
        if task == "regression":
            return regression_kd_loss(s_out, t_out, y, alpha)
        return kd_loss(s_out, t_out, y, temperature, alpha)

    return loss


# --------------------------------------------------------------------------- feature matching


class FeatureTaps:
    """Forward hooks that keep the latest output of named layers."""

    def __init__(self, module: Any, names: list[str]) -> None:
        self.values: dict[str, Any] = {}
        modules = dict(module.named_modules())
        self._hooks = []
        for name in names:
            if name not in modules:
                raise StepError("distill", f"no layer named {name!r}")
            self._hooks.append(modules[name].register_forward_hook(self._keep(name)))

    def _keep(self, name: str) -> Callable[..., None]:
        def hook(_m: Any, _i: Any, out: Any) -> None:
            self.values[name] = primary_output(out)

        return hook

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def _channels(t: Any) -> int:
    """Channels of a feature map: dim 1 of an image (N, C, H, W), the last dim otherwise."""
    return int(t.shape[1]) if t.dim() == 4 else int(t.shape[-1])


def make_adapter(student_feat: Any, teacher_feat: Any) -> Any:
    """A learned projection from the student's feature width to the teacher's, or identity."""
    from torch import nn

    cs, ct = _channels(student_feat), _channels(teacher_feat)
    if cs == ct:
        return nn.Identity()
    if student_feat.dim() == 4:
        return nn.Conv2d(cs, ct, 1, bias=False)
    return nn.Linear(cs, ct, bias=False)


def feature_loss(adapter: Any, s: Any, t: Any) -> Any:
    import torch.nn.functional as F

    s = adapter(s)
    if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(s, t)


class FeatureMatcher:
    """Taps on student and teacher layers, with one adapter per pair."""

    def __init__(self, student: Any, teacher: Any, pairs: list[FeaturePair], example: list[Any]) -> None:
        import torch
        from torch import nn

        self.pairs = pairs
        self.s_taps = FeatureTaps(student, [p.student for p in pairs])
        self.t_taps = FeatureTaps(teacher, [p.teacher for p in pairs])
        with torch.no_grad():
            student(*example)
            teacher(*example)
        self.adapters = nn.ModuleList(
            make_adapter(self.s_taps.values[p.student], self.t_taps.values[p.teacher]) for p in pairs
        )
        self.shapes = [{"student": p.student, "teacher": p.teacher, "weight": p.weight,
                        "student_shape": list(self.s_taps.values[p.student].shape[1:]),
                        "teacher_shape": list(self.t_taps.values[p.teacher].shape[1:]),
                        "adapter": type(a).__name__} for p, a in zip(pairs, self.adapters)]

    def loss(self) -> Any:
        total = 0.0
        for p, a in zip(self.pairs, self.adapters):
            total = total + p.weight * feature_loss(a, self.s_taps.values[p.student],
                                                    self.t_taps.values[p.teacher].detach())
        return total

    def remove(self) -> None:
        self.s_taps.remove()
        self.t_taps.remove()


# --------------------------------------------------------------------------- students


def derive_student(teacher: Any, width: float, example: list[Any]) -> Any:
    """The teacher with its channels pruned to ``width`` (magnitude, uniform; output layer kept)."""
    from compress.models import set_mode
    from compress.prune import structured_prune

    student = copy.deepcopy(teacher)
    set_mode(student, False)
    structured_prune(student, example, 1.0 - width)
    return student


def build_student(config: DistillConfig, teacher: Any, example: list[Any], seed: int) -> Any:
    import torch

    from compress.data import import_ref
    from compress.training import seed_everything

    if config.width is not None:
        return derive_student(teacher, config.width, example)
    seed_everything(seed)
    student = import_ref(config.student or "")()
    if not isinstance(student, torch.nn.Module):
        raise StepError("distill", f"student {config.student} returned {type(student).__name__}, not an nn.Module")
    return student


# --------------------------------------------------------------------------- the step


def distill(artifact: Artifact, config: DistillConfig, ctx: StepContext) -> Artifact:
    """Train a student from the incoming model (the teacher); return the student."""
    from compress.models import count_params, set_mode
    from compress.prune import channel_counts, model_example
    from compress.training import fit

    if ctx.data is None:
        raise StepError(ctx.step_name, "distillation needs training data")
    teacher = artifact.module
    example = model_example(teacher, ctx.recipe)
    student = build_student(config, teacher, example, ctx.recipe.seed)
    set_mode(student, False)
    for p in teacher.parameters():
        p.requires_grad_(False)
    task = ctx.recipe.task.kind
    output_loss = distill_loss(student, teacher, task, config.temperature, config.alpha, config.embedding_loss)
    matcher = FeatureMatcher(student, teacher, config.features, example) if config.features else None

    def loss(xs: list[Any], y: Any) -> Any:
        value = output_loss(xs, y)
        return value + matcher.loss() if matcher is not None else value

    ctx.log(f"  student: {config.student or f'teacher pruned to width {config.width}'}, "
            f"{count_params(student)} parameters (teacher {count_params(teacher)})")
    try:
        result = fit(student, loss, ctx.data.train, config, seed=ctx.recipe.seed, log=ctx.log, desc="distill",
                     extra_params=matcher.adapters.parameters() if matcher is not None else ())
    finally:
        if matcher is not None:
            matcher.remove()
        for p in teacher.parameters():
            p.requires_grad_(True)
    set_mode(teacher, False)
    ctx.details.update({
        "student": config.student or f"width {config.width}",
        "loss": "embedding-" + config.embedding_loss if task == "embedding" else f"kd(T={config.temperature}, alpha={config.alpha})",
        "training": result.as_dict(),
        "features": matcher.shapes if matcher is not None else [],
        "student_channels": sum(channel_counts(student).values()),
        "teacher_channels": sum(channel_counts(teacher).values()),
    })
    return artifact.derive(name="student", module=student)


# --------------------------------------------------------------------------- checks


def check(config: DistillConfig, baseline: Artifact, recipe: Recipe, data: Any) -> Problems:
    """Problems found before training: student output shape, unknown feature layers, labels."""
    import torch

    from compress.prune import model_example, module_seen_by

    problems: Problems = []
    teacher = module_seen_by(config, baseline, recipe)
    if teacher is None:
        return problems
    example = model_example(teacher, recipe)
    try:
        student = build_student(config, teacher, example, recipe.seed)
    except Exception as e:  # noqa: BLE001 - user code may raise anything; it becomes a recipe problem
        return [(("student" if config.student else "width",), f"cannot build the student: {type(e).__name__}: {e}")]
    student.eval()
    try:
        with torch.no_grad():
            s_shape = tuple(primary_output(student(*example)).shape)
            t_shape = tuple(primary_output(teacher(*example)).shape)
        if s_shape != t_shape:
            problems.append((("student",), (f"the student's output shape {list(s_shape[1:])} differs from the "
                                            f"teacher's {list(t_shape[1:])} (batch dimension left out)")))
    except Exception as e:  # noqa: BLE001 - user code may raise anything; it becomes a recipe problem
        problems.append((("student",), f"the student fails on the model's inputs: {type(e).__name__}: {e}"))
    s_names = {n for n, _ in student.named_modules() if n}
    t_names = {n for n, _ in teacher.named_modules() if n}
    for i, pair in enumerate(config.features):
        if pair.student not in s_names:
            problems.append((("features", i, "student"), f"no layer named {pair.student!r} in the student"))
        if pair.teacher not in t_names:
            problems.append((("features", i, "teacher"), f"no layer named {pair.teacher!r} in the teacher"))
    if recipe.task.kind != "embedding" and config.alpha < 1.0 and data is not None and data.train.y is None:
        problems.append((("alpha",), ("alpha < 1 blends in the label loss, but the data has no labels: "
                                      "set alpha: 1.0 or add labels")))
    return problems
