"""An Android phone over adb: the model and the user's benchmark binary pushed, run, parsed.

edgepack does not ship Android binaries: the recipe points to ``benchmark_model`` (TFLite's
benchmark tool, from the LiteRT / TensorFlow nightly builds) for ``.tflite`` files and to
``onnxruntime_perf_test`` (built from onnxruntime for Android) for ``.onnx`` files. Their
printed output is parsed into the same statistics as every other target:
``onnxruntime_perf_test`` writes every run's time to a result file, so its figures are full
statistics; ``benchmark_model`` prints only a summary (count, min, max, avg, std and, in
newer builds, p5 / median / p95), so its latency carries exactly those figures: ``p95`` and
``max`` as printed, ``p90`` and ``p99`` left empty (never made up from another percentile),
the mean standing in for the median only when no median was printed, and a confidence
interval that assumes normal run-to-run noise; the result's note says which.

The phone is not trusted: every figure it prints is checked (finite, positive, ordered),
its text is cleaned of terminal escapes before it is shown, each benchmark runs in a fresh
folder under ``workdir`` that is removed afterwards, and a benchmark that times out is killed.
"""

from __future__ import annotations

import math
import re
import secrets
import shlex
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from bench.latency import summarize
from compress.core.report_schema import LatencyStats
from compress.core.report_schema import TargetResult
from compress.core.errors import TargetError
from devices.specs import AdbDeviceSpec
from compress.core.types import BenchSpec
from devices.untrusted import clean_text, one_line, validate_times

MAX_RESULT_FILE_BYTES = 64 * 2**20

_COUNT = re.compile(r"count=(?P<count>\d+) first=(?P<first>[\d.]+) curr=(?P<curr>[\d.]+) min=(?P<min>[\d.]+) "
                    r"max=(?P<max>[\d.]+) avg=(?P<avg>[\d.e+-]+) std=(?P<std>[\d.]+)"
                    r"(?: p5=(?P<p5>[\d.]+) median=(?P<median>[\d.]+) p95=(?P<p95>[\d.]+))?")
_TIMINGS = re.compile(r"Inference timings in us: Init: (?P<init>[\d.]+), First inference: (?P<first>[\d.]+), "
                      r"Warmup \(avg\): (?P<warmup>[\d.e+-]+), Inference \(avg\): (?P<avg>[\d.e+-]+)")
_MEMORY = re.compile(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                     r"init=(?P<init>[\d.]+) overall=(?P<overall>[\d.]+)")
_ORT_LINE = re.compile(r"^(?P<key>[A-Za-z0-9 ]+?):\s*(?P<value>[\d.e+-]+)\s*(?P<unit>s|ms|bytes|%)?\s*$")


# ---------------------------------------------------------------------------- commands


def tflite_benchmark_args(binary: str, model: str, spec: BenchSpec) -> list[str]:
    """benchmark_model's arguments: exactly ``runs`` timed runs after ``warmup`` runs."""
    return [binary, f"--graph={model}", f"--num_threads={spec.threads}", f"--num_runs={spec.runs}",
            f"--warmup_runs={max(1, spec.warmup)}", "--min_secs=0", "--warmup_min_secs=0",
            "--max_secs=600", "--use_xnnpack=true"]


def ort_perf_test_args(binary: str, model: str, spec: BenchSpec, result_file: str) -> list[str]:
    """onnxruntime_perf_test's arguments: CPU EP, ``runs`` repetitions, generated inputs, per-run times to a file."""
    return [binary, "-e", "cpu", "-m", "times", "-r", str(spec.runs), "-x", str(spec.threads), "-I", model, result_file]


def shell_command(workdir: str, args: list[str], library_path: str | None = None) -> str:
    """One quoted shell line for the phone's /system/bin/sh (mksh understands POSIX quoting).

    The tool runs as the shell that wrote its pid to ``.pid`` (``exec``), so a tool that
    times out can be killed by that pid.
    """
    q = shlex.quote
    libs = workdir if library_path is None else f"{workdir}:{library_path}"
    return (f"cd {q(workdir)} && LD_LIBRARY_PATH={q(libs)} sh -c 'echo $$ > .pid; exec \"$@\"' sh "
            + " ".join(q(a) for a in args))


