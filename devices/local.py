"""This machine: each artifact timed by the agent in a fresh process.

The fresh processes are forked from one agent fork server per edgepack process
(:class:`AgentServer`, ``bench/agent.py --serve``) on Linux, which saves the interpreter's
start and numpy's import for each of them; ``EDGEPACK_AGENT_FORK=0``, another OS, or a server
that does not start runs ``python bench/agent.py SPEC`` per benchmark instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.agent import take_samples
from bench import yardstick
from bench.latency import summarize, with_yardstick
from bench.yardstick import block_ratios
from compress.core.report_schema import TargetResult
from compress.core.errors import TargetError
from compress.core.types import BenchSpec
from devices.untrusted import load_outputs, one_line, parse_agent_line, validate_agent_result

AGENT = Path(__file__).resolve().parent.parent / "bench" / "agent.py"


def parse_agent_output(stdout: str, target: str) -> dict[str, Any]:
    """The agent's result line, checked (trusted over the exit code, never over its content).

    The output comes from a board as often as from this machine: broken JSON, a failure, or
    a field of the wrong type or out of range (negative, NaN) is a TargetError naming the
    target, and every string in it is cleaned of terminal escapes.
    """
    for line in reversed(stdout.splitlines()):
        if line.startswith("EDGEPACK-RESULT "):
            return validate_agent_result(parse_agent_line(line[len("EDGEPACK-RESULT "):], target), target)
    tail = [one_line(t, 200) for t in stdout.strip().splitlines()[-3:]]
    raise TargetError(target, "benchmark agent printed no result" + (f" (last output: {' | '.join(tail)})" if tail else ""))


def yardstick_details(out: dict[str, Any]) -> dict[str, Any]:
    """``details["yardstick"]`` of a one-process result: the agent's block medians as one process."""
    y = out.get("yardstick")
    if not y:
        return {}
    return {"yardstick": {"version": y.get("version"), "block_runs": y.get("block_runs"),
                          "processes": [{"model_ms": y["model_ms"], "yardstick_ms": y["yardstick_ms"]}]}}


def result_from_agent(out: dict[str, Any], target: str, how: str, spec: BenchSpec) -> TargetResult:
    """Turn the agent's JSON into a TargetResult with statistics."""
    dev = out.get("device", {})
    # The load before the agent started is other work; the load after includes the benchmark.
    load = out.get("loadavg_before", (dev.get("loadavg") or [None])[0])
    stats = summarize(out["times_ms"], threads=spec.threads, batch=out.get("batch", spec.batch), how=how,
                      loadavg=load, cores=dev.get("cores"), involuntary_switches=out.get("involuntary_switches"),
                      warmup_stable=out.get("warmup_stable"))
    stats = with_yardstick(stats, block_ratios(yardstick_details(out)))
    return TargetResult(
        target=target,
        how=how,
        device=f"{dev.get('cpu') or dev.get('machine')} ({dev.get('machine')}, {dev.get('cores')} cores)",
        threads=spec.threads,
        batch=stats.batch,
        latency_ms=stats,
        times_ms=[round(t, 5) for t in out["times_ms"]],
        throughput_items_s=1e3 * stats.batch / stats.p50 if stats.p50 > 0 else None,
        load_ms=out.get("load_ms"),
        memory_increase_mb=out.get("memory_increase_kb", 0) / 1024,
        peak_rss_mb=out.get("peak_rss_kb", 0) / 1024,
        runtime=f"{out.get('runtime')} {out.get('runtime_version')}",
        details={**yardstick_details(out), "warmup_runs": out.get("warmup_runs"), "warmup_stable": out.get("warmup_stable"),
                 "cpu_flags": dev.get("cpu_flags"),
                 "inputs": out.get("inputs"), "outputs": out.get("outputs"),
                 "affinity": dev.get("affinity"), "cpus_requested": list(spec.cpus) if spec.cpus else None,
                 "loadavg_before": out.get("loadavg_before"), "loadavg": dev.get("loadavg"),
                 "involuntary_switches": out.get("involuntary_switches"),
                 "cpu_wall_ratio": out.get("cpu_wall_ratio"), "input_source": out.get("input_source")},
    )


def write_inputs(path: Path, inputs: list[np.ndarray]) -> None:
    """Inputs for the agent, with the batch axis of each (fixed inputs are fed whole)."""
    from bench.agent import save_inputs

    save_inputs(path, inputs)


def read_outputs(path: Path, target: str = "local") -> list[np.ndarray]:
    """The agent's outputs file: numeric arrays only (see :func:`devices.untrusted.load_outputs`)."""
    return load_outputs(path, target)


class ServerGone(OSError):
    """The fork server could not start, or died: the caller runs the agent by exec instead."""


