"""Latency estimates from device profiles: a per-layer roofline with calibrated efficiencies.

For each layer (see :mod:`devices.graph_cost`) the time is
``max(ops / (peak * eff[kind] * parallel), bytes / (bandwidth * eff_mem)) + overhead / clock``,
where ``peak`` is the profile's fp32 or int8 peak per core and ``parallel`` grows with the
threads used. The efficiencies (share of the peak a runtime's kernels reach, per layer
kind) are fitted by ``compress devices calibrate`` from measured reports: this machine's
own runs (profile ``host``, built from the report's CPU facts) and any real-device runs the
user saved (``--profile rpi4``). A profile without its own calibration borrows another's
and says so; its band is then wider by the transfer error measured against published
numbers (``devices/profiles/efficiency.yaml``, see docs/devices.md).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from compress.core.report_schema import LatencyStats
from compress.core.report_schema import TargetResult
from compress.core.errors import InputFileError, TargetError, TargetNameError
from compress.core.types import BenchSpec
from devices.graph_cost import KINDS, Layer, model_layers, summarize_layers

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULTS_FILE = PROFILES_DIR / "efficiency.yaml"
PARAMS = (*(f"eff_{k}" for k in KINDS), "eff_mem", "eff_parallel", "overhead_kcycles")


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    url: str


class Peak(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fp32: float = Field(..., gt=0, description="GOP/s per core (2 ops per FMA)")
    int8: float = Field(..., gt=0, description="GOP/s per core")


class DeviceProfile(BaseModel):
    """What the estimator needs to know about a CPU, with where each figure comes from."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    arch: str
    cores: int = Field(..., ge=1)
    clock_ghz: float = Field(..., gt=0)
    simd: str
    peak_gops_per_core: Peak
    memory_bandwidth_gbs: float = Field(..., gt=0, description="sustained (STREAM-like) bandwidth, all cores")
    power_w: float | None = Field(None, gt=0, description="package power under load, for energy per inference")
    runtime: str = Field("", description="the runtime the figures assume")
    notes: str = ""
    sources: list[Source] = Field(..., min_length=1)


def _user_profiles_dir() -> Path:
    from compress.core.env import cache_dir

    return cache_dir() / "profiles"


def list_profiles() -> list[str]:
    """Names of the shipped and user profiles (``host`` is always available)."""
    names = {p.stem for p in PROFILES_DIR.glob("*.yaml") if p.stem != "efficiency"}
    names |= {p.stem for p in _user_profiles_dir().glob("*.yaml")}
    return sorted(names | {"host"})


def load_profile(name: str) -> DeviceProfile:
    """A profile by name: a user's file under the cache dir wins over the shipped one."""
    if name == "host":
        return host_profile()
    for folder in (_user_profiles_dir(), PROFILES_DIR):
        path = folder / f"{name}.yaml"
        if path.is_file():
            try:
                return DeviceProfile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
            except Exception as e:
                raise InputFileError(f"{path}: not a valid device profile: {e}") from e
    raise TargetNameError(f"estimate:{name}", f"no device profile {name!r}; available: {', '.join(list_profiles())}")


def host_profile(env: dict[str, Any] | None = None) -> DeviceProfile:
    """A profile of an x86 or ARM host from its CPU facts (this machine's, or a report's env).

    Peaks follow from the flags at the clock /proc/cpuinfo shows: AVX2 / AVX-512 reach 32
    fp32 ops per cycle on two 256-bit FMA pipes (Zen 4 splits 512-bit ops in two), NEON
    16 on two 128-bit pipes; VNNI (VPDPBUSD) or ARM's dot product give four times that
    for int8, plain widening multiplies twice. A VM shows the nominal clock, not the
    boost one, so the host's fitted efficiencies can exceed 1: they are shares of the
    stated peak, consistent as long as the same profile is used to fit and to estimate.
    """
    from bench.agent import device_facts

    facts = env or device_facts()
    flags = set(facts.get("cpu_flags") or [])
    measured = host_measurements()
    mhz = _cpu_mhz()
    clock = (mhz or 2000.0) / 1000.0
    if "avx2" in flags or "avx512f" in flags:
        per_cycle = 32.0
        int8_ratio = 4 if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else 2
        simd = "avx512" if "avx512f" in flags else "avx2"
    elif "asimd" in flags:
        per_cycle, int8_ratio = 16.0, (4 if "asimddp" in flags else 2)
        simd = "neon" + (" + dotprod" if "asimddp" in flags else "")
    else:
        per_cycle, int8_ratio, simd = 8.0, 2, "sse"
    fp32 = per_cycle * clock
    return DeviceProfile(
        name="host", description=f"this machine: {facts.get('cpu') or facts.get('machine')}",
        arch=str(facts.get("machine")), cores=int(facts.get("cores") or 1), clock_ghz=clock, simd=simd,
        peak_gops_per_core=Peak(fp32=fp32, int8=fp32 * int8_ratio),
        memory_bandwidth_gbs=float(measured["copy_gbs"]),
        notes="peaks from the flags at the clock /proc/cpuinfo shows" + ("" if mhz else " (none shown: 2 GHz assumed)")
        + "; bandwidth measured here with a large copy",
        sources=[Source(title="/proc/cpuinfo and a measurement on the machine", url="file:///proc/cpuinfo")],
    )


