"""The local target's agent processes: forked from the agent's fork server, or exec'd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import devices.local as local
from bench.agent import resident_file_pages
from compress.core.errors import TargetError
from compress.core.types import BenchSpec
from devices.local import AGENT, AgentServer, LocalTarget
from tests.unit.bench.test_agent import linear_onnx

pytestmark = pytest.mark.skipif(not AgentServer.enabled() and os.environ.get("EDGEPACK_AGENT_FORK") != "0",
                                reason="the fork server is Linux-only")

SPEC = BenchSpec(threads=1, warmup=5, runs=30, batch=2)


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch):
    """A server of the test's own in place of the process-wide one."""
    monkeypatch.setenv("EDGEPACK_AGENT_FORK", "1")
    s = AgentServer()
    monkeypatch.setattr(local, "SERVER", s)
    yield s
    s.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linear_onnx(tmp_path_factory.mktemp("local") / "clf.onnx")


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (a zombie waits for a reaper, it does not run)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _server_pid(s: AgentServer) -> int:
    assert s._proc is not None and s._proc.poll() is None
    return s._proc.pid


def test_forked_and_execd_agents_report_the_same_things(server: AgentServer, model: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    x = [np.ones((3, 4), dtype=np.float32)]
    forked = LocalTarget().benchmark(model, SPEC, x)
    pid = _server_pid(server)
    monkeypatch.setenv("EDGEPACK_AGENT_FORK", "0")
    execd = LocalTarget().benchmark(model, SPEC, x)
    assert _server_pid(server) == pid  # the exec'd one did not use it
    for res in (forked, execd):
        assert res.error is None and len(res.times_ms) == SPEC.runs and res.batch == 2
        assert res.details["input_source"] == "data" and res.details["warmup_runs"] >= SPEC.warmup
    assert set(forked.details) == set(execd.details)
    assert forked.runtime == execd.runtime
    # The child maps the pages the server had resident first: the model's memory is counted as
    # in a process of its own (the fork alone left about 1.8 MB of library pages in the figure).
    assert forked.memory_increase_mb == pytest.approx(execd.memory_increase_mb, abs=1.0)
    assert forked.peak_rss_mb == pytest.approx(execd.peak_rss_mb, abs=2.0)


def test_one_server_for_many_benchmarks_and_a_new_one_when_it_dies(server: AgentServer, model: Path) -> None:
    target = LocalTarget()
    target.benchmark(model, SPEC)
    pid = _server_pid(server)
    target.benchmark(model, SPEC)
    assert _server_pid(server) == pid
    os.kill(pid, 9)
    server._proc.wait()
    res = target.benchmark(model, SPEC)
    assert res.error is None and _server_pid(server) != pid


def test_a_benchmark_past_its_timeout_is_killed_with_the_server(server: AgentServer, model: Path) -> None:
    target = LocalTarget(timeout_s=1.0)
    target.benchmark(model, SPEC)
    pid = _server_pid(server)
    with pytest.raises(TargetError, match="did not finish within 1 s"):
        target.benchmark(model, BenchSpec(threads=1, warmup=5, runs=50_000_000, batch=1))
    assert server._proc is None
    deadline = time.monotonic() + 10
    while _alive_in_group(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive_in_group(pid)  # the server's group, the child with it, is gone
    assert LocalTarget().benchmark(model, SPEC).error is None  # and the next one starts afresh


def test_a_failing_model_is_reported_by_the_agent_not_the_server(server: AgentServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(TargetError, match="benchmark agent failed"):
        LocalTarget().benchmark(bad, SPEC)
    assert server._proc is not None and server._proc.poll() is None  # the server carries on


@pytest.mark.parametrize("request_line, answer", [
    ("{not json}\n", "EDGEPACK-BAD JSONDecodeError"),
    ('{"spec": "x"}\n', "EDGEPACK-BAD KeyError"),
])
def test_the_server_refuses_a_bad_request_and_carries_on(request_line: str, answer: str, model: Path,
                                                         tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "threads": 1, "warmup": 2, "runs": 5, "batch": 1}))
    good = json.dumps({"spec": str(spec), "out": str(tmp_path / "out.txt")}) + "\n"
    proc = subprocess.run([sys.executable, str(AGENT), "--serve"], input=request_line + good, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    ready, *rest = proc.stdout.splitlines()
    assert ready.startswith("EDGEPACK-READY ") and int(ready.split()[1]) > 0
    assert rest == [answer, "EDGEPACK-DONE 0"]
    assert "EDGEPACK-RESULT " in (tmp_path / "out.txt").read_text()


@pytest.mark.parametrize("ready", ["EDGEPACK-READY 0", "EDGEPACK-READY", "something else"])
def test_a_server_that_cannot_list_its_pages_is_not_used(ready: str, model: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc/self/pagemap cannot be read, the forked children's memory would be off: exec instead."""
    monkeypatch.setenv("EDGEPACK_AGENT_FORK", "1")
    fake = AgentServer([sys.executable, "-c", f"print({ready!r}, flush=True); import sys; sys.stdin.read()"])
    monkeypatch.setattr(local, "SERVER", fake)
    try:
        res = LocalTarget().benchmark(model, SPEC)
        assert res.error is None and len(res.times_ms) == SPEC.runs  # timed by an exec'd agent
        assert fake._proc is None
        with pytest.raises(local.ServerGone, match="did not start in this process"):  # not tried again
            fake.run(Path("spec.json"), Path("out.txt"), 1.0)
    finally:
        fake.close()


def test_off_switch_runs_every_benchmark_by_exec(server: AgentServer, model: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_AGENT_FORK", "0")
    assert LocalTarget().benchmark(model, SPEC).error is None
    assert server._proc is None


def test_resident_file_pages_lie_in_readable_file_mappings() -> None:
    try:
        import numpy._core._multiarray_umath as umath  # numpy 2
    except ImportError:
        import numpy.core._multiarray_umath as umath

    runs = resident_file_pages()
    assert runs and all(n > 0 for _, n in runs)
    maps = [line.split(maxsplit=5) for line in Path("/proc/self/maps").read_text().splitlines()]
    ranges = [tuple(int(v, 16) for v in m[0].split("-")) + (m[5],) for m in maps if len(m) == 6 and m[1][0] == "r"]
    size = os.sysconf("SC_PAGE_SIZE")
    for start, n in runs:
        assert any(lo <= start and start + n * size <= hi for lo, hi, _ in ranges)
    # numpy's extension, imported and used, has resident pages among them
    so = [(lo, hi) for lo, hi, name in ranges if name == umath.__file__]
    assert any(lo <= start < hi for start, _ in runs for lo, hi in so)
