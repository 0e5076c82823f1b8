"""The distill step: the KD loss itself, derived and given students, feature matching, checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.steps.distill import DistillConfig, distill, embedding_loss, kd_loss
from compress.core.errors import RecipeError
from compress.steps.pruning import channel_counts
from tests.unit.compress.steps.fixtures import MODELS, digits_runner, step_ctx


def test_kd_loss_is_the_hinton_objective() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    T, alpha = 3.0, 0.6
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    expected = alpha * kl * T * T + (1 - alpha) * torch.nn.functional.cross_entropy(s, y)
    assert math.isclose(float(kd_loss(s, t, y, T, alpha)), float(expected), rel_tol=1e-5)
    assert float(kd_loss(t, t, None, T, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(t, 2 * t, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(t, 2 * t, "mse")) > 0


def test_width_student_is_pruned_teacher_and_learns(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path)
    teacher = runner.baseline.module
    cfg = DistillConfig(width=0.5, epochs=3, lr=3e-3)
    ctx = step_ctx(runner)
    res = distill(runner.baseline, cfg, ctx)
    out = res.artifact
    student = out.module
    assert out.format == "torch" and student is not teacher
    s_ch, t_ch = channel_counts(student), channel_counts(teacher)
    assert s_ch["features.0"] == t_ch["features.0"] // 2 and s_ch["features.3"] == t_ch["features.3"] // 2
    assert s_ch["classifier"] == t_ch["classifier"] == 10
    assert runner.evaluate(student)["accuracy"] >= 0.9
    (out_row,) = res.details["outputs"]
    assert out_row["loss"] == "kl on logits" and out_row["trained_by"] == "teacher+labels"
    losses = res.details["training"]["epoch_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is given back trainable


def test_given_student_with_feature_matching_adapter(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, train=None)
    cfg = DistillConfig.model_validate({
        "student": f"{MODELS}/digits.py:student", "epochs": 4, "lr": 1e-2, "batch_size": 32,
        "features": [{"student": "features.2", "teacher": "features.2", "weight": 0.5}],
    })
    ctx = step_ctx(runner)
    res = distill(runner.baseline, cfg, ctx)
    student = res.artifact.module
    feat = res.details["features"][0]
    # width-6 student vs width-16 teacher: a learned 1x1 conv maps 6 -> 16 channels
    assert feat["adapter"] == "Conv2d" and feat["student_shape"][0] == 6 and feat["teacher_shape"][0] == 16
    assert not student.features[2]._forward_hooks and not runner.baseline.module.features[2]._forward_hooks
    assert runner.evaluate(student)["accuracy"] >= 0.8


def test_embedding_task_matches_teacher_embeddings(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, task="embedding")
    ctx = step_ctx(runner)
    res = distill(runner.baseline, DistillConfig(width=0.5, epochs=3, lr=3e-3, alpha=1.0), ctx)
    student = res.artifact.module
    assert res.details["loss"] == "embedding-cosine"
    x = torch.from_numpy(runner.data.eval.x[0])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(student(x), runner.baseline.module(x), dim=1)
    assert float(cos.mean()) > 0.9


def _preflight_error(tmp_path: Path, steps: str) -> RecipeError:
    runner = digits_runner(tmp_path, steps=steps)
    with pytest.raises(RecipeError) as e:
        runner.preflight(runner.baseline)
    assert not (runner.run_dir / "steps").exists()  # nothing ran
    return e.value


def test_student_with_other_output_shape_is_a_recipe_error(tmp_path: Path) -> None:
    (tmp_path / "bad_student.py").write_text(
        f"import sys; sys.path.insert(0, {str(MODELS)!r})\n"
        "from digits import DigitsCNN\n"
        "def five():\n    return DigitsCNN(width=4, num_classes=5)\n"
    )
    err = _preflight_error(tmp_path, "[{distill: {student: bad_student.py:five}}]")
    (p,) = err.problems
    assert p.path == "steps[0].distill.student" and p.line is not None
    assert "[5]" in p.message and "[10]" in p.message


def test_unknown_feature_layer_is_a_recipe_error(tmp_path: Path) -> None:
    err = _preflight_error(tmp_path, "[{distill: {width: 0.5, features: [{student: features.2, teacher: nope}]}}]")
    assert [p.path for p in err.problems] == ["steps[0].distill.features[0].teacher"]
    assert "nope" in err.problems[0].message


def test_runner_records_smaller_student(tmp_path: Path) -> None:
    runner = digits_runner(tmp_path, steps="[{distill: {width: 0.5, epochs: 1}}]")
    step = runner.recipe.steps[0]
    result = runner.run_step(0, step, runner.baseline, runner.baseline)
    record = runner.state.steps[0]
    assert record["after"]["macs"] < record["before"]["macs"] / 3
    assert record["after"]["params"] < record["before"]["params"] / 3
    assert np.isfinite(record["after"]["accuracy"]) and result.module is not None


@pytest.mark.parametrize("width", [0.25, 0.375, 0.6])
def test_derived_student_channels_are_multiples_of_round_to(width: float) -> None:
    import importlib.util

    from compress.steps.distill import derive_student

    spec = importlib.util.spec_from_file_location("mobilenet_ref", MODELS / "mobilenet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    teacher = mod.mobilenet_v2(width=0.5)
    example = [torch.randn(1, 1, 64, 64)]
    plain = channel_counts(derive_student(teacher, width, example))
    rounded = channel_counts(derive_student(teacher, width, example, round_to=8))
    assert rounded["classifier.1"] == plain["classifier.1"] == 10  # the head is kept whole
    inner = {k: v for k, v in rounded.items() if not k.startswith("classifier")}
    assert all(c % 8 == 0 for c in inner.values()), {k: c for k, c in inner.items() if c % 8}
    assert any(c % 8 for k, c in plain.items() if not k.startswith("classifier"))  # it did round something
    assert sum(inner.values()) < sum(v for k, v in channel_counts(teacher).items() if not k.startswith("classifier"))


def test_round_to_needs_a_derived_student() -> None:
    with pytest.raises(ValueError, match="round_to rounds a student derived by width"):
        DistillConfig.model_validate({"student": f"{MODELS}/digits.py:student", "round_to": 8})


def test_an_odd_width_student_is_advised_and_a_rounded_one_is_not() -> None:
    from types import SimpleNamespace

    from compress.steps.distill import _odd_width_advisories, derive_student

    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3),
                                  torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(64, 10)).eval()
    example = [torch.randn(1, 1, 12, 12)]
    for width, round_to, advised in [(0.375, None, True), (0.375, 8, False), (0.5, None, False)]:
        cfg = DistillConfig(width=width, round_to=round_to)
        student = derive_student(teacher, width, example, round_to)
        (adv,) = _odd_width_advisories(cfg, teacher, student, "01-distill") or [None]
        assert (adv is not None) == advised, (width, round_to, channel_counts(student))
        if advised:
            assert adv.code == "student_odd_channels" and "round_to: 8" in adv.message and "0 (32 -> 12)" in adv.message
    assert not _odd_width_advisories(SimpleNamespace(width=None, round_to=None), teacher, teacher, "s")
