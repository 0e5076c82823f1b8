"""Latency statistics."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.latency import summarize


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1000), min_size=2, max_size=200))
def test_stats_are_ordered(times: list[float]) -> None:
    s = summarize(times, threads=1)
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert s.ci95[0] <= s.p50 + 1e-9 and s.p50 - 1e-9 <= s.ci95[1]
    assert s.runs == len(times)


def test_noise_flag() -> None:
    rng = np.random.default_rng(0)
    assert not summarize(1.0 + 0.001 * rng.standard_normal(500), threads=1).noisy
    noisy = summarize(rng.exponential(1.0, 30), threads=1)
    assert noisy.noisy and "CI" in noisy.noise_reason
    assert summarize([1.0] * 50, threads=1, loadavg=3.0, cores=2).noisy