_HOST_PROBE = """
import json, time
import numpy as np
src = np.ones(16 * 1024 * 1024, dtype=np.float32); dst = np.empty_like(src)
best_cp = min((lambda t0: (np.copyto(dst, src), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(json.dumps({"copy_gbs": 2 * src.nbytes / best_cp / 1e9}))
"""


def host_measurements() -> dict[str, float]:
    """This machine's copy bandwidth (read + write of 64 MB), measured once and cached."""
    import os
    import subprocess
    import sys

    from compress.core.env import cache_dir

    cached = cache_dir() / "host-bandwidth.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _HOST_PROBE], capture_output=True, text=True, env=env, check=False,
                          timeout=120)
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(facts), encoding="utf-8")
    except OSError:
        pass
    return facts


def _cpu_mhz() -> float | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    vals = [float(line.split(":")[1]) for line in text.splitlines() if line.lower().startswith("cpu mhz")]
    return max(vals) if vals else None


# ---------------------------------------------------------------------------- efficiencies


def family(prof: DeviceProfile) -> str:
    """Efficiency family of a profile: kernels differ more between ISAs than between cores of one ISA."""
    return "arm" if prof.arch.startswith(("aarch64", "arm")) else "x86"


def default_efficiencies(fam: str) -> dict[str, Any]:
    """The shipped efficiencies of one family (see the file's provenance lines)."""
    data = yaml.safe_load(DEFAULTS_FILE.read_text(encoding="utf-8"))
    return data["families"][fam]


def calibration_path(profile: str) -> Path:
    from compress.core.env import cache_dir

    return cache_dir() / "calibration" / f"{profile}.json"


def efficiencies_for(prof: DeviceProfile) -> dict[str, Any]:
    """The efficiencies for a profile: its own calibration, else one of the same family, else shipped.

    Returns a mapping with ``params``, ``rms_log_error``, ``transfer_log_error``, ``source``
    and ``transfer`` (fitted on another device, which widens the band).
    """
    fam = family(prof)
    shipped = default_efficiencies(fam)
    candidates = [prof.name] + (["host"] if family(host_profile()) == fam and prof.name != "host" else [])
    for name in candidates:
        path = calibration_path(name)
        if path.is_file():
            cal = json.loads(path.read_text(encoding="utf-8"))
            return {"params": {**shipped["params"], **cal["params"]}, "rms_log_error": cal["rms_log_error"],
                    "transfer_log_error": shipped["transfer_log_error"], "source": str(path),
                    "transfer": name != prof.name, "fitted_on": name}
    return {"params": shipped["params"], "rms_log_error": shipped["rms_log_error"],
            "transfer_log_error": shipped["transfer_log_error"], "source": f"{DEFAULTS_FILE} ({fam})",
            "transfer": shipped["fitted_on"] != prof.name, "fitted_on": shipped["fitted_on"]}


# ---------------------------------------------------------------------------- roofline