# ---------------------------------------------------------------------------- parsing


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Figures of a benchmark_model log (microseconds turned into milliseconds).

    The last ``count=`` line is the timed runs (the first one, when two are printed, is
    the warmup).
    """
    counts = list(_COUNT.finditer(text))
    if not counts:
        raise ValueError("no 'count=... avg=... std=...' line: is this benchmark_model output?")
    m = counts[-1]
    us = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    out: dict[str, Any] = {"runs": int(us["count"]), **{f"{k}_ms": v / 1e3 for k, v in us.items() if k != "count"}}
    if len(counts) > 1:
        out["warmup_runs"] = int(counts[0].group("count"))
    t = _TIMINGS.search(text)
    if t:
        out["init_ms"] = float(t.group("init")) / 1e3
        out["first_ms"] = float(t.group("first")) / 1e3
    mem = _MEMORY.search(text)
    if mem:
        out["memory_init_mb"] = float(mem.group("init"))
        out["memory_overall_mb"] = float(mem.group("overall"))
    return out


def check_summary(s: dict[str, Any], target: str) -> None:
    """benchmark_model's figures are possible ones: finite, above zero, min <= median <= max.

    Raises:
        TargetError: A figure is not (it is not reported as measured).
    """
    times = {k: v for k, v in s.items() if k.endswith("_ms") and k not in ("init_ms", "first_ms")}
    bad = {k: v for k, v in times.items() if not math.isfinite(v) or v < 0 or (k != "std_ms" and v == 0)}
    if s.get("runs", 0) < 1:
        bad["runs"] = s.get("runs")
    if not bad and not s["min_ms"] <= s.get("median_ms", s["avg_ms"]) <= s["max_ms"]:
        bad = {k: s[k] for k in ("min_ms", "avg_ms", "max_ms")}
    if bad:
        shown = ", ".join(f"{k}={v!r}" for k, v in list(bad.items())[:4])
        raise TargetError(target, f"benchmark_model printed impossible figures ({shown}): not reported as measured")


def stats_from_summary(s: dict[str, Any], threads: int, batch: int = 1) -> LatencyStats:
    """LatencyStats from benchmark_model's summary figures (no per-run times).

    Only printed figures are kept: ``p95`` when the tool printed one, ``max`` always; ``p90``
    and ``p99`` stay None (the tool prints neither). Without a printed median, ``p50`` is the
    mean (:func:`summary_note` says so in the result).
    """
    n = int(s["runs"])
    p50 = s.get("median_ms", s["avg_ms"])
    # Standard error of a median under normal noise: sqrt(pi/2) * std / sqrt(n).
    half = 1.96 * math.sqrt(math.pi / 2) * s["std_ms"] / math.sqrt(max(n, 1))
    ci = (max(s["min_ms"], p50 - half), min(s["max_ms"], p50 + half))
    noisy = p50 > 0 and (ci[1] - ci[0]) / p50 > 0.10
    return LatencyStats(p50=p50, p90=None, p95=s.get("p95_ms"), p99=None, mean=s["avg_ms"], std=s["std_ms"],
                        min=s["min_ms"], max=s["max_ms"], ci95=ci, runs=n, threads=threads, batch=batch,
                        how="measured", noisy=noisy,
                        noise_reason=f"CI of the median is {100 * (ci[1] - ci[0]) / p50:.0f}% of it" if noisy else None)


def summary_note(s: dict[str, Any]) -> str:
    """What a summary-only latency holds, for the result's details."""
    printed = "min, median, p95, max" if "median_ms" in s else "min, mean, max (no median: p50 is the mean)"
    return f"benchmark_model prints a summary only ({printed}, std): no per-run times, no p90 or p99"


def parse_perf_test(stdout: str, result_file: str | None = None) -> dict[str, Any]:
    """Figures of onnxruntime_perf_test: its stdout summary and, if given, the per-run result file."""
    facts: dict[str, float] = {}
    for line in stdout.splitlines():
        m = _ORT_LINE.match(line.strip())
        if not m:
            continue
        value = float(m.group("value"))
        unit = m.group("unit")
        key = m.group("key").strip().lower().replace(" ", "_")
        facts[key + ("_ms" if unit in ("s", "ms") else "")] = value * 1e3 if unit == "s" else value
    if "average_inference_time_cost_ms" not in facts and "p50_latency_ms" not in facts:
        raise ValueError("no 'Average inference time cost' line: is this onnxruntime_perf_test output?")
    out: dict[str, Any] = {"summary": facts}
    if result_file:
        times = []
        for line in result_file.splitlines():
            parts = line.strip().split(",")
            # model,time_s,peak_bytes,cpu%,run  (newer builds: model,submit_s,total_s,peak,cpu%,run)
            if len(parts) >= 5:
                try:
                    times.append(1e3 * float(parts[2] if len(parts) >= 6 else parts[1]))
                except ValueError:
                    continue
        out["times_ms"] = times
    return out


