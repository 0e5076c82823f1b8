"""What a step sees of the run (a read-only context) and what it gives back (a StepResult)."""

from __future__ import annotations

import functools
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from compress.core.errors import attach_advisories
from compress.core.progress import ProgressFn, no_progress
from compress.core.types import Advisory, Artifact, Severity


@dataclass(frozen=True)
class StepContext:
    """Passed to every step function; read-only: a step reports through its :class:`StepResult`.

    Args:
        recipe: The validated recipe.
        run_dir: The run folder.
        step_dir: This step's own folder (``steps/NN-kind``); write artifacts here.
        step_name: ``NN-kind``.
        data: The data splits, or None when the recipe has no data.
        reference: The torch model the run started from (the teacher), when there is one.
        log: Write a line to the console and ``log.txt``.
        evaluate: Task metrics of a torch module or file artifact on the eval split.
        target_arch: ``x86`` or ``arm``: the CPU family the int8 defaults follow.
        progress: ``progress(desc, total)`` around long work (training, calibration,
            conversion): a bar with ETA on the run's terminal and a log line when done
            (:mod:`compress.core.progress`).
        onnx_of: The run's ONNX export of a torch artifact (made once, parity-checked and
            registered by the runner, from the step cache when it has it); None outside a run.
    """

    recipe: Any  # compress.intake.recipe.Recipe (the kernel imports nothing of the project)
    run_dir: Path
    step_dir: Path
    step_name: str
    data: Any  # compress.intake.data.Dataset, or None
    reference: Any
    log: Callable[[str], None]
    evaluate: Callable[[Any], dict[str, Any]]
    target_arch: Literal["x86", "arm"] = "x86"
    onnx_of: Callable[[Artifact], Artifact] | None = None
    progress: ProgressFn = no_progress


@dataclass
class StepResult:
    """What a step or export returns.

    Args:
        artifacts: For a step, the first is the model the pipeline continues with and the rest
            are registered beside it; for an export, every one is a result of the export.
        details: The step's facts for the report (``steps[].details``).
        advisories: Notes for the report.
    """

    artifacts: list[Artifact]
    details: dict[str, Any] = field(default_factory=dict)
    advisories: list[Advisory] = field(default_factory=list)

    @property
    def artifact(self) -> Artifact:
        """The model the pipeline continues with."""
        return self.artifacts[0]

    @property
    def extras(self) -> list[Artifact]:
        """Artifacts a step made beside its result (registered, not continued with)."""
        return self.artifacts[1:]


# The notebooks opened while a step or export runs (see :func:`noting`); None outside one.
_OPEN_NOTES: ContextVar[list[Notes] | None] = ContextVar("edgepack_open_notes", default=None)


class Notes:
    """A step's own notebook: details, advisories and extra artifacts, turned into its result.

    Opened while a registered step (or an export the registry loads) runs, a notebook's
    advisories also leave with an error that escapes the step (:func:`noting`), so a step
    that advises and then fails still has its advisories reported.

    Args:
        ctx: The step's context (its name tags the advisories; its log shows them).
    """

    def __init__(self, ctx: StepContext) -> None:
        self.step_name = ctx.step_name
        self.log = ctx.log
        self.details: dict[str, Any] = {}
        self.advisories: list[Advisory] = []
        self.extra: list[Artifact] = []
        opened = _OPEN_NOTES.get()
        if opened is not None:
            opened.append(self)

    def advise(self, code: str, message: str, severity: Severity = "warning", artifact: str | None = None) -> None:
        self.advisories.append(Advisory(code, message, severity, artifact, self.step_name))
        self.log(f"[{severity}] {message}")

    def result(self, made: Artifact | list[Artifact]) -> StepResult:
        """The step's result: ``made`` (an artifact, or an export's list) then the extras."""
        arts = list(made) if isinstance(made, list) else [made]
        return StepResult(arts + self.extra, self.details, self.advisories)


def noting(run: Callable[..., StepResult]) -> Callable[..., StepResult]:
    """Wrap a step (or export) function so an error escaping it carries the advisories given so far.

    Every :class:`Notes` opened while ``run`` runs is remembered; when an exception leaves
    ``run``, their advisories are attached to it (``exc.advisories``, see
    :func:`compress.core.errors.attach_advisories`) for the runner's report. A step returns
    its advisories in its result as before; this only covers the way out by an error.
    """
    if getattr(run, "__wrapped_by_noting__", False):
        return run

    @functools.wraps(run)
    def noted(*args: Any, **kwargs: Any) -> StepResult:
        opened: list[Notes] = []
        token = _OPEN_NOTES.set(opened)
        try:
            return run(*args, **kwargs)
        except BaseException as exc:
            attach_advisories(exc, [a for notes in opened for a in notes.advisories])
            raise
        finally:
            _OPEN_NOTES.reset(token)

    noted.__wrapped_by_noting__ = True  # type: ignore[attr-defined]
    return noted


@dataclass(frozen=True)
class StepKind:
    """One registered step kind.

    Args:
        kind: The recipe's name for it (``prune``).
        run: ``(artifact, config, ctx) -> StepResult``.
        config: Its pydantic config class.
        accepts: The artifact formats it takes; the runner converts at the boundary.
        check: ``(config, baseline, recipe, data) -> [(dotted_subpath, message)]``, run against
            the loaded model before any work starts.
        needs_train_data: Whether it always trains (the recipe then needs a data section).
        input_format: ``(config) -> format``: which of ``accepts`` this configuration is given
            when the input could be converted (default: the input's own format when accepted,
            else the first of ``accepts``).
    """

    kind: str
    run: Callable[..., StepResult]
    config: type
    accepts: tuple[str, ...]
    check: Callable[..., Any] | None = None
    needs_train_data: bool = False
    input_format: Callable[[Any], str] | None = None

    def wants(self, config: Any, current: str) -> str:
        """The format the runner hands this step for an input of format ``current``."""
        if self.input_format is not None:
            return self.input_format(config)
        return current if current in self.accepts else self.accepts[0]


STEPS: dict[str, StepKind] = {}


def register_step(kind: str, *, config: type, accepts: tuple[str, ...], check: Callable[..., Any] | None = None,
                  needs_train_data: bool = False, input_format: Callable[[Any], str] | None = None,
                  ) -> Callable[[Callable[..., StepResult]], Callable[..., StepResult]]:
    """Register a step function under its kind: the one registration point of a step.

    The registration is all a new kind needs: the recipe's ``steps:`` validation and
    ``compress schema`` dispatch on :data:`STEPS` (kind -> ``config``), the runner on
    ``accepts``; the config class lives beside the step. The function is returned wrapped by
    :func:`noting` (an error escaping it carries the advisories given before it).

    Example::

        @register_step("prune", config=PruneConfig, accepts=("torch",), check=check)
        def prune(artifact, config, ctx) -> StepResult: ...
    """

    def add(run: Callable[..., StepResult]) -> Callable[..., StepResult]:
        known = STEPS.get(kind)
        if known is not None and known.run.__qualname__ != run.__qualname__:
            raise ValueError(f"step kind {kind!r} is registered twice ({known.run.__module__}, {run.__module__})")
        if not isinstance(config, type) or not hasattr(config, "model_validate"):
            raise TypeError(f"step kind {kind!r}: config must be a pydantic model class (got {config!r})")
        noted = noting(run)
        STEPS[kind] = StepKind(kind, noted, config, tuple(accepts), check, needs_train_data, input_format)
        return noted

    return add