def layer_times_s(layers: list[Layer], prof: DeviceProfile, params: dict[str, float], threads: int) -> list[float]:
    """Roofline time of each layer in seconds."""
    used = max(1, min(threads, prof.cores))
    parallel = 1.0 + (used - 1) * params["eff_parallel"]
    bw = prof.memory_bandwidth_gbs * 1e9 * params["eff_mem"]
    overhead = params["overhead_kcycles"] * 1e3 / (prof.clock_ghz * 1e9)
    times = []
    for la in layers:
        peak = (prof.peak_gops_per_core.int8 if la.int8 else prof.peak_gops_per_core.fp32) * 1e9
        compute = la.ops / (peak * params[f"eff_{la.kind}"] * parallel) if la.ops else 0.0
        times.append(max(compute, la.bytes / bw) + overhead)
    return times


def estimate_ms(layers: list[Layer], prof: DeviceProfile, params: dict[str, float], threads: int) -> float:
    return 1e3 * sum(layer_times_s(layers, prof, params, threads))


def band(est_ms: float, cal: dict[str, Any]) -> tuple[float, float]:
    """The uncertainty band: twice the fit's rms log error, plus the transfer error if borrowed."""
    half = 2.0 * float(cal["rms_log_error"]) + (float(cal["transfer_log_error"]) if cal["transfer"] else 0.0)
    return est_ms * math.exp(-half), est_ms * math.exp(half)


# ---------------------------------------------------------------------------- calibration


def _samples_from_reports(reports: list[Path], profile: str | None, log: Any) -> list[dict[str, Any]]:
    from compress.core.report_schema import load_report

    samples = []
    for rp in reports:
        report = load_report(rp)
        run_dir = rp if rp.is_dir() else rp.parent
        for art in report.artifacts:
            if art.format not in ("onnx", "tflite") or not art.path:
                continue
            path = Path(art.path) if Path(art.path).is_absolute() else run_dir / art.path
            if not path.is_file():
                log(f"skipped {art.name} of {rp}: {path} is gone")
                continue
            for t in art.targets:
                if t.how != "measured" or t.latency_ms is None or t.error:
                    continue
                if profile:
                    prof = load_profile(profile)
                elif t.target == "local":
                    prof = host_profile(report.env)
                else:
                    log(f"skipped {art.name} on {t.target}: say which profile it is with --profile")
                    continue
                samples.append({"layers": model_layers(path, t.batch), "profile": prof, "threads": t.threads,
                                "ms": t.latency_ms.p50, "what": f"{art.name} on {t.target} ({t.threads} thr)"})
    return samples


def fit(samples: list[dict[str, Any]], prior: dict[str, float]) -> tuple[dict[str, float], float, list[float]]:
    """Least squares on log latencies, pulled towards the prior where data say little.

    Returns:
        (params, rms log error, per-sample predicted ms).
    """
    import numpy as np
    from scipy.optimize import least_squares

    names = list(PARAMS)
    x0 = np.log([prior[n] for n in names])
    # Efficiencies are shares of the stated peak: above 1 only where the stated peak is low
    # (a VM's nominal clock), hence the loose upper bound; parallel efficiency is at most 1.
    upper = np.array([0.0 if n == "eff_parallel" else math.log(10.0) if n.startswith("eff_") else np.inf
                      for n in names])
    lower = np.array([math.log(1e-4) if n.startswith("eff_") else math.log(1e-3) for n in names])
    x0 = np.clip(x0, lower + 1e-9, np.where(np.isinf(upper), np.inf, upper - 1e-9))
    weight = 0.3  # strength of the prior relative to one sample's log error

    def predict(x: Any) -> list[float]:
        params = dict(zip(names, np.exp(x)))
        return [estimate_ms(s["layers"], s["profile"], params, s["threads"]) for s in samples]

    def residuals(x: Any) -> Any:
        pred = np.array(predict(x))
        meas = np.array([s["ms"] for s in samples])
        return np.concatenate([np.log(pred / meas), weight * (x - x0)])

    sol = least_squares(residuals, x0, bounds=(lower, upper))
    pred = predict(sol.x)
    errs = [math.log(p / s["ms"]) for p, s in zip(pred, samples)]
    rms = math.sqrt(sum(e * e for e in errs) / len(errs))
    return dict(zip(names, (float(v) for v in np.exp(sol.x)))), rms, pred


