"""The agent's fork server: the same figures as a process of its own, for a fraction of the start.

Side by side, interleaved (exec, fork, exec, fork, ...), ``LocalTarget.benchmark`` on the same
models with ``EDGEPACK_AGENT_FORK=0`` (``python bench/agent.py SPEC`` per benchmark) and with the
fork server (``bench/agent.py --serve``, a forked child per benchmark). Printed per model: the
wall time of one benchmark call both ways, the latency ratio (fork over exec, pooled medians,
hierarchical bootstrap CI: 1.0 means the fork changes nothing), the spread of the
per-process medians both ways (a fork that shared too much would narrow it), and the memory
figures (model's increase and peak RSS) both ways.

Asserted: the memory figures agree within 1 MB and 2 MB (the child first maps the library
pages the server holds: without that, about 1.8 MB of them counted as the model's); latency
is printed, never asserted.

Run: ``python -m pytest tests/benchmarks/test_agent_fork.py --benchmark-only -s`` (about a minute).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.repeats import merge_results, ratio_ci
from compress.core.types import BenchSpec
from tests.benchmarks.test_harness_overhead import mlp_onnx

ROUNDS = 10
SPEC = BenchSpec(threads=1, warmup=50, runs=300, batch=1)


def side_by_side(models: dict[str, Path]) -> dict[str, dict[str, Any]]:
    import devices.local as local

    target, out = local.LocalTarget(), {}
    saved = os.environ.get("EDGEPACK_AGENT_FORK")
    try:
        for name, path in models.items():
            res: dict[str, list] = {"exec": [], "fork": []}
            wall: dict[str, list[float]] = {"exec": [], "fork": []}
            for _ in range(ROUNDS):
                for mode in ("exec", "fork"):
                    os.environ["EDGEPACK_AGENT_FORK"] = "0" if mode == "exec" else "1"
                    t = time.perf_counter()
                    res[mode].append(target.benchmark(path, SPEC))
                    wall[mode].append(time.perf_counter() - t)
            merged = {m: merge_results(r) for m, r in res.items()}
            out[name] = {"ratio": ratio_ci(merged["exec"], merged["fork"], paired=True),
                         "wall": {m: float(np.median(w)) for m, w in wall.items()},
                         "p50s": {m: [r.latency_ms.p50 for r in rs] for m, rs in res.items()},
                         "memory": {m: (float(np.median([r.memory_increase_mb for r in rs])),
                                        float(np.median([r.peak_rss_mb for r in rs]))) for m, rs in res.items()}}
    finally:
        if saved is None:
            os.environ.pop("EDGEPACK_AGENT_FORK", None)
        else:
            os.environ["EDGEPACK_AGENT_FORK"] = saved
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs fork")
def test_fork_server_measures_as_a_fresh_process(benchmark: Any, tmp_path: Path) -> None:
    models = {"mlp 64x2 (microseconds)": mlp_onnx(tmp_path / "small.onnx", 64, 2, 1),
              "mlp 512x8 (about a millisecond)": mlp_onnx(tmp_path / "large.onnx", 512, 8, 8)}
    r = benchmark.pedantic(side_by_side, args=(models,), rounds=1, iterations=1)
    from bench.agent import device_facts

    print(f"\nCPU: {device_facts().get('cpu')}; {ROUNDS} interleaved rounds, {SPEC.runs} runs per process, 1 thread")
    for name, m in r.items():
        ratio, lo, hi = m["ratio"]
        spread = {k: float(np.std(v) / np.mean(v)) for k, v in m["p50s"].items()}
        print(f"  {name}: one benchmark call exec {m['wall']['exec']:.3f} s, fork {m['wall']['fork']:.3f} s; "
              f"latency fork/exec {ratio:.3f} [95% CI {lo:.3f}, {hi:.3f}]; between-process CV of p50 "
              f"exec {100 * spread['exec']:.1f}%, fork {100 * spread['fork']:.1f}%; memory increase "
              f"exec {m['memory']['exec'][0]:.2f} MB, fork {m['memory']['fork'][0]:.2f} MB; peak RSS "
              f"exec {m['memory']['exec'][1]:.1f} MB, fork {m['memory']['fork'][1]:.1f} MB")
    benchmark.extra_info.update({k: {"ratio": v["ratio"], "wall": v["wall"], "memory": v["memory"]} for k, v in r.items()})
    for m in r.values():
        assert abs(m["memory"]["exec"][0] - m["memory"]["fork"][0]) <= 1.0
        assert abs(m["memory"]["exec"][1] - m["memory"]["fork"][1]) <= 2.0
