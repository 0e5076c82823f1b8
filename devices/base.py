"""The Target protocol: what a device can run, how to run it, how to time it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from compress.core.report_schema import TargetResult


@dataclass(frozen=True)
class BenchSpec:
    """How to time one artifact."""

    threads: int = 1
    warmup: int = 20
    max_warmup: int = 500
    runs: int = 200
    batch: int = 1
    cpus: tuple[int, ...] | None = None
    yardstick: bool = True  # time the machine yardstick beside the artifact (bench.yardstick)


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


def make_target(name: str, recipe_bench: Any = None) -> Target:
    """The target a recipe or CLI names (``local``, ``ssh:pi``, ``emulated:aarch64``...)."""
    from compress.core.errors import TargetNameError

    kind, _, arg = name.partition(":")
    if kind == "local":
        from devices.local import LocalTarget

        return LocalTarget()
    if kind == "emulated":
        from devices.emulated import EmulatedTarget

        return EmulatedTarget(arg, cpus=list(getattr(recipe_bench, "emulated_cpus", ["cortex-a72"])))
    if kind == "estimate":
        from devices.estimate import EstimateTarget

        return EstimateTarget(arg)
    if kind == "ssh":
        from devices.ssh import SshTarget

        devices = getattr(recipe_bench, "ssh", {}) or {}
        if arg not in devices:
            raise TargetNameError(name, f"no SSH device {arg!r} configured under bench.ssh")
        return SshTarget(arg, devices[arg])
    if kind == "adb":
        from devices.adb import AdbTarget

        devices = getattr(recipe_bench, "adb", {}) or {}
        return AdbTarget(arg or "default", devices.get(arg or "default"))
    raise TargetNameError(name, "unknown target: use local, ssh:NAME, adb[:NAME], emulated:aarch64 or estimate:PROFILE")
