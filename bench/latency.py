"""Latency statistics: percentiles, bootstrap CIs of the median, a noise flag, and the
statistics of a latency measured in several fresh processes (hierarchical bootstrap, the
minimum detectable effect)."""

from __future__ import annotations

import math

import numpy as np

from compress.core.report_schema import How, LatencyStats


# Below this, a between-process spread estimated from a handful of processes is not believed:
# two processes timing the same model on a quiet machine differ by about this much anyway.
MIN_BETWEEN_SPREAD = 0.01


def bootstrap_median_ci(times: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the median."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(times), size=(n_boot, len(times)))
    meds = np.median(times[idx], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def hierarchical_bootstrap(
    groups: list[np.ndarray],
    stat: float | str = 50.0,
    n_boot: int = 2000,
    seed: int = 0,
    process_idx: np.ndarray | None = None,
) -> np.ndarray:
    """Bootstrap replicates of a statistic of pooled runs, resampling processes, then runs within each.

    Each replicate draws ``len(groups)`` processes with replacement, then from each drawn
    process as many runs as the processes have on average (so every process weighs alike),
    with replacement, and takes the statistic of the pooled draw. Resampling at both levels
    puts the between-process variance into the interval, which a bootstrap of pooled runs
    (treating every run as independent) leaves out (Davison & Hinkley 1997, section 3.8;
    Saravanan et al. 2020, "Application of the hierarchical bootstrap to multi-level data").

    Args:
        groups: Run times of each process.
        stat: A percentile (0-100) or ``"mean"``.
        n_boot: Replicates.
        seed: Random seed.
        process_idx: ``(n_boot, len(groups))`` process draws to use instead of fresh ones; two
            paired measurements (interleaved rounds) share them.

    Returns:
        ``n_boot`` values of the statistic.
    """
    rng = np.random.default_rng(seed)
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        raise ValueError("no timed runs")
    k = len(groups)
    sizes = np.array([len(g) for g in groups])
    m = max(1, int(round(sizes.mean())))
    flat = np.concatenate(groups)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if process_idx is None:
        process_idx = rng.integers(0, k, size=(n_boot, k))
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (k * m))  # bounds memory for long runs and many processes
    for start in range(0, n_boot, chunk):
        p = process_idx[start:start + chunk]  # (c, k)
        u = rng.random((p.shape[0], k, m))
        idx = offsets[p][..., None] + (u * sizes[p][..., None]).astype(np.int64)
        sample = flat[idx].reshape(p.shape[0], k * m)
        out[start:start + p.shape[0]] = sample.mean(axis=1) if stat == "mean" else np.percentile(sample, float(stat), axis=1)
    return out


def hierarchical_ci(groups: list[np.ndarray], stat: float | str = 50.0, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of a statistic of pooled runs by :func:`hierarchical_bootstrap`."""
    lo, hi = np.percentile(hierarchical_bootstrap(groups, stat, n_boot, seed), [2.5, 97.5])
    return float(lo), float(hi)


def between_spread(process_medians: list[float] | np.ndarray) -> float | None:
    """Sample SD of the log of the process medians (a relative spread); None for fewer than two."""
    m = np.asarray(process_medians, dtype=np.float64)
    if m.size < 2 or np.any(m <= 0):
        return None
    return float(np.std(np.log(m), ddof=1))


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (modified Lentz; Press et al., Numerical Recipes, 3rd ed., section 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point: use the symmetry
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def student_t_cdf(x: float, nu: float) -> float:
    """P(T <= x) for Student's t with ``nu`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(nu / 2, 0.5, nu / (nu + x * x))
    return 1.0 - tail if x > 0 else tail


def student_t_quantile(p: float, nu: float) -> float:
    """The ``p`` quantile of Student's t with ``nu`` degrees of freedom (``scipy.stats.t.ppf``).

    Newton's method on :func:`student_t_cdf`, kept inside a bracket (bisection when a step
    leaves it), to 1e-12: here, not from scipy, because importing scipy.stats takes seconds
    and every benchmarked latency asks for its MDE.
    """
    if not 0.0 < p < 1.0 or nu <= 0:
        raise ValueError(f"need 0 < p < 1 and nu > 0 (got p={p}, nu={nu})")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, nu)
    log_norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, nu) < p:
        lo, hi = hi, 2 * hi
    x = 0.5 * (lo + hi)
    for _ in range(200):
        err = student_t_cdf(x, nu) - p
        if err == 0:
            return x
        if err < 0:
            lo = x
        else:
            hi = x
        density = math.exp(log_norm - (nu + 1) / 2 * math.log1p(x * x / nu))
        step = x - err / density if density > 0 else lo - 1.0
        new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(new - x) < 1e-13 * max(1.0, x) or hi - lo < 1e-12 * max(1.0, hi):
            return new
        x = new
    return x


