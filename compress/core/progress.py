"""Progress of long work: the one way steps, exports and the runner show it.

``progress(desc, total)`` is a context manager yielding ``advance(n=1, *, note=None)``.
``total`` None means the amount is unknown (an export, a conversion): the display shows
elapsed time instead of a bar. The runner's implementation
(:class:`compress.runner.progress.RunProgress`) draws a bar with ETA on a terminal and logs
one line when the work ends; outside a run, :func:`no_progress` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol


class Advance(Protocol):
    """``advance(n)`` after ``n`` more units; ``note`` shows beside the bar; ``total`` changes
    the amount when the work grows (extra benchmark rounds)."""

    def __call__(self, n: int = 1, *, note: str | None = None, total: int | None = None) -> None: ...


class ProgressFn(Protocol):
    def __call__(self, desc: str, total: int | None = None) -> contextlib.AbstractContextManager[Advance]: ...


def _nothing(n: int = 1, *, note: str | None = None, total: int | None = None) -> None:
    return None


@contextlib.contextmanager
def no_progress(desc: str, total: int | None = None) -> Iterator[Advance]:
    """A progress that shows nothing (outside a run, in tests)."""
    yield _nothing


def counting(advance: Advance, every: int = 1) -> Callable[[], None]:
    """A no-argument callback that advances by ``every`` (for callbacks that pass nothing)."""
    return lambda: advance(every)
