"""The run's progress display: one rich bar per piece of long work, on the run's console.

On a terminal each piece of work (training, calibration, export, conversion, parity,
benchmarking) shows a bar with done/total, elapsed time and ETA (a spinner with elapsed time
when the total is unknown); the bar is transient and is replaced by one log line, written to
the console and ``log.txt``, with what was done and how long it took, so finished work never
stays on screen as a half-full bar. Pieces of work inside another (an export a step asks for)
share the same live display as extra rows. Off a terminal (CI, a pipe) only the log lines
appear. Library output never interleaves with the bars: it goes to ``log.txt``
(:mod:`compress.runner.quiet`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from compress.core.progress import Advance


class RunProgress:
    """``progress(desc, total)`` for one run (see the module docstring).

    Args:
        console: The run's rich console (None: quiet, log lines only).
        log: The run's log function (console and ``log.txt``).
    """

    def __init__(self, console: Any, log: Callable[[str], None]) -> None:
        self.console = console
        self.log = log
        self._live: Any = None
        self._depth = 0

    def _display(self) -> Any:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        TextColumn("{task.fields[note]}", markup=False), console=self.console, transient=True)

    @contextlib.contextmanager
    def __call__(self, desc: str, total: int | None = None) -> Iterator[Advance]:
        shown = self.console is not None and getattr(self.console, "is_terminal", False)
        done = [0]
        t0 = time.perf_counter()
        if shown and self._live is None:
            self._live = self._display()
            self._live.start()
        live = self._live if shown else None
        task = live.add_task(desc, total=total, note="") if live is not None else None
        self._depth += 1

        amount = [total]

        def advance(n: int = 1, *, note: str | None = None, total: int | None = None) -> None:
            done[0] += n
            if total is not None:
                amount[0] = total
            if live is not None:
                live.update(task, advance=n, **({"note": note} if note is not None else {}),
                            **({"total": total} if total is not None else {}))

        finished = False
        try:
            yield advance
            finished = True
        finally:
            self._depth -= 1
            if live is not None:
                live.remove_task(task)
                if self._depth == 0:
                    live.stop()
                    self._live = None
            took = time.perf_counter() - t0
            count = f"{done[0]}/{amount[0]}" if amount[0] is not None else (f"{done[0]}" if done[0] else "")
            state = "done" if finished else "stopped"
            self.log(f"  {desc}: {state}{' ' + count if count else ''} in {took:.1f} s")
