"""A real run on a terminal shows progress for calibration, export and benchmarking.

The run is driven through a pseudo-terminal (as a user's shell would run it), so rich draws
its live bars; off a terminal the same work leaves one log line each. Library noise (torch,
onnxruntime warnings) stays out of the terminal and goes to log.txt.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_on_a_terminal(args: list[str], timeout: float = 900) -> str:
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="160", LINES="40", TERM="xterm-256color")
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        proc.wait(timeout=60)
        os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_a_run_on_a_terminal_shows_progress_for_each_long_piece_of_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    text = _run_on_a_terminal([sys.executable, "-m", "compress", str(ROOT / "recipes" / "quickstart.yaml"),
                               "--out", str(out), "--no-cache", "--set", "bench.runs=20", "--set", "bench.repeats=2",
                               "--set", "bench.max_repeats=2", "--set", "export=[onnx]", "--set", "tradeoff=null"])
    # live bars (drawn while the work runs: the ETA column is only in the bar) ...
    bars = [line for line in text.replace("\r", "\n").splitlines() if "ETA" in line]
    for work in ("calibrate on", "export onnx", "benchmark on local"):
        assert any(work in line for line in bars), (work, bars[:20])
    # ... replaced by one line each when done, never left half full
    for done in (r"calibrate on \d+ batches and quantize: done (\d+)/\1 in", r"export onnx \(fp32\): done in",
                 r"benchmark on local \(1 thread, batch 1\), 2 interleaved rounds: done (\d+)/\1 in"):
        assert re.search(done, text), done
    log = (out / "log.txt").read_text()
    assert "calibrate on" in log and "benchmark on local" in log
    # the terminal shows the run's own lines; what libraries print goes to log.txt
    for noise in ("_C_mxfp8", "pytree", "UserWarning", "DeprecationWarning"):
        assert noise not in text, noise
