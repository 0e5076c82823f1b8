"""What a step sees of the run: recipe, data, folders, and where to record results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from compress.core.types import Advisory, Artifact, Severity


@dataclass
class StepContext:
    """Passed to every step function.

    Args:
        recipe: The validated recipe.
        run_dir: The run folder.
        step_dir: This step's own folder (``steps/NN-kind``); write artifacts here.
        step_name: ``NN-kind``.
        data: The data splits, or None when the recipe has no data.
        reference: The torch model the run started from (the teacher), when there is one.
        log: Write a line to the console and ``log.txt``.
        evaluate: Task metrics of a torch module or file artifact on the eval split.
    """

    recipe: Any  # compress.intake.recipe.Recipe (the kernel imports nothing of the project)
    run_dir: Path
    step_dir: Path
    step_name: str
    data: Any  # compress.intake.data.Dataset, or None
    reference: Any
    log: Callable[[str], None]
    evaluate: Callable[[Any], dict[str, Any]]
    advisories: list[Advisory] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    extra_artifacts: list[Artifact] = field(default_factory=list)
    target_arch: Literal["x86", "arm"] = "x86"

    def advise(self, code: str, message: str, severity: Severity = "warning", artifact: str | None = None) -> None:
        self.advisories.append(Advisory(code, message, severity, artifact, self.step_name))
        self.log(f"[{severity}] {message}")
