"""Read a recipe file: YAML -> validated Recipe, every problem with its line and path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compress.errors import RecipeError, RecipeProblem
from compress.recipe import Recipe, step_config, step_kind
from compress.registry import STEPS
from compress.yamlpos import Loc, dotted, line_of, load_with_lines

TORCH_ONLY_STEPS = ("distill", "prune", "qat")


@dataclass
class RecipeSource:
    """A validated recipe and where it came from (for line numbers in later errors)."""

    recipe: Recipe
    path: Path | None
    text: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def problem(self, loc: Loc, message: str) -> RecipeProblem:
        return RecipeProblem(dotted(loc), message, line_of(self.lines, loc))

    def error(self, problems: list[RecipeProblem]) -> RecipeError:
        return RecipeError(problems, str(self.path) if self.path else None)


def _strip_tags(loc: tuple[Any, ...]) -> Loc:
    """Drop the union tag pydantic inserts after a list index (``steps.0.prune.prune.ratio``)."""
    out: list[Any] = []
    i = 0
    while i < len(loc):
        out.append(loc[i])
        if isinstance(loc[i], int) and i + 2 < len(loc) and loc[i + 1] == loc[i + 2]:
            i += 2
            continue
        if isinstance(loc[i], int) and i + 1 < len(loc) and isinstance(loc[i + 1], str) and loc[i + 1].startswith("function-"):
            i += 2
            continue
        i += 1
    return tuple(out)


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; `compress schema` lists the keys)"
    if err["type"] == "missing":
        return "required key is missing"
    if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def apply_overrides(data: Any, overrides: list[str]) -> Any:
    """Apply ``a.b[0].c=value`` overrides (value parsed as YAML) to raw recipe data."""
    import re

    for item in overrides:
        if "=" not in item:
            raise RecipeError([RecipeProblem(item, "an override looks like path.to.key=value")], "--set")
        key, _, raw = item.partition("=")
        parts: list[Any] = []
        for name, idx in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
            parts.append(int(idx) if idx else name)
        node = data
        for p in parts[:-1]:
            try:
                node = node[p]
            except (KeyError, IndexError, TypeError):
                raise RecipeError([RecipeProblem(key, "no such place in the recipe to override")], "--set") from None
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise RecipeError([RecipeProblem(key, f"the value {raw!r} is not valid YAML: "
                                                  f"{getattr(e, 'problem', None) or e}")], "--set") from None
        if not parts:
            raise RecipeError([RecipeProblem(item, "an override looks like path.to.key=value")], "--set")
        try:
            node[parts[-1]] = value
        except (IndexError, TypeError):
            raise RecipeError([RecipeProblem(key, "no such place in the recipe to override")], "--set") from None
    return data


def semantic_problems(src: RecipeSource) -> list[RecipeProblem]:
    """Cross-field rules checked before any work starts."""
    r = src.recipe
    problems: list[RecipeProblem] = []
    onnx_model = r.model.source_kind == "onnx"
    has_labels_data = r.data is not None
    seen_onnx_step = False
    seen_qat = False
    for i, step in enumerate(r.steps):
        kind = step_kind(step)
        cfg = step_config(step)
        loc: Loc = ("steps", i, kind)
        if kind in TORCH_ONLY_STEPS and onnx_model:
            problems.append(src.problem(loc, f"{kind} needs a PyTorch model, but model.onnx gives an ONNX file; "
                                             "use model.factory (+ weights) or model.exported"))
        if kind == "quantize" and getattr(cfg, "engine", "ort") == "inc" and onnx_model:
            problems.append(src.problem(loc + ("engine",), "engine: inc quantizes the PyTorch model; the model is ONNX"))
        if kind in TORCH_ONLY_STEPS and seen_onnx_step:
            problems.append(src.problem(loc, f"{kind} works on the PyTorch model and cannot follow an ONNX quantize step"))
        if kind in ("prune", "distill") and seen_qat:
            problems.append(src.problem(loc, f"{kind} cannot follow qat: prune and distill the float model first"))
        entry = STEPS[kind]
        trains = entry.needs_train_data or (kind == "prune" and getattr(cfg, "epochs", 0) > 0)
        if trains and not has_labels_data:
            problems.append(src.problem(loc, f"{kind} trains the model and needs training data: add a data section"))
        if kind == "quantize" and getattr(cfg, "tolerable_loss", None) is not None and r.data is None:
            problems.append(src.problem(loc + ("tolerable_loss",), "accuracy-aware tuning needs eval data: add a data section"))
        if kind == "quantize" and getattr(cfg, "engine", "ort") == "ort":
            seen_onnx_step = True
        if kind == "qat":
            seen_qat = True
    if onnx_model and "tflite" in r.export_kinds():
        idx = r.export_kinds().index("tflite")
        problems.append(src.problem(("export", idx), "tflite export converts a PyTorch model; the model is ONNX"))
    problems += _input_problems(src)
    problems += _target_problems(src)
    if r.task.kind == "classification" and r.task.labels is not None and len(set(r.task.labels)) != len(r.task.labels):
        problems.append(src.problem(("task", "labels"), "labels must be unique"))
    if r.package is not None and r.package.artifact not in ("best",) and not r.export:
        problems.append(src.problem(("package",), "package needs an exported artifact"))
    elif r.package is not None and not _could_be_artifact(r, r.package.artifact):
        problems.append(src.problem(("package", "artifact"), f"this recipe makes no artifact named {r.package.artifact!r}: "
                                                             "ONNX names start with onnx-, TFLite names with tflite- "
                                                             "(a name given to a quantize step also works)"))
    return problems


def _input_problems(src: RecipeSource) -> list[RecipeProblem]:
    """Dynamic dimensions nothing resolves: without data, each -1 (batch apart) needs a ``dynamic`` size.

    An ONNX model without ``model.inputs`` is read for its declared input shapes.
    """
    r = src.recipe
    if r.data is not None:
        return []
    specs = r.model.input_specs()
    if specs is not None:
        return [src.problem(("model", "inputs", i, "shape"),
                            f"axis {axis} of input {s.name!r} is dynamic (-1) and there is no data to resolve it: "
                            f"add model.inputs[{i}].dynamic: {{{axis}: SIZE}} or a data section")
                for i, s in enumerate(specs) for axis in s.dynamic_axes]
    if r.model.source_kind != "onnx":
        return []
    from compress.errors import InputFileError
    from compress.models import onnx_input_specs

    try:
        declared = onnx_input_specs(r.model.onnx) if r.model.onnx is not None and r.model.onnx.is_file() else None
    except InputFileError:
        declared = None
    if not declared:  # unreadable, or no inputs: say what the recipe must give
        return [src.problem(("model",), "an ONNX model without a data section needs input_shape (or inputs): "
                                        "the run feeds it random inputs of that shape")]
    return [src.problem(("model", "onnx"),
                        f"input {s.name!r} of the ONNX model has dynamic axis {axis} (shape {s.shape}) and there is "
                        f"no data to resolve it: describe it as model.inputs[{i}] (name, shape, dtype) with "
                        f"dynamic: {{{axis}: SIZE}}, or add a data section")
            for i, s in enumerate(declared) for axis in s.dynamic_axes]


def _could_be_artifact(r: Recipe, name: str) -> bool:
    """Whether a run of ``r`` can make a file artifact of that name (exact names exist only after the run)."""
    named = {getattr(step_config(s), "name", None) for s in r.steps}
    prefixes = ["onnx"] + (["tflite"] if "tflite" in r.export_kinds() else [])
    return name in named or (name == "baseline" and r.model.source_kind == "onnx") or name.startswith(tuple(prefixes))


def _target_problems(src: RecipeSource) -> list[RecipeProblem]:
    """Names that only resolve at benchmark time (device profiles, networks), checked up front."""
    from devices.estimate import list_profiles

    r = src.recipe
    problems: list[RecipeProblem] = []
    profiles = list_profiles()
    for i, t in enumerate(r.bench.targets):
        if t.startswith("estimate:") and t.split(":", 1)[1] not in profiles:
            problems.append(src.problem(("bench", "targets", i), f"no device profile {t.split(':', 1)[1]!r}; "
                                                                 f"available: {', '.join(profiles)}"))
    if r.tradeoff is not None:
        from bench.tradeoff import NETWORKS

        known = set(NETWORKS) | set(r.tradeoff.networks)
        for i, name in enumerate(r.tradeoff.network):
            if name not in known:
                problems.append(src.problem(("tradeoff", "network", i), f"unknown network {name!r}: use "
                                            f"{', '.join(sorted(known))} or define it under tradeoff.networks"))
        if r.tradeoff.device is not None and r.tradeoff.device not in r.bench.targets:
            problems.append(src.problem(("tradeoff", "device"), f"{r.tradeoff.device!r} is not one of bench.targets "
                                                                f"({', '.join(r.bench.targets)})"))
        cloud = r.tradeoff.cloud.profile
        if cloud is not None and cloud not in profiles:
            problems.append(src.problem(("tradeoff", "cloud", "profile"), f"no device profile {cloud!r}; "
                                                                          f"available: {', '.join(profiles)}"))
    return problems


def parse_recipe_text(text: str, path: Path | None, overrides: list[str] | None = None,
                      check_files: bool = True) -> RecipeSource:
    """Validate recipe text; raise RecipeError listing every problem."""
    file = str(path) if path else None
    try:
        data, lines = load_with_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RecipeError([RecipeProblem("", f"not valid YAML: {getattr(e, 'problem', e)}", line)], file) from None
    if not isinstance(data, dict):
        raise RecipeError([RecipeProblem("", "a recipe is a YAML mapping (version, name, model, ...)", 1)], file)
    if overrides:
        data = apply_overrides(data, overrides)
    base = path.parent if path else Path(".")
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base.resolve(), "check_files": check_files})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = _strip_tags(err["loc"])
            problems.append(RecipeProblem(dotted(loc), _message(err), line_of(lines, loc)))
        raise RecipeError(problems, file) from None
    src = RecipeSource(recipe, path, text, lines)
    problems = semantic_problems(src)
    if problems:
        raise src.error(problems)
    return src


def parse_recipe(path: Path, overrides: list[str] | None = None) -> RecipeSource:
    """Read and validate a recipe file."""
    if not path.is_file():
        raise RecipeError([RecipeProblem("", "recipe file not found")], str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([RecipeProblem("", f"cannot read the recipe: {e}")], str(path)) from None
    return parse_recipe_text(text, path, overrides)
