"""The targets by name: ``local``, ``ssh:NAME``, ``adb[:NAME]``, ``emulated:ARCH``, ``estimate:PROFILE``."""

from __future__ import annotations

from typing import Any

from devices.base import Target
from devices.names import USAGE, try_parse


def is_arm_target(name: str) -> bool:
    """Whether a target runs on ARM: emulated aarch64, an Android phone, or a device profile
    (shipped or the user's own) whose ``arch`` is ARM."""
    parsed = try_parse(name)
    if parsed is None:
        return False
    if parsed.kind in ("emulated", "adb"):
        return True
    if parsed.kind == "estimate":
        from devices.estimate import load_profile

        try:
            arch = load_profile(parsed.arg).arch
        except Exception:  # noqa: BLE001  (an unknown profile is the target's own error, reported when it runs)
            return False
        return arch.lower() in ("aarch64", "arm64") or arch.lower().startswith("arm")
    return False


def make_target(name: str, recipe_bench: Any = None) -> Target:
    """The target a recipe or CLI names (``local``, ``ssh:pi``, ``emulated:aarch64``...)."""
    from compress.core.errors import TargetNameError
    from devices.names import parse_target

    parsed = parse_target(name)
    kind, arg = parsed.kind, parsed.arg
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
    raise TargetNameError(name, f"unknown target: {USAGE}")
