"""The search: section, the space -> trial recipe mapping, the up-front check of every value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.core.errors import RecipeError
from compress.intake.recipe_io import parse_recipe_text
from compress.intake.search_spec import Range, SearchSpec, parse_duration
from compress.search.space import (active, applies, condition_of, corner_params, grid_size, space_problems, suggest,
                                   trial_data)
from tests.conftest import ROOT

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def _with_search(search: str, base: Path = QUICKSTART) -> tuple[str, Path]:
    return base.read_text() + "\nsearch:\n" + "\n".join("  " + ln for ln in search.strip().splitlines()) + "\n", base


def _parse(search: str):
    text, path = _with_search(search)
    return parse_recipe_text(text, path)


def _problems(search: str) -> list[str]:
    with pytest.raises(RecipeError) as e:
        _parse(search)
    return [f"{p.line} {p.path}: {p.message}" for p in e.value.problems]


def test_issue_example_validates() -> None:
    src = _parse("""
objectives: {latency_ms: minimize, accuracy: maximize, size_mb: minimize}
constraints: {accuracy_loss: 0.01, latency_ms: 5, size_mb: 4}
target: local
space:
  distill.width: [0.25, 0.375, 0.5, 0.75, null]
  prune.ratio: {low: 0.0, high: 0.7}
  quantize.method: [static, fp16, none]
  quantize.calibration: [minmax, entropy, percentile]
budget: {trials: 40, time: 2h}
executor: local
""")
    spec = src.recipe.search
    assert spec.budget.time == 7200 and spec.budget.trials == 40
    assert spec.space["distill.width"][-1] is None
    assert isinstance(spec.space["prune.ratio"], Range) and not spec.space["prune.ratio"].is_int()


@pytest.mark.parametrize("search, where, what", [
    ("space: {prune.ratioo: [0.1]}", "search.space", "no field 'ratioo'"),
    ("space: {prunee.ratio: [0.1]}", "search.space", "no recipe section 'prunee'"),
    ("space: {steps: [1]}", "search.space", "cannot be searched"),
    ("space: {prune.ratio: {low: 0.5, high: 0.1}}", "search.space", "below low"),
    ("space: {prune.ratio: [0.1]}\nbudget: {time: soon}", "search.budget.time", "a duration looks like"),
    ("space: {prune.ratio: [0.1]}\nobjectives: {speed: minimize}", "search.objectives", ""),
    ("space: {prune.ratio: [0.1]}\ntarget: emulated:aarch64", "search.target", "time nothing real"),
    ("space: {prune.ratio: [0.1]}\nsampler: cmaes", "search.sampler", ""),
    ("space: {prune.ratio: [0.1]}\nstorage: /tmp/x.db", "search.storage", "storage URL"),
    ("space: {prune.ratio: [0.1]}\nexecutorr: ray", "search.executorr", "unknown key"),
    ("space: {}", "search.space", ""),
])
def test_bad_search_sections_name_the_place(search: str, where: str, what: str) -> None:
    problems = _problems(search)
    assert any(where in p and what in p for p in problems), problems
    assert all(p.split()[0] != "None" for p in problems if where in p), problems  # a line number


def test_trial_data_applies_drops_and_adds_steps() -> None:
    base = yaml.safe_load(QUICKSTART.read_text())
    data = trial_data(base, {"distill.width": 0.5, "prune.ratio": 0.3, "quantize.calibration": "entropy"}, "estimate:rpi4")
    kinds = [next(iter(s)) for s in data["steps"]]
    assert kinds == ["distill", "prune", "quantize"]  # pipeline order, added around the existing quantize
    assert data["steps"][2]["quantize"] == {"method": "static", "calibration": "entropy"}
    assert data["bench"]["targets"] == ["estimate:rpi4"] and "search" not in data
    dropped = trial_data(base, {"quantize.method": "none", "quantize.calibration": "entropy"}, "local")
    assert dropped["steps"] == []
    assert trial_data(base, {"quantize.method": None}, "local")["steps"] == []
    assert base["steps"] == [{"quantize": {"method": "static"}}]  # the base is never changed
    other = trial_data(base, {"data.calibration_samples": 64}, "local")
    assert other["data"]["calibration_samples"] == 64


def test_space_problems_find_a_value_that_breaks_the_recipe() -> None:
    # the range's upper end is a prune ratio of 1 (the whole model): refused before any trial
    src = _parse("space:\n  prune.ratio: {low: 0.0, high: 1.0}\n  quantize.method: [static, none]")
    problems = space_problems(src, src.recipe.search, yaml.safe_load(src.text))
    assert len(problems) == 1 and "less than 1" in problems[0].message and problems[0].line is not None
    assert "prune.ratio=1.0" in problems[0].path and "steps[0].prune.ratio" in problems[0].path
    ok = _parse("space:\n  prune.ratio: {low: 0.0, high: 0.5}\n  quantize.method: [static, fp16, none]")
    assert space_problems(ok, ok.recipe.search, yaml.safe_load(ok.text)) == []


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["a.x", "b.y", "c.z"]),
                       st.one_of(st.lists(st.integers(0, 5), min_size=1, max_size=4),
                                 st.tuples(st.integers(0, 5), st.integers(0, 5))), min_size=1))
def test_corner_params_touch_every_value(space: dict) -> None:
    spec = SearchSpec.model_construct(space={k: (Range(low=min(v), high=max(v)) if isinstance(v, tuple) else list(v))
                                             for k, v in space.items()})
    sets = corner_params(spec)
    for key, dom in spec.space.items():
        want = {dom.low, dom.high} if isinstance(dom, Range) else set(dom)
        assert want <= {s[key] for s in sets}
    assert all(set(s) == set(space) for s in sets)
    n = grid_size(spec)
    assert n is not None and n >= max(len({s[k] for s in sets}) for k in space)


class _FakeTrial:
    """Records what suggest asks for (the real Optuna trial is exercised by the integration test)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def suggest_int(self, name, low, high, step=1, log=False):
        self.calls.append(("int", name, low, high, step, log))
        return low

    def suggest_float(self, name, low, high, step=None, log=False):
        self.calls.append(("float", name, low, high, step, log))
        return low

    def suggest_categorical(self, name, choices):
        self.calls.append(("cat", name, tuple(choices)))
        return choices[0]


