"""Helpers several steps share: a model example, the module a step will receive."""

from __future__ import annotations

from typing import Any

from compress.core.types import Artifact
from compress.intake.recipe import Recipe, step_config, step_kind


def model_example(module: Any, recipe: Recipe) -> list[Any]:
    """A batch-2 random example of the recipe's inputs, with the module put in eval mode."""
    from compress.intake.models import example_inputs, set_mode

    set_mode(module, False)
    return example_inputs(recipe.model.input_specs() or [], batch=2, seed=recipe.seed)


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
