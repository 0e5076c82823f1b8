"""Bad input through the real CLI: one readable message, the right exit code, nothing left behind.

The ground rule: a wrong recipe or input file exits 2 before any work (nothing run), a failed
step or target exits 1, never a traceback, never a half-written artifact or a report that
claims success. Each test is a regression test of a defect found by an adversarial sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_RECIPE, write_recipe

NO_DATA = "data: {source: tiny_model.py:data, eval_fraction: 0.25, calibration_samples: 16}\n"


def compress(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, **(env or {})})


def refused(res: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Exit ``code``, one readable message with every word, no traceback."""
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout and "internal error" not in res.stderr, res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


def tiny_onnx(path: Path) -> Path:
    """A (n, 8) -> (n, 4) float model, written without torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- compress RECIPE


@pytest.mark.parametrize("body, where, words", [
    # data whose samples do not fit the model's input
    (TINY_RECIPE.replace("input_shape: [1, 1, 8, 8]", "input_shape: [1, 3, 8, 8]"), "model.input_shape",
     ["(3, 8, 8)", "(1, 8, 8)"]),
    # a model that cannot run on model.input_shape (no data)
    (TINY_RECIPE.replace("[1, 1, 8, 8]", "[1, 64]").replace(NO_DATA, ""), "model.input_shape", ["fails on random"]),
    # a label list that does not match the model's outputs (it ran and reported numbers before)
    (TINY_RECIPE.replace("task: {kind: classification}", "task: {kind: classification, labels: [a, b, c]}"),
     "task.labels", ["3 labels", "10 outputs"]),
])
def test_model_and_data_that_do_not_fit_exit_2_and_leave_no_run(tiny_dir: Path, body: str, where: str,
                                                                words: list[str]) -> None:
    recipe = write_recipe(tiny_dir, body)
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    refused(res, 2, "recipe.yaml:", where, *words)
    assert not (tiny_dir / "run").exists()  # only bookkeeping was there: nothing that looks like a run


def test_class_labels_the_model_cannot_predict(tiny_dir: Path) -> None:
    # silently wrong accuracy before; a one-value output takes two classes, so three classes are needed here
    (tiny_dir / "three.py").write_text("import numpy as np\n\ndef data():\n    rng = np.random.default_rng(0)\n"
                                       "    x = rng.standard_normal((60, 1, 8, 8)).astype('float32')\n"
                                       "    return x, np.arange(60) % 3\n")
    body = TINY_RECIPE.replace("factory: tiny_model.py:tiny", "factory: tiny_model.py:tiny\n  kwargs: {classes: 2}")
    body = body.replace("source: tiny_model.py:data", "source: three.py:data")
    res = compress(str(write_recipe(tiny_dir, body)), "--out", str(tiny_dir / "run"))
    refused(res, 2, "recipe.yaml:", "data.source", "classes 0 to 1")
    assert not (tiny_dir / "run").exists()


def test_corrupt_exported_program_exit_2_without_torch_traceback(tiny_dir: Path) -> None:
    (tiny_dir / "m.pt2").write_bytes(b"PK not really")
    recipe = write_recipe(tiny_dir, TINY_RECIPE.replace("factory: tiny_model.py:tiny", "exported: m.pt2"))
    refused(compress(str(recipe), "--out", str(tiny_dir / "run")), 2, "m.pt2", "not a torch.export program")


def test_set_with_invalid_yaml_value(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE)
    refused(compress(str(recipe), "--set", "bench.runs=[1,"), 2, "--set", "bench.runs", "not valid YAML")


def test_out_that_cannot_be_a_run_folder(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE)
    refused(compress(str(recipe), "--out", str(tiny_dir / "tiny_model.py")), 2, "--out", "is a file, not a folder")
    refused(compress(str(recipe), "--out", "/proc/edgepack-nope/run"), 2, "--out", "cannot create the folder")


def test_names_that_resolve_late_are_refused_before_work(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE.replace("targets: [local]", "targets: ['estimate:nope']")
                          + "tradeoff: {network: [wfi]}\npackage: {artifact: nope}\n")
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    refused(res, 2, "3 problems", "bench.targets[0]", "tradeoff.network[0]", "package.artifact")
    assert not (tiny_dir / "run").exists()


def test_failed_packaging_does_not_leave_a_report_saying_ok(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE + "tradeoff: null\npackage: {artifact: onnx-int9}\n")
    res = compress(str(recipe), "--out", str(tiny_dir / "run"))
    refused(res, 1, "onnx-int9")
    report = json.loads((tiny_dir / "run" / "report.json").read_text())
    assert report["status"] == "failed" and "onnx-int9" in report["error"]
    assert not list((tiny_dir / "run").rglob("*.part"))


# --------------------------------------------------------------------------- the other commands


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bench")
    tiny_onnx(d / "m.onnx")
    (d / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 10)
    rng = np.random.default_rng(0)
    np.savez(d / "wrong_shape.npz", x=rng.standard_normal((4, 5)).astype(np.float32))
    np.savez(d / "wrong_dtype.npz", x=np.zeros((4, 8), np.int32))
    np.savez(d / "strings.npz", x=np.array(["a"] * 4))
    np.savez(d / "scalar.npz", x=np.float32(1.0))
    return d


@pytest.mark.parametrize("args, words", [
    (["corrupt.onnx"], ["corrupt.onnx", "not a valid ONNX model"]),
    (["m.onnx", "--data", "wrong_shape.npz"], ["wrong_shape.npz", "(8,)", "(5,)"]),
    (["m.onnx", "--data", "wrong_dtype.npz"], ["wrong_dtype.npz", "int32"]),
    (["m.onnx", "--data", "strings.npz"], ["strings.npz", "dtype <U1"]),
    (["m.onnx", "--data", "scalar.npz"], ["scalar.npz", "single value"]),
    (["m.onnx", "--target", "lcoal"], ["lcoal", "unknown target"]),
    (["m.onnx", "--target", "estimate:nope"], ["no device profile 'nope'"]),
    (["m.onnx", "--cpus", "999"], ["--cpus", "no CPU 999"]),
    (["m.onnx", "--json", "/proc/edgepack-nope/r.json"], ["--json", "cannot create"]),
    (["m.onnx", "--html", "."], ["--html", "is a folder"]),
])
def test_bench_bad_input_exit_2(model_dir: Path, args: list[str], words: list[str]) -> None:
    refused(compress("bench", *args, "--runs", "3", "--warmup", "1", cwd=model_dir), 2, *words)


def test_compare_package_devices_bad_input_exit_2(model_dir: Path, tmp_path: Path) -> None:
    # a run folder is only needed to get past the other checks
    refused(compress("compare", str(tmp_path), str(tmp_path), "--out", "/proc/edgepack-nope/c.md"), 2, "--out")
    refused(compress("package", str(tmp_path), "-a", "onnx-fp32", "-p", "win"), 2, "--platform")
    refused(compress("package", str(tmp_path), "-a", "onnx-fp32", "-o", str(tmp_path)), 2, "--out", "is a folder")
    refused(compress("devices", "check", "lcoal"), 2, "unknown target")
    refused(compress("devices", "check", "ssh:pi"), 2, "no SSH device 'pi'")
    refused(compress("devices", "setup", "x86"), 2, "no emulation for 'x86'")
    refused(compress("devices", "check", "estimate:nope"), 2, "no device profile 'nope'")


def test_unreachable_device_is_a_failed_target_said_once(tiny_dir: Path) -> None:
    body = TINY_RECIPE.replace("bench: {targets: [local], threads: [1], warmup: 2, runs: 5}",
                               "bench:\n  targets: [emulated:aarch64]\n  threads: [1]\n  runs: 5") + "tradeoff: null\n"
    res = compress(str(write_recipe(tiny_dir, body)), "--out", str(tiny_dir / "run"),
                   env={"EDGEPACK_CACHE": str(tiny_dir / "empty-cache")})
    refused(res, 1, "compress devices setup aarch64")
    assert res.stderr.count("target emulated:aarch64:") == 1, res.stderr
    # found before any work: nothing exported, no run folder left that looks like a run
    assert not (tiny_dir / "run").exists()


def test_two_unreachable_targets_are_both_named_before_any_work(tiny_dir: Path) -> None:
    body = TINY_RECIPE.replace(
        "bench: {targets: [local], threads: [1], warmup: 2, runs: 5}",
        "bench:\n  targets: [emulated:aarch64, ssh:board]\n  runs: 5\n"
        "  ssh: {board: {host: 127.0.0.1, port: 9, user: nobody, timeout_s: 5}}") + "tradeoff: null\n"
    res = compress(str(write_recipe(tiny_dir, body)), "--out", str(tiny_dir / "run"),
                   env={"EDGEPACK_CACHE": str(tiny_dir / "empty-cache")})
    refused(res, 1, "target emulated:aarch64", "target ssh:board")
    assert not (tiny_dir / "run").exists()


# --------------------------------------------------------------------------- user code (issue 13)

BAD_CODE = """
import os, sys, time
import torch