def calibrate(reports: list[Path], profile: str | None = None, log: Any = print) -> dict[str, Any]:
    """Fit efficiencies from measured reports and store them under the cache dir.

    Args:
        reports: report.json files or run folders.
        profile: the device profile the measured runs belong to; None means local runs
            calibrate ``host`` (other targets are then skipped).
        log: where progress lines go.

    Returns:
        The stored calibration, with each sample's measured and fitted latency.
    """
    samples = _samples_from_reports(reports, profile, log)
    if not samples:
        raise InputFileError("no measured latencies with their model files in those reports: nothing to calibrate")
    prior = default_efficiencies(family(samples[0]["profile"]))["params"]
    params, rms, pred = fit(samples, prior)
    name = profile or "host"
    cal = {"profile": name, "params": params, "rms_log_error": rms, "samples": len(samples),
           "fitted_from": [str(r) for r in reports], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "fit": [{"what": s["what"], "measured_ms": s["ms"], "fitted_ms": p} for s, p in zip(samples, pred)]}
    path = calibration_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    from compress.core.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(cal, indent=2))
    cal["path"] = str(path)
    return cal


# ---------------------------------------------------------------------------- target


class EstimateTarget:
    """A device known only by its profile: latencies are estimated, with a band."""

    how = "estimated"
    formats = ("onnx", "tflite")

    def __init__(self, profile: str) -> None:
        self.profile_name = profile
        self.name = f"estimate:{profile}"
        self.profile = load_profile(profile)

    def describe(self) -> dict[str, Any]:
        cal = efficiencies_for(self.profile)
        return {**self.profile.model_dump(), "calibration": cal["source"], "borrowed_calibration": cal["transfer"]}

    def run(self, model: Path, inputs: list[Any]) -> list[Any]:
        raise TargetError(self.name, "an estimate has no device to run a model on; use local, ssh or emulated")

    def benchmark(self, model: Path, spec: BenchSpec, inputs: list[Any] | None = None) -> TargetResult:
        """Estimated latency of the model on the profile's device, with its band."""
        try:
            layers = model_layers(Path(model), spec.batch, _input_shapes(Path(model), inputs))
        except Exception as e:
            raise TargetError(self.name, f"cannot read the graph of {Path(model).name}: {type(e).__name__}: {e}") from e
        if not layers:
            raise TargetError(self.name, f"no costly layers found in {Path(model).name}")
        cal = efficiencies_for(self.profile)
        params = cal["params"]
        per_layer = layer_times_s(layers, self.profile, params, spec.threads)
        est = 1e3 * sum(per_layer)
        lo, hi = band(est, cal)
        p = self.profile
        stats = LatencyStats(p50=est, p90=hi, p99=hi, mean=est, std=0.0, min=lo, max=hi, ci95=(lo, hi), runs=0,
                             threads=spec.threads, batch=spec.batch, how="estimated")
        by_kind: dict[str, float] = {}
        for la, t in zip(layers, per_layer):
            by_kind[la.kind] = by_kind.get(la.kind, 0.0) + 1e3 * t
        top = sorted(zip(layers, per_layer), key=lambda lt: -lt[1])[:5]
        details = {
            "profile": p.name, "profile_sources": [s.model_dump() for s in p.sources],
            "calibration": cal["source"], "borrowed_calibration": cal["transfer"], "fitted_on": cal["fitted_on"],
            "band_note": "p90 and p99 are the band's upper edge: an estimate has no run-to-run spread",
            "graph": summarize_layers(layers), "ms_by_kind": {k: round(v, 4) for k, v in by_kind.items()},
            "top_layers": [{"name": la.name, "op": la.op, "ms": round(1e3 * t, 4)} for la, t in top],
        }
        if p.power_w:
            details["energy_mj"] = round(p.power_w * est, 3)
        return TargetResult(
            target=self.name, how="estimated",
            device=f"{p.description} (profile {p.name}, {min(spec.threads, p.cores)} of {p.cores} cores)",
            threads=spec.threads, batch=spec.batch, latency_ms=stats, estimate_band_ms=(lo, hi),
            throughput_items_s=1e3 * spec.batch / est if est > 0 else None,
            runtime=p.runtime or None, details=details,
        )


def _input_shapes(model: Path, inputs: list[Any] | None) -> dict[str, list[int]] | None:
    """The real shapes of the inputs given (by the ONNX model's input names), for its dynamic dims."""
    if not inputs or model.suffix != ".onnx":
        return None
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    return {n: [int(d) for d in getattr(a, "shape", ())] for n, a in zip(names, inputs)}
