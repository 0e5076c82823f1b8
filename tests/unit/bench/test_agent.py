"""The benchmark harness: batches, inputs, noise facts, affinity, and `compress bench`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.latency import summarize
from compress.cli import app


def linear_onnx(path: Path, batch: int | str = "N", features: int = 4, classes: int = 3) -> Path:
    """A one-MatMul classifier; ``batch`` an int for a fixed batch, a name for a dynamic one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(features * classes, dtype=np.float32).reshape(features, classes) / 10 - 0.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_noise_reasons() -> None:
    steady = [1.0 + 0.001 * (i % 3) for i in range(100)]
    assert not summarize(steady, threads=1, involuntary_switches=2, warmup_stable=True).noisy
    s = summarize(steady, threads=1, involuntary_switches=40, warmup_stable=False)
    assert s.noisy and "preempted 40 times during 100 timed runs" in s.noise_reason
    assert "warmup hit its limit" in s.noise_reason


def test_agent_honours_batch_on_a_fixed_batch_model(tmp_path: Path) -> None:
    from bench.agent import benchmark

    model = linear_onnx(tmp_path / "fixed.onnx", batch=2)
    out = benchmark({"model": str(model), "threads": 1, "warmup": 10, "max_warmup": 40, "runs": 15, "batch": 5})
    assert out["ok"] and out["batch"] == 5 and len(out["times_ms"]) == 15 and out["input_source"] == "random"
    assert 10 <= out["warmup_runs"] <= 40 and isinstance(out["warmup_stable"], bool)
    assert isinstance(out["involuntary_switches"], int) and out["cpu_wall_ratio"] > 0
    assert out["peak_rss_kb"] >= out["rss_before_kb"] > 0 and out["device"]["cores"] >= 1


def test_prepared_call_matches_run_on_a_fixed_batch_model(tmp_path: Path) -> None:
    from bench.agent import OrtSession

    session = OrtSession(str(linear_onnx(tmp_path / "fixed.onnx", batch=2)), threads=1)
    xs = [np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)]
    chunks = session.prepared(xs)()
    # Three slices of the fixed batch 2, the last padded; together the same rows as run().
    assert [c[0].shape for c in chunks] == [(2, 3)] * 3
    np.testing.assert_allclose(np.concatenate([c[0] for c in chunks])[:5], session.run(xs)[0], rtol=1e-6)


def test_agent_repeats_data_rows_up_to_the_batch(tmp_path: Path) -> None:
    from bench.agent import _load_inputs

    np.savez(tmp_path / "in.npz", x0=np.arange(3, dtype=np.float32).reshape(3, 1))
    (x,) = _load_inputs(str(tmp_path / "in.npz"), rows=7)
    assert x[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    (x,) = _load_inputs(str(tmp_path / "in.npz"), rows=2)
    assert x.shape == (2, 1)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_local_target_pins_and_records_affinity(tmp_path: Path) -> None:
    from compress.core.types import BenchSpec
    from devices.local import LocalTarget

    cpu = min(os.sched_getaffinity(0))
    model = linear_onnx(tmp_path / "m.onnx")
    res = LocalTarget().benchmark(model, BenchSpec(threads=1, warmup=10, runs=20, batch=4, cpus=(cpu,)),
                                  [np.ones((2, 4), dtype=np.float32)])
    assert res.details["affinity"] == [cpu] and res.details["cpus_requested"] == [cpu]
    assert res.batch == 4 and res.details["input_source"] == "data"
    assert res.throughput_items_s == pytest.approx(4e3 / res.latency_ms.p50)
    assert res.details["loadavg_before"] is not None and "involuntary_switches" in res.details


def test_compress_bench_cli(tmp_path: Path) -> None:
    model = linear_onnx(tmp_path / "clf.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5)
    np.savez(tmp_path / "d.npz", x=x, y=y.argmax(axis=1))
    runner = CliRunner()
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", str(model), "--data", str(tmp_path / "d.npz"), "--batch", "1", "--batch", "8",
                              "--runs", "20", "--warmup", "5", "--json", str(out), "--name", "clf"])
    assert res.exit_code == 0, res.output
    assert "| clf | local" in res.stdout and "throughput" in res.stdout
    report = json.loads(out.read_text())
    art = report["artifacts"][0]
    assert art["name"] == "clf" and art["precision"] == "fp32" and art["accuracy"] == 1.0
    assert [t["batch"] for t in art["targets"]] == [1, 8] and all(len(t["times_ms"]) == 20 * 3 and t["latency_ms"]["repeats"] == 3 for t in art["targets"])
    assert report["env"]["cores"] >= 1 and "onnxruntime" in report["env"]["versions"]
    # Two bench reports compare like two runs.
    res = runner.invoke(app, ["compare", str(out), str(out), "--fail-on", "accuracy:-0.005"])
    assert res.exit_code == 0, res.output


def test_compress_bench_rejects_bad_input(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"x")
    runner = CliRunner()
    res = runner.invoke(app, ["bench", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and ".onnx or .tflite" in res.stderr
    res = runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 2 and "not found" in res.stderr
    model = linear_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "bad.npz", z=np.zeros(3))
    res = runner.invoke(app, ["bench", str(model), "--data", str(tmp_path / "bad.npz")])
    assert res.exit_code == 2 and "needs an array 'x'" in res.stderr
