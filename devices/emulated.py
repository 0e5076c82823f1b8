"""Emulated aarch64: the real ARM builds of onnxruntime and LiteRT under qemu-user.

This proves an artifact loads and computes the same answers on ARM kernels; it never
gives a latency (emulated time is hundreds of times native and varies between runs).

``compress devices setup aarch64`` builds the root once, without running any emulated
code: ``mmdebstrap --variant=extract`` unpacks Debian's arm64 Python, the host's pip
installs the aarch64 wheels of numpy, onnxruntime and ai-edge-litert into ``opt/site``,
and an ARM ``/proc/cpuinfo`` goes in (onnxruntime crashes under qemu-user when it reads the
host's x86 one); each emulated CPU model gets a view of the root with its own cpuinfo.
The guest then runs as
``qemu-aarch64-static -L VIEW -cpu CPU ROOT/usr/bin/python3.11 agent.py spec.json``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.agent import take_samples
from compress.core.report_schema import Parity, TargetResult
from compress.core.errors import MissingDependencyError, TargetError, TargetNameError
from compress.core.env import cache_dir
from compress.core.types import BenchSpec

AGENT = Path(__file__).resolve().parent.parent / "bench" / "agent.py"
ARCHES = ("aarch64",)
SUITE = "bookworm"
GUEST_PYTHON = "usr/bin/python3.11"
MARKER = "edgepack-root.json"
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert")
# Debian bookworm has glibc 2.36; ai-edge-litert 2.x ships manylinux_2_27 aarch64 wheels only.
GLIBC_MINOR = 36
# /proc/cpuinfo as each emulated CPU would show it: onnxruntime crashes under qemu-user
# when it reads the host's x86 one, and XNNPACK picks kernels from these features and part
# numbers (a Cortex-A53 root that claims asimddp gets dot-product kernels: SIGILL).
_BASE_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82_FEATURES = _BASE_FEATURES + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
CPU_INFO = {  # -cpu name: (features, variant, part, revision)
    "cortex-a53": (_BASE_FEATURES, "0x0", "0xd03", 4),
    "cortex-a57": (_BASE_FEATURES, "0x1", "0xd07", 1),
    "cortex-a72": (_BASE_FEATURES, "0x0", "0xd08", 3),
    "cortex-a76": (_V82_FEATURES, "0x4", "0xd0b", 1),
    "neoverse-n1": (_V82_FEATURES, "0x3", "0xd0c", 1),
    "max": (_V82_FEATURES, "0x4", "0xd0b", 1),
}


def arm_cpuinfo(cpu: str, cores: int = 4) -> str:
    """A /proc/cpuinfo for an emulated CPU (an unknown one gets the plain ARMv8.0 features)."""
    features, variant, part, revision = CPU_INFO.get(cpu, CPU_INFO["cortex-a53"])
    return "".join(
        f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n"
        for i in range(cores)
    )


def root_dir(arch: str = "aarch64") -> Path:
    return cache_dir() / arch


def root_info(arch: str = "aarch64") -> dict[str, Any] | None:
    """What a finished root holds (its marker file), or None if there is no usable root."""
    marker = root_dir(arch) / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def qemu_binary() -> str:
    """The qemu-user binary for aarch64."""
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingDependencyError("qemu-user-static", "the emulated aarch64 target",
                                 "apt-get install qemu-user-static")


def cpu_root(root: Path, cpu: str) -> Path:
    """A view of the root whose /proc/cpuinfo matches ``cpu``: symlinks to the root's top-level entries.

    qemu-user looks every guest path up under the ``-L`` prefix first, so one small folder
    per CPU model gives each its own cpuinfo without copying the 260 MB root.
    """
    if not cpu.replace("-", "").replace("_", "").isalnum():
        raise TargetError("emulated:aarch64", f"not a qemu CPU name: {cpu!r}")
    view = root.parent / f"{root.name}-cpus" / cpu
    if (view / "proc" / "cpuinfo").is_file():
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{cpu}.", dir=view.parent))
    for entry in root.iterdir():
        if entry.name != "proc":
            (work / entry.name).symlink_to(entry.resolve() if entry.is_symlink() else entry)
    (work / "proc").mkdir()
    (work / "proc" / "cpuinfo").write_text(arm_cpuinfo(cpu), encoding="utf-8")
    try:
        os.replace(work, view)
    except OSError:  # another process made it first
        shutil.rmtree(work, ignore_errors=True)
    return view


def guest_argv(root: Path, cpu: str) -> list[str]:
    """The command that starts the guest Python on an emulated ``cpu`` (arguments follow)."""
    return [qemu_binary(), "-L", str(cpu_root(root, cpu)), "-cpu", cpu, str(root / GUEST_PYTHON)]


def guest_env(root: Path, threads: int = 1) -> dict[str, str]:
    return {"PYTHONPATH": str(root / "opt" / "site"), "OMP_NUM_THREADS": str(threads), "PYTHONDONTWRITEBYTECODE": "1"}


def guest_shell_command(root: Path, cpu: str = "cortex-a72") -> str:
    """The guest Python as one shell command, e.g. for an SSH board's ``remote_command``."""
    env = [f"{k}={shlex.quote(v)}" for k, v in guest_env(root).items()]
    return " ".join(["env", *env, *(shlex.quote(a) for a in guest_argv(root, cpu))])


