"""The prune step: channels really removed, sparsity really reached, bad configs caught early."""

from __future__ import annotations

from pathlib import Path

import onnx
import numpy as np
import pytest
import torch

from compress.core.errors import RecipeError
from compress.intake.models import count_macs
from compress.steps.prune import PruneConfig, prune
from compress.steps.pruning import channel_counts, global_sparsity, sparsity_at
from compress.intake.recipe import InputSpec
from compress.intake.recipe_io import parse_recipe_text
from tests.unit.compress.steps.fixtures import DIGITS_RECIPE, MODELS, digits_runner, step_ctx

SPECS = [InputSpec(shape=[1, 1, 8, 8])]


def test_structured_removes_channels_and_keeps_output(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    teacher = runner.baseline.module
    ctx = step_ctx(runner)
    res = prune(runner.baseline, PruneConfig(ratio=0.5, epochs=2, lr=2e-3), ctx)
    out = res.artifact
    pruned = out.module
    before, after = channel_counts(teacher), channel_counts(pruned)
    assert after["features.0"] == 8 and after["features.3"] == 16 and after["features.7"] == 32
    assert after["classifier"] == before["classifier"] == 10  # the output layer is never pruned
    assert pruned.classifier.in_features == 32  # its inputs follow the last conv
    assert count_macs(pruned, SPECS) < count_macs(teacher, SPECS) / 3
    assert res.details["channels_removed"] == sum(before.values()) - sum(after.values()) > 0
    assert res.details["ignored_layers"] == ["classifier"]
    assert [o["trained_by"] for o in res.details["outputs"]] == ["labels"]  # no teacher needed
    assert pruned(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert runner.evaluate(pruned)["accuracy"] >= 0.9  # fine-tuned back
    assert channel_counts(teacher) == before  # the input module is untouched


def test_global_round_to_and_ignore(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    cfg = PruneConfig(ratio=0.4, scope="global", round_to=4, ignore=["features.0"])
    res = prune(runner.baseline, cfg, step_ctx(runner))
    pruned = res.artifact.module
    after = channel_counts(pruned)
    assert after["features.0"] == 16
    assert all(c % 4 == 0 for name, c in after.items() if name != "classifier")
    assert sum(after.values()) < sum(channel_counts(runner.baseline.module).values())


def test_taylor_iterative_with_kd_fine_tuning(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    ctx = step_ctx(runner)
    cfg = PruneConfig(ratio=0.5, importance="taylor", iterative_steps=2, epochs=2, lr=3e-3, distill_from_unpruned=True)
    res = prune(runner.baseline, cfg, ctx)
    pruned = res.artifact.module
    steps = res.details["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["macs"] > steps[1]["macs"] == count_macs(pruned, SPECS)
    assert all(s["fine_tune"]["steps"] > 0 for s in steps)
    assert channel_counts(pruned)["features.0"] == 8
    assert steps[-1]["accuracy"] >= 0.85


def test_sparsity_schedule() -> None:
    cubic = [sparsity_at(k, 4, 0.8, "cubic") for k in range(1, 5)]
    linear = [sparsity_at(k, 4, 0.8, "linear") for k in range(1, 5)]
    assert cubic == sorted(cubic) and cubic[-1] == pytest.approx(0.8) and linear[-1] == pytest.approx(0.8)
    assert cubic[0] > linear[0]  # cubic prunes most while the network still has slack


def test_unstructured_reaches_sparsity_and_reports_sizes(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    ctx = step_ctx(runner)
    cfg = PruneConfig(method="unstructured", ratio=0.8, iterative_steps=2, epochs=1, lr=1e-3)
    res = prune(runner.baseline, cfg, ctx)
    sparse = res.artifact.module
    layers = {n: m for n, m in sparse.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert global_sparsity(layers) == pytest.approx(0.8, abs=0.005)  # the masks held through fine-tuning
    d = res.details
    assert d["sparsity"] == pytest.approx(0.8, abs=0.005) and set(d["layer_sparsity"]) == set(layers)
    assert d["steps"][0]["target_sparsity"] < d["steps"][1]["target_sparsity"] == 0.8
    files = d["files"]
    assert files["sparse_zipped_bytes"] < 0.6 * files["dense_zipped_bytes"]
    assert abs(files["sparse_onnx_bytes"] - files["dense_onnx_bytes"]) < 0.05 * files["dense_onnx_bytes"]
    assert [a.code for a in res.advisories] == ["unstructured_dense_runtime"]
    (dense,) = res.extras
    # a file made from the step's input, by lineage: the runner checks its parity against it
    assert dense.format == "onnx" and dense.parent == runner.baseline.name and dense.precision == "fp32"
    x = runner.data.eval.x[:64]
    from bench.runtime import open_model, predict
    from compress.intake.models import torch_predict

    assert np.abs(predict(open_model(dense.path), x)[0] - torch_predict(runner.baseline.module, x)[0]).max() < 1e-3
    assert runner.evaluate(sparse)["accuracy"] >= 0.85
    # the dense channel structure is unchanged: zeros, not removed channels
    assert channel_counts(sparse) == channel_counts(runner.baseline.module)
    assert onnx.load(str(dense.path)).graph.node


def test_unknown_ignore_layer_is_a_recipe_error(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, steps="[{prune: {ratio: 0.5, ignore: [features.0, feature.3]}}]")
    with pytest.raises(RecipeError) as e:
        runner.preflight(runner.baseline)
    (p,) = e.value.problems
    assert p.path == "steps[0].prune.ignore[1]" and "feature.3" in p.message and p.line is not None


def test_ratio_outside_range_is_a_recipe_error(tmp_path: Path) -> None:
    text = DIGITS_RECIPE.format(models=MODELS, task="classification", steps="[{prune: {ratio: 1.0}}]")
    with pytest.raises(RecipeError) as e:
        parse_recipe_text(text, tmp_path / "r.yaml")
    assert e.value.problems[0].path == "steps[0].prune.ratio"
