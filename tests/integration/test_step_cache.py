"""The step cache end to end: a rerun trains nothing, a change reruns what it touches, kill -9 then --resume.

The quickstart-compressed recipe (distill -> prune -> qat -> ONNX) with fewer epochs, run by
the real ``compress`` command with its own cache folder. Times are not asserted here (the
benchmark ``tests/benchmarks/test_cache_rerun.py`` prints them); what is asserted is which
steps ran and which came from the cache, and that cached and fresh runs made the same files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.test_run_faults import _start, _wait_for

RECIPE = ROOT / "recipes" / "quickstart-compressed.yaml"
# prune's 10 epochs (~0.3 s each) are the window the kill -9 test lands in
FAST = ("--set", "steps[0].distill.epochs=4", "--set", "steps[1].prune.epochs=10", "--set", "steps[2].qat.epochs=1",
        "--set", "bench.runs=20", "--set", "bench.warmup=2", "--set", "bench.repeats=1")


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, EDGEPACK_CACHE=str(cache))


def _run(cache: Path, out: Path, *extra: str) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "compress", str(RECIPE), "--out", str(out), *FAST, *extra],
                         capture_output=True, text=True, cwd=ROOT, env=_env(cache), timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _cached(report: dict[str, Any]) -> dict[str, bool]:
    return {s["kind"]: s["cached"] for s in report["steps"]}


def _hashes(report: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["sha256"] for a in report["artifacts"]}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("stepcache")
    cache = tmp / "cache"
    return {"tmp": tmp, "cache": cache, "report": _run(cache, tmp / "first")}


# runs compress and writes whether torch was imported by the time it exited (to the file in argv[1])
PROBE = ("import atexit, runpy, sys; out = sys.argv.pop(1); "
         "atexit.register(lambda: open(out, 'w').write(str('torch' in sys.modules))); "
         "sys.argv[0] = 'compress'; runpy.run_module('compress', run_name='__main__')")


def test_rerun_trains_nothing_and_makes_the_same_files(first: dict[str, Any]) -> None:
    assert _cached(first["report"]) == {"distill": False, "prune": False, "qat": False}
    probe = first["tmp"] / "torch-imported.txt"
    res = subprocess.run([sys.executable, "-c", PROBE, str(probe), str(RECIPE), "--out", str(first["tmp"] / "again"),
                          *FAST], capture_output=True, text=True, cwd=ROOT, env=_env(first["cache"]), timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    again = json.loads((first["tmp"] / "again" / "report.json").read_text())
    # neither the model nor any step's model was loaded: the intake and the steps all came from the cache
    assert probe.read_text() == "False"
    assert "intake: model, data and recipe unchanged" in (first["tmp"] / "again" / "log.txt").read_text()
    assert [s["before"] for s in again["steps"]] == [s["before"] for s in first["report"]["steps"]]
    assert _cached(again) == {"distill": True, "prune": True, "qat": True}
    assert all(a["cached"] for a in again["artifacts"]), [(a["name"], a["cached"]) for a in again["artifacts"]]
    assert _hashes(again) == _hashes(first["report"])
    assert [s["after"]["accuracy"] for s in again["steps"]] == [s["after"]["accuracy"] for s in first["report"]["steps"]]
    log = (first["tmp"] / "again" / "log.txt").read_text()
    assert "cached: 01-distill from the step cache" in log and "distill epoch" not in log
    # latencies are measured again, never cached
    assert all(t["latency_ms"]["p50"] > 0 and t["how"] == "measured" for a in again["artifacts"] for t in a["targets"])


def test_a_step_missing_from_the_cache_loads_the_models_it_needs(first: dict[str, Any]) -> None:
    """Intake, distill and prune from the cache, the QAT entry gone (evicted): QAT runs on the
    cached prune model and the baseline as teacher, both loaded only then (the baseline checked
    against its entry's hash), and makes the same files as the first run."""
    import shutil

    cache = first["tmp"] / "cache-no-qat"
    shutil.copytree(first["cache"], cache)
    ls = subprocess.run([sys.executable, "-m", "compress", "cache", "ls", "--json"], capture_output=True, text=True,
                        cwd=ROOT, env=_env(cache), timeout=120)
    entries = [json.loads(line) for line in ls.stdout.splitlines()]
    assert "intake" in {e["kind"] for e in entries}
    for e in entries:
        if e["kind"] == "qat":
            shutil.rmtree(e["path"])
    report = _run(cache, first["tmp"] / "no-qat")
    assert _cached(report) == {"distill": True, "prune": True, "qat": False}
    assert "intake: model, data and recipe unchanged" in (first["tmp"] / "no-qat" / "log.txt").read_text()
    assert _hashes(report) == _hashes(first["report"])
    assert [s["after"] for s in report["steps"]] == [s["after"] for s in first["report"]["steps"]]


def test_changing_the_benchmark_retrains_nothing(first: dict[str, Any]) -> None:
    report = _run(first["cache"], first["tmp"] / "bench", "--set", "bench.runs=30")
    assert _cached(report) == {"distill": True, "prune": True, "qat": True}
    assert all(len(t["times_ms"]) == 30 for a in report["artifacts"] for t in a["targets"])


def test_changing_the_prune_ratio_reruns_prune_and_what_follows(first: dict[str, Any]) -> None:
    report = _run(first["cache"], first["tmp"] / "ratio", "--set", "steps[1].prune.ratio=0.25")
    assert _cached(report) == {"distill": True, "prune": False, "qat": False}
    assert _hashes(report) != _hashes(first["report"])


def test_no_cache_runs_every_step(first: dict[str, Any]) -> None:
    report = _run(first["cache"], first["tmp"] / "nocache", "--no-cache")
    assert _cached(report) == {"distill": False, "prune": False, "qat": False}
    # the steps are deterministic: the same files as the cached run
    assert _hashes(report) == _hashes(first["report"])


def test_kill_9_in_prune_then_resume(first: dict[str, Any]) -> None:
    """Killed in prune, resumed with its own cache: the same files as ``first``, a clean run of the same recipe."""
    tmp, cache = first["tmp"], first["tmp"] / "cache-kill"
    out = tmp / "killed"
    proc = _start(["-m", "compress", str(RECIPE), "--out", str(out), *FAST], ROOT, env=_env(cache))
    log = out / "log.txt"
    _wait_for(proc, lambda: log.is_file() and "fine-tune 1/1 epoch 1/10" in log.read_text(errors="replace"),
              "the prune step's first epoch")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists() or json.loads((out / "report.json").read_text())["status"] != "ok"
    res = subprocess.run([sys.executable, "-m", "compress", str(RECIPE), "--resume", str(out), *FAST],
                         capture_output=True, text=True, cwd=ROOT, env=_env(cache), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["status"] == "ok"
    assert _cached(resumed) == {"distill": True, "prune": False, "qat": False}
    clean = first["report"]  # the same recipe and overrides, run with an empty cache of its own
    assert _cached(clean) == {"distill": False, "prune": False, "qat": False}
    assert _hashes(resumed) == _hashes(clean)
    assert [s["after"]["accuracy"] for s in resumed["steps"]] == [s["after"]["accuracy"] for s in clean["steps"]]
    assert not list(out.rglob("*.part"))


@pytest.mark.parametrize("args, message", [
    (("--resume", "{tmp}/nowhere"), "no such run folder"),
    (("--resume", "{tmp}"), "not an edgepack run folder"),
    (("--resume", "{tmp}/first", "--no-cache"), "cannot be used with --no-cache"),
])
def test_resume_refuses_what_it_cannot_continue(first: dict[str, Any], args: tuple[str, ...], message: str) -> None:
    argv = [a.format(tmp=first["tmp"]) for a in args]
    res = subprocess.run([sys.executable, "-m", "compress", str(RECIPE), *argv], capture_output=True, text=True,
                         cwd=ROOT, env=_env(first["cache"]), timeout=300)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_cache_commands(first: dict[str, Any]) -> None:
    env = _env(first["cache"])

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "compress", "cache", *args], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=120)

    ls = cli("ls", "--json")
    entries = [json.loads(line) for line in ls.stdout.splitlines()]
    # the ONNX exports of the QAT model and of its float parent are the QAT step's own (timed there)
    assert ls.returncode == 0 and {"distill", "prune", "qat"} <= {e["kind"] for e in entries}
    assert all(e["complete"] and e["size_bytes"] > 0 for e in entries)
    bad = cli("prune", "--older-than", "soon")
    assert bad.returncode == 2 and "--older-than" in bad.stderr and "Traceback" not in bad.stderr
    kept = cli("prune", "--older-than", "30d")
    assert kept.returncode == 0 and "removed 0 entries" in kept.stdout


