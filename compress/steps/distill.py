"""The ``distill`` step: train a smaller student to imitate the teacher.

Every model output is distilled by its own loss (:func:`compress.steps.training.multi_output_loss`).
Class outputs use the standard knowledge-distillation objective (Hinton et al. 2015): the KL
divergence between temperature-softened teacher and student outputs, scaled by T^2 so its
gradients keep their size as T changes, blended by ``alpha`` with the loss on the true
labels; outputs that are already probabilities are compared as probabilities. Regression
and detection outputs match the teacher's by MSE over its variance, embeddings by cosine or
MSE.
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
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from compress.core.checks import Epochs, resolve_ref
from compress.core.types import Advisory, Artifact
from compress.core.step import StepContext, StepResult, register_step
from compress.core.errors import StepError
from compress.intake.recipe import FeaturePair, Recipe, TrainConfig
from compress.steps.training import model_outputs, primary_output

Problems = list[tuple[tuple[Any, ...], str]]
LossFn = Callable[[list[Any], Any], Any]


class DistillConfig(TrainConfig):
    """Knowledge distillation into a smaller student."""

    student: str | None = Field(None, description="file.py:function returning the student")
    width: float | None = Field(None, gt=0, lt=1, description="derive the student by structured pruning to this width")
    round_to: int | None = Field(None, ge=1, le=4096, description="with width: keep the student's channel counts "
                                 "multiples of this (8 suits x86 and ARM SIMD kernels)")
    temperature: float = Field(4.0, gt=0, le=1000)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft (teacher) loss")
    features: list[FeaturePair] = Field(default_factory=list)
    embedding_loss: Literal["cosine", "mse"] = "cosine"
    epochs: Epochs = 10

    @field_validator("student")
    @classmethod
    def _student(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else resolve_ref(v, info, "student")

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        if (self.student is None) == (self.width is None):
            raise ValueError("give exactly one of student (file.py:function) or width (0-1)")
        if self.round_to is not None and self.width is None:
            raise ValueError("round_to rounds a student derived by width; a student given as file.py:function "
                             "keeps its own channel counts")
        return self


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


def supervised_loss(model: Any, task: str) -> LossFn:
    """Fine-tuning on the labels alone, every output by its own loss (resolved on the first batch).

    Kept for callers without an output plan; :func:`compress.steps.training.multi_output_loss`
    with :func:`compress.steps.training.plan_outputs` is the full form (declared outputs, labels
    of every head, a teacher for heads without labels).
    """
    from compress.steps.training import multi_output_loss

    return multi_output_loss(model, None, None, task_kind=task)


def distill_loss(student: Any, teacher: Any, task: str, temperature: float, alpha: float,
                 embedding: str = "cosine") -> LossFn:
    """The output-matching loss of every output; the teacher runs without gradients.

    Outputs are resolved on the first batch (see :func:`supervised_loss` for the full form).
    """
    from compress.steps.training import multi_output_loss

    return multi_output_loss(student, teacher, None, temperature=temperature, alpha=alpha, embedding=embedding,
                             task_kind=task)


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


def derive_student(teacher: Any, width: float, example: list[Any], round_to: int | None = None) -> Any:
    """The teacher with its channels pruned to ``width`` (magnitude, uniform), channel counts
    multiples of ``round_to`` when given.

    Every output's head layer is kept whole (:func:`compress.steps.prune.head_layers`), so each
    output keeps its shape and every head starts from the teacher's own weights.
    """
    from compress.intake.models import set_mode
    from compress.steps.pruning import structured_prune

    student = copy.deepcopy(teacher)
    set_mode(student, False)
    structured_prune(student, example, 1.0 - width, round_to=round_to)
    return student


def build_student(config: DistillConfig, teacher: Any, example: list[Any], seed: int) -> Any:
    import torch

    from compress.intake.data import import_ref
    from compress.steps.training import seed_everything

    if config.width is not None:
        return derive_student(teacher, config.width, example, config.round_to)
    seed_everything(seed)
    student = import_ref(config.student or "")()
    if not isinstance(student, torch.nn.Module):
        raise StepError("distill", f"student {config.student} returned {type(student).__name__}, not an nn.Module")
    return student


# --------------------------------------------------------------------------- checks


def check(config: DistillConfig, baseline: Artifact, recipe: Recipe, data: Any) -> Problems:
    """Problems found before training: student output shape, unknown feature layers, labels."""
    import torch

    from compress.steps.common import model_example, module_seen_by

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
            s_shapes = [list(t.shape[1:]) for t in model_outputs(student(*example))]
            t_shapes = [list(t.shape[1:]) for t in model_outputs(teacher(*example))]
        if len(s_shapes) != len(t_shapes):
            problems.append((("student",), f"the student returns {len(s_shapes)} outputs, the teacher {len(t_shapes)}"))
        elif s_shapes != t_shapes:
            i = next(k for k, (a, b) in enumerate(zip(s_shapes, t_shapes)) if a != b)
            which = f"output {i}'s" if len(t_shapes) > 1 else "output"
            problems.append((("student",), (f"the student's {which} shape {s_shapes[i]} differs from the "
                                            f"teacher's {t_shapes[i]} (batch dimension left out)")))
    except Exception as e:  # noqa: BLE001 - user code may raise anything; it becomes a recipe problem
        problems.append((("student",), f"the student fails on the model's inputs: {type(e).__name__}: {e}"))
    s_names = {n for n, _ in student.named_modules() if n}
    t_names = {n for n, _ in teacher.named_modules() if n}
    for i, pair in enumerate(config.features):
        if pair.student not in s_names:
            problems.append((("features", i, "student"), f"no layer named {pair.student!r} in the student"))
        if pair.teacher not in t_names:
            problems.append((("features", i, "teacher"), f"no layer named {pair.teacher!r} in the teacher"))
    labels = data is not None and (data.train.y is not None or bool(getattr(data.train, "targets", {}) or {}))
    if recipe.task.kind not in ("embedding", "detection") and config.alpha < 1.0 and data is not None and not labels:
        problems.append((("alpha",), ("alpha < 1 blends in the label loss, but the data has no labels: "
                                      "set alpha: 1.0 or add labels")))
    return problems


# --------------------------------------------------------------------------- the step


@register_step("distill", config=DistillConfig, accepts=("torch",), check=check, needs_train_data=True)
def distill(artifact: Artifact, config: DistillConfig, ctx: StepContext) -> StepResult:
    """Train a student from the incoming model (the teacher); return the student.

    Every output is distilled by its own loss (:func:`compress.steps.training.multi_output_loss`):
    class logits by KL at the temperature, probability outputs as probabilities, one-value
    scores by a Bernoulli KL, regression and detection outputs by MSE over the teacher's
    variance, embeddings by ``embedding_loss``; outputs with labels blend in their label
    loss by ``1 - alpha``; ``model.outputs[].weight`` weighs each output.
    """
    from compress.intake.models import count_params, set_mode
    from compress.steps.common import model_example
    from compress.steps.pruning import channel_counts
    from compress.steps.training import fit, multi_output_loss, plan_outputs

    if ctx.data is None:
        raise StepError(ctx.step_name, "distillation needs training data")
    teacher = artifact.module
    example = model_example(teacher, ctx.recipe)
    try:
        plan = plan_outputs(teacher, ctx.recipe, ctx.data.train)
    except ValueError as e:
        raise StepError(ctx.step_name, str(e)) from e
    student = build_student(config, teacher, example, ctx.recipe.seed)
    set_mode(student, False)
    advisories = _odd_width_advisories(config, teacher, student, ctx.step_name)
    for a in advisories:
        ctx.log(f"[{a.severity}] {a.message}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    task = ctx.recipe.task.kind
    output_loss = multi_output_loss(student, teacher, plan, temperature=config.temperature, alpha=config.alpha,
                                    embedding=config.embedding_loss, task_kind=task)
    matcher = FeatureMatcher(student, teacher, config.features, example) if config.features else None

    def loss(xs: list[Any], y: Any) -> Any:
        value = output_loss(xs, y)
        return value + matcher.loss() if matcher is not None else value

    ctx.log(f"  student: {config.student or f'teacher pruned to width {config.width}'}, "
            f"{count_params(student)} parameters (teacher {count_params(teacher)})")
    try:
        result = fit(student, loss, ctx.data.train, config, seed=ctx.recipe.seed, log=ctx.log, progress=ctx.progress, desc="distill",
                     extra_params=matcher.adapters.parameters() if matcher is not None else (),
                     targets=plan.targets)
    finally:
        if matcher is not None:
            matcher.remove()
        for p in teacher.parameters():
            p.requires_grad_(True)
    set_mode(teacher, False)
    details = {
        "student": config.student or f"width {config.width}",
        "loss": "embedding-" + config.embedding_loss if task == "embedding" else f"kd(T={config.temperature}, alpha={config.alpha})",
        "outputs": plan.describe(True, config.alpha),
        "output_losses": output_loss.summary(),
        "training": result.as_dict(),
        "features": matcher.shapes if matcher is not None else [],
        "student_channels": sum(channel_counts(student).values()),
        "teacher_channels": sum(channel_counts(teacher).values()),
    }
    return StepResult([artifact.derive(name="student", module=student)], details, advisories)


def _odd_width_advisories(config: DistillConfig, teacher: Any, student: Any, step: str) -> list[Advisory]:
    """An advisory when a student derived by width (without ``round_to``) has layers whose channel
    counts stopped being multiples of 8: onnxruntime's x86 convolution kernels work on blocks
    of 8 (AVX2) or 16 (AVX-512) channels and run such layers much slower."""
    from compress.steps.pruning import channel_counts

    if config.width is None or config.round_to is not None:
        return []
    before, after = channel_counts(teacher), channel_counts(student)
    odd = [f"{n} ({before[n]} -> {c})" for n, c in after.items() if c % 8 and n in before and before[n] % 8 == 0]
    if not odd:
        return []
    return [Advisory("student_odd_channels",
                     f"the student derived at width {config.width} has {len(odd)} layer(s) whose channel counts are no "
                     f"longer multiples of 8, e.g. {', '.join(odd[:3])}; SIMD kernels run such layers slower (see "
                     "docs/compression.md): add round_to: 8 to this step", "warning", None, step)]
