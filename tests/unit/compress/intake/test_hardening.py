"""Bad input never crashes (issue 13): YAML limits, strict booleans, bounds, files, --set, capped messages.

Each case goes through the real ``compress validate`` (or ``compress RECIPE``) and checks the
exit code, a message naming what and where, and no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.core.errors import InputFileError, NonFiniteOutputError, RecipeError, UserCodeError
from compress.intake.recipe_io import apply_overrides, parse_recipe
from tests.conftest import ROOT, TINY_RECIPE, write_recipe

runner = CliRunner()


def validate(path: Path, *args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["validate", str(path), *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return res.exit_code, res.output


def refused(folder: Path, body: str, *words: str) -> str:
    code, out = validate(write_recipe(folder, body))
    assert code == 2, out
    for w in words:
        assert w in out, (w, out)
    return out


# --------------------------------------------------------------------------- YAML limits


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return TINY_RECIPE + "bomb:\n" + "".join(f"  {line}\n" for line in lines)


def test_alias_bomb_is_refused_without_expanding_it(tiny_dir: Path) -> None:
    body = _bomb(20)  # 9**20 values once expanded; about 1.5 KB of text
    assert len(body) < 2000
    tracemalloc.start()
    t0 = time.perf_counter()
    out = refused(tiny_dir, body, "recipe.yaml:", "more than 200,000 values")
    seconds = time.perf_counter() - t0
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"alias bomb: {seconds:.3f} s, peak {peak_mb:.1f} MB traced")
    assert seconds < 5 and peak_mb < 20, (seconds, peak_mb)
    assert out.count("\n") < 5


def test_alias_bomb_rss_in_a_fresh_process(tiny_dir: Path) -> None:
    path = write_recipe(tiny_dir, _bomb(20))
    # VmHWM: the high-water mark of this process's own memory (getrusage's ru_maxrss survives exec,
    # so a child of a large pytest process would report the parent's size)
    code = ("import sys\nfrom compress.cli import app\n"
            "try:\n    app(['validate', sys.argv[1]])\nexcept SystemExit as e:\n    rc = e.code\n"
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
            "print('RSS_MB', int(hwm.split()[1]) / 1024, 'RC', rc)\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    words = res.stdout.split()
    rss, rc = float(words[words.index("RSS_MB") + 1]), words[words.index("RC") + 1]
    print(f"alias bomb: validate process peak RSS {rss:.0f} MB")
    assert rc == "2" and rss < 400, res.stdout + res.stderr  # was 9 GB


def test_small_aliases_still_work_and_keep_their_lines(tiny_dir: Path) -> None:
    body = TINY_RECIPE.replace("bench: {targets: [local], threads: [1], warmup: 2, runs: 5}",
                               "bench: &b {targets: [local], threads: [1], warmup: 2, runs: -5}")
    body += "x_other: *b\n"
    refused(tiny_dir, body, "recipe.yaml:9 bench.runs", "x_other: unknown key")


@pytest.mark.parametrize("tail, words", [
    ("deep: " + "[" * 5000 + "]" * 5000 + "\n", ["nested more than 100 levels"]),
    ("deep: " + "{a: " * 150 + "1" + "}" * 150 + "\n", ["nested more than 100 levels"]),
    ("loop: &loop [1, *loop]\n", ["refers to the mapping or list that contains it"]),
    ("loop: &m {a: 1, <<: *m}\n", ["refers to the mapping or list that contains it"]),
    ("? [a, b]\n: 1\n", ["a key must be a plain name"]),
])
def test_deep_or_recursive_yaml_is_a_clear_message(tiny_dir: Path, tail: str, words: list[str]) -> None:
    refused(tiny_dir, TINY_RECIPE + tail, "recipe.yaml:", *words)


def test_a_recipe_over_one_megabyte_is_refused_before_parsing(tiny_dir: Path) -> None:
    body = TINY_RECIPE + "# " + "x" * 1_100_000 + "\n"
    refused(tiny_dir, body, "1,000,000")


def test_set_value_is_parsed_under_the_same_limits(tiny_dir: Path) -> None:
    path = write_recipe(tiny_dir, TINY_RECIPE)
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]"
                                                                   for i in range(1, 12)]) + "]"
    with pytest.raises(RecipeError, match="more than 200,000 values"):
        parse_recipe(path, [f"task.labels={bomb}"])


# --------------------------------------------------------------------------- booleans, numbers, sizes


def test_trust_pickle_must_be_a_real_boolean(tiny_dir: Path) -> None:
    (tiny_dir / "m.pt").write_bytes(b"\x80 not really")
    body = TINY_RECIPE.replace("factory: tiny_model.py:tiny", "pickle: m.pt\n  trust_pickle: 'yes'")
    refused(tiny_dir, body, "model.trust_pickle", "valid boolean")
    ok = TINY_RECIPE.replace("factory: tiny_model.py:tiny", "pickle: m.pt\n  trust_pickle: true")
    assert validate(write_recipe(tiny_dir, ok))[0] == 0


@pytest.mark.parametrize("old, new, where, words", [
    ("runs: 5", "runs: 5}\nsteps: [{prune: {lr: .inf, epochs: 1}}]\nx: {", "steps[0].prune.lr", ["finite"]),
    ("runs: 5", "runs: 5}\nsteps: [{prune: {lr: 1e308, epochs: 1}}]\nx: {", "steps[0].prune.lr", ["less than or equal to 10"]),
    ("runs: 5", "runs: 5}\nsteps: [{prune: {epochs: 100000000000}}]\nx: {", "steps[0].prune.epochs", ["less than"]),
    ("runs: 5", "runs: 9223372036854775808", "bench.runs", ["less than or equal to 1000000"]),
    ("[1, 1, 8, 8]", "[1267650600228229401496703205376, 1, 8, 8]", "model.input_shape[0]", ["2147483647"]),
    ("[1, 1, 8, 8]", "[1, 100000, 100000, 8]", "model", ["input_shape", "elements", "2**31"]),
    ("[1, 1, 8, 8]", "[" + ", ".join(["1"] * 40) + "]", "model.input_shape", ["at most 32"]),
    ("eval_fraction: 0.25", "eval_fraction: .nan", "data.eval_fraction", ["finite"]),
    ("eval_fraction: 0.25", "eval_fraction: 0.25, seed: -1", "data.seed", ["greater than or equal to 0"]),
    ("name: tiny", "name: " + "n" * 300, "name", ["at most 100"]),
])
def test_absurd_numbers_are_refused_by_validate(tiny_dir: Path, old: str, new: str, where: str,
                                                words: list[str]) -> None:
    body = TINY_RECIPE.replace(old, new)
    if "\nx: {" in body:  # the replacement closed the bench mapping early; reopen it for the rest
        body = body.replace("\nx: {}", "\n")
    refused(tiny_dir, body, f" {where}:", *words)


def test_batch_sizes_times_the_input_are_bounded(tiny_dir: Path) -> None:
    body = TINY_RECIPE.replace("[1, 1, 8, 8]", "[1, 3, 1024, 1024]").replace("runs: 5", "runs: 5, batch_sizes: [65536]")
    refused(tiny_dir, body, "bench.batch_sizes:", "a batch of 65536", "2**31")


def test_cloud_batch_of_two_to_the_63(tiny_dir: Path) -> None:
    refused(tiny_dir, TINY_RECIPE + "tradeoff: {cloud: {batch: 9223372036854775808}}\n", "tradeoff.cloud.batch",
            "less than or equal to 65536")


# --------------------------------------------------------------------------- files


def _weights(path: str) -> str:
    return TINY_RECIPE.replace("factory: tiny_model.py:tiny", f"factory: tiny_model.py:tiny\n  weights: '{path}'")


@pytest.mark.parametrize("make, words", [
    (lambda d: "/proc/self/mem", ["cannot read /proc/self/mem"]),
    (lambda d: str(d), ["is a folder"]),
    (lambda d: (os.mkfifo(d / "w.fifo"), "w.fifo")[1], ["FIFO"]),
    (lambda d: "/dev/zero", ["character device"]),
    (lambda d: "a" * 300 + ".pt", ["303 bytes long", "allow 255"]),
    (lambda d: "~nosuchuser_xyz/w.pt", ["no home folder for 'nosuchuser_xyz'"]),
    (lambda d: "nothere.pt", ["weights file not found"]),
])
def test_files_must_be_regular_and_readable(tiny_dir: Path, make, words: list[str]) -> None:
    out = refused(tiny_dir, _weights(make(tiny_dir)), "recipe.yaml:5 model.weights:", *words)
    assert len(out) < 1200


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tiny_dir: Path) -> None:
    (tiny_dir / "w.pt").write_bytes(b"x")
    (tiny_dir / "w.pt").chmod(0)
    refused(tiny_dir, _weights("w.pt"), "model.weights", "cannot read")


def test_recipe_path_itself(tiny_dir: Path) -> None:
    assert validate(tiny_dir / ("r" * 300 + ".yaml"))[0] == 2
    code, out = validate(tiny_dir)
    assert code == 2 and "is a folder" in out


# --------------------------------------------------------------------------- --set


def test_set_adds_keys_the_schema_allows(tiny_dir: Path) -> None:
    path = write_recipe(tiny_dir, TINY_RECIPE)
    src = parse_recipe(path, ["parity.atol=1e-3", "bench.repeats=5", "tradeoff.cloud.batch=4",
                              "fidelity.artifacts.onnx-fp32.min_cosine=0.9"])
    r = src.recipe
    assert r.parity.atol == 1e-3 and r.bench.repeats == 5 and r.tradeoff.cloud.batch == 4
    assert r.fidelity.artifacts["onnx-fp32"].min_cosine == 0.9
    no_tradeoff = write_recipe(tiny_dir, TINY_RECIPE + "tradeoff: null\n", "r2.yaml")
    assert parse_recipe(no_tradeoff, ["tradeoff.cloud.batch=2"]).recipe.tradeoff.cloud.batch == 2


def test_set_still_refuses_keys_the_schema_forbids(tiny_dir: Path) -> None:
    path = write_recipe(tiny_dir, TINY_RECIPE)
    code, out = validate(path)
    assert code == 0
    res = runner.invoke(app, ["run", str(path), "--set", "parity.colour=red", "--set", "bench.repeats=0",
                              "--out", str(tiny_dir / "run")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "parity.colour: unknown key" in res.output and "(set by --set)" in res.output
    assert "bench.repeats" in res.output and not (tiny_dir / "run").exists()
    with pytest.raises(RecipeError, match="has 0 item"):
        apply_overrides({"steps": []}, ["steps[0].prune.ratio=0.5"])
    with pytest.raises(RecipeError, match="is not a mapping"):
        apply_overrides({"name": "x"}, ["name.first=1"])


# --------------------------------------------------------------------------- capped messages


def test_a_huge_value_is_shown_truncated(tiny_dir: Path) -> None:
    out = refused(tiny_dir, TINY_RECIPE.replace("name: tiny", "name: '" + "?" * 100_000 + "'"), "chars)")
    assert len(out) < 2000


def test_thousands_of_unknown_keys_are_counted_not_listed(tiny_dir: Path) -> None:
    body = TINY_RECIPE + "".join(f"k{i}: {i}\n" for i in range(20_000))
    out = refused(tiny_dir, body, "20,000 problems", "… and 19,950 more problems")
    assert len(out) < 20_000


# --------------------------------------------------------------------------- NaN and inf


def test_nan_or_inf_in_data_is_refused_at_intake(tmp_path: Path) -> None:
    from compress.intake.data import load_dataset
    from compress.intake.recipe import DataSpec

    x = np.zeros((10, 3), np.float32)
    x[4, 1], x[7, 2] = np.nan, np.inf
    np.savez(tmp_path / "x.npz", x=x, y=np.zeros(10, np.int64))
    with pytest.raises(InputFileError, match=r"x has 1 NaN and 1 infinite value\(s\) of 30 \(first at index \(4, 1\)\)"):
        load_dataset(DataSpec(source=str(tmp_path / "x.npz")))
    np.savez(tmp_path / "y.npz", x=np.zeros((10, 3), np.float32), y=np.full(10, np.inf))
    with pytest.raises(InputFileError, match="y has 0 NaN and 10 infinite"):
        load_dataset(DataSpec(source=str(tmp_path / "y.npz")))


def test_nan_outputs_fail_parity_with_the_count() -> None:
    from bench.parity import compare_outputs

    ref = np.zeros((4, 3))
    out = ref.copy()
    out[2, 1] = np.nan
    with pytest.raises(NonFiniteOutputError, match=r"1 NaN and 0 infinite value\(s\) of 12 \(first in sample 2\)"):
        compare_outputs(ref, out, "torch", "classification", tolerance=1e-4)
    with pytest.raises(NonFiniteOutputError, match="torch gives 0 NaN and 1 infinite"):
        compare_outputs(np.where(out == out, ref, np.inf), ref, "torch", "regression")  # the reference too
    assert compare_outputs(ref, ref, "torch", "classification", tolerance=1e-4).passed


# --------------------------------------------------------------------------- user code


def test_user_code_that_exits_or_raises_base_exceptions(tmp_path: Path) -> None:
    from compress.intake.usercode import call_user

    class Mine(BaseException):
        pass

    def raise_(e: BaseException) -> None:
        raise e

    for fn, words in [(lambda: sys.exit(0), "called sys.exit(0)"), (lambda: os._exit(0), "called os._exit(0)"),
                      (lambda: raise_(GeneratorExit()), "GeneratorExit"), (lambda: raise_(Mine("x")), "Mine"),
                      (lambda: raise_(KeyboardInterrupt()), "no Ctrl-C"), (lambda: 1 / 0, "ZeroDivisionError")]:
        with pytest.raises(UserCodeError) as exc:
            call_user(fn, what="model factory f.py:f")
        assert words in str(exc.value)
        assert exc.value.exit_code == 2 and "model factory f.py:f" in str(exc.value)
    assert os._exit.__name__ == "_exit"  # restored
    with pytest.raises(UserCodeError, match=r"did not finish within 0.3 s \(set model.timeout_s"):
        call_user(time.sleep, (60,), what="f", timeout_s=0.3, setting="model.timeout_s")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_real_ctrl_c_stays_a_keyboard_interrupt() -> None:
    from compress.intake.usercode import call_user

    # Python's own Ctrl-C handler, whatever the suite was started with (a shell's background job
    # starts with SIGINT ignored, and call_user rightly keeps an ignored Ctrl-C ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            call_user(lambda: signal.raise_signal(signal.SIGINT), what="f")
    finally:
        signal.signal(signal.SIGINT, previous)


def test_code_that_swallows_every_interruption_ends_the_process(tmp_path: Path) -> None:
    code = ("import time, compress.intake.usercode as u\nu.SWALLOWED_ALARMS = 2\n"
            "def f():\n    while True:\n        try:\n            time.sleep(100)\n        except BaseException:\n"
            "            pass\nu.call_user(f, what='model factory f.py:f', timeout_s=0.2, setting='model.timeout_s')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "ignored 2 interruptions" in res.stderr and "Traceback" not in res.stderr


def test_student_and_module_code_go_through_the_guard(tmp_path: Path) -> None:
    from compress.intake.data import import_ref

    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\ndef f():\n    pass\n")
    with pytest.raises(UserCodeError, match="importing .*exits.py called sys.exit"):
        import_ref(f"{tmp_path / 'exits.py'}:f")
    (tmp_path / "student.py").write_text("import os\ndef student():\n    os._exit(0)\n")
    fn = import_ref(f"{tmp_path / 'student.py'}:student", "student")
    with pytest.raises(UserCodeError, match="student .*student.py:student called os._exit"):
        fn()
