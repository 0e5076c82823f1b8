"""The step registry: one registration per kind builds the recipe's step validation, its schema and the dispatch.

A toy kind registered here (and removed after each test) is validated in a recipe, listed by
``compress schema`` and run by the runner, with no other change anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field
from typer.testing import CliRunner

from compress.cli import app
from compress.core.checks import StrictModel
from compress.core.errors import RecipeError, StepError
from compress.core.step import STEPS, Notes, StepResult, register_step
from compress.intake.recipe import Step
from compress.intake.recipe_io import parse_recipe_text
from compress.steps.registry import load
from tests.unit.compress.steps.fixtures import digits_runner, digits_source


def test_every_kind_is_registered_with_the_config_class_beside_its_step() -> None:
    assert set(STEPS) == {"distill", "prune", "qat", "quantize"}
    for kind, entry in STEPS.items():
        assert issubclass(entry.config, StrictModel), kind
        assert entry.config.__module__.startswith(f"compress.steps.{kind}"), (kind, entry.config.__module__)
        assert entry.run.__name__ == kind and entry.check is not None
    assert {k for k, e in STEPS.items() if "onnx" not in e.accepts} == {"distill", "prune", "qat"}
    assert {k for k, e in STEPS.items() if e.needs_train_data} == {"distill", "qat"}


def test_a_kind_registered_twice_is_an_error() -> None:
    def other(artifact, config, ctx) -> StepResult:  # noqa: ANN001
        return StepResult([artifact])

    with pytest.raises(ValueError, match="registered twice"):
        register_step("prune", config=object, accepts=("torch",))(other)
    assert STEPS["prune"].run.__module__ == "compress.steps.prune"


# --------------------------------------------------------------------------- a toy kind


class ToyConfig(StrictModel):
    """Scale nothing, by a factor (a toy kind for this test)."""

    factor: float = Field(..., gt=0, le=10, description="how much")
    fail: bool = Field(False, description="advise, then fail")


def toy(artifact, config: ToyConfig, ctx) -> StepResult:  # noqa: ANN001
    notes = Notes(ctx)
    notes.details["factor"] = config.factor
    notes.advise("toy_advice", f"the toy was asked for {config.factor}x")
    if config.fail:
        raise StepError(ctx.step_name, "the toy failed on purpose")
    return notes.result(artifact)


def toy_crash(artifact, config: ToyConfig, ctx) -> StepResult:  # noqa: ANN001
    Notes(ctx).advise("crash_advice", "advised just before a bug")
    raise RuntimeError("a bug in the step")


@pytest.fixture()
def toy_kinds() -> Iterator[None]:
    register_step("toy", config=ToyConfig, accepts=("torch",))(toy)
    register_step("toy_crash", config=ToyConfig, accepts=("torch",))(toy_crash)
    try:
        yield
    finally:
        STEPS.pop("toy", None)
        STEPS.pop("toy_crash", None)


RECIPE = """version: 1
name: t
model: {factory: 'os.path:join', input_shape: [1, 3]}
task: {kind: regression}
steps:
  - prune: {ratio: 0.5}
  - toy: {factor: 2}
