"""`compress schema` is a JSON Schema editors can use: it accepts what the parser accepts, and refuses typos.

Editors (yaml-language-server) read YAML 1.2, where ``1e-3`` is a number and ``yes`` a string;
the recipes are loaded the same way here before the schema judges them.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app
from compress.core.errors import RecipeError
from compress.intake.recipe import Recipe
from compress.intake.recipe_io import SCHEMA_ID, parse_recipe_text, recipe_schema
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML with YAML 1.2's core schema for booleans and floats, as editors read a recipe."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def as_editor_reads(text: str) -> Any:
    """The recipe as JSON data, read as YAML 1.2 (mapping keys become strings, as in JSON)."""
    return json.loads(json.dumps(yaml.load(text, Loader=Yaml12Loader), default=str))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    res = CliRunner().invoke(app, ["schema"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def _problems(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(data)]


def test_the_schema_is_a_draft_2020_12_schema_with_a_name(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID and schema["title"].startswith("edgepack recipe")
    assert schema["description"] and schema == recipe_schema()
    assert set(schema["required"]) >= {"version", "name", "model", "task"}
    kinds = [alt["required"] for alt in schema["properties"]["steps"]["items"]["oneOf"]]
    assert kinds == [["distill"], ["prune"], ["qat"], ["quantize"]]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_validates_against_the_schema(path: Path, validator: Any) -> None:
    assert _problems(validator, as_editor_reads(path.read_text())) == []


def _recipe_texts_in_the_tests() -> list[tuple[str, str]]:
    """Every string constant under tests/ that is a whole recipe (starts with ``version: 1``)."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = textwrap.dedent(node.value).lstrip()
                if text.startswith("version: 1\n"):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", text))
    return found


def test_every_recipe_the_suite_writes_that_the_parser_accepts_the_schema_accepts(validator: Any) -> None:
    """Where practical: the recipes written as one string (templates and concatenations apart)."""
    from tests.unit.compress.steps.fixtures import DIGITS_RECIPE, MODELS

    texts = _recipe_texts_in_the_tests()
    texts += [(f"fixtures DIGITS_RECIPE steps={steps}", DIGITS_RECIPE.format(models=MODELS, steps=steps, task=task))
              for steps, task in [("[]", "classification"), ("[{distill: {width: 0.5, epochs: 3, lr: 3e-3}}]", "regression"),
                                  ("[{prune: {ratio: 0.5, epochs: 1}}, {qat: {epochs: 1}}, {quantize: {}}]", "classification")]]
    checked = 0
    for where, text in texts:
        try:
            Recipe.model_validate(yaml.safe_load(text), context={"base_dir": ROOT, "check_files": False})
        except Exception:  # noqa: BLE001  (a recipe a test writes to be refused, or a template)
            continue
        assert _problems(validator, as_editor_reads(text)) == [], where
        checked += 1
    assert checked >= 15, checked  # the scan found the suite's recipes


WRONG = {
    "unknown top-level key": "colour: red\n",
    "unknown step kind": "steps:\n  - frobnicate: {}\n",
    "unknown key in a step": "steps:\n  - prune: {ratioo: 0.5}\n",
    "step value out of range": "steps:\n  - prune: {ratio: 1.5}\n",
    "step with two kinds": "steps:\n  - {prune: {}, qat: {}}\n",
    "step without options": "steps:\n  - prune\n",
    "unknown export": "export: [onnx, bogus]\n",
    "export with two kinds": "export: [{onnx: {}, tflite: {}}]\n",
    "export option typo": "export: [{onnx: {opsett: 17}}]\n",
    "wrong type": "seed: zero\n",
    "shadow option typo": "shadow: {max_flip_ratee: 0.1}\n",
    "shadow share out of range": "shadow: {max_flip_rate: 2}\n",
    "shadow artifacts not a list": "shadow: {artifacts: some}\n",
}
BASE = "version: 1\nname: t\nmodel: {factory: 'os.path:join', input_shape: [1, 3]}\ntask: {kind: regression}\n"


@pytest.mark.parametrize("extra", WRONG.values(), ids=WRONG.keys())
def test_a_wrong_recipe_is_refused_by_the_schema_and_the_parser(extra: str, validator: Any) -> None:
    assert _problems(validator, as_editor_reads(BASE)) == []
    assert _problems(validator, as_editor_reads(BASE + extra)) != []
    with pytest.raises(RecipeError):
        parse_recipe_text(BASE + extra, None)


def test_export_shorthands_are_in_the_schema(validator: Any) -> None:
    for export in ("[onnx]", "[tflite]", "[onnx, {tflite: {precisions: [fp32]}}]", "[{onnx: }]", "[{onnx: {opset: 17}}]"):
        text = BASE + f"export: {export}\n"
        parse_recipe_text(text, None)
        assert _problems(validator, as_editor_reads(text)) == [], export


def test_the_shadow_section_is_in_the_schema(validator: Any, schema: dict[str, Any]) -> None:
    assert "shadow" in schema["properties"]
    for section in ("shadow: {}", "shadow: null", "shadow: {max_flip_rate: 0.02, max_accuracy_drop: 0.01, "
                    "artifacts: [onnx-static], worst: 5}", "shadow: {artifacts: all, max_ece_increase: null}"):
        text = BASE + section + "\n"
        recipe = parse_recipe_text(text, None)
        assert _problems(validator, as_editor_reads(text)) == [], section
    assert recipe.recipe.shadow is not None and recipe.recipe.shadow.artifacts == "all"


def test_shadow_inputs_must_exist(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"shadow.inputs"):
        parse_recipe_text(BASE + "shadow: {inputs: missing.npz}\n", tmp_path / "recipe.yaml")
