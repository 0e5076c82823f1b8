"""Target names, parsed in one place: ``local``, ``ssh:NAME``, ``adb[:NAME]``, ``emulated:ARCH``, ``estimate:PROFILE``.

Imports nothing of the project but the kernel, so the recipe schema, the runner, the report
and the CLI all read a name the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

TargetKind = Literal["local", "ssh", "adb", "emulated", "estimate"]
KINDS: tuple[str, ...] = ("local", "ssh", "adb", "emulated", "estimate")
USAGE = "use local, ssh:NAME, adb[:NAME], emulated:aarch64 or estimate:PROFILE"
NAME_RE = re.compile(r"^(local|ssh:[\w.-]+|adb(:[\w.-]+)?|emulated:aarch64|estimate:[\w.-]+)$")
"""The names a recipe may write (what :func:`parse_target` reads, with the emulated CPUs this
release ships and the characters a device name may hold)."""


def unknown_name(name: str) -> str | None:
    """The message for a name a recipe may not write, or None when it may."""
    return None if NAME_RE.match(name) else f"unknown target {name!r}: {USAGE}"


@dataclass(frozen=True)
class TargetName:
    """A parsed target name.

    Args:
        kind: What runs the benchmark.
        arg: The part after the colon: the SSH device, phone, emulated architecture or
            device profile ("" when absent).
    """

    kind: TargetKind
    arg: str = ""

    @property
    def measured(self) -> bool:
        """Whether latencies from it are measured on real hardware (not emulated or estimated)."""
        return self.kind in ("local", "ssh", "adb")

    @property
    def reachable(self) -> bool:
        """Whether it is a device or an emulation that must be reached before a run starts."""
        return self.kind in ("ssh", "adb", "emulated")

    @property
    def profile(self) -> str | None:
        """The device profile of an ``estimate:`` target."""
        return self.arg if self.kind == "estimate" else None

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_target(name: str) -> TargetName:
    """``ssh:pi`` -> ``TargetName("ssh", "pi")``.

    Raises:
        TargetNameError: an unknown kind, or a kind that needs its argument without one.
    """
    from compress.core.errors import TargetNameError

    kind, _, arg = str(name).strip().partition(":")
    if kind not in KINDS:
        raise TargetNameError(name, f"unknown target: {USAGE}")
    if kind == "local" and arg:
        raise TargetNameError(name, "local takes no argument")
    if kind in ("ssh", "emulated", "estimate") and not arg:
        raise TargetNameError(name, f"{kind} needs a name after the colon: {USAGE}")
    return TargetName(kind, arg)  # type: ignore[arg-type]


def try_parse(name: str) -> TargetName | None:
    """The parsed name, or None when it is not a valid target name."""
    try:
        return parse_target(name)
    except Exception:  # noqa: BLE001  (TargetNameError: the caller reports names its own way)
        return None