def minimum_detectable_effect(process_medians: list[float] | np.ndarray, alpha: float = 0.05,
                              power: float = 0.8) -> float | None:
    """The smallest relative change in the median a comparison of two runs like this one can detect.

    Formula (Bloom 1995, "Minimum Detectable Effects: A Simple Way to Report the Statistical
    Power of Experimental Designs", Evaluation Review 19(5); the same as Cohen 1988 for two
    equal groups)::

        MDE = exp( (t[1 - alpha/2, nu] + t[power, nu]) * s * sqrt(2 / k) ) - 1

    with ``k`` processes per run, ``s`` the between-process spread (SD of the log of the
    process medians, not below ``MIN_BETWEEN_SPREAD``) and ``nu = 2 (k - 1)`` degrees of freedom
    (Student's t, because ``s`` comes from a handful of processes). The process is the unit of
    replication: runs within one process share its frequency, memory placement and neighbours,
    so they do not add independent evidence. With 3 processes the multiplier of ``s`` is
    about 3.0 (a 3% spread -> 9%), with 5 about 2.0.

    Args:
        process_medians: The median of each process.
        alpha: Two-sided significance level.
        power: Probability of detecting a change of exactly the MDE.

    Returns:
        The MDE as a share (0.08 = 8%), or None with fewer than two processes (unknown).
    """
    s = between_spread(process_medians)
    if s is None:
        return None
    k = len(process_medians)
    nu = 2 * (k - 1)
    multiplier = student_t_quantile(1 - alpha / 2, nu) + student_t_quantile(power, nu)
    return float(math.expm1(multiplier * max(s, MIN_BETWEEN_SPREAD) * math.sqrt(2 / k)))


def noise_reasons(
    runs: int,
    loadavg: float | None = None,
    cores: int | None = None,
    involuntary_switches: int | None = None,
    max_switch_share: float = 0.05,
    warmup_stable: bool | None = None,
) -> list[str]:
    """Why a measurement's environment cannot be trusted (see :func:`summarize`)."""
    reasons = []
    if loadavg is not None and cores and loadavg > 0.8 * cores:
        reasons.append(f"load average {loadavg:.2f} on {cores} cores")
    if involuntary_switches is not None and involuntary_switches > max_switch_share * runs:
        reasons.append(f"preempted {involuntary_switches} times during {runs} timed runs")
    if warmup_stable is False:
        reasons.append("warmup hit its limit before the times settled")
    return reasons


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
    """Statistics of per-run times of one process, flagged noisy when they cannot be trusted as they are.

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
    reasons += noise_reasons(int(t.size), loadavg, cores, involuntary_switches, max_switch_share, warmup_stable)
    return LatencyStats(
        p50=float(p50), p90=float(p90), p99=float(p99), mean=float(t.mean()), std=float(t.std(ddof=1) if t.size > 1 else 0.0),
        min=float(t.min()), max=float(t.max()), ci95=ci, runs=int(t.size), threads=threads, batch=batch,
        how=how, noisy=bool(reasons), noise_reason="; ".join(reasons) or None,
        process_medians=[float(p50)], process_runs=[int(t.size)],
    )


def summarize_processes(
    groups: list[list[float] | np.ndarray],
    threads: int,
    batch: int = 1,
    how: How = "measured",
    reasons: list[str] | None = None,
) -> LatencyStats:
    """Statistics of a latency measured in several fresh processes.

    The headline p50 (and p90, p99, mean) is that of the pooled runs; its CI is a hierarchical
    bootstrap (processes, then runs within each), so the variance between processes, usually
    most of it, is in it; ``mde_rel`` says what change a comparison could tell from noise. A
    wide CI is not a noise flag here: it is what the CI and the MDE already report. Noise
    flags are the environment's (``reasons``: load, preemption, warmup, a failed process).

    Args:
        groups: Run times of each process, in the order the processes ran.
        threads: Threads the runtime used.
        batch: Items per run.
        how: How the times were obtained.
        reasons: Why the environment cannot be trusted (see :func:`noise_reasons`).
    """
    arrays = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not arrays:
        raise ValueError("no timed runs")
    t = np.concatenate(arrays)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    medians = [float(np.median(a)) for a in arrays]
    ci = hierarchical_ci(arrays) if len(arrays) > 1 else bootstrap_median_ci(t)
    reasons = list(reasons or [])
    return LatencyStats(
        p50=float(p50), p90=float(p90), p99=float(p99), mean=float(t.mean()), std=float(t.std(ddof=1) if t.size > 1 else 0.0),
        min=float(t.min()), max=float(t.max()), ci95=ci, runs=int(t.size), threads=threads, batch=batch, how=how,
        noisy=bool(reasons), noise_reason="; ".join(reasons) or None, repeats=len(arrays), process_medians=medians,
        process_runs=[int(a.size) for a in arrays], between_spread=between_spread(medians),
        mde_rel=minimum_detectable_effect(medians),
    )


def process_groups(stats: LatencyStats | None, times_ms: list[float] | None) -> list[np.ndarray] | None:
    """The run times of each process of a result (one group for a single-process or old report).

    None when the result kept no per-run times; then a caller may fall back on the process
    medians alone.
    """
    if not times_ms:
        return None
    t = np.asarray(times_ms, dtype=np.float64)
    sizes = stats.process_runs if stats is not None else None
    if not sizes or sum(sizes) != t.size:
        return [t]
    return np.split(t, np.cumsum(sizes)[:-1])


def with_yardstick(stats: LatencyStats, groups: list[np.ndarray] | None) -> LatencyStats:
    """``stats`` with the artifact/yardstick ratio of each process's blocks (see :mod:`bench.yardstick`).

    The ratio's CI is a hierarchical bootstrap (processes, then blocks), its MDE Bloom's
    (:func:`minimum_detectable_effect`) on the processes' ratios: the machine's state, which
    moves both the artifact and the yardstick, is out of it.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in (groups or []) if len(g)]
    if not groups:
        return stats
    pooled = np.concatenate(groups)
    per_process = [float(np.median(g)) for g in groups]
    ci = hierarchical_ci(groups) if len(groups) > 1 else bootstrap_median_ci(pooled)
    return stats.model_copy(update={
        "yardstick_ratio": float(np.median(pooled)), "yardstick_ci95": ci, "yardstick_process_ratios": per_process,
        "yardstick_mde": minimum_detectable_effect(per_process)})
