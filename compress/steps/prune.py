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
from typing import Any

import numpy as np

from compress.core.fileio import zipped_size
from compress.core.types import Artifact
from compress.core.step import StepContext
from compress.core.errors import StepError
from compress.intake.recipe import PruneConfig, Recipe, step_config, step_kind
from compress.steps.training import OutputPlan, model_outputs

Problems = list[tuple[tuple[Any, ...], str]]


# --------------------------------------------------------------------------- module facts


def _prunable_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def channel_counts(module: Any) -> dict[str, int]:
    """Output channels (conv) or features (linear) of every layer, by module name."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, _prunable_types()):
            out[name] = int(m.weight.shape[0])
    return out


def execution_order(module: Any, example: list[Any]) -> list[str]:
    """Names of the conv / linear layers in the order a forward pass runs them."""
    import torch

    order: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=name: order.append(n))
             for name, m in module.named_modules() if isinstance(m, _prunable_types())]
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in hooks:
            h.remove()
    return order


def final_layer(module: Any, example: list[Any]) -> str | None:
    """The last conv / linear layer run: the fallback head when the graph walk finds none."""
    order = execution_order(module, example)
    return order[-1] if order else None


def _weight_below(node: Any, owners: dict[int, str], depth: int = 4) -> str | None:
    """The layer whose weight ``node`` consumes directly (through a chain of one-input ops).

    A linear layer's ``AddmmBackward`` reaches its weight through ``TBackward``; a
    convolution's ``ConvolutionBackward`` reaches it at once.
    """
    for child, _ in node.next_functions:
        hops = 0
        while child is not None and hops < depth:
            variable = getattr(child, "variable", None)
            if variable is not None:
                name = owners.get(id(variable))
                if name is not None:
                    return name
                break
            nexts = [c for c, _ in child.next_functions if c is not None]
            if len(nexts) != 1:
                break
            child, hops = nexts[0], hops + 1
    return None


def _heads_of(tensor: Any, owners: dict[int, str]) -> list[str]:
    """Walk the autograd graph back from one output; stop at the first layer on every path."""
    found: list[str] = []
    seen: set[int] = set()
    stack = [tensor.grad_fn] if tensor.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        layer = _weight_below(node, owners)
        if layer is not None:
            if layer not in found:
                found.append(layer)
            continue
        # reversed: the first input is walked first, so heads come out in the order the model uses them
        stack.extend(child for child, _ in reversed(node.next_functions) if child is not None)
    return found


def head_layers_by_output(module: Any, example: list[Any]) -> list[list[str]]:
    """For each model output, the conv / linear layers that compute it last.

    Runs one forward pass with gradients and walks every output's autograd graph backwards
    (``grad_fn.next_functions``) through reshapes, concatenations, activations, softmax and
    normalisation, stopping on each path at the first node that consumes a conv / linear
    weight. A detector whose box conv and class conv are concatenated yields both.
    Frozen parameters are made trainable for the pass (and restored), so they show up too.
    """
    import torch

    owners = {id(m.weight): name for name, m in module.named_modules()
              if isinstance(m, _prunable_types()) and isinstance(getattr(m, "weight", None), torch.nn.Parameter)}
    frozen = [p for p in module.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            outs = model_outputs(module(*example))
        return [_heads_of(t, owners) for t in outs]
    finally:
        for p in frozen:
            p.requires_grad_(False)


def head_layers(module: Any, example: list[Any]) -> list[str]:
    """The last conv / linear layers feeding each model output, once each, in output order.

    Pruning leaves these whole so that no output changes shape and no head loses channels.
    Falls back to the last layer executed when the graph walk finds nothing (an output
    computed without any conv / linear weight, or a model run without autograd).
    """
    names = [n for per_output in head_layers_by_output(module, example) for n in per_output]
    if names:
        return list(dict.fromkeys(names))
    last = final_layer(module, example)
    return [last] if last else []


def model_example(module: Any, recipe: Recipe) -> list[Any]:
    """A batch-2 random example of the recipe's inputs, with the module put in eval mode."""
    from compress.intake.models import example_inputs, set_mode

    set_mode(module, False)
    return example_inputs(recipe.model.input_specs() or [], batch=2, seed=recipe.seed)


# --------------------------------------------------------------------------- structured


def _importance(kind: str) -> Any:
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=2)