"""


def test_a_registered_kind_is_validated_with_paths_and_lines(toy_kinds: None) -> None:
    recipe = parse_recipe_text(RECIPE, None).recipe
    step = recipe.steps[1]
    assert isinstance(step, Step) and step.kind == "toy" and step.config == ToyConfig(factor=2)
    assert recipe.model_dump(mode="json")["steps"][1] == {"toy": {"factor": 2.0, "fail": False}}
    with pytest.raises(RecipeError) as e:
        parse_recipe_text(RECIPE.replace("{factor: 2}", "{factor: 20, colour: red}"), Path("r.yaml"))
    found = {p.path: p for p in e.value.problems}
    assert set(found) == {"steps[1].toy.factor", "steps[1].toy.colour"}
    assert found["steps[1].toy.factor"].line == 7 and "less than or equal to 10" in found["steps[1].toy.factor"].message
    assert "unknown key" in found["steps[1].toy.colour"].message
    with pytest.raises(RecipeError) as e:
        parse_recipe_text(RECIPE.replace("toy:", "toyy:"), None)
    (p,) = e.value.problems
    assert p.path == "steps[1]" and "distill, prune, qat, quantize, toy or toy_crash" in p.message


def test_a_registered_kind_is_in_the_schema_and_gone_when_unregistered(toy_kinds: None) -> None:
    def step_alternatives() -> dict[str, dict]:
        schema = json.loads(CliRunner().invoke(app, ["schema"]).output)
        return {alt["required"][0]: alt for alt in schema["properties"]["steps"]["items"]["oneOf"]}

    alts = step_alternatives()
    assert set(alts) == {"distill", "prune", "qat", "quantize", "toy", "toy_crash"}
    toy_props = alts["toy"]["properties"]["toy"]
    assert toy_props["properties"]["factor"]["exclusiveMinimum"] == 0 and toy_props["required"] == ["factor"]
    assert toy_props["additionalProperties"] is False and alts["toy"]["additionalProperties"] is False
    STEPS.pop("toy")
    STEPS.pop("toy_crash")
    assert set(step_alternatives()) == {"distill", "prune", "qat", "quantize"}
    with pytest.raises(RecipeError, match="single-key mapping: distill, prune, qat or quantize"):
        parse_recipe_text(RECIPE, None)


def test_the_runner_runs_a_registered_kind(toy_kinds: None, tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, steps="[{toy: {factor: 3}}]")
    out = runner.run_step(0, runner.recipe.steps[0], runner.baseline, runner.baseline)
    record = runner.state.steps[0]
    assert out is runner.baseline and record["kind"] == "toy" and record["name"] == "01-toy"
    assert record["details"] == {"factor": 3.0} and record["config"] == {"factor": 3.0, "fail": False}
    assert [(a.code, a.step) for a in runner.state.advisories] == [("toy_advice", "01-toy")]


# --------------------------------------------------------------------------- advisories of a failed step


def test_advisories_given_before_a_step_fails_reach_the_report(toy_kinds: None, tmp_path: Path) -> None:
    from compress.runner.run import Runner

    runner = Runner(digits_source(tmp_path, steps="[{toy: {factor: 2, fail: true}}]"), tmp_path / "run")
    with pytest.raises(StepError, match="the toy failed on purpose") as e:
        runner.run()
    assert [a.code for a in e.value.advisories] == ["toy_advice"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed"
    assert [(a["code"], a["step"]) for a in report["advisories"]] == [("toy_advice", "01-toy")]
    assert report["steps"][0]["status"] == "failed"


def test_advisories_given_before_a_bug_are_kept_with_the_step_error(toy_kinds: None, tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, steps="[{toy_crash: {factor: 1}}]")
    with pytest.raises(StepError, match="RuntimeError: a bug in the step"):
        runner.run_step(0, runner.recipe.steps[0], runner.baseline, runner.baseline)
    assert [a.code for a in runner.state.advisories] == ["crash_advice"]


def advising_export(artifact, config, ctx) -> StepResult:  # noqa: ANN001
    """An export that advises and then fails (loaded by its reference, as the registry loads exports)."""
    Notes(ctx).advise("export_advice", "advised before the export failed")
    raise StepError(ctx.step_name, "the export failed")


def test_an_export_loaded_by_the_registry_carries_its_advisories_out(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    ctx = runner._context(tmp_path / "x", "export:toy", None)
    export = load(f"{__name__}:advising_export")
    with pytest.raises(StepError) as e:
        export(runner.baseline, None, ctx)
    assert [(a.code, a.step) for a in e.value.advisories] == [("export_advice", "export:toy")]
    with pytest.raises(StepError) as e:  # called directly (not through the registry) it stays as it was
        advising_export(runner.baseline, None, ctx)
    assert list(e.value.advisories) == []


def test_the_same_advisory_is_attached_once_through_nested_scopes() -> None:
    from compress.core.step import noting
    from compress.core.types import Advisory

    seen: list[Advisory] = []

    class Ctx:
        step_name = "01-x"
        log = staticmethod(lambda msg: None)

    def inner() -> None:
        notes = Notes(Ctx())  # type: ignore[arg-type]
        notes.advise("a", "first")
        seen.extend(notes.advisories)
        raise StepError("01-x", "boom", advisories=notes.advisories)

    with pytest.raises(StepError) as e:
        noting(lambda: noting(inner)())()
    assert e.value.advisories == seen and len(seen) == 1
