"""The recipe's ``steps:`` entries, validated by the step registry.

A step is written as a single-key mapping (``- prune: {ratio: 0.5}``). The kinds and their
config classes are not listed here: each step module registers its kind and config class with
:func:`compress.core.step.register_step` (:data:`compress.core.step.STEPS`), and :class:`Step`
dispatches on that registry when a recipe is validated and when its JSON Schema is made. The
registry is filled by importing :mod:`compress.steps.registry`, which the whole-recipe check
(:mod:`compress.intake.recipe_io`, a layer above the steps) does.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, SerializationInfo, TypeAdapter, ValidationInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from compress.core.step import STEPS, StepKind


class Step:
    """One entry of ``steps:``: a single-key mapping ``{kind: config}``, e.g. ``- prune: {ratio: 0.5}``.

    Validation dispatches on the kind (the registry's, see the module docstring) and reports a
    config's errors at ``steps[i].kind.field``; ``compress schema`` lists one alternative per
    registered kind, built when the schema is asked for.

    Args:
        kind: The step's kind (``prune``).
        config: Its validated config, an instance of the kind's registered class.
    """

    __slots__ = ("kind", "config")

    def __init__(self, kind: str, config: BaseModel) -> None:
        self.kind = kind
        self.config = config

    def __repr__(self) -> str:
        return f"Step({self.kind}={self.config!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and (self.kind, self.config) == (other.kind, other.config)

    __hash__ = None  # type: ignore[assignment]  (mutable config)

    @classmethod
    def validate(cls, value: Any, info: ValidationInfo) -> Step:
        """A step from its mapping: the kind picks the registered config class that validates the rest."""
        if isinstance(value, Step):
            return value
        kinds = _registered_steps()
        if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in kinds):
            raise PydanticCustomError("step_kind", "a step is a single-key mapping: {kinds}",
                                      {"kinds": _spoken_list(sorted(kinds))})
        ((kind, config),) = value.items()
        adapter = _config_adapter(kinds[kind].config)
        validated = adapter.validate_python({kind: config}, context=info.context)  # errors at steps[i].kind.field
        return cls(kind, validated[kind])

    @staticmethod
    def serialize(step: Step, info: SerializationInfo) -> dict[str, Any]:
        options = {k: getattr(info, k) for k in ("by_alias", "exclude_unset", "exclude_defaults", "exclude_none")}
        return {step.kind: step.config.model_dump(mode=info.mode, **options)}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            cls.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(cls.serialize, info_arg=True),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """One alternative per registered kind, built when the schema is asked for."""
        alternatives = []
        for kind, entry in sorted(_registered_steps().items()):
            config = handler(entry.config.__pydantic_core_schema__)
            alternatives.append({
                "type": "object", "title": kind, "description": _summary(entry.config),
                "properties": {kind: config}, "required": [kind], "additionalProperties": False,
            })
        return {"oneOf": alternatives, "description": "a single-key mapping: the step's kind and its settings"}


def _registered_steps() -> dict[str, StepKind]:
    """kind -> :class:`compress.core.step.StepKind`; refused while no kind is registered (an import missing)."""
    if not STEPS:
        raise RuntimeError("no step kind is registered: import compress.steps.registry (recipe_io does) "
                           "before validating a recipe or asking for its schema")
    return STEPS


@functools.lru_cache(maxsize=None)
def _config_adapter(config: type) -> TypeAdapter[dict[str, Any]]:
    return TypeAdapter(dict[str, config])  # type: ignore[valid-type]


def _spoken_list(words: list[str]) -> str:
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def _summary(model: type) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def step_kind(step: Any) -> str:
    """The kind of a validated step (``prune``) or export item (``onnx``)."""
    if isinstance(step, Step):
        return step.kind
    return next(iter(type(step).model_fields))


def step_config(step: Any) -> BaseModel:
    """The config of a validated step or export item."""
    if isinstance(step, Step):
        return step.config
    return getattr(step, step_kind(step))