def structured_prune(
    module: Any,
    example: list[Any],
    ratio: float,
    *,
    scope: str = "uniform",
    importance: str = "magnitude",
    round_to: int | None = None,
    ignore: list[str] | None = None,
    iterative_steps: int = 1,
    gradient_fn: Callable[[Any], None] | None = None,
    between_steps: Callable[[int], None] | None = None,
) -> list[str]:
    """Remove ``ratio`` of the channels of ``module`` in place; return the ignored layers.

    Args:
        module: The model (eval mode; it is pruned in place).
        example: Example inputs for tracing the dependency graph.
        ratio: Fraction of channels removed (per layer for uniform, overall for global).
        scope: ``uniform`` (each layer by ``ratio``) or ``global`` (ranked across layers).
        importance: ``magnitude`` (L2 of the group's weights) or ``taylor`` (needs gradients).
        round_to: Keep channel counts multiples of this, for kernel-friendly widths.
        ignore: Layer names left whole; every output's head layer (:func:`head_layers`) is
            always added.
        iterative_steps: Prune in this many equal steps.
        gradient_fn: For Taylor importance: fills ``.grad`` of the model's weights.
        between_steps: Called after each pruning step with its index (fine-tuning).

    Raises:
        StepError: When an output's shape changed all the same (a head coupled to a pruned
            layer, e.g. through a residual add).
    """
    import torch
    import torch_pruning as tp

    names = dict(module.named_modules())
    ignored = list(dict.fromkeys(list(ignore or []) + head_layers(module, example)))
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in model_outputs(module(*example))]
    pruner = tp.pruner.BasePruner(
        module, tuple(example) if len(example) > 1 else example[0],
        importance=_importance(importance),
        global_pruning=scope == "global",
        pruning_ratio=ratio,
        # A global ranking may otherwise empty a whole layer, which breaks the network.
        max_pruning_ratio=0.9 if scope == "global" else 1.0,
        iterative_steps=iterative_steps,
        ignored_layers=[names[n] for n in ignored],
        round_to=round_to,
    )
    for i in range(iterative_steps):
        if importance == "taylor":
            if gradient_fn is None:
                raise StepError("prune", "Taylor importance needs training data for its gradients")
            module.zero_grad(set_to_none=True)
            gradient_fn(module)
        pruner.step()
        module.zero_grad(set_to_none=True)
        with torch.no_grad():
            now = [tuple(t.shape) for t in model_outputs(module(*example))]
        if now != shapes:
            raise StepError("prune", f"pruning changed the model's output shapes {shapes} -> {now}, although "
                            f"{', '.join(ignored)} were kept whole: add the layers that feed the outputs to ignore")
        if between_steps is not None:
            between_steps(i)
    return ignored


# --------------------------------------------------------------------------- unstructured


def sparsity_at(step: int, steps: int, final: float, schedule: str) -> float:
    """Target sparsity after ``step`` of ``steps`` (1-based): cubic (Zhu & Gupta 2017) or linear."""
    frac = step / steps
    if schedule == "linear":
        return final * frac
    return final * (1.0 - (1.0 - frac) ** 3)


def _sparse_targets(module: Any, ignore: list[str]) -> dict[str, Any]:
    return {name: m for name, m in module.named_modules()
            if isinstance(m, _prunable_types()) and name not in ignore}


