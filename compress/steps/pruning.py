"""Pruning operations on a torch module, shared by the prune and distill steps.

Structured: torch-pruning's dependency graph removes coupled channels together (a conv's
outputs, its BatchNorm, the next conv's inputs, residual partners). Unstructured: one global
magnitude threshold, on a schedule. Also the module facts they need (channel counts,
execution order, the output heads that are never pruned).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compress.core.errors import StepError
from compress.steps.training import model_outputs

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


def sparse_targets(module: Any, ignore: list[str]) -> dict[str, Any]:
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
