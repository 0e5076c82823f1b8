"""Quick in-process measurements of an ONNX model on this machine (rankings and sanity checks, not benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

# The int8 kernels and the same QDQ model computed in float differ by requantization
# rounding alone when nothing saturates: decisions agree on all but a few borderline samples.
MIN_KERNEL_AGREEMENT = 0.98
MIN_KERNEL_COSINE = 0.99
SLOWER_RATIO = 1.1


def _session(path: Path, optimize: bool) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if not optimize:  # QDQ stays DequantizeLinear -> float op -> QuantizeLinear: int8 rounding, float arithmetic
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _outputs(sess: Any, feeds: list[dict[str, Any]]) -> list[Any]:
    runs = [sess.run(None, f) for f in feeds]
    return [np.concatenate([r[k] for r in runs]) if np.ndim(runs[0][k]) else runs[0][k] for k in range(len(runs[0]))]


def kernel_fidelity(path: Path, feeds: list[dict[str, Any]]) -> dict[str, Any]:
    """How a quantized ONNX model's int8 kernels on this CPU agree with its QDQ arithmetic in float.

    The same file runs twice in onnxruntime: optimized (QDQ fused into int8 kernels, as
    deployed) and with graph optimizations off (each DequantizeLinear -> float operator ->
    QuantizeLinear computed in float). Any difference is the kernels' own: saturation of
    u8s8 products without VNNI, or requantization rounding.

    Returns:
        ``cosine``: mean per-sample cosine of output 0; ``agreement``: share of equal
        argmax decisions when output 0 holds several scores per sample (else None).
    """
    fused = _outputs(_session(path, True), feeds)[0]
    plain = _outputs(_session(path, False), feeds)[0]
    a = np.asarray(fused, np.float64).reshape(len(fused), -1) if np.ndim(fused) else np.atleast_2d(fused)
    b = np.asarray(plain, np.float64).reshape(len(plain), -1) if np.ndim(plain) else np.atleast_2d(plain)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
    agreement = float((a.argmax(1) == b.argmax(1)).mean()) if a.shape[1] > 1 else None
    return {"cosine": round(float(cos.mean()), 6), "agreement": None if agreement is None else round(agreement, 6),
            "samples": int(a.shape[0])}


def relative_speed(float_path: Path, int8_path: Path, feed: dict[str, Any], rounds: int = 2) -> dict[str, float]:
    """Single-thread medians of the float and the quantized model on one input, interleaved.

    A quick in-process comparison (not a benchmark): each model is timed ``rounds`` times in
    alternation and its best median kept, so load from other processes hurts both alike.
    """
    fp32, int8 = [], []
    for _ in range(rounds):
        fp32.append(measure_latency_ms(float_path, feed, runs=10, warmup=2, budget_s=0.5))
        int8.append(measure_latency_ms(int8_path, feed, runs=10, warmup=2, budget_s=0.5))
    return {"fp32_ms": round(min(fp32), 4), "int8_ms": round(min(int8), 4),
            "speedup": round(min(fp32) / min(int8), 3) if min(int8) > 0 else 0.0}


def measure_latency_ms(path: Path, feed: dict[str, np.ndarray], runs: int = 15, warmup: int = 3,
                       budget_s: float = 2.0) -> float:
    """Median single-thread latency of one input, in-process (a quick ranking, not a benchmark)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)