def magnitude_masks(layers: dict[str, Any], sparsity: float) -> dict[str, Any]:
    """Masks keeping the largest-magnitude weights across all ``layers`` (one global threshold)."""
    import torch

    flat = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
    k = round(sparsity * flat.numel())
    if k <= 0:
        return {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
    threshold = torch.kthvalue(flat, k).values
    # Ties at the threshold are pruned too; weights already at zero stay at zero.
    return {n: m.weight.detach().abs() > threshold for n, m in layers.items()}


def apply_masks(layers: dict[str, Any], masks: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, m in layers.items():
            m.weight.mul_(masks[n])


def layer_sparsity(layers: dict[str, Any]) -> dict[str, float]:
    return {n: round(float((m.weight == 0).float().mean()), 4) for n, m in layers.items()}


def global_sparsity(layers: dict[str, Any]) -> float:
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return zeros / max(total, 1)


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
    result = fit(module, loss, ctx.data.train, cfg, seed=ctx.recipe.seed, log=ctx.log, desc=label,
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


# --------------------------------------------------------------------------- the step


def prune(artifact: Artifact, config: PruneConfig, ctx: StepContext) -> Artifact:
    """Structured or unstructured pruning of the incoming torch module (a pruned copy)."""
    if config.method == "unstructured":
        return _unstructured(artifact, config, ctx)
    return _structured(artifact, config, ctx)


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


def _structured(artifact: Artifact, config: PruneConfig, ctx: StepContext) -> Artifact:
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
    ctx.details.update({
        "method": "structured", "ignored_layers": ignored, "channels_removed": removed,
        "outputs": plan.describe(teacher is not None, config.alpha if config.distill_from_unpruned else 0.0)
        if plan is not None else [],
        "channels": {n: {"before": before[n], "after": after.get(n)} for n in before},
        "steps": history,
    })
    if removed <= 0 and config.ratio > 0:
        ctx.advise("prune_no_change", "structured pruning removed no channel: raise ratio, lower round_to, "
                   "or check the ignore list")
    ctx.log(f"  channels {sum(before.values())} -> {sum(after.values())} ({removed} removed)")
    return artifact.derive(name="pruned", module=module)


def _unstructured(artifact: Artifact, config: PruneConfig, ctx: StepContext) -> Artifact:
    module = copy.deepcopy(artifact.module)
    from compress.intake.models import set_mode

    set_mode(module, False)
    plan = _plan(artifact.module, ctx) if config.epochs > 0 else None
    teacher = _teacher_copy(artifact.module, config, plan)
    layers = _sparse_targets(module, config.ignore)
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
    ctx.details.update({
        "method": "unstructured", "sparsity": round(sparsity, 4), "target_sparsity": config.ratio,
        "schedule": config.sparsity_schedule, "layer_sparsity": layer_sparsity(layers), "steps": history,
    })
    _compare_files(artifact, module, ctx)
    ctx.advise(
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
    result = fit(module, loss, ctx.data.train, config, seed=ctx.recipe.seed + i, log=ctx.log,
                 desc=f"fine-tune {i + 1}/{config.iterative_steps}", after_step=lambda: apply_masks(layers, masks),
                 targets=plan.targets)
    return {**result.as_dict(), "output_losses": loss.summary()}


def _compare_files(artifact: Artifact, sparse: Any, ctx: StepContext) -> None:
    """Export the dense and the sparse model; record both file and zipped sizes.

    The dense export joins the run as an artifact of its own, so the runner benchmarks it
    beside the sparse one and the report shows the unchanged latency.
    """
    from bench.runtime import open_model, predict
    from compress.intake.data import synthetic_inputs
    from compress.intake.models import torch_predict
    from export.onnx import export_module_to_onnx
    from bench.parity import compare_outputs

    specs = ctx.recipe.model.input_specs() or []
    dense_path, sparse_path = ctx.step_dir / "dense.onnx", ctx.step_dir / "sparse.onnx"
    export_module_to_onnx(artifact.module, specs, dense_path)
    export_module_to_onnx(sparse, specs, sparse_path)
    sizes = {"dense_onnx_bytes": dense_path.stat().st_size, "dense_zipped_bytes": zipped_size(dense_path),
             "sparse_onnx_bytes": sparse_path.stat().st_size, "sparse_zipped_bytes": zipped_size(sparse_path)}
    sizes["zipped_ratio"] = round(sizes["dense_zipped_bytes"] / sizes["sparse_zipped_bytes"], 3)
    ctx.details["files"] = sizes
    ctx.log(f"  zipped ONNX: dense {sizes['dense_zipped_bytes']} bytes, sparse {sizes['sparse_zipped_bytes']} bytes "
            f"({sizes['zipped_ratio']}x smaller); unzipped both {sizes['sparse_onnx_bytes']} bytes")
    x = ctx.data.eval.x if ctx.data is not None else synthetic_inputs(specs, 64).x
    ref = torch_predict(artifact.module, x)[0]
    out = predict(open_model(dense_path), x)[0]
    p = ctx.recipe.parity
    dense = artifact.derive(name="onnx-dense", format="onnx", path=dense_path, step=ctx.step_name,
                            module=None, precision="fp32")
    dense.metadata = {"zipped_bytes": sizes["dense_zipped_bytes"], "note": "the unpruned model, for comparison",
                      "_parity": compare_outputs(ref, out, artifact.name, ctx.recipe.task.kind, p.atol, p.min_agreement)}
    ctx.extra_artifacts.append(dense)


# --------------------------------------------------------------------------- checks


def module_seen_by(config: Any, baseline: Artifact, recipe: Recipe) -> Any | None:
    """The module a step will receive: the baseline, or the student of an earlier distill."""
    from compress.intake.data import import_ref

    module = baseline.module if baseline.format == "torch" else None
    for step in recipe.steps:
        cfg = step_config(step)
        if cfg is config:
            break
        if step_kind(step) == "distill" and getattr(cfg, "student", None):
            try:
                module = import_ref(cfg.student)()
            except Exception:  # noqa: BLE001 - the distill step's own check reports it
                return None
    return module


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
