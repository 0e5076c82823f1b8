"""Read a recipe file: YAML -> validated Recipe, every problem with its line and path."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compress.core.errors import RecipeError, RecipeProblem, shorten
from compress.intake.recipe import Recipe, step_config, step_kind
from compress.steps.registry import STEPS
from devices.names import TargetName, try_parse
from compress.intake.yamlpos import MAX_BYTES, Loc, YamlLimitError, dotted, line_of, load_value, load_with_lines



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
        # a message of ours that already shows the value (a path) says it once
        if not (err["type"] == "value_error" and str(err["input"])[:40] in msg):
            msg += f" (got {shorten(repr(err['input']))})"
    return msg


def override_path(item: str) -> Loc:
    """The location an override ``a.b[0].c=value`` sets: ``("a", "b", 0, "c")``."""
    key = item.partition("=")[0]
    return tuple(int(idx) if idx else name for name, idx in _PART_RE.findall(key))


_PART_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_overrides(data: Any, overrides: list[str]) -> Any:
    """Apply ``a.b[0].c=value`` overrides (value parsed as YAML) to raw recipe data.

    A key absent from the file is added, with the mappings on its way (``--set
    parity.atol=1e-3`` on a recipe without ``parity``); whether the schema allows it is
    decided by validation, which names the dotted path. A list item must exist already.
    """
    for item in overrides:
        if "=" not in item:
            raise RecipeError([RecipeProblem(shorten(item), "an override looks like path.to.key=value")], "--set")
        key, _, raw = item.partition("=")
        parts = list(override_path(item))
        if not parts:
            raise RecipeError([RecipeProblem(shorten(item), "an override looks like path.to.key=value")], "--set")
        node = data
        for i, (p, nxt) in enumerate(zip(parts[:-1], parts[1:])):
            node = _descend(node, p, nxt, key, parts[: i + 1])
        try:
            value = load_value(raw)
        except yaml.YAMLError as e:
            raise RecipeError([RecipeProblem(shorten(key), f"the value {shorten(repr(raw))} is not valid YAML: "
                                                           f"{getattr(e, 'problem', None) or e}")], "--set") from None
        _place(node, parts[-1], value, key, parts)
    return data


def _no_place(key: str, at: list[Any], why: str) -> RecipeError:
    return RecipeError([RecipeProblem(shorten(key), f"no such place in the recipe to override: {why}")], "--set")


def _descend(node: Any, part: Any, nxt: Any, key: str, at: list[Any]) -> Any:
    """The child ``part`` of ``node``, created as a mapping when absent (or null) and ``nxt`` is a key."""
    if isinstance(node, dict) and isinstance(part, str):
        if node.get(part) is None:
            if not isinstance(nxt, str):
                raise _no_place(key, at, f"{dotted(tuple(at))} is not a list in the recipe")
            node[part] = {}
        return node[part]
    if isinstance(node, list) and isinstance(part, int):
        if part >= len(node):
            raise _no_place(key, at, f"{dotted(tuple(at[:-1]))} has {len(node)} item(s)")
        return node[part]
    raise _no_place(key, at, f"{dotted(tuple(at[:-1])) or 'the recipe'} is not a "
                             f"{'list' if isinstance(part, int) else 'mapping'}")


def _place(node: Any, part: Any, value: Any, key: str, at: list[Any]) -> None:
    if isinstance(node, dict) and isinstance(part, str):
        node[part] = value
    elif isinstance(node, list) and isinstance(part, int) and part < len(node):
        node[part] = value
    elif isinstance(node, list) and isinstance(part, int):
        raise _no_place(key, at, f"{dotted(tuple(at[:-1]))} has {len(node)} item(s)")
    else:
        raise _no_place(key, at, f"{dotted(tuple(at[:-1])) or 'the recipe'} is not a "
                                 f"{'list' if isinstance(part, int) else 'mapping'}")


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
        entry = STEPS[kind]
        torch_only = "onnx" not in entry.accepts
        if torch_only and onnx_model:
            problems.append(src.problem(loc, f"{kind} needs a PyTorch model, but model.onnx gives an ONNX file; "
                                             "use model.factory (+ weights) or model.exported"))
        if kind == "quantize" and getattr(cfg, "engine", "ort") == "inc" and onnx_model:
            problems.append(src.problem(loc + ("engine",), "engine: inc quantizes the PyTorch model; the model is ONNX"))
        if torch_only and seen_onnx_step:
            problems.append(src.problem(loc, f"{kind} works on the PyTorch model and cannot follow an ONNX quantize step"))
        if kind in ("prune", "distill") and seen_qat:
            problems.append(src.problem(loc, f"{kind} cannot follow qat: prune and distill the float model first"))
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
    problems += _batch_problems(src)
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
    from compress.core.errors import InputFileError
    from compress.intake.models import onnx_input_specs

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


def _batch_problems(src: RecipeSource) -> list[RecipeProblem]:
    """The largest benchmark batch times one sample's elements, bounded like any one input."""
    from compress.core.checks import MAX_ELEMENTS

    r = src.recipe
    specs = r.model.input_specs() or []
    batch = max(r.bench.batch_sizes, default=1)
    problems = []
    for s in specs:
        if s.batch_axis is None:
            continue
        n = batch
        for axis, d in enumerate(s.resolved_shape()):
            n *= 1 if axis == s.batch_axis else max(d, 1)
        if n > MAX_ELEMENTS:
            problems.append(src.problem(("bench", "batch_sizes"),
                                        f"a batch of {batch} makes input {s.name!r} {n:.3g} elements; "
                                        f"at most {MAX_ELEMENTS:,} (2**31) per input"))
    return problems


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
        profile = (try_parse(t) or TargetName("local")).profile
        if profile is not None and profile not in profiles:
            problems.append(src.problem(("bench", "targets", i), f"no device profile {profile!r}; "
                                                                 f"available: {', '.join(profiles)}"))
    if r.tradeoff is not None:
        from compress.intake.recipe_sections import NETWORKS

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
        what = getattr(e, "problem", None) or e
        message = f"refused: {what}" if isinstance(e, YamlLimitError) else f"not valid YAML: {what}"
        raise RecipeError([RecipeProblem("", message, line)], file) from None
    if not isinstance(data, dict):
        raise RecipeError([RecipeProblem("", "a recipe is a YAML mapping (version, name, model, ...)", 1)], file)
    if overrides:
        data = apply_overrides(data, overrides)
    overridden = [override_path(o) for o in overrides or []]
    base = path.parent if path else Path(".")
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base.resolve(), "check_files": check_files})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = _strip_tags(err["loc"])
            if any(loc[: len(o)] == o for o in overridden):  # not in the file: its line would mislead
                problems.append(RecipeProblem(dotted(loc), _message(err) + " (set by --set)"))
            else:
                problems.append(RecipeProblem(dotted(loc), _message(err), line_of(lines, loc)))
        raise RecipeError(problems, file) from None
    src = RecipeSource(recipe, path, text, lines)
    problems = semantic_problems(src)
    if problems:
        raise src.error(problems)
    return src


def parse_recipe(path: Path, overrides: list[str] | None = None) -> RecipeSource:
    """Read and validate a recipe file (a regular, readable file of at most :data:`~compress.intake.yamlpos.MAX_BYTES`)."""
    from compress.core.checks import check_path_form, check_readable_file

    file = shorten(str(path))
    try:
        check_path_form(path, "the recipe")
        if not os.path.exists(path):
            raise RecipeError([RecipeProblem("", "recipe file not found")], file)
        check_readable_file(path, "the recipe", "it")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ValueError(f"the recipe is {size:,} bytes; a recipe is at most {MAX_BYTES:,}")
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # a /proc file says size 0: read no more than the limit
        if len(raw) > MAX_BYTES:
            raise ValueError(f"the recipe is over {MAX_BYTES:,} bytes; a recipe is at most that")
        text = raw.decode("utf-8")
    except ValueError as e:  # UnicodeDecodeError included
        raise RecipeError([RecipeProblem("", f"cannot read the recipe: {e}")], file) from None
    except OSError as e:
        raise RecipeError([RecipeProblem("", f"cannot read the recipe: {e.strerror or e}")], file) from None
    return parse_recipe_text(text, path, overrides)
