"""Recipe validation: every problem reported at once, with line and dotted path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from compress.cli import app
from compress.core.errors import RecipeError
from compress.intake.recipe import Recipe
from compress.steps.prune import PruneConfig
from compress.intake.recipe_io import parse_recipe, parse_recipe_text, recipe_schema
from tests.conftest import ROOT, TINY_RECIPE, write_recipe

runner = CliRunner()


def problems(text: str, folder: Path) -> list:
    path = write_recipe(folder, text)
    with pytest.raises(RecipeError) as exc:
        parse_recipe(path)
    return exc.value.problems


def test_quickstart_recipe_is_valid() -> None:
    src = parse_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert src.recipe.name == "digits-quickstart"
    assert src.recipe.model.weights is not None and src.recipe.model.weights.is_file()


def test_every_recipe_in_recipes_folder_validates() -> None:
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        parse_recipe(path)


def test_typo_wrong_type_and_impossible_value_all_reported_with_lines(tiny_dir: Path) -> None:
    text = TINY_RECIPE.replace("eval_fraction: 0.25", "eval_fraction: 1.5").replace(
        "threads: [1]", "threads: [one]").replace("task: {kind: classification}", "task: {kind: classification, lables: [a]}")
    found = problems(text, tiny_dir)
    by_path = {p.path: p for p in found}
    assert "data.eval_fraction" in by_path and "less than 1" in by_path["data.eval_fraction"].message
    assert "bench.threads[0]" in by_path
    assert "task.lables" in by_path and "unknown key" in by_path["task.lables"].message
    assert by_path["task.lables"].line == 6
    assert by_path["data.eval_fraction"].line == 7


def test_step_error_path_and_line(tiny_dir: Path) -> None:
    text = TINY_RECIPE + "steps:\n  - prune: {ratio: 1.5, method: structured}\n  - frobnicate: {}\n"
    found = problems(text, tiny_dir)
    paths = {p.path: p for p in found}
    assert "steps[0].prune.ratio" in paths
    assert paths["steps[0].prune.ratio"].line == 11
    assert any(p.path == "steps[1]" and "single-key mapping" in p.message for p in found)


def test_missing_file_names_the_file(tiny_dir: Path) -> None:
    found = problems(TINY_RECIPE.replace("tiny_model.py:tiny", "nothere.py:tiny"), tiny_dir)
    assert found[0].path == "model.factory" and "nothere.py" in found[0].message


def test_onnx_model_refuses_torch_steps(tiny_dir: Path) -> None:
    (tiny_dir / "m.onnx").write_bytes(b"x")
    text = TINY_RECIPE.replace("factory: tiny_model.py:tiny", "onnx: m.onnx") + "steps:\n  - prune: {ratio: 0.5}\n"
    found = problems(text, tiny_dir)
    assert any(p.path == "steps[0].prune" and "needs a PyTorch model" in p.message for p in found)


def test_pickle_needs_trust(tiny_dir: Path) -> None:
    (tiny_dir / "m.pt").write_bytes(b"x")
    found = problems(TINY_RECIPE.replace("factory: tiny_model.py:tiny", "pickle: m.pt"), tiny_dir)
    assert any("trust_pickle" in p.message for p in found)


def test_training_step_without_data_is_an_error(tiny_dir: Path) -> None:
    text = TINY_RECIPE.replace("data: {source: tiny_model.py:data, eval_fraction: 0.25, calibration_samples: 16}\n", "")
    text += "steps:\n  - qat: {epochs: 1}\n"
    found = problems(text, tiny_dir)
    assert any(p.path == "steps[0].qat" and "training data" in p.message for p in found)


def test_invalid_yaml_reports_line(tiny_dir: Path) -> None:
    found = problems("version: 1\nname: [unclosed\n", tiny_dir)
    assert found[0].line is not None and "YAML" in found[0].message


def test_prune_ratio_bounds() -> None:
    PruneConfig(ratio=0.0)
    with pytest.raises(ValidationError):
        PruneConfig(ratio=1.0)
    with pytest.raises(ValidationError):
        PruneConfig(ratio=-0.1)


def test_overrides(tiny_dir: Path) -> None:
    path = write_recipe(tiny_dir, TINY_RECIPE)
    src = parse_recipe(path, ["bench.runs=7", "bench.threads=[1, 2]"])
    assert src.recipe.bench.runs == 7 and src.recipe.bench.threads == [1, 2]


def test_export_forms() -> None:
    r = parse_recipe_text(
        "version: 1\nname: x\nmodel: {factory: 'os.path:join', input_shape: [1, 3]}\ntask: {kind: regression}\n"
        "export: [onnx, {tflite: {precisions: [fp32]}}]\n", None)
    assert r.recipe.export_kinds() == ["onnx", "tflite"]
    assert r.recipe.export_config("tflite").precisions == ["fp32"]


def test_validate_cli_exit_codes(tiny_dir: Path) -> None:
    good = write_recipe(tiny_dir, TINY_RECIPE, "good.yaml")
    assert runner.invoke(app, ["validate", str(good)]).exit_code == 0
    bad = write_recipe(tiny_dir, TINY_RECIPE.replace("runs: 5", "runs: -5, colour: red"), "bad.yaml")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "bad.yaml:9 bench.runs" in res.output and "bench.colour" in res.output
    assert "Traceback" not in res.output


def test_schema_cli_is_json_schema() -> None:
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert schema["title"] == "edgepack recipe (version 1)"
    assert set(schema["required"]) >= {"version", "name", "model", "task"}
    assert schema["properties"] == recipe_schema()["properties"] == Recipe.model_json_schema()["properties"]
