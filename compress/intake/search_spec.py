"""The ``search:`` section of a recipe: what ``compress search`` looks for, and where.

A search samples dotted recipe parameters (``prune.ratio``, ``quantize.method``,
``distill.width``, ``data.calibration_samples``...), runs each sample as an ordinary recipe
run, and keeps the trials whose *measured* metrics meet every hard constraint. Keys that
start with a step kind name a field of that step's config; ``null`` among a step's values
means "drop that step". Whether every sampled recipe is valid is checked against the whole
recipe before any trial runs (:func:`compress.search.space.space_problems`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from compress.core.checks import Bool, StrictModel



def step_kinds() -> tuple[str, ...]:
    """The step kinds a space key may name (a key ``kind.field`` sets that step's config field):
    the registered ones, in pipeline order (the order :mod:`compress.steps.registry` imports them)."""
    from compress.core.step import STEPS

    return tuple(STEPS)

METRICS = ("latency_ms", "accuracy", "accuracy_loss", "size_mb")
"""What a trial measures of its final artifact. ``accuracy_loss`` is the baseline's accuracy minus the artifact's."""

Metric = Literal["latency_ms", "accuracy", "accuracy_loss", "size_mb"]
Direction = Literal["minimize", "maximize"]
Scalar = bool | int | float | str | None

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_PATTERN = _DURATION_RE.pattern
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_KEY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$|^[A-Za-z_]\w*$")


def parse_duration(value: Any) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h``, ``1.5d``.

    Raises:
        ValueError: Not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("a duration looks like 90s, 30m, 2h or 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        if m is None:
            raise ValueError("a duration looks like 90s, 30m, 2h or 1d")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not 0 < seconds <= 366 * 86400:
        raise ValueError("a duration is more than 0 and at most a year")
    return seconds


class Range(StrictModel):
    """A numeric range: ``{low, high}``, integers when both ends and ``step`` are, ``log`` for a log scale."""

    low: int | float
    high: int | float
    step: int | float | None = Field(None, gt=0)
    log: Bool = False

    @model_validator(mode="after")
    def _ends(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give step or log, not both (Optuna samples a log range continuously)")
        return self

    def is_int(self) -> bool:
        """Integers when both ends (and the step, if any) are written as integers."""
        return all(isinstance(v, int) for v in (self.low, self.high, 1 if self.step is None else self.step))


Choices = Annotated[list[Scalar], Field(min_length=1, max_length=1000)]


class BudgetSpec(StrictModel):
    """When to stop: after ``trials`` trials, or once ``time`` has passed (trials running then finish)."""

    trials: int = Field(20, ge=1, le=100_000)
    time: float | None = Field(None, description="90s, 30m, 2h, 1d (or seconds)", json_schema_extra={
        "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": _DURATION_PATTERN},
                  {"type": "null"}]})

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)


class RaySpec(StrictModel):
    """The Ray cluster; without ``address`` the ``RAY_ADDRESS`` variable, else a local instance."""

    address: str | None = Field(None, max_length=500, description="ray://host:10001, auto, or host:6379")


class SearchSpec(StrictModel):
    """What a search optimises, under which hard limits, on which target, over which space."""

    objectives: dict[Metric, Direction] = Field(
        default_factory=lambda: {"latency_ms": "minimize", "accuracy": "maximize"},
        description="metric -> minimize|maximize; the first one picks best.recipe.yaml among feasible trials")
    constraints: dict[Metric, float] = Field(
        default_factory=dict, description="hard limits: accuracy is a lower bound, the others upper bounds")
    target: str = Field("local", description="where latency is measured: local, ssh:NAME, adb:NAME, estimate:PROFILE")
    space: dict[str, Choices | Range] = Field(..., min_length=1, description="dotted recipe parameter -> "
                                              "[choices] or {low, high[, step, log]}; null drops a step")
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    executor: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1, le=1024, description="trials trained at once (default: the cores, "
                                "or the Ray cluster's CPUs divided by 2)")
    ray: RaySpec = Field(default_factory=RaySpec)
    storage: str | None = Field(None, max_length=1000, description="Optuna RDB URL (postgresql://...); "
                                "default sqlite in the search folder (search.db)")
    sampler: Literal["tpe", "nsga2", "grid"] = Field("tpe", description="tpe (multi-objective TPE), nsga2, or grid "
                                                     "(every combination once; ranges need a step)")
    seed: int | None = Field(0, ge=0, le=2**32 - 1, description="the sampler's seed")
    require: Bool = Field(False, description="exit 1 when no trial meets every constraint")

    @model_validator(mode="after")
    def _grid(self) -> SearchSpec:
        if self.sampler == "grid":
            loose = [k for k, d in self.space.items() if isinstance(d, Range) and d.step is None and not d.is_int()]
            if loose:
                raise ValueError(f"sampler: grid needs a step on every float range ({', '.join(loose)})")
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("name at least one objective, e.g. {latency_ms: minimize}")
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: dict[str, float]) -> dict[str, float]:
        for k, limit in v.items():
            if limit < 0 and k != "accuracy_loss":
                raise ValueError(f"{k}: a limit is >= 0 (got {limit})")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        from devices.names import parse_target, unknown_name

        problem = unknown_name(v)
        if problem:
            raise ValueError(problem)
        if parse_target(v).kind == "emulated":
            raise ValueError("emulated targets time nothing real; search on local, a board, a phone or an estimate")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError("an Optuna storage URL, e.g. postgresql://user@host/db or sqlite:///search.db")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, dom in v.items():
            problem = key_problem(key, dom)
            if problem:
                raise ValueError(f"{key}: {problem}")
        return v


def key_problem(key: str, domain: Any) -> str | None:
    """What is wrong with one space key and its domain, or None.

    A step key names a field of that step kind's config (``prune.ratio``); other keys are
    recipe paths (``data.calibration_samples``), never the recipe's identity or its steps.
    """
    if not _KEY_RE.match(key):
        return "a space key is a dotted recipe path such as prune.ratio or quantize.method"
    head, _, field = key.partition(".")
    if head in ("version", "name", "steps", "search", "export"):
        return f"{head} cannot be searched (steps are set by kind: prune.ratio, quantize.method)"
    if head in step_kinds():
        from compress.core.step import STEPS

        config = STEPS[head].config
        if not field or "." in field:
            return f"name one field of the {head} step, e.g. {head}.{next(iter(config.model_fields))}"
        if field not in config.model_fields:
            return (f"the {head} step has no field {field!r}; its fields: "
                    + ", ".join(sorted(config.model_fields)))
    elif head not in _recipe_fields():
        return f"no recipe section {head!r}; a step field is written kind.field (prune.ratio)"
    return None


def _recipe_fields() -> set[str]:
    from compress.intake.recipe import Recipe

    return set(Recipe.model_fields)
