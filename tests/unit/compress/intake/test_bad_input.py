"""Bad input, caught where it enters: data intake, model intake, recipe rules, output paths.

Each test is a regression test of a defect found by an adversarial sweep of the CLI: the
input used to fail deep in a run (an internal error with a traceback in the log), or to
run and report wrong numbers without failing.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from compress.intake.data import Dataset, Split, _as_arrays, input_mismatches, load_dataset
from compress.core.errors import InputFileError, RecipeError, TargetNameError, TargetsFailed
from compress.cli.outputs import check_output_dir, check_output_file
from compress.intake.recipe import DataSpec, ModelSpec
from compress.intake.recipe_io import apply_overrides, parse_recipe_text
from tests.conftest import TINY_RECIPE, write_recipe

# --------------------------------------------------------------------------- data intake


@pytest.mark.parametrize("obj, words", [
    ("hello", "got str"),
    ((np.float32(3.0), None), "single value"),
    ((np.array(["a", "b"]), None), "dtype <U1"),
    (([np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32)], None), r"x\[1\] has 3"),
    ((np.zeros((4, 2), np.float32), np.array(["a"] * 4)), "y has dtype"),
    (([], None), "empty list"),
])
def test_data_that_no_model_can_take_is_refused_at_intake(obj: object, words: str) -> None:
    with pytest.raises(InputFileError, match=words):
        _as_arrays(obj, "data.py:fn")


def test_npz_with_a_scalar_x(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.float32(1.0))
    with pytest.raises(InputFileError, match="single value"):
        load_dataset(DataSpec(source=str(tmp_path / "s.npz")))


def test_input_mismatches_names_shape_dtype_and_count() -> None:
    x = [np.zeros((2, 3, 5, 5), np.float32)]
    assert input_mismatches([([1, 3, 5, 5], "float32")], x) == []
    assert input_mismatches([([-1, 3, -1, -1], "float32")], x) == []  # dynamic dims are free
    (shape,) = input_mismatches([([1, 1, 8, 8], "float32")], x)
    assert "(1, 8, 8)" in shape and "(3, 5, 5)" in shape
    (dtype,) = input_mismatches([([1, 3, 5, 5], "int64")], x)
    assert "int64" in dtype and "float32" in dtype
    assert "2 input(s)" in input_mismatches([([1, 3, 5, 5], None)] * 2, x)[0]


# --------------------------------------------------------------------------- model intake


def _dataset(x: np.ndarray, y: np.ndarray | None) -> Dataset:
    split = Split([x], y)
    return Dataset(train=split, calib=split, eval=split, source="test")


def _recipe(tiny_dir: Path, extra: str = "", **replace: str) -> object:
    text = TINY_RECIPE + extra
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_recipe_text(text, write_recipe(tiny_dir, text)).recipe


@pytest.fixture()
def tiny_baseline(tiny_dir: Path) -> object:
    from compress.intake.models import load_model

    spec = ModelSpec.model_validate({"factory": "tiny_model.py:tiny", "input_shape": [1, 1, 8, 8]},
                                    context={"base_dir": tiny_dir})
    return load_model(spec)


def _problems(baseline: object, recipe: object, data: Dataset | None) -> dict[str, str]:
    from compress.intake.models import intake_problems

    return {".".join(map(str, loc)): msg for loc, msg in intake_problems(baseline, recipe, data)}


def test_data_of_the_wrong_shape_or_dtype_is_a_recipe_problem(tiny_dir: Path, tiny_baseline: object) -> None:
    recipe = _recipe(tiny_dir)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 8)
    wrong_shape = _problems(tiny_baseline, recipe, _dataset(rng.standard_normal((8, 3, 5, 5)).astype(np.float32), y))
    assert "(3, 5, 5)" in wrong_shape["model.input_shape"]
    wrong_dtype = _problems(tiny_baseline, recipe, _dataset(np.zeros((8, 1, 8, 8), np.int32), y))
    assert "int32" in wrong_dtype["model.input_shape"]
    assert _problems(tiny_baseline, recipe, _dataset(rng.standard_normal((8, 1, 8, 8)).astype(np.float32), y)) == {}


def test_input_shape_the_model_cannot_run(tiny_dir: Path, tiny_baseline: object) -> None:
    recipe = _recipe(tiny_dir, **{"input_shape: [1, 1, 8, 8]": "input_shape: [1, 3, 32, 32]",
                                  "data: {source: tiny_model.py:data, eval_fraction: 0.25, calibration_samples: 16}\n": ""})
    (msg,) = _problems(tiny_baseline, recipe, None).values()
    assert "fails on random inputs" in msg and "channels" in msg


def test_labels_and_class_indices_must_match_the_outputs(tiny_dir: Path, tiny_baseline: object) -> None:
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    recipe = _recipe(tiny_dir, **{"task: {kind: classification}": "task: {kind: classification, labels: [a, b, c]}"})
    assert "3 labels, but the model has 10 outputs" in _problems(tiny_baseline, recipe, None)["task.labels"]
    recipe = _recipe(tiny_dir)
    too_big = _problems(tiny_baseline, recipe, _dataset(x, np.arange(8) * 7))
    assert "0 to 49" in too_big["data.source"] and "classes 0 to 9" in too_big["data.source"]
    negative = _problems(tiny_baseline, recipe, _dataset(x, np.arange(8) - 1))
    assert "-1" in negative["data.source"]
    fractional = _problems(tiny_baseline, recipe, _dataset(x, np.linspace(0, 1, 8).astype(np.float32)))
    assert "fractional" in fractional["data.source"]
    assert _problems(tiny_baseline, recipe, _dataset(x, np.arange(8).astype(np.float32))) == {}


def test_garbage_weights_are_not_called_a_pickle(tiny_dir: Path) -> None:
    from compress.intake.models import _load_state_dict

    (tiny_dir / "w.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(InputFileError, match="not a file written by torch.save"):
        _load_state_dict(tiny_dir / "w.pt")


@pytest.mark.parametrize("content", ["garbage", "zip"])
def test_corrupt_exported_program_logs_no_traceback(tiny_dir: Path, content: str,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    from compress.intake.models import load_model

    path = tiny_dir / "m.pt2"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.txt", "not a program")
    else:
        path.write_bytes(b"PK garbage")
    spec = ModelSpec.model_validate({"exported": "m.pt2", "input_shape": [1, 1, 8, 8]}, context={"base_dir": tiny_dir})
    with pytest.raises(InputFileError, match="not a torch.export program"):
        load_model(spec)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


# --------------------------------------------------------------------------- recipe rules


def test_override_with_invalid_yaml_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="not valid YAML") as exc:
        apply_overrides({"bench": {"runs": 5}}, ["bench.runs=[1,"])
    assert exc.value.exit_code == 2
    with pytest.raises(RecipeError, match="path.to.key=value"):
        apply_overrides({"bench": {}}, ["=3"])


@pytest.mark.parametrize("extra, path, words", [
    ("tradeoff: {network: [wfi]}\n", "tradeoff.network[0]", "unknown network 'wfi'"),
    ("tradeoff: {device: 'estimate:rpi4'}\n", "tradeoff.device", "not one of bench.targets"),
    ("tradeoff: {cloud: {profile: nope}}\n", "tradeoff.cloud.profile", "no device profile 'nope'"),
    ("package: {artifact: nope}\n", "package.artifact", "no artifact named 'nope'"),
    ("package: {artifact: tflite-int8}\n", "package.artifact", "no artifact named"),  # no tflite export
])
def test_names_resolved_only_late_are_checked_up_front(tiny_dir: Path, extra: str, path: str, words: str) -> None:
    text = TINY_RECIPE + extra
    with pytest.raises(RecipeError) as exc:
        parse_recipe_text(text, write_recipe(tiny_dir, text))
    assert [p.path for p in exc.value.problems] == [path]
    assert words in exc.value.problems[0].message and exc.value.problems[0].line is not None


def test_estimate_target_needs_an_existing_profile(tiny_dir: Path) -> None:
    text = TINY_RECIPE.replace("targets: [local]", "targets: [local, 'estimate:nope']")
    with pytest.raises(RecipeError, match="no device profile 'nope'") as exc:
        parse_recipe_text(text, write_recipe(tiny_dir, text))
    assert exc.value.problems[0].path == "bench.targets[1]"
    ok = TINY_RECIPE.replace("targets: [local]", "targets: [local, 'estimate:rpi4']") + \
        "tradeoff: {network: [wifi, lab], networks: {lab: {rtt_ms: 1, up_mbps: 9, down_mbps: 9}}, device: 'estimate:rpi4'}\n"
    parse_recipe_text(ok, write_recipe(tiny_dir, ok))


def test_onnx_model_without_data_needs_an_input_shape(tiny_dir: Path) -> None:
    (tiny_dir / "m.onnx").write_bytes(b"")
    text = """