def _pip_platforms() -> list[str]:
    tags = [f"manylinux_2_{m}_aarch64" for m in range(GLIBC_MINOR, 16, -1)]
    return tags + ["manylinux2014_aarch64"]


def _host_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], what: str, log: Callable[[str], None]) -> None:
    log(f"{what}: {' '.join(shlex.quote(c) for c in cmd[:6])} ...")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise TargetError("emulated:aarch64", f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


def _pip_install(site: Path, pins: list[str], log: Callable[[str], None]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(site),
           "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311"]
    for tag in _pip_platforms():
        cmd += ["--platform", tag]
    _run(cmd + pins, "pip install of the aarch64 wheels", log)


def setup_root(arch: str = "aarch64", force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or reuse) the cached aarch64 root; returns its marker facts.

    The root is built in a temporary folder beside its final place and renamed into
    place only when complete, so an interrupted setup never leaves a root that looks usable.
    """
    if arch not in ARCHES:
        raise TargetNameError(f"emulated:{arch}", f"no emulation for {arch!r}; available: {', '.join(ARCHES)}")
    final = root_dir(arch)
    info = root_info(arch)
    if info and not force:
        log(f"aarch64 root already set up at {final}")
        return info
    if not shutil.which("mmdebstrap"):
        raise MissingDependencyError("mmdebstrap", "building the aarch64 root", "apt-get install mmdebstrap")
    qemu_binary()
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{arch}.", dir=final.parent))
    try:
        root = work / "root"
        _run(["mmdebstrap", "--quiet", "--architectures=arm64", "--variant=extract",
              "--include=python3.11,libstdc++6,libgcc-s1", SUITE, str(root)], "mmdebstrap of the arm64 root", log)
        site = root / "opt" / "site"
        pinned = [f"{w}=={_host_version(w)}" if _host_version(w) else w for w in WHEELS]
        try:
            _pip_install(site, pinned, log)
        except TargetError as e:
            # The host's exact versions may have no aarch64 wheel: take the newest that has one.
            log(f"no aarch64 wheels for the host's versions ({e}); installing the newest ones")
            shutil.rmtree(site, ignore_errors=True)
            _pip_install(site, list(WHEELS), log)
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc" / "cpuinfo").write_text(arm_cpuinfo("cortex-a72"), encoding="utf-8")
        versions = {}
        for d in site.glob("*.dist-info"):
            name, _, version = d.name[: -len(".dist-info")].partition("-")
            versions[name.lower().replace("_", "-")] = version
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        info = {"arch": arch, "suite": SUITE, "python": GUEST_PYTHON, "packages": versions,
                "size_mb": round(size / 1e6, 1), "build_s": round(time.perf_counter() - t0, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (root / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        shutil.rmtree(final.parent / f"{final.name}-cpus", ignore_errors=True)
        os.replace(root, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"aarch64 root ready at {final} ({info['size_mb']} MB, {info['build_s']} s)")
    return info


def _sample_inputs(model: Path, rows: int) -> list[np.ndarray]:
    """Random inputs in the model's own shapes, for callers that pass none."""
    from bench.agent import _inputs_for
    from bench.runtime import open_model

    return _inputs_for(open_model(model), rows)


class EmulatedTarget:
    """aarch64 under qemu-user: parity against the host, per emulated CPU, never a latency."""

    how = "emulated"
    formats = ("onnx", "tflite")

    def __init__(self, arch: str, cpus: list[str] | None = None, timeout_s: float = 900.0,
                 parity_samples: int = 64) -> None:
        if arch not in ARCHES:
            raise TargetNameError(f"emulated:{arch}", f"no emulation for {arch!r}; available: {', '.join(ARCHES)}")
        self.arch = arch
        self.name = f"emulated:{arch}"
        self.cpus = list(cpus or ["cortex-a72"])
        self.timeout_s = timeout_s
        self.parity_samples = parity_samples
        self._done: dict[tuple[str, int, float], TargetResult] = {}

    def _root(self) -> Path:
        if root_info(self.arch) is None:
            raise TargetError(self.name, f"no aarch64 root at {root_dir(self.arch)}: run `compress devices setup aarch64` "
                                         "first (about 10 s, 260 MB)")
        return root_dir(self.arch)

    def describe(self) -> dict[str, Any]:
        root = self._root()
        proc = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True, check=False)
        return {"root": str(root), "qemu": proc.stdout.splitlines()[0] if proc.stdout else None,
                "cpus": self.cpus, **(root_info(self.arch) or {})}

    def _guest_agent(self, cpu: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
        """Run the agent in the guest; the JSON it prints is the verdict, not the exit code."""
        from devices.local import parse_agent_output

        root = self._root()
        spec_path = tmp / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = dict(os.environ, **guest_env(root, int(spec.get("threads", 1))))
        try:
            proc = subprocess.run([*guest_argv(root, cpu), str(AGENT), str(spec_path)], capture_output=True, text=True,
                                  timeout=self.timeout_s, env=env, cwd=tmp, check=False)
        except subprocess.TimeoutExpired as e:
            raise TargetError(self.name, f"the emulated run on {cpu} did not finish within {self.timeout_s:.0f} s") from e
        try:
            return parse_agent_output(proc.stdout + "\n" + proc.stderr[-2000:], f"{self.name} ({cpu})")
        except TargetError as e:
            if proc.returncode < 0:
                raise TargetError(self.name, f"the guest was killed by signal {-proc.returncode} on {cpu}: {e}") from e
            raise

    def _outputs_on(self, cpu: str, model: Path, inputs: list[np.ndarray], threads: int) -> tuple[list[np.ndarray], dict]:
        from devices.local import read_outputs, write_inputs

        with tempfile.TemporaryDirectory(prefix="edgepack-emu-") as d:
            tmp = Path(d)
            write_inputs(tmp / "inputs.npz", inputs)
            # No warmup and a single timed run: the agent only has to load and compute.
            spec = {"model": str(Path(model).resolve()), "threads": threads, "warmup": 0, "max_warmup": 0, "runs": 1,
                    "batch": 1, "inputs": str(tmp / "inputs.npz"), "outputs": str(tmp / "outputs.npz")}
            out = self._guest_agent(cpu, spec, tmp)
            if not (tmp / "outputs.npz").is_file():
                raise TargetError(self.name, f"the guest on {cpu} wrote no outputs")
            return read_outputs(tmp / "outputs.npz"), out

    def run(self, model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._outputs_on(self.cpus[0], model, inputs, 1)[0]

    def benchmark(self, model: Path, spec: BenchSpec, inputs: list[np.ndarray] | None = None) -> TargetResult:
        """Parity of the model on each emulated CPU against the host runtime; no latency."""
        from devices.crosscheck import crosscheck, host_outputs, is_quantized

        self._root()
        model = Path(model)
        st = model.stat()
        key = (str(model.resolve()), st.st_mtime_ns, spec.threads)
        if key in self._done:  # the verdict does not depend on batch or runs
            return self._done[key].model_copy(update={"batch": spec.batch})
        xs = take_samples(inputs, slice(0, self.parity_samples)) if inputs is not None else _sample_inputs(model, 8)
        reference = host_outputs(model, xs)
        quantized = is_quantized(model)
        per_cpu: dict[str, dict[str, Any]] = {}
        worst: Parity | None = None
        facts: dict[str, Any] = {}
        for cpu in self.cpus:
            outs, out = self._outputs_on(cpu, model, xs, spec.threads)
            parity = crosscheck(model, reference, outs, "host " + out.get("runtime", "runtime"), quantized)
            per_cpu[cpu] = {"max_abs_diff": parity.max_abs_diff, "agreement": parity.agreement,
                            "cosine": parity.cosine, "passed": parity.passed}
            facts = out
            if worst is None or (not parity.passed and worst.passed) or (
                    parity.passed == worst.passed and parity.max_abs_diff > worst.max_abs_diff):
                worst = parity
        dev = facts.get("device", {})
        result = TargetResult(
            target=self.name, how="emulated",
            device=f"qemu-user {self.arch} ({', '.join(self.cpus)}), Linux {dev.get('release', '?')}",
            threads=spec.threads, batch=spec.batch, latency_ms=None, parity=worst,
            runtime=f"{facts.get('runtime')} {facts.get('runtime_version')} (aarch64 build)",
            details={"per_cpu": per_cpu, "quantized": quantized, "machine": dev.get("machine"),
                     "cpu_flags": dev.get("cpu_flags"), "root": str(root_dir(self.arch)),
                     "note": "emulated: correctness only, never a latency"},
        )
        self._done[key] = result
        return result