def test_new_weights_are_a_new_baseline(tmp_path: Path) -> None:
    """The cached intake stands for the model files it hashed: new weights in the same file are
    loaded and measured again, never answered with the old model's outputs."""
    import shutil

    import torch

    (tmp_path / "models").mkdir()
    for name in ("digits.py", "digits_teacher.pt"):
        shutil.copy(ROOT / "recipes" / "models" / name, tmp_path / "models" / name)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text().split("steps:")[0] + "export: [onnx]\n"
                      "bench: {targets: [local], threads: [1], warmup: 2, runs: 20, repeats: 1}\n")
    cache = tmp_path / "cache"

    def run(out: str) -> tuple[dict[str, Any], str]:
        res = subprocess.run([sys.executable, "-m", "compress", str(recipe), "--out", str(tmp_path / out)],
                             capture_output=True, text=True, cwd=ROOT, env=_env(cache), timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        return json.loads((tmp_path / out / "report.json").read_text()), (tmp_path / out / "log.txt").read_text()

    first_report, first_log = run("a")
    again, log = run("b")
    assert "intake: model" not in first_log and "intake: model" in log
    assert _hashes(again) == _hashes(first_report)
    state = torch.load(tmp_path / "models" / "digits_teacher.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.dtype.is_floating_point and v.dim() > 1)
    state[name] = torch.zeros_like(state[name])  # a different model in the same file
    torch.save(state, tmp_path / "models" / "digits_teacher.pt")
    changed, log = run("c")
    assert "intake: model" not in log
    assert _hashes(changed) != _hashes(first_report)
    assert changed["baseline"]["accuracy"] != first_report["baseline"]["accuracy"]


def test_a_factory_without_weights_makes_the_same_model_every_run(tmp_path: Path) -> None:
    """A factory that draws its weights draws them from the recipe's seed: two runs (no cache)
    start from the same model; another seed makes another model."""
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "recipes" / "models" / "digits.py", tmp_path / "models" / "digits.py")
    body = RECIPE.read_text().split("steps:")[0].replace("  weights: models/digits_teacher.pt\n", "")
    assert "weights" not in body
    recipe = tmp_path / "r.yaml"
    recipe.write_text(body + "export: []\nbench: {targets: ['estimate:rpi4']}\n")

    def run(out: str, *extra: str) -> dict[str, Any]:
        res = subprocess.run([sys.executable, "-m", "compress", str(recipe), "--out", str(tmp_path / out),
                              "--no-cache", *extra], capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        return json.loads((tmp_path / out / "report.json").read_text())

    a, b, other = run("a"), run("b"), run("c", "--set", "seed=1")
    # the baseline's facts (its accuracy on the eval split) tell the models apart
    assert a["baseline"] == b["baseline"] and other["baseline"] != a["baseline"]
