"""The targets by name: ``local``, ``ssh:NAME``, ``adb[:NAME]``, ``emulated:ARCH``, ``estimate:PROFILE``."""

from __future__ import annotations

from typing import Any

from devices.base import Target


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
