"""Review regressions in the runner: names and lineage, before/after facts, cached outputs,
zipped sizes, file modes."""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT

MODELS = ROOT / "recipes" / "models"

RECIPE = """
version: 1
name: review
seed: 0
model:
  factory: {models}/digits.py:teacher
  weights: {models}/digits_teacher.pt
  input_shape: [1, 1, 8, 8]
task: {{kind: classification}}
data: {{source: builtin:digits, calibration_samples: 32}}
steps:
  - prune: {{method: structured, ratio: 0.25, epochs: 0}}
  - prune: {{method: structured, ratio: 0.25, epochs: 0}}
  - quantize: {{method: dynamic}}
  - quantize: {{method: static}}
export: [onnx]
bench: {{targets: [local], threads: [1], batch_sizes: [1], warmup: 1, runs: 3}}
tradeoff: null
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Counter]:
    """One in-process run of prune -> prune -> quantize dynamic -> quantize static, counting
    how often each model file is run on the eval split."""
    import bench.runtime
    from compress.intake.recipe_io import parse_recipe
    from compress.runner.run import Runner

    tmp = tmp_path_factory.mktemp("review")
    path = tmp / "recipe.yaml"
    path.write_text(textwrap.dedent(RECIPE.format(models=MODELS)).lstrip())
    calls: Counter = Counter()
    real_open = bench.runtime.open_model

    def counting_open(p, *a, **k):  # noqa: ANN001, ANN002, ANN003
        calls[Path(p).resolve()] += 1
        return real_open(p, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(bench.runtime, "open_model", counting_open)
    try:
        report = Runner(parse_recipe(path), tmp / "run").run()
    finally:
        mp.undo()
    return report, tmp / "run", calls


def test_torch_models_get_unique_names_and_lineage_resolves(run: tuple) -> None:
    report, _, _ = run
    assert [(s.input, s.output) for s in report.steps[:2]] == [("baseline", "pruned"), ("pruned", "pruned-2")]
    known = {a.name for a in report.artifacts} | {s.output for s in report.steps} | {"baseline"}
    for a in report.artifacts:
        assert a.parent in known, a.name
        assert a.parity is not None and a.parity.reference in known
    # every file is compared with the model it was made from, by lineage: exports with the second
    # prune's torch model, quantized models with the float ONNX they were quantized from
    assert all(a.parity.reference == a.parent for a in report.artifacts)
    assert {a.parity.reference for a in report.artifacts if a.step.startswith("export:")} == {"pruned-2"}


def test_second_quantize_step_starts_from_the_float_model(run: tuple) -> None:
    report, _, _ = run
    fp32 = report.artifact("onnx-fp32")
    q_static = report.steps[3]
    assert q_static.before.size_bytes == fp32.size_bytes  # not the dynamic model's size
    assert q_static.before.accuracy == fp32.accuracy
    assert q_static.after.size_bytes == report.artifact("onnx-static").size_bytes


def test_params_and_macs_follow_the_model_they_came_from(run: tuple) -> None:
    report, _, _ = run
    pruned = report.steps[1].after
    assert pruned.macs < report.baseline.macs
    for s in report.steps[2:]:
        assert (s.before.params, s.before.macs, s.after.params, s.after.macs) == (pruned.params, pruned.macs) * 2
    for a in report.artifacts:
        assert (a.params, a.macs) == (pruned.params, pruned.macs), a.name


def test_every_file_artifact_has_its_zipped_size(run: tuple) -> None:
    report, run_dir, _ = run
    from compress.core.fileio import zipped_size

    for a in report.artifacts:
        assert a.zipped_bytes == zipped_size(run_dir / a.path), a.name


def test_each_artifact_runs_on_the_eval_split_once(run: tuple) -> None:
    report, run_dir, calls = run
    for a in report.artifacts:
        # once for its metrics and parity; the quantize step's own float parity check adds one for onnx-fp32
        assert calls[(run_dir / a.path).resolve()] <= (2 if a.name == "onnx-fp32" else 1), (a.name, calls)


def test_run_folder_files_follow_the_umask(run: tuple) -> None:
    _, run_dir, _ = run
    mask = os.umask(0)
    os.umask(mask)
    for name in ("report.json", "report.md", "env.json", "recipe.resolved.yaml", "steps/04-quantize/model.onnx"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
