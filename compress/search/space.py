"""The search space: sampling a trial's parameters, and the trial's recipe made from them.

A trial recipe is the base recipe's data with the parameters applied: ``prune.ratio: 0.3``
sets the prune step's ratio (a step the recipe lacks is added, in pipeline order, with its
defaults), ``quantize.method: null`` drops the quantize step, and ``quantize.method: none``
does too (the spelling users of other tools expect). Other keys are recipe paths
(``data.calibration_samples``). The trial measures on the search's target only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from compress.core.errors import RecipeError, RecipeProblem
from compress.intake.recipe_io import RecipeSource, parse_recipe_text
import compress.steps.registry  # noqa: F401  (the step kinds, registered on import)
from compress.intake.search_spec import Range, SearchSpec, step_kinds

DROP = (None, "none")
"""Values of a step key that remove the step."""


def grid_values(dom: Any) -> list[Any]:
    """Every value of a discrete domain: a list as written, a range stepped from low to high."""
    if not isinstance(dom, Range):
        return list(dom)
    step = dom.step or 1
    n = int(round((dom.high - dom.low) / step + 1e-9)) + 1
    values = [dom.low + i * step for i in range(n)]
    return [int(v) for v in values] if dom.is_int() else [round(float(v), 12) for v in values]


def _step_config(base: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for step in _steps_of(base or {}):
        if _kind(step) == kind:
            return dict(step[kind] or {})
    return {}


def condition_of(key: str) -> tuple[str, tuple[Any, ...]] | None:
    """The space key a ``kind.field`` key depends on and the values that make it apply, from the
    step's config class (``APPLIES_WHEN``: ``quantize.calibration`` only when ``quantize.method`` is
    ``static``), or None when the field always applies."""
    from compress.core.step import STEPS

    head, _, field = key.partition(".")
    if head not in STEPS or not field:
        return None
    rule = getattr(STEPS[head].config, "APPLIES_WHEN", {}).get(field)
    return (f"{head}.{rule[0]}", tuple(rule[1])) if rule else None


def applies(key: str, params: dict[str, Any], base: dict[str, Any] | None = None) -> bool:
    """Whether a space key means anything given the values chosen so far.

    A ``kind.field`` key does not when another key of its kind removed the step (``distill.width:
    null``), nor when its config class says it depends on a field whose value (chosen, else the base
    recipe's, else the config's default) is not one that makes it apply.
    """
    head, _, field = key.partition(".")
    if head not in step_kinds():
        return True
    if any(k != key and k.partition(".")[0] == head and _drops(v) for k, v in params.items()):
        return False
    rule = condition_of(key)
    if rule is None:
        return True
    on, allowed = rule
    if on in params:
        value = params[on]
    else:
        from compress.core.step import STEPS

        field_on = on.partition(".")[2]
        config = _step_config(base, head)
        value = config[field_on] if field_on in config else STEPS[head].config.model_fields[field_on].default
    return value in allowed


def _drops(value: Any) -> bool:
    return value in DROP and not isinstance(value, bool)


def _rank(key: str, values: list[Any]) -> int:
    """Which keys are decided first: those that can remove a step, then those no condition holds, then the rest."""
    if any(_drops(v) for v in values):
        return 0
    return 1 if condition_of(key) is None else 2


def active(params: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters that mean something (see :func:`applies`), in their order."""
    kept: dict[str, Any] = {}
    for key in sorted(params, key=lambda k: _rank(k, [params[k]])):
        if applies(key, kept, base):
            kept[key] = params[key]
    return {k: kept[k] for k in params if k in kept}


