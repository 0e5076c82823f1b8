"""The ``prune`` step: structured (channels removed) or unstructured (weights zeroed).

Structured pruning uses torch-pruning's dependency graph, which removes coupled channels
together (a conv's outputs, its BatchNorm, the next conv's inputs, residual partners), so
the result is a smaller dense network that every runtime runs faster. The final layer is
never pruned: the model's output shape must not change.

Unstructured pruning zeroes the smallest weights globally, on a schedule over
``iterative_steps``. Dense CPU runtimes (onnxruntime, LiteRT) do the same work on a zero as
on any other number, so the gain is only in the compressed (zipped) size of the file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compress.core.checks import Bool
from compress.core.fileio import zipped_size
from compress.core.types import Artifact
from compress.core.step import Notes, StepContext, StepResult, register_step
from compress.core.errors import StepError
from compress.intake.recipe import Ratio, Recipe, TrainConfig
from compress.steps.common import model_example, module_seen_by
from compress.steps.pruning import (
    apply_masks,
    channel_counts,
    global_sparsity,
    layer_sparsity,
    magnitude_masks,
    sparse_targets,
    sparsity_at,
    structured_prune,
)
from compress.steps.training import OutputPlan

Problems = list[tuple[tuple[Any, ...], str]]


class PruneConfig(TrainConfig):
    """Structured (channels removed) or unstructured (weights zeroed) pruning."""

    method: Literal["structured", "unstructured"] = "structured"
    ratio: Ratio = 0.5
    scope: Literal["uniform", "global"] = "uniform"
    importance: Literal["magnitude", "taylor"] = "magnitude"
    round_to: int | None = Field(None, ge=1, le=4096)
    ignore: list[str] = Field(default_factory=list, description="module names left unpruned")
    iterative_steps: int = Field(1, ge=1, le=1000)
    epochs: int = Field(0, ge=0, le=100_000, description="fine-tuning epochs after each pruning step")
    distill_from_unpruned: Bool = False
    temperature: float = Field(4.0, gt=0, le=1000)
    alpha: float = Field(0.7, ge=0, le=1)
    sparsity_schedule: Literal["cubic", "linear"] = Field(
        "cubic", description="unstructured: how sparsity rises over iterative_steps"
    )


# --------------------------------------------------------------------------- fine-tuning


def _fine_tune_loss(student: Any, teacher: Any | None, cfg: PruneConfig, plan: OutputPlan) -> Any:
    """Every output trained: on its labels, and on the unpruned model where it has none.

    Outputs with labels learn from them alone unless ``distill_from_unpruned`` blends in the
    unpruned model (``alpha``); outputs without labels (a second head, an embedding, a
    detector) always imitate the unpruned model, so no head drifts while the others train.
    """
    from compress.steps.training import multi_output_loss

    return multi_output_loss(student, teacher, plan, temperature=cfg.temperature,
                             alpha=cfg.alpha if cfg.distill_from_unpruned else 0.0)


def _fine_tune(module: Any, teacher: Any | None, cfg: PruneConfig, ctx: StepContext, plan: OutputPlan | None,
               label: str) -> dict[str, Any]:
    from compress.steps.training import fit

    if cfg.epochs <= 0 or ctx.data is None or plan is None:
        return {}
    loss = _fine_tune_loss(module, teacher, cfg, plan)
    result = fit(module, loss, ctx.data.train, cfg, seed=ctx.recipe.seed, log=ctx.log, progress=ctx.progress, desc=label,
                 targets=plan.targets)
    return {**result.as_dict(), "output_losses": loss.summary()}


def _taylor_gradients(teacher: Any | None, cfg: PruneConfig, ctx: StepContext,
                      plan: OutputPlan | None) -> Callable[[Any], None]:
    """Accumulate gradients of the task loss over a few training batches (Taylor importance)."""
    import torch

    def fill(module: Any) -> None:
        if ctx.data is None or plan is None:
            raise StepError(ctx.step_name, "Taylor importance needs training data for its gradients")
        loss_fn = _fine_tune_loss(module, teacher, cfg, plan)
        split = ctx.data.train
        for i, xs in enumerate(split.batches(cfg.batch_size)):
            if i >= 8:
                break
            rows = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            targets = {k: torch.from_numpy(np.ascontiguousarray(a[rows])) for k, a in plan.targets.items()}
            loss_fn([torch.from_numpy(np.ascontiguousarray(a)) for a in xs], targets).backward()

    return fill


def _plan(module: Any, ctx: StepContext) -> OutputPlan | None:
    """What each output of the unpruned model is, and its labels (None without data)."""
    from compress.steps.training import plan_outputs

    if ctx.data is None:
        return None
    try:
        return plan_outputs(module, ctx.recipe, ctx.data.train)
    except ValueError as e:
        raise StepError(ctx.step_name, str(e)) from e


# --------------------------------------------------------------------------- checks


def check(config: PruneConfig, baseline: Artifact, recipe: Recipe, data: Any) -> Problems:
    """Problems found before any work starts: unknown layer names, Taylor without data."""
    problems: Problems = []
    module = module_seen_by(config, baseline, recipe)
    if module is not None:
        names = {n for n, _ in module.named_modules() if n}
        for i, name in enumerate(config.ignore):
            if name not in names:
                close = sorted(n for n in names if name.split(".")[-1] in n)[:3]
                hint = f"; similar: {', '.join(close)}" if close else ""
                problems.append((("ignore", i), f"no layer named {name!r} in the model{hint}"))
    if config.importance == "taylor":
        if config.method == "unstructured":
            problems.append((("importance",), "unstructured pruning ranks weights by magnitude; remove importance: taylor"))
        elif data is None:
            problems.append((("importance",), "Taylor importance needs gradients from training data: add a data section"))
    return problems


# --------------------------------------------------------------------------- the step


@register_step("prune", config=PruneConfig, accepts=("torch",), check=check)
def prune(artifact: Artifact, config: PruneConfig, ctx: StepContext) -> StepResult:
    """Structured or unstructured pruning of the incoming torch module (a pruned copy)."""
    notes = Notes(ctx)
    if config.method == "unstructured":
        return notes.result(_unstructured(artifact, config, ctx, notes))
    return notes.result(_structured(artifact, config, ctx, notes))


def _teacher_copy(module: Any, config: PruneConfig, plan: OutputPlan | None) -> Any | None:
    """A frozen copy of the unpruned model, when some output learns from it."""
    from compress.intake.models import set_mode

    if plan is None or not (config.distill_from_unpruned or plan.needs_teacher()):
        return None
    teacher = copy.deepcopy(module)
    set_mode(teacher, False)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _structured(artifact: Artifact, config: PruneConfig, ctx: StepContext, notes: Notes) -> Artifact:
    module = copy.deepcopy(artifact.module)
    example = model_example(module, ctx.recipe)
    plan = _plan(artifact.module, ctx) if config.epochs > 0 or config.importance == "taylor" else None
    teacher = _teacher_copy(artifact.module, config, plan)
    before = channel_counts(module)
    history: list[dict[str, Any]] = []

    def between(i: int) -> None:
        from compress.intake.models import count_macs

        entry: dict[str, Any] = {"step": i + 1, "macs": count_macs(module, ctx.recipe.model.input_specs() or [])}
        entry["fine_tune"] = _fine_tune(module, teacher, config, ctx, plan,
                                        f"fine-tune {i + 1}/{config.iterative_steps}")
        if ctx.data is not None:
            entry["accuracy"] = ctx.evaluate(module).get("accuracy")
        history.append(entry)
        ctx.log(f"  pruning step {i + 1}/{config.iterative_steps}: {entry.get('macs')} MACs, "
                f"accuracy {entry.get('accuracy')}")

    ignored = structured_prune(
        module, example, config.ratio, scope=config.scope, importance=config.importance, round_to=config.round_to,
        ignore=config.ignore, iterative_steps=config.iterative_steps,
        gradient_fn=_taylor_gradients(teacher, config, ctx, plan), between_steps=between,
    )
    after = channel_counts(module)
    removed = sum(before.values()) - sum(after.values())
    notes.details.update({
        "method": "structured", "ignored_layers": ignored, "channels_removed": removed,
        "outputs": plan.describe(teacher is not None, config.alpha if config.distill_from_unpruned else 0.0)
        if plan is not None else [],
        "channels": {n: {"before": before[n], "after": after.get(n)} for n in before},
        "steps": history,
    })
    if removed <= 0 and config.ratio > 0:
        notes.advise("prune_no_change", "structured pruning removed no channel: raise ratio, lower round_to, "
                   "or check the ignore list")
    ctx.log(f"  channels {sum(before.values())} -> {sum(after.values())} ({removed} removed)")
    return artifact.derive(name="pruned", module=module)


def _unstructured(artifact: Artifact, config: PruneConfig, ctx: StepContext, notes: Notes) -> Artifact:
    module = copy.deepcopy(artifact.module)
    from compress.intake.models import set_mode

    set_mode(module, False)
    plan = _plan(artifact.module, ctx) if config.epochs > 0 else None
    teacher = _teacher_copy(artifact.module, config, plan)
    layers = sparse_targets(module, config.ignore)
    history: list[dict[str, Any]] = []
    masks: dict[str, Any] = {}
    for i in range(config.iterative_steps):
        target = sparsity_at(i + 1, config.iterative_steps, config.ratio, config.sparsity_schedule)
        masks = magnitude_masks(layers, target)
        apply_masks(layers, masks)
        entry: dict[str, Any] = {"step": i + 1, "target_sparsity": round(target, 4)}
        # Fine-tuning would regrow pruned weights: re-apply the masks after every update.
        entry["fine_tune"] = _fine_tune_masked(module, teacher, config, ctx, plan, layers, masks, i)
        entry["sparsity"] = round(global_sparsity(layers), 4)
        if ctx.data is not None:
            entry["accuracy"] = ctx.evaluate(module).get("accuracy")
        history.append(entry)
        ctx.log(f"  sparsity step {i + 1}/{config.iterative_steps}: {entry['sparsity']:.3f}, accuracy {entry.get('accuracy')}")
    sparsity = global_sparsity(layers)
    notes.details.update({
        "method": "unstructured", "sparsity": round(sparsity, 4), "target_sparsity": config.ratio,
        "schedule": config.sparsity_schedule, "layer_sparsity": layer_sparsity(layers), "steps": history,
    })
    _compare_files(artifact, module, ctx, notes)
    notes.advise(
        "unstructured_dense_runtime",
        f"unstructured pruning zeroed {sparsity:.0%} of the weights, but onnxruntime and LiteRT run dense "
        "kernels: the model is exactly as fast as before, and no smaller on disk until compressed. "
        "It only shrinks the zipped download (see this step's details); use method: structured for speed.",
        severity="info",
    )
    return artifact.derive(name="sparse", module=module)


def _fine_tune_masked(module: Any, teacher: Any | None, config: PruneConfig, ctx: StepContext,
                      plan: OutputPlan | None, layers: dict[str, Any], masks: dict[str, Any], i: int) -> dict[str, Any]:
    from compress.steps.training import fit

    if config.epochs <= 0 or ctx.data is None or plan is None:
        return {}
    loss = _fine_tune_loss(module, teacher, config, plan)
    result = fit(module, loss, ctx.data.train, config, seed=ctx.recipe.seed + i, log=ctx.log, progress=ctx.progress,
                 desc=f"fine-tune {i + 1}/{config.iterative_steps}", after_step=lambda: apply_masks(layers, masks),
                 targets=plan.targets)
    return {**result.as_dict(), "output_losses": loss.summary()}


def _compare_files(artifact: Artifact, sparse: Any, ctx: StepContext, notes: Notes) -> None:
    """Export the dense and the sparse model; record both file and zipped sizes.

    The dense export joins the run as an artifact of its own, so the runner benchmarks it
    beside the sparse one and the report shows the unchanged latency.
    """
    from export.onnx import export_module_to_onnx

    specs = ctx.recipe.model.input_specs() or []
    dense_path, sparse_path = ctx.step_dir / "dense.onnx", ctx.step_dir / "sparse.onnx"
    export_module_to_onnx(artifact.module, specs, dense_path)
    export_module_to_onnx(sparse, specs, sparse_path)
    sizes = {"dense_onnx_bytes": dense_path.stat().st_size, "dense_zipped_bytes": zipped_size(dense_path),
             "sparse_onnx_bytes": sparse_path.stat().st_size, "sparse_zipped_bytes": zipped_size(sparse_path)}
    sizes["zipped_ratio"] = round(sizes["dense_zipped_bytes"] / sizes["sparse_zipped_bytes"], 3)
    notes.details["files"] = sizes
    ctx.log(f"  zipped ONNX: dense {sizes['dense_zipped_bytes']} bytes, sparse {sizes['sparse_zipped_bytes']} bytes "
            f"({sizes['zipped_ratio']}x smaller); unzipped both {sizes['sparse_onnx_bytes']} bytes")
    # the runner checks it against its parent (this step's input) by lineage, as every file
    dense = artifact.derive(name="onnx-dense", format="onnx", path=dense_path, step=ctx.step_name,
                            module=None, precision="fp32")
    dense.metadata = {"zipped_bytes": sizes["dense_zipped_bytes"], "note": "the unpruned model, for comparison"}
    notes.extra.append(dense)
