"""Latency statistics."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.mark.parametrize("nu", [1, 2, 3, 4, 6, 8, 10, 18, 30, 100, 1000, 2.5])
def test_student_t_quantile_matches_scipy(nu: float) -> None:
    from scipy.stats import t as student_t

    from bench.latency import student_t_quantile

    for p in (0.001, 0.025, 0.2, 0.5, 0.6, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999):
        assert student_t_quantile(p, nu) == pytest.approx(float(student_t.ppf(p, nu)), rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError):
        student_t_quantile(1.0, nu)


def test_the_mde_does_not_import_scipy() -> None:
    import subprocess
    import sys

    code = ("import sys; from bench.latency import minimum_detectable_effect as m; "
            "print(round(m([1.0, 1.03, 0.98]), 6), 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False" and float(out[0]) > 0
