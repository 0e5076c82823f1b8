"""The adb target: command building, parsing of the tools' real output formats, no-device error.

Samples under tests/data/ follow the formats the tools print: LiteRT's benchmark_model
(with p5/median/p95), the older TensorFlow benchmark_model (summary only), and
onnxruntime_perf_test's stdout plus its per-run result file.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import TargetError
from devices.specs import AdbDeviceSpec
from devices.adb import (
    AdbTarget,
    ort_perf_test_args,
    parse_benchmark_model,
    parse_perf_test,
    shell_command,
    stats_from_summary,
    summary_note,
    tflite_benchmark_args,
)
from compress.core.types import BenchSpec
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"


def test_commands_are_quoted_and_complete() -> None:
    spec = BenchSpec(threads=4, warmup=5, runs=50)
    args = tflite_benchmark_args("./benchmark_model", "/data/local/tmp/e p/it's \"m\".tflite", spec)
    assert "--num_threads=4" in args and "--num_runs=50" in args and "--warmup_runs=5" in args
    assert "--min_secs=0" in args  # exactly `runs` timed runs, not "at least one second"
    line = shell_command("/data/local/tmp/e p", args)
    tokens = shlex.split(line)
    assert tokens[:2] == ["cd", "/data/local/tmp/e p"] and tokens[-len(args):] == args
    ort = ort_perf_test_args("./onnxruntime_perf_test", "m.onnx", BenchSpec(threads=2, runs=30), "r.csv")
    assert ort[1:] == ["-e", "cpu", "-m", "times", "-r", "30", "-x", "2", "-I", "m.onnx", "r.csv"]


def test_parse_litert_benchmark_model() -> None:
    fig = parse_benchmark_model((DATA / "benchmark_model_litert.txt").read_text())
    assert fig["runs"] == 50 and fig["warmup_runs"] == 5
    assert fig["median_ms"] == pytest.approx(16.207) and fig["p95_ms"] == pytest.approx(17.014)
    assert fig["avg_ms"] == pytest.approx(16.2987) and fig["init_ms"] == pytest.approx(57.235)
    assert fig["memory_overall_mb"] == pytest.approx(41.2617)
    s = stats_from_summary(fig, threads=4)
    # what the tool printed, under its own names: its p95 is not a p90, its max not a p99
    assert s.p50 == pytest.approx(16.207) and s.p95 == pytest.approx(17.014) and s.max == pytest.approx(17.803)
    assert s.p90 is None and s.p99 is None
    assert s.min == pytest.approx(15.987) and s.mean == pytest.approx(16.2987) and s.std == pytest.approx(0.341)
    assert s.min <= s.ci95[0] <= s.p50 <= s.ci95[1] <= s.max and s.runs == 50 and s.how == "measured"
    assert "median, p95" in summary_note(fig) and "no p90 or p99" in summary_note(fig)


def test_parse_older_benchmark_model_without_percentiles() -> None:
    fig = parse_benchmark_model((DATA / "benchmark_model_tf2.txt").read_text())
    assert fig["runs"] == 50 and "median_ms" not in fig
    s = stats_from_summary(fig, threads=1)
    assert s.p50 == pytest.approx(79.732)  # no median printed: the mean stands in, and the note says so
    assert "no median: p50 is the mean" in summary_note(fig)
    # this format prints min, max, avg and std only: no percentile is made up from them
    assert s.max == pytest.approx(88.213) and s.min == pytest.approx(77.385)
    assert s.p90 is None and s.p95 is None and s.p99 is None


def test_summary_only_latency_renders_and_round_trips() -> None:
    from bench.report import latency_cell
    from compress.core.report_schema import LatencyStats, TargetResult

    for sample, shown, absent in (("benchmark_model_litert.txt", ["p95 17.01", "max 17.8"], ["p90", "p99"]),
                                  ("benchmark_model_tf2.txt", ["max 88.21"], ["p90", "p95", "p99"])):
        s = stats_from_summary(parse_benchmark_model((DATA / sample).read_text()), threads=1)
        assert LatencyStats.model_validate_json(s.model_dump_json()) == s
        cell = latency_cell(TargetResult(target="adb:phone", how="measured", device="Android x", threads=1,
                                         batch=1, latency_ms=s))
        assert all(w in cell for w in shown) and not any(w in cell for w in absent), cell


def test_parse_onnxruntime_perf_test_with_result_file() -> None:
    stdout = (DATA / "onnxruntime_perf_test_stdout.txt").read_text()
    csv = (DATA / "onnxruntime_perf_test_result.csv").read_text()
    fig = parse_perf_test(stdout, csv)
    summary = fig["summary"]
    assert summary["total_inference_requests"] == 50
    assert summary["session_creation_time_cost_ms"] == pytest.approx(72.1803)
    times = np.array(fig["times_ms"])
    assert len(times) == 50
    # The per-run file and the printed summary describe the same runs.
    assert times.mean() == pytest.approx(summary["average_inference_time_cost_ms"], rel=1e-4)
    assert np.sort(times)[25] == pytest.approx(summary["p50_latency_ms"], rel=1e-4)
    assert times.max() == pytest.approx(summary["max_latency_ms"], rel=1e-4)


def test_newer_result_file_layout_uses_total_time() -> None:
    csv = "m,0.001,0.0095,47104000,98,0\nm,0.001,0.0105,47104000,98,1\n"
    fig = parse_perf_test("Average inference time cost: 10 ms\n", csv)
    assert fig["times_ms"] == pytest.approx([9.5, 10.5])


def test_garbage_is_not_parsed() -> None:
    with pytest.raises(ValueError, match="benchmark_model"):
        parse_benchmark_model("Segmentation fault\n")
    with pytest.raises(ValueError, match="onnxruntime_perf_test"):
        parse_perf_test("error: cannot load model\n")


def test_missing_binary_is_explained(tmp_path: Path) -> None:
    target = AdbTarget("phone", AdbDeviceSpec())
    with pytest.raises(TargetError, match=r"bench.adb.phone.tflite_benchmark .*benchmark_model"):
        target.benchmark(tmp_path / "m.tflite", BenchSpec())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_device_against_a_real_adb_server(tmp_path: Path) -> None:
    if not shutil.which("adb"):
        pytest.skip("adb is not installed (apt-get install adb; .ci/run installs it)")
    port = _free_port()
    subprocess.run(["adb", "-P", str(port), "start-server"], check=True, capture_output=True, timeout=60)
    try:
        binary = tmp_path / "benchmark_model"
        binary.write_bytes(b"\x7fELF")
        model = tmp_path / "m.tflite"
        model.write_bytes(b"TFL3")
        target = AdbTarget("phone", AdbDeviceSpec(adb_port=port, tflite_benchmark=binary))
        with pytest.raises(TargetError, match="no Android device connected"):
            target.benchmark(model, BenchSpec())
        target = AdbTarget("phone", AdbDeviceSpec(adb_port=port, serial="emulator-5554", tflite_benchmark=binary))
        with pytest.raises(TargetError, match="no Android device connected"):
            target.describe()
    finally:
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=60, check=False)
