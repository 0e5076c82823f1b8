"""The step registry: one registration per kind, in step with the recipe's step union."""

from __future__ import annotations

import typing

import pytest

from compress.core.step import StepResult, register_step
from compress.intake import recipe as recipe_mod
from compress.steps.registry import STEPS


def _union_members() -> dict[str, type]:
    """kind -> config class, as the recipe's ``Step`` union declares them."""
    union = typing.get_args(recipe_mod.Step)[0]
    out = {}
    for member in typing.get_args(union):
        wrapper = typing.get_args(member)[0]
        (kind, field), = wrapper.model_fields.items()
        out[kind] = field.annotation
    return out


def test_every_recipe_step_kind_is_registered_with_its_config_class() -> None:
    declared = _union_members()
    assert set(STEPS) == set(declared)
    for kind, config in declared.items():
        entry = STEPS[kind]
        assert entry.config is config, kind
        assert entry.run.__name__ == kind and entry.check is not None
    assert {k for k, e in STEPS.items() if "onnx" not in e.accepts} == {"distill", "prune", "qat"}
    assert {k for k, e in STEPS.items() if e.needs_train_data} == {"distill", "qat"}


def test_a_kind_registered_twice_is_an_error() -> None:
    def other(artifact, config, ctx) -> StepResult:  # noqa: ANN001
        return StepResult([artifact])

    with pytest.raises(ValueError, match="registered twice"):
        register_step("prune", config=object, accepts=("torch",))(other)
    assert STEPS["prune"].run.__module__ == "compress.steps.prune"
