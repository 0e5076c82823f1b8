"""The run's progress: bars on a terminal, one log line per piece of work everywhere, library noise in the log."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from rich.console import Console

from compress.core.progress import no_progress
from compress.runner.progress import RunProgress
from compress.runner.quiet import library_output_to


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120, color_system=None), buf


def test_a_bar_on_a_terminal_then_one_line_with_the_count_and_time() -> None:
    console, buf = _terminal()
    lines: list[str] = []
    progress = RunProgress(console, lines.append)
    with progress("calibrate on 4 batches", 4) as advance:
        for _ in range(4):
            advance(1, note="x")
    assert lines and lines[-1].startswith("  calibrate on 4 batches: done 4/4 in ")
    assert "calibrate on 4 batches" in buf.getvalue()  # the live bar was drawn
    assert progress._live is None  # and stopped: the next output starts on a clean line


def test_nested_work_shares_one_display_and_an_unknown_total_logs_time_only() -> None:
    console, _ = _terminal()
    lines: list[str] = []
    progress = RunProgress(console, lines.append)
    with progress("qat (2 epochs)", 2) as outer:
        with progress("export onnx (int8)"):
            assert progress._depth == 2
        outer(2)
    assert lines[0].startswith("  export onnx (int8): done in ") and lines[1].startswith("  qat (2 epochs): done 2/2")


def test_off_a_terminal_only_the_log_line_and_a_stop_says_so() -> None:
    lines: list[str] = []
    progress = RunProgress(None, lines.append)
    try:
        with progress("benchmark", 6) as advance:
            advance(2)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert lines == [lines[0]] and lines[0].startswith("  benchmark: stopped 2/6 in ")
    with no_progress("nothing", 3) as advance:
        advance(3)  # outside a run: does nothing, accepts the same calls


def test_library_output_goes_to_the_log_and_stderr_comes_back(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text("run line\n")
    before = os.fstat(2).st_ino
    with library_output_to(log):
        os.write(2, b"W1202 native noise from a library\n")
        print("python warning text", file=sys.stderr)
    assert os.fstat(2).st_ino == before
    text = log.read_text()
    assert text.startswith("run line\n") and "native noise" in text and "python warning text" in text