def test_suggest_picks_the_distribution_by_the_written_types() -> None:
    spec = SearchSpec(space={"data.calibration_samples": {"low": 32, "high": 256, "step": 32},
                             "prune.ratio": {"low": 0.0, "high": 0.6, "step": 0.05},
                             "distill.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                             "quantize.method": ["static", None]})
    t = _FakeTrial()
    params = suggest(t, spec)
    calls = {c[1]: c for c in t.calls}
    assert calls["data.calibration_samples"] == ("int", "data.calibration_samples", 32, 256, 32, False)
    assert calls["prune.ratio"][0] == "float" and calls["prune.ratio"][4] == 0.05
    assert calls["distill.lr"] == ("float", "distill.lr", 1e-4, 1e-2, None, True)
    assert calls["quantize.method"] == ("cat", "quantize.method", ("static", None))
    assert t.calls[0][1] == "quantize.method"  # a key that can remove a step is decided first
    assert params["quantize.method"] == "static"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129600),
                                           (45, 45)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 weeks", "-1h", "0", True])
def test_bad_durations(text) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


class _ChoosingTrial(_FakeTrial):
    """Answers each categorical with a value chosen by the test."""

    def __init__(self, answers: dict[str, object]) -> None:
        super().__init__()
        self.answers = answers

    def suggest_categorical(self, name, choices):
        self.calls.append(("cat", name, tuple(choices)))
        return self.answers.get(name, choices[0])


SPACE = {"quantize.calibration": ["minmax", "entropy", "percentile"], "quantize.method": ["static", "fp16", None],
         "distill.temperature": [2.0, 4.0], "distill.width": [0.5, None], "prune.ratio": [0.0, 0.25]}


@pytest.mark.parametrize("answers, sampled", [
    # calibration is sampled after the method it depends on, and only for static quantization
    ({"quantize.method": "static"}, {"quantize.method", "quantize.calibration", "distill.temperature",
                                     "distill.width", "prune.ratio"}),
    ({"quantize.method": "fp16"}, {"quantize.method", "distill.temperature", "distill.width", "prune.ratio"}),
    ({"quantize.method": None}, {"quantize.method", "distill.temperature", "distill.width", "prune.ratio"}),
])
def test_a_key_is_sampled_only_when_it_means_something(answers, sampled) -> None:
    t = _ChoosingTrial(answers)
    params = suggest(t, SearchSpec(space=SPACE))
    assert set(params) == sampled == {c[1] for c in t.calls}
    names = [c[1] for c in t.calls]
    if "quantize.calibration" in names:
        assert names.index("quantize.method") < names.index("quantize.calibration")
    assert list(params) == [k for k in SPACE if k in params]  # reported in the space's order


def test_a_dropped_step_takes_its_other_keys_with_it() -> None:
    # the width key drops the step: the temperature (listed first) then means nothing
    assert active({"distill.temperature": 4.0, "distill.width": None}) == {"distill.width": None}
    assert active({"distill.temperature": 4.0, "distill.width": 0.5}) == {"distill.temperature": 4.0,
                                                                          "distill.width": 0.5}


def test_an_unsearched_controlling_field_comes_from_the_base_recipe() -> None:
    dynamic = {"steps": [{"quantize": {"method": "dynamic"}}]}
    assert applies("quantize.calibration", {}, dynamic) is False
    assert applies("quantize.calibration", {}, {"steps": [{"quantize": {"method": "static"}}]}) is True
    assert applies("quantize.calibration", {}, {"steps": []}) is True  # the config's default: static
    assert condition_of("quantize.calibration") == ("quantize.method", ("static",))
    assert condition_of("prune.ratio") is None and condition_of("data.calibration_samples") is None


def test_the_grid_holds_each_distinct_recipe_once() -> None:
    from compress.search.driver import grid_order

    spec = SearchSpec(space={"quantize.method": ["static", "fp16", None],
                             "quantize.calibration": ["minmax", "entropy"], "prune.ratio": [0.0, 0.25]},
                      sampler="grid")
    combos = grid_order(spec)
    # static x 2 calibrations + fp16 + none, times 2 ratios (not 3 x 2 x 2 = 12)
    assert len(combos) == 8 == grid_size(spec)
    assert len({tuple(sorted(c.items(), key=str)) for c in combos}) == 8
    assert all(("quantize.calibration" in c) == (c["quantize.method"] == "static") for c in combos)
