"""Runs that survive faults: two runs into one folder, a full disk, a read-only folder, kill -9.

Each test drives the real ``compress`` command (in a subprocess, or in-process through
typer's CliRunner with one OS call made to fail) and then looks at what the run folder holds:
no file under its final name is corrupt, and a report's status is true to what exists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app
from tests.conftest import ROOT, TINY_RECIPE, write_recipe
from tests.integration.test_ssh_target import _gemm_model

# A tiny model pruned and fine-tuned for a few epochs, exported, timed in two interleaved
# rounds (never more: max_repeats is repeats): a run of ~15 s with a log line at each phase.
KILL_RECIPE = TINY_RECIPE.replace("bench: {targets: [local], threads: [1], warmup: 2, runs: 5}",
                                  "bench: {targets: [local], threads: [1], warmup: 2, runs: 50, repeats: 2, "
                                  "max_repeats: 2}") + \
    "steps:\n  - prune: {method: structured, ratio: 0.25, epochs: 3}\n"


def _start(args: list[str], cwd: Path, **kw: object) -> subprocess.Popen:
    # its own session: the kill takes the run and the benchmark agents it started
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)


def _wait_for(proc: subprocess.Popen, found: object, what: str, timeout_s: float = 120) -> None:
    """Poll until ``found()`` is true; fail if the run ends first."""
    deadline = time.monotonic() + timeout_s
    while not found():  # type: ignore[operator]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.02)


def _log_after(log: Path, offset: int) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return ""


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.communicate()


def assert_folder_sound(run: Path) -> dict | None:
    """No file under its final name is corrupt; a report's status is true to what exists."""
    import onnx

    for p in run.rglob("*"):
        if not p.is_file() or p.name.endswith(".part"):
            continue
        if p.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(p)))
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
    report_path = run / "report.json"
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text())
    if report["status"] in ("ok", "degraded"):
        assert (run / "report.md").is_file() and (run / "report.html").is_file()
        for art in report["artifacts"]:
            f = run / art["path"]
            assert f.is_file(), f"the report lists {art['path']}, which is not there"
            assert hashlib.sha256(f.read_bytes()).hexdigest() == art["sha256"], art["path"]
    return report


# The report phase lasts milliseconds: the run is started through this wrapper, which waits
# (with report.md written and report.html's .part complete but not yet renamed) for the kill.
SLOW_REPORT = textwrap.dedent('''
    import contextlib, sys, time
    from pathlib import Path

    import compress.core.fileio as artifact

    marker = Path(sys.argv.pop(1))
    original = artifact.atomic_path

    @contextlib.contextmanager
    def slow(dest):
        with original(dest) as tmp:
            yield tmp
            if dest.name == "report.html":
                marker.touch()
                time.sleep(120)

    artifact.atomic_path = slow
    from compress.cli import main

    sys.argv[0] = "compress"
    main()
''')