version: 1
name: x
model: {onnx: m.onnx}
task: {kind: classification}
"""
    with pytest.raises(RecipeError, match="needs input_shape"):
        parse_recipe_text(text, write_recipe(tiny_dir, text))


# --------------------------------------------------------------------------- outputs and targets


def test_output_paths_are_checked_before_work(tmp_path: Path) -> None:
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(InputFileError, match="is a file, not a folder"):
        check_output_dir(a_file, "--out")
    with pytest.raises(InputFileError, match="is a file, not a folder"):
        check_output_dir(a_file / "run", "--out")
    with pytest.raises(InputFileError, match="cannot create"):
        check_output_dir(Path("/proc/edgepack-nope/run"), "--out")
    with pytest.raises(InputFileError, match="is a folder"):
        check_output_file(tmp_path, "--json")
    check_output_dir(tmp_path / "new" / "run", "--out")
    check_output_file(tmp_path / "new2" / "r.json", "--json")
    assert (tmp_path / "new" / "run").is_dir() and (tmp_path / "new2").is_dir()


@pytest.mark.parametrize("name", ["lcoal", "ssh:pi", "estimate:nope", "emulated:x86"])
def test_a_target_name_that_names_nothing_is_a_wrong_input(name: str) -> None:
    from devices.targets import make_target

    with pytest.raises(TargetNameError) as exc:
        make_target(name)
    assert exc.value.exit_code == 2 and name in str(exc.value)


def test_target_failures_are_each_said_once() -> None:
    err = TargetsFailed(["target ssh:pi: unreachable", "target ssh:pi: unreachable", "target estimate:x: no"])
    assert str(err) == "target ssh:pi: unreachable; target estimate:x: no"
    assert err.target == "ssh:pi, estimate:x" and err.exit_code == 1


def test_duplicate_key_is_an_error_with_its_line(tiny_dir: Path) -> None:
    text = TINY_RECIPE + "bench: {runs: 3}\n"
    path = write_recipe(tiny_dir, text)
    with pytest.raises(RecipeError, match=r"duplicate key 'bench' \(first at line \d+\)") as exc:
        parse_recipe_text(path.read_text(), path)
    assert exc.value.problems[0].line == len(path.read_text().splitlines())  # the second one, the last line


def test_quantize_exclude_must_name_a_node(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.core.errors import StepError
    from compress.steps.quantize.step import check_exclude

    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc1")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    check_exclude(["fc1"], tmp_path / "m.onnx", "01-quantize")
    check_exclude([], tmp_path / "nonexistent.onnx", "01-quantize")  # nothing to check, nothing read
    with pytest.raises(StepError, match="no node named 'fc2'.*did you mean fc1"):
        check_exclude(["fc1", "fc2"], tmp_path / "m.onnx", "01-quantize")