class AgentServer:
    """The agent's fork server for this process: started on first use, one request at a time.

    Its process group is its own, so a benchmark past its timeout is killed with the server
    (a new one starts on the next request). A process that inherited the object (a fork)
    starts its own server and leaves its parent's alone.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, str(AGENT), "--serve"]
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._unavailable = False  # a server that would not start is not tried again in this process

    @staticmethod
    def enabled() -> bool:
        return (sys.platform.startswith("linux") and hasattr(os, "fork")
                and os.environ.get("EDGEPACK_AGENT_FORK", "1") != "0")

    @staticmethod
    def _read_line(proc: subprocess.Popen, timeout_s: float) -> str | None:
        """The server's next line, '' at end of output, None past the timeout."""
        assert proc.stdout is not None
        fd, buf, end = proc.stdout.fileno(), b"", time.monotonic() + timeout_s
        while not buf.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            buf += chunk
        return buf.decode("utf-8", "replace").strip()

    def _start(self) -> subprocess.Popen:
        # one BLAS thread: the server must have no other thread when it forks
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            proc = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as e:
            raise ServerGone(str(e)) from e
        ready = (self._read_line(proc, 60.0) or "").split()
        if len(ready) != 2 or ready[0] != "EDGEPACK-READY" or not ready[1].isdigit() or int(ready[1]) == 0:
            # no resident pages listed (pagemap unreadable): a child's memory figure would count
            # library pages as the model's, so the agent runs by exec instead
            self._kill(proc)
            raise ServerGone("the agent's fork server did not start, or cannot list its resident pages")
        return proc

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the server and the child it is waiting for
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def _drop(self) -> None:
        """Kill the running server (and its child); the next request starts a new one."""
        if self._proc is not None:
            self._kill(self._proc)
            self._proc = None

    def run(self, spec_path: Path, out_path: Path, timeout_s: float) -> int:
        """Run one spec in a forked child; its exit code (its output is in ``out_path``).

        TimeoutError past ``timeout_s`` (child and server killed); ServerGone when the server
        cannot start (then not again in this process) or dies.
        """
        with self._lock:
            if self._owner != os.getpid():
                self._proc, self._owner, self._unavailable = None, os.getpid(), False
            if self._unavailable:
                raise ServerGone("the agent's fork server did not start in this process")
            if self._proc is None or self._proc.poll() is not None:
                try:
                    self._proc = self._start()
                except ServerGone:
                    self._unavailable = True
                    raise
            proc = self._proc
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps({"spec": str(spec_path), "out": str(out_path)}) + "\n").encode())
                proc.stdin.flush()
                line = self._read_line(proc, timeout_s)
            except OSError as e:
                self._drop()
                raise ServerGone(str(e)) from e
            except BaseException:  # Ctrl-C while a child runs: the child and server go with it
                self._drop()
                raise
            if line is None:
                self._drop()
                raise TimeoutError
            if not line.startswith("EDGEPACK-DONE "):
                self._drop()
                raise ServerGone(f"the agent's fork server answered {line[:80]!r}")
            return int(line.split()[1])

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None or self._owner != os.getpid():
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: the server exits
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self._kill(proc)


SERVER = AgentServer()
atexit.register(SERVER.close)


class LocalTarget:
    """The machine edgepack runs on; latencies are measured."""

    name = "local"
    how = "measured"
    formats = ("onnx", "tflite")

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s

    def describe(self) -> dict[str, Any]:
        from bench.agent import device_facts

        return device_facts()

    def _agent(self, spec_dict: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec_dict))
            if AgentServer.enabled():
                out_path = Path(tmp) / "agent.out"
                try:
                    SERVER.run(spec_path, out_path, self.timeout_s)
                except TimeoutError as e:
                    raise TargetError(self.name, f"benchmark did not finish within {self.timeout_s:.0f} s") from e
                except ServerGone:
                    pass  # run it by exec below
                else:
                    text = out_path.read_text(encoding="utf-8", errors="replace") if out_path.is_file() else ""
                    return parse_agent_output(text, self.name)
            env = dict(os.environ, OMP_NUM_THREADS=str(spec_dict.get("threads", 1)))
            try:
                proc = subprocess.run([sys.executable, str(AGENT), str(spec_path)], capture_output=True, text=True,
                                      timeout=self.timeout_s, env=env)
            except subprocess.TimeoutExpired as e:
                raise TargetError(self.name, f"benchmark did not finish within {self.timeout_s:.0f} s") from e
            return parse_agent_output(proc.stdout + "\n" + proc.stderr[-2000:], self.name)

    def run(self, model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from bench.runtime import open_model, predict

        return predict(open_model(model), inputs)

    def benchmark(self, model: Path, spec: BenchSpec, inputs: list[np.ndarray] | None = None) -> TargetResult:
        with tempfile.TemporaryDirectory(prefix="edgepack-in-") as tmp:
            d: dict[str, Any] = {"model": str(model), "threads": spec.threads, "warmup": spec.warmup,
                                 "max_warmup": spec.max_warmup, "runs": spec.runs, "batch": spec.batch}
            if spec.cpus:
                d["cpus"] = list(spec.cpus)
            if spec.yardstick:
                d["yardstick"], d["yardstick_version"] = str(yardstick.path()), yardstick.VERSION
            if inputs is not None:
                p = Path(tmp) / "inputs.npz"
                # The agent repeats rows when there are fewer than the batch asks for.
                write_inputs(p, take_samples(inputs, slice(0, spec.batch)))
                d["inputs"] = str(p)
            out = self._agent(d)
        return result_from_agent(out, self.name, self.how, spec)
