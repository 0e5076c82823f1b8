"""Errors the toolkit raises on purpose.

Every error here carries a message written for the user: what went wrong, where, and
what to do. The CLI prints the message (no traceback) and exits with the error's
``exit_code``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_PROBLEMS_SHOWN = 50
"""Problems listed in one message; the rest are counted (a generated file can hold 200,000 typos)."""
MAX_PATH_CHARS = 200
MAX_MESSAGE_CHARS = 1000
MAX_VALUE_CHARS = 200


def shorten(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: ``abc… (100,000 chars)``."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"


def attach_advisories(exc: BaseException, advisories: Iterable[Any]) -> None:
    """Add to ``exc.advisories`` what a step advised before ``exc`` escaped it, each advisory once.

    The runner reports them with the failure: the advisory that explains a failure is often
    given just before it. An exception type that takes no attributes keeps none.
    """
    known = list(getattr(exc, "advisories", None) or ())
    new = [a for a in advisories if not any(a is k for k in known)]
    if new:
        try:
            exc.advisories = known + new  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass


class EdgepackError(Exception):
    """Base class of every error the CLI reports without a traceback.

    ``advisories`` holds what the failing step advised before it failed (see
    :func:`attach_advisories`); the runner puts them in the report.
    """

    exit_code: int = 1
    advisories: tuple[Any, ...] | list[Any] = ()

    def user_message(self) -> str:
        """Return the text the CLI prints."""
        return str(self)


@dataclass(frozen=True)
class RecipeProblem:
    """One problem found in a recipe.

    Args:
        path: Dotted path of the offending value, e.g. ``steps[1].prune.ratio``.
        message: What is wrong with it.
        line: 1-based line in the YAML file, when known.
    """

    path: str
    message: str
    line: int | None = None

    def render(self, file: str | None) -> str:
        where = f"{file}:{self.line}" if file and self.line else (file or "recipe")
        loc = f" {shorten(self.path, MAX_PATH_CHARS)}:" if self.path else ""
        return f"{where}{loc} {shorten(self.message, MAX_MESSAGE_CHARS)}"


class RecipeError(EdgepackError):
    """The recipe is invalid. Carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[RecipeProblem], file: str | None = None) -> None:
        self.problems = problems
        self.file = file
        super().__init__(self.user_message())

    def user_message(self) -> str:
        n = len(self.problems)
        head = f"{self.file or 'recipe'}: {n:,} problem{'s' if n != 1 else ''}"
        shown = ["  " + p.render(self.file) for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if n > MAX_PROBLEMS_SHOWN:
            rest = n - MAX_PROBLEMS_SHOWN
            shown.append(f"  … and {rest:,} more problem{'s' if rest != 1 else ''}")
        return "\n".join([head] + shown)


class StepError(EdgepackError):
    """A pipeline step failed while running.

    Args:
        step: The step's name (``02-prune``, ``export:onnx``).
        message: What went wrong.
        advisories: What the step advised before it failed (more are attached as the error
            leaves the step, see :func:`compress.core.step.noting`).
    """

    def __init__(self, step: str, message: str, advisories: Iterable[Any] = ()) -> None:
        self.step = step
        self.message = message
        super().__init__(f"step {step} failed: {message}")
        attach_advisories(self, advisories)


class TargetError(EdgepackError):
    """A benchmark target is unreachable or cannot run an artifact."""

    def __init__(self, target: str, message: str) -> None:
        self.target = target
        super().__init__(f"target {target}: {message}")


class TargetsFailed(TargetError):
    """The benchmark failures of one run: each message (which names its target) said once."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(dict.fromkeys(messages))
        # each message reads "target NAME: ..." (names have no spaces)
        self.target = ", ".join(dict.fromkeys(m.split(" ", 2)[1].rstrip(":") for m in self.messages
                                              if m.startswith("target ") and m.count(" ") >= 2))
        EdgepackError.__init__(self, "; ".join(self.messages))


class TargetNameError(TargetError):
    """A target name that names nothing: a typo, a device not configured, a missing profile.

    A wrong input (exit 2), not a device that failed.
    """

    exit_code = 2


class MissingDependencyError(EdgepackError):
    """An optional package needed for a feature is not installed."""

    def __init__(self, package: str, feature: str, hint: str | None = None) -> None:
        self.package = package
        hint = hint or f'pip install "{package}"'
        super().__init__(f"{feature} needs the package {package!r}, which is not installed: {hint}")


class InputFileError(EdgepackError):
    """A file given by the user is missing, unreadable or corrupt."""

    exit_code = 2


class UserCodeError(InputFileError):
    """The recipe's own Python (a factory, a data function, their module) raised, exited or hung.

    A wrong input (exit 2), like any other fault of what the user gave: the fix is in their code.
    """


class NonFiniteOutputError(EdgepackError):
    """A model's outputs hold NaN or infinite values, so no comparison of them means anything (exit 1)."""
