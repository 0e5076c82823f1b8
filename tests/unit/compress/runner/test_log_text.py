"""The run's log prints user text as it is, on the console and in log.txt."""

from __future__ import annotations

import io
from types import SimpleNamespace

from compress.core.console import make_console
from compress.runner.run import Runner


def test_log_lines_are_never_markup_or_emoji() -> None:
    out, written = io.StringIO(), []
    runner = SimpleNamespace(console=make_console(file=out, width=200, force_terminal=True, color_system="standard"),
                             _log=SimpleNamespace(write=written.append))
    Runner.log(runner, "bench adb:phone: on runs/[red]x[/red]/m.onnx")  # type: ignore[arg-type]
    Runner.log(runner, "step 01-prune [bold]", style="bold")  # type: ignore[arg-type]
    shown = out.getvalue()
    assert "bench adb:phone: on runs/[red]x[/red]/m.onnx\n" in shown and "☎" not in shown
    assert "\x1b[1mstep 01-prune [bold]\x1b[0m" in shown  # our style, the text untouched
    assert [w.split(" ", 1)[1] for w in written] == ["bench adb:phone: on runs/[red]x[/red]/m.onnx\n",
                                                     "step 01-prune [bold]\n"]  # log.txt: plain text, no tags