class Stop(BaseException):
    pass

def exits():
    sys.exit(0)

def hard_exit():
    os._exit(0)

def base_exception():
    raise Stop("not an Exception")

def sleeps():
    time.sleep(10_000)

class NanNet(torch.nn.Module):
    def forward(self, x):
        return torch.log(-x.flatten(1)[:, :10].abs() - 1)  # NaN everywhere

def nan_model():
    return NanNet()
"""


@pytest.mark.parametrize("change, words", [
    ({"factory: tiny_model.py:tiny": "factory: bad.py:exits"}, ["model factory", "bad.py:exits", "sys.exit(0)"]),
    ({"factory: tiny_model.py:tiny": "factory: bad.py:hard_exit"}, ["bad.py:hard_exit", "os._exit(0)"]),
    ({"factory: tiny_model.py:tiny": "factory: bad.py:base_exception"}, ["raised Stop (a BaseException)"]),
    ({"factory: tiny_model.py:tiny": "factory: bad.py:sleeps\n  timeout_s: 1"},
     ["did not finish within 1 s", "model.timeout_s"]),
    ({"source: tiny_model.py:data": "source: bad.py:exits, timeout_s: 5"}, ["data function", "sys.exit(0)"]),
    ({"factory: tiny_model.py:tiny": "factory: exits_on_import.py:f"}, ["importing", "exits_on_import.py", "sys.exit(0)"]),
    ({"factory: tiny_model.py:tiny": "factory: bad.py:nan_model"}, ["model:", "NaN", "on the data"]),
])
def test_user_code_that_exits_raises_hangs_or_gives_nan_is_a_clear_error(tiny_dir: Path, change: dict[str, str],
                                                                          words: list[str]) -> None:
    (tiny_dir / "bad.py").write_text(BAD_CODE)
    (tiny_dir / "exits_on_import.py").write_text("import sys\nsys.exit(0)\ndef f():\n    pass\n")
    body = TINY_RECIPE
    for old, new in change.items():
        body = body.replace(old, new)
    res = compress(str(write_recipe(tiny_dir, body)), "--out", str(tiny_dir / "run"))
    refused(res, 2, *words)
    assert not (tiny_dir / "run").exists()


def test_trust_pickle_yes_string_never_unpickles(tiny_dir: Path) -> None:
    import pickle

    marker = tiny_dir / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    (tiny_dir / "m.pt").write_bytes(pickle.dumps(Evil()))
    body = TINY_RECIPE.replace("factory: tiny_model.py:tiny", "pickle: m.pt\n  trust_pickle: 'yes'")
    refused(compress(str(write_recipe(tiny_dir, body)), "--out", str(tiny_dir / "run")), 2, "model.trust_pickle")
    assert not marker.exists()


def test_alias_bomb_through_the_cli_process(tiny_dir: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 20)]
    recipe = write_recipe(tiny_dir, TINY_RECIPE + "bomb:\n" + "".join(f"  {x}\n" for x in lines))
    refused(compress("validate", str(recipe)), 2, "more than 200,000 values")