def test_kill_9_at_every_phase_leaves_a_sound_folder(tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, KILL_RECIPE)
    run = tiny_dir / "run"
    log = run / "log.txt"
    (tiny_dir / "slow_report.py").write_text(SLOW_REPORT)
    marker = tiny_dir / "writing-report"

    # 1. killed while writing the report: report.md is there, report.html only as a .part, and
    #    no report.json (it is written last), so nothing claims ok.
    proc = _start([str(tiny_dir / "slow_report.py"), str(marker), str(recipe), "--out", str(run), "-q"], ROOT)
    _wait_for(proc, marker.exists, "the report write")
    _kill(proc)
    assert (run / "report.md").is_file() and not (run / "report.html").exists()
    assert list(run.glob(".report.html.*.part"))
    assert assert_folder_sound(run) is None

    # 2-4. reruns into the same folder, killed in training, export and benchmark
    phases = [("training", "fine-tune 1/1 epoch 1/"), ("export", "export onnx"), ("benchmark", "process 1/2")]
    for phase, line in phases:
        offset = log.stat().st_size
        # --no-cache: the first run's prune is in the step cache, and this kill must land in training
        proc = _start(["-m", "compress", str(recipe), "--out", str(run), "-q", "--no-cache"], ROOT)
        _wait_for(proc, lambda line=line, offset=offset: line in _log_after(log, offset), f"the {phase} phase")
        _kill(proc)
        if phase == "training":
            # the rerun removed what the killed report write left, and the old run's reports
            assert "an interrupted run left" in _log_after(log, offset)
            # (by the kill the rerun may be past training: a .part of its own export may exist)
            assert not list(run.glob(".report.*.part")) and not (run / "report.md").exists()
        assert assert_folder_sound(run) is None, phase  # no report at all until the run writes its own

    # 5. a rerun into a new folder succeeds; one into the killed folder is not refused by a stale lock
    res = subprocess.run([sys.executable, "-m", "compress", str(recipe), "--out", str(tiny_dir / "again"), "-q"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = assert_folder_sound(tiny_dir / "again")
    assert report is not None and report["status"] == "ok" and not list((tiny_dir / "again").rglob("*.part"))
    from compress.runner.folder import RunFolderLock

    with RunFolderLock(run):  # the lock of the killed runs died with them
        pass


def test_second_run_into_the_same_out_is_refused(tmp_path: Path) -> None:
    model = _gemm_model(tmp_path / "gemm.onnx")
    recipe = write_recipe(tmp_path, f"""
        version: 1
        name: long-bench
        model: {{onnx: {model}, input_shape: [1, 16]}}
        task: {{kind: regression}}
        bench: {{runs: 5000, warmup: 0, repeats: 4, max_repeats: 4}}
    """)
    run = tmp_path / "run"
    first = _start(["-m", "compress", str(recipe), "--out", str(run), "-q"], ROOT)
    _wait_for(first, lambda: "process 1/4" in _log_after(run / "log.txt", 0), "the first run's benchmark")
    second = subprocess.run([sys.executable, "-m", "compress", str(recipe), "--out", str(run), "-q"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    running_when_refused = first.poll() is None
    out, err = first.communicate(timeout=300)
    assert running_when_refused, "the first run ended before the second started: the test proves nothing"
    assert second.returncode == 2, second.stderr
    assert f"in use by another run (pid {first.pid})" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, err
    report = assert_folder_sound(run)
    assert report is not None and report["status"] == "ok"
    # the second run wrote nothing: one run in the log, the first run's report
    assert (run / "log.txt").read_text().count("run folder:") == 1


# ---------------------------------------------------------------------------- full disk, read-only


@pytest.fixture()
def gemm_recipe(tmp_path: Path) -> Path:
    model = _gemm_model(tmp_path / "gemm.onnx")
    return write_recipe(tmp_path, f"""
        version: 1
        name: gemm
        model: {{onnx: {model}, input_shape: [1, 16]}}
        task: {{kind: regression}}
        bench: {{runs: 3, warmup: 0, repeats: 1}}
    """)


def _invoke(recipe: Path, out: Path) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(recipe), "--out", str(out), "--quiet"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only")])
def test_report_that_cannot_be_written_fails_the_run(monkeypatch: pytest.MonkeyPatch, gemm_recipe: Path,
                                                     tmp_path: Path, code: int, words: str) -> None:
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if Path(dst).name == "report.html":
            raise OSError(code, os.strerror(code), str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    exit_code, output = _invoke(gemm_recipe, run)
    assert exit_code == 1, output
    assert words in output and "report.html" in output and "internal error" not in output
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "failed" and words in report["error"]
    assert not (run / "report.html").exists() and not list(run.rglob("*.part"))


def test_a_plotting_bug_is_visible_not_fatal(monkeypatch: pytest.MonkeyPatch, gemm_recipe: Path, tmp_path: Path) -> None:
    import bench.html

    def broken(*_a: object, **_k: object) -> str:
        raise ValueError("a plotting bug")

    monkeypatch.setattr(bench.html, "render_html", broken)
    run = tmp_path / "run"
    exit_code, output = _invoke(gemm_recipe, run)
    assert exit_code == 0, output
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "ok"
    assert any(a["code"] == "report_html_failed" and "a plotting bug" in a["message"] for a in report["advisories"])
    assert "report_html_failed" in (run / "report.md").read_text()
    assert "<pre>" in (run / "report.html").read_text()  # the Markdown report, as a page


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 16 KiB tmpfs: room for the run's bookkeeping, not for its model."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}); the monkeypatched cases cover it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_mid_run_is_a_failed_run(small_disk: Path, tiny_dir: Path) -> None:
    recipe = write_recipe(tiny_dir, TINY_RECIPE)
    run = small_disk / "run"
    exit_code, output = _invoke(recipe, run)
    assert exit_code == 1, output
    assert "disk full" in output and "internal error" not in output and "Traceback" not in output
    report = assert_folder_sound(run)
    assert report is None or report["status"] == "failed"
    assert not list(run.rglob("*.part")) and not list(run.rglob("*.onnx"))


def test_cleanup_removes_only_what_a_run_left(tmp_path: Path) -> None:
    """An --out may be a folder with the user's files: only edgepack's own leftovers go."""
    from compress.runner.folder import remove_stale_files

    ours = [tmp_path / ".report.html.abcd_123.part", tmp_path / "exports" / "onnx-fp32" / ".model.onnx.x9y8z7w6.part",
            tmp_path / "steps" / "02-quantize" / "work-a1b2c3d4" / "trial-01.onnx"]
    theirs = [tmp_path / "movie.mkv.part", tmp_path / "notes" / ".draft.abcd1234.part",
              tmp_path / "steps" / "02-quantize" / "work-notes" / "keep.txt"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    removed = remove_stale_files(tmp_path)
    assert all(not p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert len(removed) == 3