def suggest(trial: Any, spec: SearchSpec, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample one value per space key with an Optuna trial (categorical lists, float/int ranges).

    Keys that mean nothing given the others (:func:`applies`) are not sampled, so a trial never
    differs from another only in a value its recipe ignores: keys that can remove a step are sampled
    first, then the keys no condition holds (those a condition depends on), then the rest. Under ``sampler: grid`` every key is categorical over :func:`grid_values`.
    """
    params: dict[str, Any] = {}
    def rank(key: str) -> int:
        dom = spec.space[key]
        return _rank(key, [] if isinstance(dom, Range) else list(dom))

    for key in sorted(spec.space, key=rank):
        dom = spec.space[key]
        if not applies(key, params, base):
            continue
        if spec.sampler == "grid":
            params[key] = trial.suggest_categorical(key, grid_values(dom))
        elif isinstance(dom, Range):
            if dom.is_int():
                params[key] = trial.suggest_int(key, int(dom.low), int(dom.high), step=int(dom.step or 1), log=dom.log)
            else:
                value = trial.suggest_float(key, float(dom.low), float(dom.high), step=dom.step, log=dom.log)
                params[key] = round(value, 12) if dom.step is not None else value  # 0.3, not 0.30000000000000004
        else:
            params[key] = trial.suggest_categorical(key, list(dom))
    return {k: params[k] for k in spec.space if k in params}


def _steps_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    steps = data.get("steps") or []
    if not isinstance(steps, list):
        raise ValueError("steps is not a list")
    return steps


def _kind(step: Any) -> str | None:
    return next(iter(step)) if isinstance(step, dict) and len(step) == 1 else None


def trial_data(base: dict[str, Any], params: dict[str, Any], target: str) -> dict[str, Any]:
    """A copy of the raw recipe data with ``params`` applied, benchmarking on ``target`` only.

    Step keys set the step of that kind (added in pipeline order when absent, unless its
    value drops it); a step dropped by one key ignores the other keys of its kind.
    """
    data = copy.deepcopy(base)
    data.pop("search", None)
    steps = list(_steps_of(data))
    by_kind: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        head, _, field = key.partition(".")
        if head in step_kinds():
            by_kind.setdefault(head, {})[field] = value
        else:
            _set_path(data, key.split("."), value)
    for kind in step_kinds():
        if kind not in by_kind:
            continue
        fields = by_kind[kind]
        index = next((i for i, s in enumerate(steps) if _kind(s) == kind), None)
        if any(v in DROP and not isinstance(v, bool) for v in fields.values()):
            if index is not None:
                steps.pop(index)
            continue
        if index is None:
            order = step_kinds().index(kind)
            index = next((i for i, s in enumerate(steps) if _kind(s) in step_kinds()
                          and step_kinds().index(_kind(s)) > order), len(steps))
            steps.insert(index, {kind: {}})
        config = dict(steps[index][kind] or {})
        config.update(fields)
        steps[index] = {kind: config}
    data["steps"] = steps
    bench = dict(data.get("bench") or {})
    bench["targets"] = [target]
    data["bench"] = bench
    return data


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def trial_source(recipe_path: Path | None, data: dict[str, Any]) -> RecipeSource:
    """Validate a trial's recipe data as if it were the base recipe's file (same folder for paths)."""
    return parse_recipe_text(yaml.safe_dump(data, sort_keys=False), recipe_path)


def base_data(source: RecipeSource, overrides: list[str]) -> dict[str, Any]:
    """The base recipe's raw data, with the command line's ``--set`` overrides applied."""
    from compress.intake.recipe_io import apply_overrides

    data = yaml.safe_load(source.text)
    return apply_overrides(data, list(overrides)) if overrides else data


def corner_params(spec: SearchSpec) -> list[dict[str, Any]]:
    """Parameter sets that touch every value of every key: each categorical value and both range
    ends, the other keys at their first value (then all at their last), for the up-front check."""
    values: dict[str, list[Any]] = {}
    for key, dom in spec.space.items():
        if isinstance(dom, Range):
            lo, hi = (int(dom.low), int(dom.high)) if dom.is_int() else (float(dom.low), float(dom.high))
            values[key] = [lo, hi] if lo != hi else [lo]
        else:
            values[key] = list(dom)
    first = {k: v[0] for k, v in values.items()}
    sets = [first, {k: v[-1] for k, v in values.items()}]
    for key, vs in values.items():
        sets += [{**first, key: v} for v in vs[1:]]
    unique: list[dict[str, Any]] = []
    for s in sets:
        if s not in unique:
            unique.append(s)
    return unique


def space_problems(source: RecipeSource, spec: SearchSpec, base: dict[str, Any]) -> list[RecipeProblem]:
    """Every value of the space validated as a whole recipe, before any trial runs.

    A problem names the space key and value that made it, with the base file's ``search.space``
    line; the same recipe problem met from several values is reported once.
    """
    from compress.intake.yamlpos import line_of

    problems: list[RecipeProblem] = []
    seen: set[str] = set()
    for params in corner_params(spec):
        try:
            trial_source(source.path, trial_data(base, params, spec.target))
        except RecipeError as e:
            for p in e.problems:
                if p.message in seen:
                    continue
                seen.add(p.message)
                which = ", ".join(f"{k}={v!r}" for k, v in params.items())
                problems.append(RecipeProblem(f"search.space ({which}) -> {p.path}", p.message,
                                              line_of(source.lines, ("search", "space"))))
    return problems


def grid_size(spec: SearchSpec, base: dict[str, Any] | None = None) -> int | None:
    """How many distinct trials the space holds (combinations differing only in values that mean
    nothing, :func:`active`, count once), or None when a range is continuous."""
    import itertools

    n = 1
    for dom in spec.space.values():
        if isinstance(dom, Range) and dom.step is None and not dom.is_int():
            return None
        n *= len(grid_values(dom))
    if n > 100_000:  # too many to list: the product bounds it
        return n
    keys = list(spec.space)
    return len({tuple(active(dict(zip(keys, values)), base).items())
                for values in itertools.product(*(grid_values(spec.space[k]) for k in keys))})


def describe(params: dict[str, Any]) -> str:
    """``prune.ratio=0.31 quantize.method=static`` (floats to 3 significant figures)."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


