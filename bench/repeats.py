"""One latency from several fresh processes: merging their results, and ratios with honest CIs.

Every measured latency comes from ``repeats`` processes, each with its own warmup and runs
(``Target.benchmark`` is one process). :func:`merge_results` pools them into one result whose
statistics carry the variance between processes (see :func:`bench.latency.summarize_processes`);
:func:`ratio_ci` gives the ratio of two such latencies with a hierarchical-bootstrap CI.
"""

from __future__ import annotations

import numpy as np

from bench.latency import hierarchical_bootstrap, noise_reasons, process_groups, summarize_processes, with_yardstick
from compress.core.report_schema import TargetResult
from bench.yardstick import block_ratios

# Per-process facts kept in the merged result's ``details["processes"]``.
_PROCESS_FACTS = ("loadavg_before", "involuntary_switches", "warmup_runs", "warmup_stable", "cpu_wall_ratio")


def groups_of(t: TargetResult) -> list[np.ndarray]:
    """Run times of each process of a result; its process medians (or p50) when it kept no runs.

    Raises:
        ValueError: the result has no latency.
    """
    s = t.latency_ms
    if s is None:
        raise ValueError(f"{t.target}: no latency to compare")
    groups = process_groups(s, t.times_ms)
    if groups is not None:
        return groups
    return [np.array([m]) for m in (s.process_medians or [s.p50])]


