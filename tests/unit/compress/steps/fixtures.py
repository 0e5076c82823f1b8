"""Helpers for the compression-step tests: the digits teacher, a runner, a step context."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

MODELS = ROOT / "recipes" / "models"

DIGITS_RECIPE = """
version: 1
name: unit
seed: 0
model:
  factory: {models}/digits.py:teacher
  weights: {models}/digits_teacher.pt
  input_shape: [1, 1, 8, 8]
task: {{kind: {task}}}
data: {{source: builtin:digits, eval_fraction: 0.2, calibration_samples: 64}}
steps: {steps}
export: [onnx]
bench: {{targets: [local], threads: [1], warmup: 2, runs: 5}}
"""


def digits_source(tmp_path: Path, steps: str = "[]", task: str = "classification") -> Any:
    """A validated recipe around the quickstart teacher, written to ``tmp_path/recipe.yaml``."""
    from compress.intake.recipe_io import parse_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(DIGITS_RECIPE.format(models=MODELS, steps=steps, task=task)).lstrip())
    return parse_recipe(path)


def digits_runner(tmp_path: Path, steps: str = "[]", task: str = "classification", train: int | None = 640) -> Any:
    """A runner with data and the loaded teacher; ``train`` trims the training split for speed."""
    import numpy as np

    from compress.intake.data import load_dataset
    from compress.intake.models import load_model
    from compress.runner.run import Runner

    runner = Runner(digits_source(tmp_path, steps, task), tmp_path / "run")
    runner.data = load_dataset(runner.recipe.data)
    if train is not None:
        runner.data.train = runner.data.train.take(np.arange(train))
    runner.baseline = load_model(runner.recipe.model)
    runner.state.reference_outputs = runner.outputs_of(runner.baseline)[0]
    return runner


def step_ctx(runner: Any, name: str = "01-step") -> Any:
    """The StepContext the runner would give a step."""
    return runner._context(runner._step_folder(runner.run_dir / "steps" / name), name, runner.baseline)
