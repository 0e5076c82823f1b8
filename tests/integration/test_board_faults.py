"""Boards that lie, break or hang: what they send is checked, cleaned, and never crashes a run.

The SSH cases run against the real sshd of ``test_ssh_target`` with a fake ``python`` on the
"board" (``bench.ssh.NAME.python`` set to a script) that prints impossible times, broken JSON,
terminal escape sequences, writes an object array as its outputs, or sleeps past the timeout.
The adb cases drive :class:`devices.adb.AdbTarget` with a fake phone that prints what a
broken ``benchmark_model`` could print.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compress.core.errors import TargetError
from compress.core.types import BenchSpec
from devices.ssh import SshTarget
from tests.conftest import ROOT, write_recipe
from tests.integration.test_ssh_target import Sshd, _gemm_model, _inputs, sshd  # noqa: F401  (sshd: a fixture)

SPEC = BenchSpec(warmup=0, max_warmup=0, runs=3)
GOOD_DEVICE = {"machine": "x86_64", "system": "Linux", "release": "6.1", "python": "3.11", "cores": 4, "cpu": "fake"}


def _fake_python(folder: Path, name: str, body: str) -> str:
    """An executable script the board runs instead of its Python: ``body`` is Python code run with
    ``spec`` (the agent's spec.json) loaded; ``-c`` probes (describe) get no answer."""
    script = folder / f"{name}.py"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent('''
        import json, sys
        if sys.argv[1] == "-c":
            sys.exit(1)
        spec = json.load(open(sys.argv[2]))
        def result(**kw):
            sys.stdout.write("\\nEDGEPACK-RESULT " + json.dumps(kw) + "\\n")
        ''') + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gemm_model(tmp_path_factory.mktemp("m") / "gemm.onnx")


def _board(sshd: Sshd, tmp_path: Path, body: str, **kw: Any) -> SshTarget:  # noqa: F811
    return SshTarget("fake", sshd.spec(python=_fake_python(tmp_path, "python", body), **kw))


def _no_remote_dirs(sshd: Sshd) -> bool:  # noqa: F811
    return [p for p in sshd.remote_tmp.iterdir() if p.is_dir()] == []


@pytest.mark.parametrize(("times", "expected"), [
    ("[-1.5, 2.0, 2.1]", "impossible run time"),
    ("[NaN, 2.0]", "impossible run time"),
    ("[Infinity]", "impossible run time"),
    ("[]", "no per-run times"),
    ('["1", 2]', "impossible run time"),
    ("[1e300]", "impossible run time"),
])
def test_impossible_times_are_refused(sshd: Sshd, tmp_path: Path, model: Path, times: str, expected: str) -> None:  # noqa: F811
    body = f'sys.stdout.write("\\nEDGEPACK-RESULT " + \'{{"ok": true, "times_ms": {times}}}\' + "\\n")\n'
    with pytest.raises(TargetError, match=expected) as info:
        _board(sshd, tmp_path, body).benchmark(model, SPEC)
    assert info.value.target == "ssh:fake" and "measured" in str(info.value) or expected == "no per-run times"
    assert _no_remote_dirs(sshd)


def test_broken_json_and_wrong_types(sshd: Sshd, tmp_path: Path, model: Path) -> None:  # noqa: F811
    cases = {
        'sys.stdout.write("EDGEPACK-RESULT {\\"ok\\": tru")': "not valid JSON",
        'sys.stdout.write("EDGEPACK-RESULT [1, 2]")': "not a JSON object",
        'result(ok=True, times_ms=[1.0], batch=2.5)': "batch is not an integer",
        'result(ok=True, times_ms=[1.0], peak_rss_kb=-5)': "peak_rss_kb is out of range",
        'result(ok=True, times_ms=[1.0], device="a string")': "device facts are not a JSON object",
        'result(ok=True, times_ms=[1.0], outputs={"a": 1})': "outputs is not a list",
        'sys.stdout.write("EDGEPACK-RESULT " + "[" * 100000 + "]" * 100000)': "not valid JSON",
    }
    for body, expected in cases.items():
        with pytest.raises(TargetError, match=expected):
            _board(sshd, tmp_path, body + "\n").benchmark(model, SPEC)
    assert _no_remote_dirs(sshd)


def test_escape_sequences_never_reach_the_terminal(sshd: Sshd, tmp_path: Path, model: Path) -> None:  # noqa: F811
    esc = "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31m\\u202e\\r"
    failing = _board(sshd, tmp_path, f'result(ok=False, error="{esc}agent broke")\n')
    with pytest.raises(TargetError, match="agent broke") as info:
        failing.benchmark(model, SPEC)
    assert "\x1b" not in str(info.value) and "\u202e" not in str(info.value) and "\r" not in str(info.value)
    silent = _board(sshd, tmp_path, f'print("{esc}garbage"); sys.exit(3)\n')
    with pytest.raises(TargetError, match="printed no result") as info:
        silent.benchmark(model, SPEC)
    assert "\x1b" not in str(info.value) and "garbage" in str(info.value)
    # a result that succeeds carries the board's strings into the report: cleaned too
    device = dict(GOOD_DEVICE, cpu="\x1b]0;pwned\x07\x1b[2J\u202eEvil CPU", machine="x86\x1b[8m_64")
    ok = _board(sshd, tmp_path, f"result(ok=True, times_ms=[1.0, 1.1, 1.2], runtime='{esc}ort', "
                                f"device={json.dumps(device)})\n")
    res = ok.benchmark(model, SPEC)
    stored = res.model_dump_json()
    assert "\\u001b" not in stored and "\\u202e" not in stored and "Evil CPU" in res.device
    assert res.how == "measured" and res.latency_ms.p50 == pytest.approx(1.1)


def test_object_array_in_outputs_is_refused(sshd: Sshd, tmp_path: Path, model: Path) -> None:  # noqa: F811
    body = """
        import numpy as np
        np.savez(spec["outputs"], y0=np.array([{"a": 1}, None], dtype=object))
        result(ok=True, times_ms=[1.0, 1.0, 1.0])
    """
    with pytest.raises(TargetError, match="object") as info:
        _board(sshd, tmp_path, body).benchmark(model, SPEC, _inputs())
    assert "pickle" in str(info.value)
    wrong = """
        import numpy as np
        np.savez(spec["outputs"], y0=np.array(["text"]))
        result(ok=True, times_ms=[1.0, 1.0, 1.0])
    """
    with pytest.raises(TargetError, match="not a numeric array"):
        _board(sshd, tmp_path, wrong).benchmark(model, SPEC, _inputs())
    garbage = """
        open(spec["outputs"], "wb").write(b"PK not a zip")
        result(ok=True, times_ms=[1.0, 1.0, 1.0])
    """
    with pytest.raises(TargetError, match="not a valid .npz"):
        _board(sshd, tmp_path, garbage).benchmark(model, SPEC, _inputs())
    assert _no_remote_dirs(sshd)


def _processes_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _gone(marker: str, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not _processes_with(marker):
            return True
        time.sleep(0.1)
    return False


def test_timeout_kills_the_remote_process_group(sshd: Sshd, tmp_path: Path, model: Path) -> None:  # noqa: F811
    # the fake agent starts a child (as a runtime's worker would) and both outlive the timeout
    body = """
        import subprocess, time
        subprocess.Popen(["sleep", "47.25"])
        time.sleep(46.75)
    """
    target = _board(sshd, tmp_path, body, timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="no answer within 2 s"):
        target.benchmark(model, SPEC)
    assert time.monotonic() - t0 < 15
    assert _gone("sleep 47.25") and _gone(f"{tmp_path}/python.py"), "the remote agent still runs"
    assert _no_remote_dirs(sshd)


def test_dropped_connection_kills_what_it_left_and_cleans_up(sshd: Sshd, model: Path) -> None:  # noqa: F811
    spec = sshd.spec(remote_command=f"sleep 43.5 & kill -9 $PPID; sleep 44.5; {sys.executable}")
    with pytest.raises(TargetError, match="dropped") as info:
        SshTarget("flaky", spec).benchmark(model, SPEC)
    assert "Traceback" not in str(info.value) and "ssh:flaky" in str(info.value)
    assert _gone("sleep 43.5") and _gone("sleep 44.5")
    assert _no_remote_dirs(sshd)


def test_a_lying_board_fails_the_run_with_a_clear_message(sshd: Sshd, tmp_path: Path, model: Path) -> None:  # noqa: F811
    """Through the CLI: NaN times and escapes from a board are a failed target (exit 1), not
    'internal error', and neither the terminal nor the report gets the escapes."""
    fake = _fake_python(tmp_path, "python", 'print("\\x1b[2Jhello"); result(ok=True, times_ms=[float("nan")] * 3, '
                                             'device={"cpu": "\\x1b]0;owned\\x07cpu"})\n')
    key, known = sshd.user_key, sshd.known_hosts
    recipe = write_recipe(tmp_path, f"""
        version: 1
        name: liar
        model: {{onnx: {model}, input_shape: [1, 16]}}
        task: {{kind: regression}}
        bench:
          targets: [ssh:liar]
          runs: 3
          warmup: 0
          repeats: 1
          ssh:
            liar: {{host: 127.0.0.1, port: {sshd.port}, user: {os.environ.get("USER") or "root"}, key: {key},
                    known_hosts: {known}, python: {fake}, timeout_s: 30}}
    """)
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "compress", str(recipe), "--out", str(out)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "target ssh:liar" in res.stderr and "impossible run time" in res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert "\x1b" not in res.stdout + res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "impossible run time" in report["error"]
    assert "\x1b" not in (out / "report.json").read_text() and "\x1b" not in (out / "log.txt").read_text()
    assert _no_remote_dirs(sshd)


# ---------------------------------------------------------------------------- adb


class _Ret:
    def __init__(self, output: str, returncode: int = 0) -> None:
        self.output, self.returncode = output, returncode


class _FakePhone:
    """Just enough of an adbutils device: every shell command is recorded; the benchmark
    tool's output (or a timeout) is what the test says."""

    serial = "fake\x1b[31mphone"

    def __init__(self, tool_output: str | None) -> None:
        self.tool_output = tool_output
        self.commands: list[str] = []
        phone = self

        class Sync:
            def push(self, src: str, dst: str, mode: int = 0o644) -> None:
                phone.commands.append(f"push {dst}")

            def pull(self, src: str, dst: str) -> None:
                raise OSError("no such file")

        self.sync = Sync()

    def shell2(self, command: str, timeout: float | None = None) -> _Ret:
        import adbutils

        self.commands.append(command)
        if "benchmark_model" in command and "--graph" in command:
            if self.tool_output is None:
                raise adbutils.AdbTimeout("timed out")
            return _Ret(self.tool_output)
        return _Ret("")


LITERT_LINE = ("count=50 first=16000 curr=16100 min=15000 max={max} avg={avg} std=300 p5=15500 median={median} "
               "p95=17000\n")


@pytest.mark.parametrize(("output", "expected"), [
    (LITERT_LINE.format(max=18000, avg="1e999", median=16000), "impossible figures"),
    (LITERT_LINE.format(max=100, avg=16000, median=16000), "impossible figures"),
    ("\x1b]0;pwned\x07\x1b[2JSegmentation fault\n", "benchmark_model failed"),
    (None, "did not finish"),
])
def test_adb_phone_that_lies_or_hangs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, output: str | None,
                                      expected: str) -> None:
    from devices.specs import AdbDeviceSpec
    from devices.adb import AdbTarget

    binary, model_file = tmp_path / "benchmark_model", tmp_path / "m.tflite"
    binary.write_bytes(b"\x7fELF")
    model_file.write_bytes(b"TFL3")
    phone = _FakePhone(output)
    target = AdbTarget("phone", AdbDeviceSpec(tflite_benchmark=binary))
    monkeypatch.setattr(target, "_device", lambda: phone)
    with pytest.raises(TargetError, match=expected) as info:
        target.benchmark(model_file, BenchSpec(runs=50))
    assert "\x1b" not in str(info.value)
    work = phone.commands[0].split()[-1]  # mkdir -p WORK: a fresh folder per benchmark
    assert work.startswith("/data/local/tmp/edgepack/run-")
    cleanup = phone.commands[-1]
    assert cleanup.endswith(f"rm -rf -- {work}")
    assert ("kill -9" in cleanup) == (output is None)  # a tool that did not finish is killed


def test_adb_good_figures_still_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from devices.specs import AdbDeviceSpec
    from devices.adb import AdbTarget

    binary, model_file = tmp_path / "benchmark_model", tmp_path / "m.tflite"
    binary.write_bytes(b"\x7fELF")
    model_file.write_bytes(b"TFL3")
    phone = _FakePhone(LITERT_LINE.format(max=18000, avg=16000, median=16050))
    target = AdbTarget("phone", AdbDeviceSpec(tflite_benchmark=binary))
    monkeypatch.setattr(target, "_device", lambda: phone)
    res = target.benchmark(model_file, BenchSpec(runs=50))
    assert res.how == "measured" and res.latency_ms.p50 == pytest.approx(16.05) and "\x1b" not in res.device
    assert np.isfinite(res.latency_ms.ci95).all()
