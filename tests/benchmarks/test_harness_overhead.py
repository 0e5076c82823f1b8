"""The benchmark harness adds nothing measurable to what it times.

Claim: the harness's median is within 3% of a bare ``time.perf_counter_ns()`` loop around
``InferenceSession.run`` on the same session. Two checks, each measured side by side and
interleaved (A, B, A, B...), medians compared:

1. In one process, on the very same session: the agent's warmup and timed loop
   (``bench.agent.time_runs`` on ``session.prepared``) against the bare loop, for a model
   of a few microseconds (where per-call overhead would show most) and one of about a
   millisecond.
2. End to end: ``LocalTarget.benchmark`` (a fresh agent process per call, warmup until
   stable) against a fresh process running only the bare loop, on the millisecond model.

Run: ``python -m pytest tests/benchmarks/test_harness_overhead.py --benchmark-only -s``
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

TOLERANCE = 0.03


def mlp_onnx(path: Path, width: int, layers: int, batch: int) -> Path:
    """A MatMul+Relu stack with a fixed batch, written with onnx.helper (no torch needed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def bare_loop(sess: object, feed: dict, runs: int) -> np.ndarray:
    """What anyone would write: time each ``run`` call, nothing else."""
    times = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        t = time.perf_counter_ns()
        sess.run(None, feed)  # type: ignore[attr-defined]
        times[i] = time.perf_counter_ns() - t
    return times


def in_process_ratio(model: Path, runs: int, rounds: int, blocks: bool = False) -> tuple[float, float, float]:
    """(harness median, bare median, ratio) on one session, interleaved blocks.

    ``blocks``: the harness times as a recipe run does by default, in blocks with the machine
    yardstick timed between them (``bench.agent.time_blocks``).
    """
    sys.path.insert(0, str(ROOT))
    from bench import yardstick
    from bench.agent import OrtSession, _block_size, _yardstick, time_blocks, time_runs, warm_up

    session = OrtSession(str(model), threads=1)
    xs = [np.random.default_rng(1).standard_normal(session.inputs[0]["shape"]).astype(np.float32)]
    call = session.prepared(xs)
    feed = {session.inputs[0]["name"]: xs[0]}
    warm_up(call, 50, 2000)
    if blocks:
        yard, block = _yardstick(str(yardstick.path())), _block_size(call)

        def timed(c: object, n: int) -> np.ndarray:
            return time_blocks(c, n, yard, block)[0]
    else:
        timed = time_runs
    harness, bare = [], []
    for r in range(rounds):
        # Alternate which goes first, so neither always runs on a cache the other warmed.
        if r % 2 == 0:
            harness.append(timed(call, runs))
            bare.append(bare_loop(session._sess, feed, runs))
        else:
            bare.append(bare_loop(session._sess, feed, runs))
            harness.append(timed(call, runs))
    # Each round is a matched pair; the median of the paired ratios shrugs off busy spells.
    ratio = float(np.median([np.median(x) / np.median(y) for x, y in zip(harness, bare)]))
    h, b = float(np.median(np.concatenate(harness))), float(np.median(np.concatenate(bare)))
    return h / 1e6, b / 1e6, ratio


BARE_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np, onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    feed = {i.name: np.random.default_rng(1).standard_normal(i.shape).astype(np.float32)}
    for _ in range(int(sys.argv[3])):
        s.run(None, feed)
    t = []
    for _ in range(int(sys.argv[2])):
        a = time.perf_counter_ns(); s.run(None, feed); t.append(time.perf_counter_ns() - a)
    print(float(np.median(t)) / 1e6)
    """
)


def end_to_end_ratio(model: Path, runs: int, rounds: int) -> tuple[float, float, float]:
    """(harness median, bare median, ratio): fresh processes both sides, interleaved rounds."""
    sys.path.insert(0, str(ROOT))
    from compress.core.types import BenchSpec
    from devices.local import LocalTarget

    target = LocalTarget()
    harness, bare = [], []
    for _ in range(rounds):
        # One fresh process each side per round, so a busy spell hits both alike.
        res = target.benchmark(model, BenchSpec(threads=1, warmup=50, runs=runs, batch=64))
        harness.append(res.latency_ms.p50)
        out = subprocess.run([sys.executable, "-c", BARE_SCRIPT, str(model), str(runs), "50"], capture_output=True,
                             text=True, check=True)
        bare.append(float(out.stdout.strip()))
    h, b = float(np.median(harness)), float(np.median(bare))
    return h, b, float(np.median(np.asarray(harness) / np.asarray(bare)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("overhead")
    return {
        "micro": mlp_onnx(tmp / "micro.onnx", width=32, layers=2, batch=1),  # a few microseconds
        "milli": mlp_onnx(tmp / "milli.onnx", width=512, layers=4, batch=64),  # about a millisecond
    }


@pytest.mark.parametrize("blocks", [False, True], ids=["plain", "yardstick-blocks"])
@pytest.mark.parametrize("size", ["micro", "milli"])
def test_timed_loop_overhead_same_session(benchmark: object, models: dict[str, Path], size: str, blocks: bool) -> None:
    runs = 1000 if size == "micro" else 60
    h, b, ratio = benchmark.pedantic(in_process_ratio, args=(models[size], runs, 31, blocks), rounds=1, iterations=1)  # type: ignore[attr-defined]
    print(f"\n[{size}{', yardstick blocks' if blocks else ''}] same session, 31 interleaved rounds: harness median {h * 1e3:.2f} us, bare loop "
          f"{b * 1e3:.2f} us, median paired ratio {ratio:.4f}")
    benchmark.extra_info.update({"harness_ms": h, "bare_ms": b, "ratio": ratio})  # type: ignore[attr-defined]
    assert abs(ratio - 1) <= TOLERANCE


def test_end_to_end_overhead_fresh_processes(benchmark: object, models: dict[str, Path]) -> None:
    h, b, ratio = benchmark.pedantic(end_to_end_ratio, args=(models["milli"], 200, 9), rounds=1, iterations=1)  # type: ignore[attr-defined]
    print(f"\n[milli] fresh processes, 9 interleaved rounds: LocalTarget p50 {h:.4f} ms, bare loop {b:.4f} ms, "
          f"median paired ratio {ratio:.4f}")
    benchmark.extra_info.update({"harness_ms": h, "bare_ms": b, "ratio": ratio})  # type: ignore[attr-defined]
    assert abs(ratio - 1) <= TOLERANCE
