"""Library noise goes to ``log.txt``, not the terminal.

torch, torchao, onnxruntime, TensorFlow/LiteRT and friends write warnings and C++ log lines
straight to the process's standard error (file descriptor 2), some from Python's
``logging`` and ``warnings``, some from native code no Python setting reaches ("Could not
load _C_mxfp8.so", torch's pytree notices, absl's "WARNING: All log messages before
absl::InitializeLog()"). While a run works, descriptor 2 points at the run's ``log.txt``
(opened for appending, so the run's own lines and the libraries' interleave in order); the
run's own messages go to the console on standard output. The original descriptor comes
back when the run ends, also on Ctrl-C or an error, so the CLI's error message reaches the
terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def library_output_to(path: Path, enabled: bool = True) -> Iterator[None]:
    """Point descriptor 2 and ``sys.stderr`` at ``path`` meanwhile.

    Args:
        path: The log file (appended to).
        enabled: False: leave standard error alone (a caller that wants the noise).
    """
    if not enabled:
        yield
        return
    try:
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:  # the log itself cannot be written: the run reports that; keep stderr as it is
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        os.close(target)
        yield
        return
    _flush()
    old_stderr = sys.stderr
    stream = None
    try:
        os.dup2(target, 2)
        # Python-level writers (warnings, logging's last resort) write to sys.stderr, which an
        # embedding program (or a test runner) may have pointed elsewhere than descriptor 2
        stream = open(os.dup(target), "w", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
        sys.stderr = stream
        yield
    finally:
        _flush()
        sys.stderr = old_stderr
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def _flush() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
