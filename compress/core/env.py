"""What the CPU offers int8 kernels: dot-product instructions (VNNI, ARM dot product), AVX2, AVX-512.

onnxruntime's x86 u8s8 kernels multiply uint8 activations by int8 weights with
``vpmaddubsw`` when the CPU has no VNNI: each pair of products is summed into an int16
that saturates for full-range (8-bit) weights, so 7-bit weights (``reduce_range``) are
needed there. With VNNI (``avx512_vnni``, ``avx_vnni``, AMX) products accumulate in int32
and full 8-bit weights are exact. On ARM, ``asimddp`` (ARMv8.2 dot product) is what makes
int8 faster than float.

Detected once per process from ``/proc/cpuinfo`` (``$EDGEPACK_CPUINFO`` names another
cpuinfo file describing the target CPU); tests inject a :class:`CpuFeatures` explicitly.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

CPUINFO_ENV = "EDGEPACK_CPUINFO"
X86_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_DOT_FLAGS = ("asimddp",)
Arch = Literal["x86", "arm"]


@dataclass(frozen=True)
class CpuFeatures:
    """The int8-relevant features of one CPU.

    Args:
        arch: ``x86`` or ``arm``.
        known: False when no flags could be read (a target of another architecture than
            this machine, an unreadable cpuinfo): every feature then reads False and
            :attr:`int8_dot_product` None, and defaults do not assume either way.
        avx2: x86 AVX2.
        avx512: x86 AVX-512 foundation (``avx512f``).
        vnni: x86 int8 dot product (``avx512_vnni``, ``avx_vnni`` or ``amx_int8``).
        asimddp: ARM int8 dot product (ARMv8.2 ``asimddp``).
    """

    arch: Arch
    known: bool = True
    avx2: bool = False
    avx512: bool = False
    vnni: bool = False
    asimddp: bool = False

    @property
    def int8_dot_product(self) -> Literal["vnni", "asimddp"] | None:
        """``vnni``, ``asimddp`` or None (no int8 dot-product instructions, or unknown)."""
        if self.vnni:
            return "vnni"
        if self.asimddp:
            return "asimddp"
        return None

    @property
    def has_int8_dot(self) -> bool | None:
        """Whether int8 dot products are available; None when the flags are unknown."""
        return self.int8_dot_product is not None if self.known else None

    @property
    def u8s8_saturates(self) -> bool:
        """True on an x86 CPU known to lack VNNI: full-range u8s8 products can saturate."""
        return self.arch == "x86" and self.known and not self.vnni

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready facts (for ``env.json`` and step details)."""
        return {**asdict(self), "int8_dot_product": self.int8_dot_product}


# Explicit CPUs for tests and for choosing defaults for a named kind of CPU.
VNNI_X86 = CpuFeatures(arch="x86", avx2=True, avx512=True, vnni=True)
AVX2_X86 = CpuFeatures(arch="x86", avx2=True)
DOTPROD_ARM = CpuFeatures(arch="arm", asimddp=True)
UNKNOWN_ARM = CpuFeatures(arch="arm", known=False)
NAMED_CPUS = {"vnni": VNNI_X86, "avx2": AVX2_X86, "arm-dotprod": DOTPROD_ARM}


def read_cpu_flags(path: str | Path | None = None) -> set[str]:
    """CPU feature flags from a cpuinfo file (``flags`` on x86, ``Features`` on ARM).

    Args:
        path: The cpuinfo file; defaults to ``$EDGEPACK_CPUINFO`` or ``/proc/cpuinfo``.

    Returns:
        The flags; an empty set when the file is unreadable.
    """
    src = Path(path or os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")
    try:
        text = src.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def host_arch() -> Arch:
    """The architecture of this machine."""
    m = platform.machine().lower()
    return "arm" if m in ("aarch64", "arm64") or m.startswith("armv") else "x86"


def features_from_flags(arch: Arch, flags: set[str] | None) -> CpuFeatures:
    """A :class:`CpuFeatures` from cpuinfo flags (None or empty: unknown)."""
    if not flags:
        return CpuFeatures(arch=arch, known=False)
    if arch == "arm":
        return CpuFeatures(arch="arm", asimddp=any(f in flags for f in ARM_DOT_FLAGS))
    return CpuFeatures(arch="x86", avx2="avx2" in flags, avx512="avx512f" in flags,
                       vnni=any(f in flags for f in X86_DOT_FLAGS))


@functools.lru_cache(maxsize=8)
def _detect(arch: Arch, cpuinfo: str | None) -> CpuFeatures:
    if cpuinfo:
        return features_from_flags(arch, read_cpu_flags(cpuinfo))
    if host_arch() != arch:
        return CpuFeatures(arch=arch, known=False)
    return features_from_flags(arch, read_cpu_flags("/proc/cpuinfo"))


def detect_cpu(arch: Arch | None = None) -> CpuFeatures:
    """The features of the CPU models will run on, detected once per process.

    ``$EDGEPACK_CPUINFO`` (a cpuinfo file) describes the target; otherwise this machine's
    cpuinfo is read when it has the target's architecture, and the features are unknown
    when it does not.

    Args:
        arch: The target architecture; defaults to this machine's.
    """
    return _detect(arch or host_arch(), os.environ.get(CPUINFO_ENV) or None)


def host_cpu() -> CpuFeatures:
    """The features of the CPU running this process (``$EDGEPACK_CPUINFO`` ignored): what
    measurements made here ran on."""
    return _detect(host_arch(), None)


def has_int8_dot(arch: str, flags: set[str] | None) -> bool | None:
    """Whether the flags include int8 dot-product instructions (None when unknown)."""
    return features_from_flags("arm" if arch == "arm" else "x86", flags).has_int8_dot


def describe_cpu(cpu: CpuFeatures) -> str:
    """A short phrase for messages: ``x86 with AVX-512 VNNI``, ``x86 AVX2 without VNNI``..."""
    if not cpu.known:
        return f"{cpu.arch} CPU (features unknown)"
    if cpu.arch == "arm":
        return "ARM CPU with dot product (asimddp)" if cpu.asimddp else "ARM CPU without dot product (asimddp)"
    isa = "AVX-512" if cpu.avx512 else "AVX2" if cpu.avx2 else "SSE"
    return f"x86 CPU with {isa} VNNI" if cpu.vnni else f"x86 {isa} CPU without VNNI"


def cache_dir() -> Path:
    """Where edgepack keeps built roots and calibrations: $EDGEPACK_CACHE or ~/.cache/edgepack."""
    env = os.environ.get("EDGEPACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgepack"
