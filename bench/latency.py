"""Latency statistics: percentiles, a bootstrap CI of the median, and a noise flag."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

How = Literal["measured", "estimated", "emulated"]


class LatencyStats(BaseModel):
    """Summary of per-run latencies in milliseconds.

    ``how`` says whether the figure was measured on the device, estimated from a
    profile, or (never a latency) emulated.
    """

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    ci95: tuple[float, float] = Field(description="bootstrap 95% confidence interval of the median")
    runs: int
    threads: int
    batch: int = 1
    how: How = "measured"
    noisy: bool = False
    noise_reason: str | None = None

    @property
    def ci_rel_width(self) -> float:
        return (self.ci95[1] - self.ci95[0]) / self.p50 if self.p50 > 0 else 0.0


def bootstrap_median_ci(times: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the median."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(times), size=(n_boot, len(times)))
    meds = np.median(times[idx], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(
    times_ms: list[float] | np.ndarray,
    threads: int,
    batch: int = 1,
    how: How = "measured",
    loadavg: float | None = None,
    cores: int | None = None,
    max_ci_rel_width: float = 0.10,
    involuntary_switches: int | None = None,
    max_switch_share: float = 0.05,
    warmup_stable: bool | None = None,
) -> LatencyStats:
    """Statistics of per-run times, flagged noisy when they cannot be trusted as they are.

    Args:
        times_ms: Every timed run, in milliseconds.
        threads: Threads the runtime used.
        batch: Items per run.
        how: How the times were obtained.
        loadavg: 1-minute load average of the machine just before the benchmark started
            (so the benchmark's own work is not counted); noisy above 80% of ``cores``.
        cores: Cores of the machine.
        max_ci_rel_width: Noisy when the 95% CI of the median is wider than this share of it.
        involuntary_switches: Times the benchmark process was pushed off a core while timed;
            noisy when more than ``max_switch_share`` of the runs.
        max_switch_share: See ``involuntary_switches``.
        warmup_stable: False when warmup hit its limit before the times settled.
    """
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    ci = bootstrap_median_ci(t)
    reasons = []
    if p50 > 0 and (ci[1] - ci[0]) / p50 > max_ci_rel_width:
        reasons.append(f"CI of the median is {100 * (ci[1] - ci[0]) / p50:.0f}% of it")
    if loadavg is not None and cores and loadavg > 0.8 * cores:
        reasons.append(f"load average {loadavg:.2f} on {cores} cores")
    if involuntary_switches is not None and involuntary_switches > max_switch_share * t.size:
        reasons.append(f"preempted {involuntary_switches} times during {t.size} timed runs")
    if warmup_stable is False:
        reasons.append("warmup hit its limit before the times settled")
    return LatencyStats(
        p50=float(p50), p90=float(p90), p99=float(p99), mean=float(t.mean()), std=float(t.std(ddof=1) if t.size > 1 else 0.0),
        min=float(t.min()), max=float(t.max()), ci95=ci, runs=int(t.size), threads=threads, batch=batch,
        how=how, noisy=bool(reasons), noise_reason="; ".join(reasons) or None,
    )
