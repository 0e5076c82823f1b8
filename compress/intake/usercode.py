"""Run the recipe's own Python (factories, data functions, their modules) so that it cannot end the run.

User code is trusted to run, not to behave: a factory that calls ``sys.exit(0)`` or
``os._exit(0)``, raises a ``BaseException`` (``SystemExit``, ``GeneratorExit``, its own
subclass), or never returns must not make the run exit 0 without a report, nor hang it.
:func:`call_user` turns each of these into a :class:`~compress.core.errors.UserCodeError`,
which the CLI reports as bad input (exit 2, like a factory that raises: the fix is in the
user's code, and nothing has run yet).

A Ctrl-C from the user stays a ``KeyboardInterrupt`` (exit 130); a ``KeyboardInterrupt``
the code raises itself, with no Ctrl-C, is an error of the code.

The timeout needs the main thread (``SIGALRM``); elsewhere user code runs without one.
It interrupts Python code and interruptible waits (``time.sleep``, I/O), not a C loop
that never returns to the interpreter. Code that catches ``BaseException`` and carries on
is interrupted again every second; after :data:`SWALLOWED_ALARMS` of those the process
prints the error and ends with exit code 2 (the only way left not to hang).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from compress.core.errors import EdgepackError, UserCodeError, shorten

DEFAULT_TIMEOUT_S = 600.0
SWALLOWED_ALARMS = 10
"""Interruptions (one a second after the timeout) user code may swallow before the process is ended."""

_state = threading.local()


class _UserExit(BaseException):
    """Raised in place of ``os._exit`` / ``os.abort`` while user code runs."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _UserTimeout(BaseException):
    """Raised by the alarm when user code runs past its timeout (a BaseException: ``except Exception`` misses it)."""


def _exit_guard(name: str) -> Callable[..., Any]:
    def guard(*args: Any) -> None:
        raise _UserExit(f"os.{name}({', '.join(map(repr, args))})")

    return guard


def call_user(fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
              what: str, timeout_s: float | None = DEFAULT_TIMEOUT_S, setting: str | None = None) -> Any:
    """Call user code; every way it can end other than returning becomes a :class:`UserCodeError`.

    Args:
        fn: The user's function (or a closure around user code).
        args: Positional arguments for ``fn``.
        kwargs: Keyword arguments for ``fn`` (a mapping, so a user ``what=`` cannot clash).
        what: Names the code in messages, e.g. ``model factory net.py:build``.
        timeout_s: Seconds it may take; None: no limit.
        setting: The recipe key that sets the timeout, named in the timeout message.

    Returns:
        What ``fn`` returned.

    Raises:
        UserCodeError: It raised, exited, or did not finish in time.
        EdgepackError: Ours, raised from inside (e.g. by intake code the closure runs), unchanged.
        KeyboardInterrupt: The user pressed Ctrl-C.
    """
    if getattr(_state, "active", False):  # nested (a module import inside a guarded call): the outer guard holds
        return fn(*args, **(kwargs or {}))
    main = threading.current_thread() is threading.main_thread()
    saved_exit, saved_abort = os._exit, os.abort
    ctrl_c = {"pressed": False}
    timed_out: dict[str, Any] = {"fired": False, "count": 0}
    old_int = old_alrm = None
    old_timer = (0.0, 0.0)
    use_alarm = main and timeout_s is not None and hasattr(signal, "setitimer")

    def on_int(signum: int, frame: Any) -> None:
        ctrl_c["pressed"] = True
        if callable(old_int):
            old_int(signum, frame)
        elif old_int != signal.SIG_IGN:
            raise KeyboardInterrupt

    def on_alarm(signum: int, frame: Any) -> None:
        timed_out["fired"] = True
        timed_out["count"] += 1
        if timed_out["count"] > SWALLOWED_ALARMS:  # it catches BaseException and goes on: the last resort
            import sys

            sys.stderr.write(f"error: {what} did not finish within {timeout_s:g} s and ignored "
                             f"{SWALLOWED_ALARMS} interruptions; stopping the process"
                             + (f" (set {setting} to allow longer)" if setting else "") + "\n")
            sys.stderr.flush()
            saved_exit(UserCodeError.exit_code)
        raise _UserTimeout

    _state.active = True
    os._exit, os.abort = _exit_guard("_exit"), _exit_guard("abort")  # type: ignore[assignment]
    try:
        if main:
            old_int = signal.signal(signal.SIGINT, on_int)
        if use_alarm:
            old_alrm = signal.signal(signal.SIGALRM, on_alarm)
            # re-fires every second: code that swallows the first alarm is interrupted again
            old_timer = signal.setitimer(signal.ITIMER_REAL, float(timeout_s), 1.0)
        try:
            result = fn(*args, **(kwargs or {}))
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0.0)
        if timed_out["fired"]:
            raise _UserTimeout
        return result
    except EdgepackError:
        raise
    except _UserTimeout:
        where = f" (set {setting} to allow longer)" if setting else ""
        raise UserCodeError(f"{what} did not finish within {timeout_s:g} s{where}") from None
    except _UserExit as e:
        raise UserCodeError(f"{what} called {e.how}: user code must return (or raise an exception), "
                            "not end the process") from None
    except SystemExit as e:
        raise UserCodeError(f"{what} called sys.exit({shorten(repr(e.code), 80)}): user code must return "
                            "(or raise an exception), not exit") from None
    except KeyboardInterrupt:
        if ctrl_c["pressed"] or not main:
            raise
        raise UserCodeError(f"{what} raised KeyboardInterrupt (no Ctrl-C was pressed)") from None
    except Exception as e:
        raise UserCodeError(f"{what} raised {type(e).__name__}: {_first_line(e)}") from e
    except BaseException as e:  # GeneratorExit, a custom BaseException: never let it end the run silently
        raise UserCodeError(f"{what} raised {type(e).__name__} (a BaseException): {_first_line(e)}") from None
    finally:
        os._exit, os.abort = saved_exit, saved_abort  # type: ignore[assignment]
        if use_alarm:
            signal.signal(signal.SIGALRM, old_alrm if old_alrm is not None else signal.SIG_DFL)
            if old_timer[0] > 0:
                signal.setitimer(signal.ITIMER_REAL, *old_timer)
        if main and old_int is not None:
            signal.signal(signal.SIGINT, old_int)
        _state.active = False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return shorten(text[0] if text else "", 300)
