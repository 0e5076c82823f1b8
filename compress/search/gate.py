"""The benchmark gate: training shares the machine, a benchmark has it alone.

Two lock files in the search folder. Work (steps, exports, evaluations) holds ``room.lock``
shared; a benchmark holds it exclusively, so no trial is timed while another trains or
is timed. A benchmark first takes ``turnstile.lock`` and keeps it while it waits: new work
passes the turnstile on its way in, so a stream of short steps cannot starve a waiting
benchmark. ``flock`` locks are released by the kernel when a process dies, so a killed
trial never leaves the gate shut.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class _Held:
    """One held lock (an open file with a flock on it)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class BenchGate:
    """Shared for work, exclusive for timing, fair to a waiting benchmark (see the module notes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _lock(self, name: str, mode: int) -> _Held:
        fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return _Held(fd)

    def shared(self) -> _Held:
        """Take a share of the machine (after the turnstile: a waiting benchmark goes first)."""
        turnstile = self._lock("turnstile.lock", fcntl.LOCK_EX)
        try:
            return self._lock("room.lock", fcntl.LOCK_SH)
        finally:
            turnstile.release()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Have the machine alone: no work and no other benchmark while inside."""
        turnstile = self._lock("turnstile.lock", fcntl.LOCK_EX)
        try:
            room = self._lock("room.lock", fcntl.LOCK_EX)
            try:
                yield
            finally:
                room.release()
        finally:
            turnstile.release()