def _median(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def merge_results(results: list[TargetResult]) -> TargetResult:
    """One result from the results of several fresh processes timing the same artifact and setting.

    Runs are pooled (``times_ms`` in process order, ``latency_ms.process_runs`` says where
    each process's share ends); the statistics come from
    :func:`bench.latency.summarize_processes`. Load time and memory are the median over
    processes, peak memory the largest. A result that is not measured (estimated, emulated)
    or a single one is returned as it is.

    The noise flag is the environment's over all processes: the load average before the least
    loaded process (every process's reading also counts the previous benchmark processes, so
    the smallest is the fairest), preemption over all timed runs, warmup that did not settle
    in most processes, and any process that failed (its error is kept in
    ``details["failed_processes"]``). When every process failed, the result is the first
    failure with all errors listed.

    Args:
        results: The processes' results, in the order they ran.

    Returns:
        The merged result.
    """
    if not results:
        raise ValueError("no results to merge")
    ok = [r for r in results if r.error is None and r.latency_ms is not None]
    failed = [r.error for r in results if r.error is not None]
    if not ok:
        first = results[0].model_copy(deep=True)
        if failed:
            first.details["failed_processes"] = failed
        return first
    if len(results) == 1 or ok[0].how != "measured":
        return ok[0]
    groups = [g for r in ok for g in [np.concatenate(groups_of(r))]]
    runs = sum(len(g) for g in groups)
    loads = [(r.details.get("loadavg_before"), r) for r in ok if r.details.get("loadavg_before") is not None]
    reasons: list[str] = []
    if loads:
        least, least_r = min(loads, key=lambda x: x[0])
        s = least_r.latency_ms
        if s is not None and s.noise_reason and "load average" in s.noise_reason:
            reasons.append(f"load average {least:.2f} before the least loaded of {len(ok)} processes")
    switches = [r.details.get("involuntary_switches") for r in ok]
    if all(x is not None for x in switches):
        reasons += noise_reasons(runs, involuntary_switches=int(sum(switches)))  # type: ignore[arg-type]
    unsettled = sum(1 for r in ok if r.details.get("warmup_stable") is False)
    if unsettled * 2 > len(ok):
        reasons.append(f"warmup hit its limit before the times settled in {unsettled} of {len(ok)} processes")
    if failed:
        reasons.append(f"{len(failed)} of {len(results)} processes failed: {failed[0]}")
    first = ok[0]
    batch = first.latency_ms.batch if first.latency_ms else first.batch
    stats = summarize_processes(groups, threads=first.threads, batch=batch, how="measured", reasons=reasons)
    details = dict(first.details)
    yard = _merged_yardstick(ok)
    if yard is not None:
        details["yardstick"] = yard
        stats = with_yardstick(stats, block_ratios(details))
    else:
        details.pop("yardstick", None)
    details["processes"] = [{"p50": r.latency_ms.p50 if r.latency_ms else None, "runs": r.latency_ms.runs if r.latency_ms else 0,
                             "load_ms": r.load_ms, "noise_reason": r.latency_ms.noise_reason if r.latency_ms else None,
                             **{k: r.details.get(k) for k in _PROCESS_FACTS}} for r in ok]
    if all(x is not None for x in switches):
        details["involuntary_switches"] = int(sum(switches))  # type: ignore[arg-type]
    details["warmup_runs"] = sum(int(r.details.get("warmup_runs") or 0) for r in ok) or None
    details["warmup_stable"] = unsettled == 0
    details["loadavg_before"] = min((x for x, _ in loads), default=None)
    if failed:
        details["failed_processes"] = failed
    peaks = [r.peak_rss_mb for r in ok if r.peak_rss_mb is not None]
    pooled = [float(x) for r in ok for x in (r.times_ms or [])]
    return TargetResult(
        target=first.target, how="measured", device=first.device, threads=first.threads, batch=batch,
        latency_ms=stats, times_ms=pooled if all(r.times_ms for r in ok) else None,
        throughput_items_s=1e3 * batch / stats.p50 if stats.p50 > 0 else None,
        load_ms=_median([r.load_ms for r in ok]), memory_increase_mb=_median([r.memory_increase_mb for r in ok]),
        peak_rss_mb=max(peaks) if peaks else None, runtime=first.runtime,
        parity=next((r.parity for r in ok if r.parity is not None), None), details=details,
    )


def _merged_yardstick(results: list[TargetResult]) -> dict | None:
    """The yardstick blocks of every process, when all of them timed the same yardstick."""
    ys = [r.details.get("yardstick") for r in results]
    if not ys or any(not isinstance(y, dict) for y in ys) or len({y.get("version") for y in ys}) != 1:
        return None
    return {"version": ys[0].get("version"), "block_runs": ys[0].get("block_runs"),
            "processes": [p for y in ys for p in (y.get("processes") or [])]}


def ratio_ci(
    a: TargetResult, b: TargetResult, paired: bool = False, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The ratio of medians ``b / a`` and its 95% CI, by hierarchical bootstrap of both.

    Each replicate resamples the processes of ``a`` and of ``b`` (then runs within each) and
    divides the pooled medians, so the between-process variance of both sides is in the
    interval. A single-process (or old) result has one group: its interval then holds only
    the within-process variance, which understates the truth; callers judge such a ratio
    with that in mind.

    Args:
        a: The reference (the denominator).
        b: The other result (the numerator): ratio > 1 means ``b`` is slower.
        paired: Processes of ``a`` and ``b`` ran in the same interleaved rounds (process ``i``
            of each side together): resample rounds jointly, so a drift shared by the round
            cancels. Falls back to independent resampling when the process counts differ.
        n_boot: Bootstrap replicates.
        seed: Random seed.

    Returns:
        (ratio of the headline p50s, CI low, CI high).
    """
    ga, gb = groups_of(a), groups_of(b)
    assert a.latency_ms is not None and b.latency_ms is not None  # groups_of raised otherwise
    ratio = b.latency_ms.p50 / a.latency_ms.p50
    rng = np.random.default_rng(seed)
    idx_a = rng.integers(0, len(ga), size=(n_boot, len(ga)))
    idx_b = idx_a if paired and len(ga) == len(gb) else rng.integers(0, len(gb), size=(n_boot, len(gb)))
    boot_a = hierarchical_bootstrap(ga, 50.0, n_boot, seed + 1, process_idx=idx_a)
    boot_b = hierarchical_bootstrap(gb, 50.0, n_boot, seed + 2, process_idx=idx_b)
    lo, hi = np.percentile(boot_b / boot_a, [2.5, 97.5])
    return float(ratio), float(lo), float(hi)


def yardstick_ratio_ci(a: TargetResult, b: TargetResult, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float, float] | None:
    """B/A of the artifact/yardstick ratios and its 95% CI (hierarchical bootstrap of both runs' blocks).

    None unless both results timed the same yardstick version (see :mod:`bench.yardstick`).
    """
    from bench.yardstick import version_of

    if version_of(a.details) is None or version_of(a.details) != version_of(b.details):
        return None
    ga, gb = block_ratios(a.details), block_ratios(b.details)
    if not ga or not gb:
        return None
    ratio = float(np.median(np.concatenate(gb)) / np.median(np.concatenate(ga)))
    boot_a = hierarchical_bootstrap(ga, 50.0, n_boot, seed + 1)
    boot_b = hierarchical_bootstrap(gb, 50.0, n_boot, seed + 2)
    lo, hi = np.percentile(boot_b / boot_a, [2.5, 97.5])
    return ratio, float(lo), float(hi)
