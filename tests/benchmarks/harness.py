"""The harness speed claims use: the run's own interleaved, repeated schedule on this machine.

Each model is timed in ``repeats`` fresh agent processes (``LocalTarget.benchmark``), the
models interleaved (A B C, A B C, ...), processes merged per model; a speed-up is the ratio
of the pooled medians with a paired hierarchical-bootstrap CI (processes of one round paired).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.repeats import ratio_ci
from compress.core.report_schema import TargetResult


@dataclass(frozen=True)
class Model:
    """What the schedule needs of an artifact."""

    name: str
    path: Path
    parent: str | None = None

    @property
    def format(self) -> str:
        return "tflite" if self.path.suffix == ".tflite" else "onnx"


def interleaved(
    paths: dict[str, Path],
    inputs: list[np.ndarray] | None,
    repeats: int = 5,
    runs: int = 200,
    warmup: int = 50,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, TargetResult]:
    """Merged results per model name, timed in interleaved rounds of fresh processes."""
    from compress.runner.benchmarks import benchmark_interleaved
    from compress.core.types import BenchSpec
    from devices.local import LocalTarget

    models = [Model(name, p) for name, p in paths.items()]
    out = benchmark_interleaved(models, [("local", LocalTarget())], [BenchSpec(threads=threads, warmup=warmup, runs=runs)],
                                repeats, lambda _m: inputs, log)
    results = {key[0]: res for key, res in out.items()}
    failed = {k: r.error for k, r in results.items() if r.error}
    if failed:
        raise RuntimeError(f"benchmark failed: {failed}")
    return results


def speedup(results: dict[str, TargetResult], fast: str, slow: str) -> tuple[float, float, float]:
    """How many times faster ``fast`` ran than ``slow``: (ratio, CI low, CI high), rounds paired."""
    return ratio_ci(results[fast], results[slow], paired=True)


def p50(results: dict[str, TargetResult], name: str) -> float:
    s = results[name].latency_ms
    assert s is not None
    return s.p50


def describe(results: dict[str, TargetResult]) -> str:
    """One line per model: p50, its CI, the processes' medians and the MDE."""
    lines = []
    for name, r in results.items():
        s = r.latency_ms
        assert s is not None
        mde = "?" if s.mde_rel is None else f"{100 * s.mde_rel:.0f}%"
        meds = ", ".join(f"{m:.4g}" for m in s.process_medians or [])
        lines.append(f"  {name:<12} p50 {s.p50:.4f} ms [{s.ci95[0]:.4f}, {s.ci95[1]:.4f}] over {s.repeats} processes "
                     f"(medians {meds}), MDE {mde}{', noisy: ' + str(s.noise_reason) if s.noisy else ''}")
    return "\n".join(lines)
