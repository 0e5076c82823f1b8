"""The Target protocol: what a device can run, how to run it, how to time it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from compress.core.report_schema import TargetResult
from compress.core.types import BenchSpec


class Target(Protocol):
    """A place an artifact can run.

    ``how`` says how its latencies are obtained: measured, estimated or emulated.
    """

    name: str
    how: str
    formats: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """Facts about the device (CPU, cores, runtimes)."""

    def run(self, model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of the model on the inputs, computed on the target."""

    def benchmark(self, model: Path, spec: BenchSpec, inputs: list[np.ndarray] | None = None) -> TargetResult:
        """Time the model; the result says how the figure was obtained."""