# ---------------------------------------------------------------------------- target


class AdbTarget:
    """An Android phone; latencies are measured there by the user's benchmark binaries."""

    how = "measured"
    formats = ("onnx", "tflite")

    def __init__(self, name: str, spec: AdbDeviceSpec | None = None, timeout_s: float = 900.0) -> None:
        self.device_name = name
        self.name = f"adb:{name}" if name != "default" else "adb"
        self.spec = spec or AdbDeviceSpec()
        self.timeout_s = timeout_s

    def _device(self) -> Any:
        import adbutils

        s = self.spec
        client = adbutils.AdbClient(host=s.adb_host, port=s.adb_port, socket_timeout=10)
        try:
            devices = [d for d in client.device_list() if d.get_state() == "device"]
        except (adbutils.AdbError, adbutils.AdbTimeout, OSError) as e:
            raise TargetError(self.name, f"no adb server at {s.adb_host}:{s.adb_port} ({e}); start one with "
                                         f"`adb -P {s.adb_port} start-server`") from e
        if not devices:
            raise TargetError(self.name, f"no Android device connected (the adb server at {s.adb_host}:{s.adb_port} "
                                         "lists none): plug the phone in with USB debugging on and accept the prompt, "
                                         "or `adb connect HOST:PORT` for wireless debugging")
        if s.serial:
            match = [d for d in devices if d.serial == s.serial]
            if not match:
                raise TargetError(self.name, f"device {s.serial!r} is not connected; connected: "
                                             + ", ".join(d.serial for d in devices))
            return match[0]
        if len(devices) > 1:
            raise TargetError(self.name, "several devices are connected (" + ", ".join(d.serial for d in devices)
                                         + f"): set bench.adb.{self.device_name}.serial")
        return devices[0]

    def describe(self) -> dict[str, Any]:
        d = self._device()
        props = {k: d.prop.get(k) for k in ("ro.product.model", "ro.soc.model", "ro.product.cpu.abi",
                                             "ro.build.version.release")}
        props = {k: one_line(v, 200) if v is not None else None for k, v in props.items()}
        return {"serial": one_line(d.serial, 100), **props, "cores": one_line(d.shell("nproc").strip(), 20),
                "tflite_benchmark": str(self.spec.tflite_benchmark or ""),
                "onnx_benchmark": str(self.spec.onnx_benchmark or "")}

    def _binary_for(self, model: Path) -> Path:
        tflite = model.suffix == ".tflite"
        binary = self.spec.tflite_benchmark if tflite else self.spec.onnx_benchmark
        if binary is None:
            tool, key = ("benchmark_model", "tflite_benchmark") if tflite else ("onnxruntime_perf_test", "onnx_benchmark")
            raise TargetError(self.name, f"set bench.adb.{self.device_name}.{key} to an Android build of {tool} "
                                         f"to benchmark {model.name}")
        if not Path(binary).is_file():
            raise TargetError(self.name, f"benchmark binary {binary} not found")
        return Path(binary)

    def _shell(self, device: Any, command: str, timeout_s: float | None = None) -> tuple[int, str]:
        import adbutils

        timeout = timeout_s or self.timeout_s
        try:
            ret = device.shell2(command, timeout=timeout)
        except adbutils.AdbTimeout as e:
            raise TargetError(self.name, f"the benchmark did not finish within {timeout:.0f} s") from e
        except (adbutils.AdbError, OSError, EOFError) as e:
            raise TargetError(self.name, f"adb lost the device: {one_line(e, 300)}") from e
        return int(ret.returncode), str(ret.output)

    def run(self, model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        raise TargetError(self.name, "the Android benchmark tools time models on generated inputs; they cannot "
                                     "return outputs for parity (use an ssh or emulated target for that)")

    def benchmark(self, model: Path, spec: BenchSpec, inputs: list[np.ndarray] | None = None) -> TargetResult:
        """Push model and binary to a fresh folder, run the binary with the spec's threads and
        runs, parse and check its output; the folder is removed (and a tool still running
        killed) on every path."""
        model = Path(model)
        binary = self._binary_for(model)
        device = self._device()
        base = PurePosixPath(self.spec.workdir)
        work = base / f"run-{secrets.token_hex(4)}"
        self._shell(device, f"mkdir -p {shlex.quote(str(work))}")
        finished = False
        try:
            self._push(device, model, str(work / model.name))
            self._push(device, binary, str(work / binary.name), mode=0o755)
            if model.suffix == ".tflite":
                status, out = self._shell(device, shell_command(str(work), tflite_benchmark_args(
                    "./" + binary.name, str(work / model.name), spec), str(base)))
                finished = True
                try:
                    figures = parse_benchmark_model(out)
                except ValueError as e:
                    raise TargetError(self.name, f"benchmark_model failed (exit {status}): "
                                                 f"{one_line(out.strip()[-400:], 400)}") from e
                check_summary(figures, self.name)
                stats = stats_from_summary(figures, spec.threads, spec.batch)
                times, runtime = None, "TFLite benchmark_model"
                note = summary_note(figures)
                memory = figures.get("memory_overall_mb")
                load_ms = figures.get("init_ms")
            else:
                result_file = str(work / "perf_result.csv")
                status, out = self._shell(device, shell_command(str(work), ort_perf_test_args(
                    "./" + binary.name, str(work / model.name), spec, result_file), str(base)))
                finished = True
                csv = self._pull_text(device, result_file)
                try:
                    figures = parse_perf_test(out, csv)
                except ValueError as e:
                    raise TargetError(self.name, f"onnxruntime_perf_test failed (exit {status}): "
                                                 f"{one_line(out.strip()[-400:], 400)}") from e
                if not figures.get("times_ms"):
                    raise TargetError(self.name, "onnxruntime_perf_test wrote no per-run times to its result file")
                times = validate_times(figures["times_ms"], self.name, "its result file")
                stats = summarize(times, threads=spec.threads, batch=spec.batch)
                runtime, note = "onnxruntime_perf_test", None
                peak = figures["summary"].get("peak_working_set_size")
                memory = peak / 2**20 if peak and math.isfinite(peak) and peak > 0 else None
                load_ms = figures["summary"].get("session_creation_time_cost_ms")
        finally:
            self._clean(device, str(work), kill=not finished)
        if load_ms is not None and not (math.isfinite(load_ms) and load_ms >= 0):
            load_ms = None
        if memory is not None and not (math.isfinite(memory) and memory >= 0):
            memory = None
        return TargetResult(
            target=self.name, how="measured", device=f"Android {clean_text(device.serial, 100)}", threads=spec.threads,
            batch=spec.batch, latency_ms=stats, times_ms=times, load_ms=load_ms, peak_rss_mb=memory,
            throughput_items_s=1e3 * spec.batch / stats.p50 if stats.p50 > 0 else None, runtime=runtime,
            details={"binary": str(binary), **({"note": note} if note else {})},
        )

    def _push(self, device: Any, local: Path, remote: str, mode: int = 0o644) -> None:
        import adbutils

        try:
            device.sync.push(str(local), remote, mode=mode)
        except (adbutils.AdbError, adbutils.AdbTimeout, OSError, EOFError) as e:
            raise TargetError(self.name, f"pushing {local.name} to the phone failed: {one_line(e, 300)}") from e

    def _pull_text(self, device: Any, remote: str) -> str | None:
        """A small text file from the phone; None when it is not there (the tool failed: its stdout says why)."""
        import adbutils

        with tempfile.TemporaryDirectory(prefix="edgepack-adb-") as tmp:
            local = Path(tmp) / "pulled"
            try:
                device.sync.pull(remote, str(local))
            except (adbutils.AdbError, adbutils.AdbTimeout, OSError, EOFError):
                return None
            if not local.is_file():
                return None
            if local.stat().st_size > MAX_RESULT_FILE_BYTES:
                raise TargetError(self.name, f"the phone's result file is over {MAX_RESULT_FILE_BYTES} bytes: refused")
            return local.read_text(encoding="utf-8", errors="replace")

    def _clean(self, device: Any, work: str, kill: bool) -> None:
        """Remove the benchmark's folder, first killing its tool when it did not finish."""
        q = shlex.quote(work)
        command = f"rm -rf -- {q}"
        if kill:
            command = (f'pid=$(cat {q}/.pid 2>/dev/null); case "$pid" in ""|1|*[!0-9]*) ;; *) kill -9 "$pid";; esac; '
                       + command)
        try:
            self._shell(device, command, timeout_s=60)
        except TargetError:
            pass  # the phone is gone: nothing more can be cleaned from here
