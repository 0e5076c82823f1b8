"""Compare two or more reports: deltas, whether a latency change is real, and CI gates.

Artifacts are matched by name; timing results within an artifact by (target, threads,
batch). Most of the variance of a latency lies *between* processes (CPU frequency and boost
state, memory placement, cache alignment, neighbours), so runs within one process are not
independent evidence: a Mann-Whitney test on them gave p=2e-26 for a +22% difference that a
rerun erased. The median latency is therefore judged with the variance between processes
(each latency comes from ``bench.repeats`` fresh processes), and a change is *real* only when

1. the 95% CI of the ratio B/A, by hierarchical bootstrap (resampling the processes of both
   runs, then runs within each: :func:`bench.repeats.ratio_ci`), excludes 1, and
2. the change is at least the larger of the two runs' minimum detectable effects
   (``LatencyStats.mde_rel``) and at least ``min_effect``.

A change of at least ``min_effect`` past the CI that is not clear of the noise is *unclear*:

- below the MDE (the CI of a handful of processes is too narrow to trust alone);
- any size when either run was flagged noisy (busy machine, preemption): a neighbour that
  starts between two runs slows every process of one of them alike, which no statistic of
  the runs can tell from a regression (+60% between two runs of the same recipe was seen
  at a load of 4 on 2 cores);
- below ``single_process_min_effect`` (50%) when either report comes from a single process
  (reports from before repeated processes: MDE unknown, a CI holding only within-process
  variance).

Unclear is never a gate failure unless ``strict``. Mann-Whitney on
the pooled runs is still shown (``p_value``), for information only. Tail statistics (p90,
p99, mean) are shown and can be gated but are not judged.

Gates (``latency_p50:+5%``, ``accuracy:-0.005``, ``size:+10%``) fail when a compared
report moves a metric past the threshold in the named direction; a latency gate fails only
on a change clear of the noise as above (the gate's threshold replaces ``min_effect``); what
it let pass for noise, or as unclear, is listed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from bench.repeats import ratio_ci, yardstick_ratio_ci
from compress.core.report_schema import ArtifactReport, Report, TargetResult, load_report

# Latency statistics compared per timing setting: metric name -> percentile (or "mean").
LATENCY_STATS: dict[str, float | str] = {"latency_p50": 50.0, "latency_p90": 90.0, "latency_p99": 99.0,
                                          "latency_mean": "mean"}
TIMING_METRICS = (*LATENCY_STATS, "throughput", "memory", "load_time")
HIGHER_IS_BETTER = {"accuracy", "throughput", "macro_f1", "roc_auc", "agreement", "cosine_mean", "cosine_min", "mrr"}


class MetricDelta(BaseModel):
    """One metric of one artifact (and timing setting) in report A and report B."""

    metric: str
    unit: str = ""
    a: float | None
    b: float | None
    delta: float | None = Field(None, description="b - a")
    rel: float | None = Field(None, description="(b - a) / |a|")
    tested: bool = Field(False, description="whether the change was judged against the noise")
    significant: bool | None = Field(None, description="the 95% CI of the ratio B/A excludes 1 (timing metrics)")
    beyond_noise: bool | None = Field(None, description="significant and at least both runs' MDE (at least "
                                      "single_process_min_effect for single-process reports), neither run noisy")
    real: bool | None = Field(None, description="beyond the noise and at least min_effect (timing metrics)")
    unclear: bool = Field(False, description="past the tests, but a run was noisy or its MDE unknown")
    ratio: float | None = Field(None, description="B/A of the median latency, or of the yardstick ratio when judged by it")
    judged_by: Literal["median", "yardstick"] | None = Field(
        None, description="median: the raw median latencies; yardstick: each run's latency over the machine "
                          "yardstick timed beside it in the same processes (bench.yardstick)")
    raw_ratio: float | None = Field(None, description="B/A of the raw median latencies (shown beside a yardstick judgement)")
    ratio_ci: tuple[float, float] | None = Field(None, description="hierarchical-bootstrap 95% CI of the ratio")
    mde: float | None = Field(None, description="the larger minimum detectable effect of the two runs (None: unknown)")
    repeats: tuple[int, int] | None = Field(None, description="processes behind A's and B's latency")
    p_value: float | None = Field(None, description="Mann-Whitney U on pooled runs: information only")
    ci_a: tuple[float, float] | None = None
    ci_b: tuple[float, float] | None = None
    noisy: bool = False
    verdict: str = ""


class ArtifactComparison(BaseModel):
    artifact: str
    setting: str | None = Field(None, description="target, threads, batch of timing metrics; None for artifact metrics")
    metrics: list[MetricDelta]


class PairComparison(BaseModel):
    """Report ``b`` against the first report ``a``."""

    a: str
    b: str
    rows: list[ArtifactComparison]
    only_in_a: list[str] = Field(default_factory=list)
    only_in_b: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class GateResult(BaseModel):
    gate: str
    passed: bool
    failures: list[str] = Field(default_factory=list)
    let_pass: list[str] = Field(default_factory=list, description="past the threshold but not clear of the noise")
    checked: int = 0


class Comparison(BaseModel):
    """The whole answer of ``compress compare``."""

    reports: list[str]
    alpha: float = Field(description="significance level of the Mann-Whitney test shown for information")
    min_effect: float
    single_process_min_effect: float
    strict: bool = Field(False, description="unclear latency changes past a gate fail it")
    pairs: list[PairComparison]
    gates: list[GateResult] = Field(default_factory=list)
    passed: bool = True


@dataclass(frozen=True)
class Gate:
    """``metric:+5%`` fails on a rise of more than 5%; ``accuracy:-0.005`` on a drop of more than 0.005."""

    text: str
    metric: str
    direction: Literal[1, -1]
    threshold: float
    relative: bool

    def exceeded(self, d: MetricDelta) -> bool:
        change = d.rel if self.relative else d.delta
        if self.relative and d.tested and d.ratio is not None:
            change = d.ratio - 1.0  # the judged ratio (the yardstick's when both runs have it)
        if change is None:
            return False
        return change * self.direction > self.threshold


_GATE_RE = re.compile(r"^\s*([A-Za-z_][\w@.]*)\s*:\s*([+-])\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


def parse_gate(text: str) -> Gate:
    """Parse ``NAME:+N%`` / ``NAME:-N`` (sign = the direction that fails)."""
    from compress.core.errors import InputFileError

    m = _GATE_RE.match(text)
    if not m:
        raise InputFileError(
            f"--fail-on {text!r}: expected METRIC:+N% or METRIC:-N (the sign is the direction that fails), "
            "e.g. latency_p50:+5% or accuracy:-0.005"
        )
    name, sign, value, pct = m.groups()
    threshold = float(value) / (100.0 if pct else 1.0)
    return Gate(text=text.strip(), metric=name, direction=1 if sign == "+" else -1, threshold=threshold, relative=bool(pct))


# --------------------------------------------------------------------------- statistics


TAIL_STATS = ("latency_p90", "latency_p99", "latency_mean")


def bootstrap_ci(times: np.ndarray, stat: float | str, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of a percentile (0-100) or of the mean."""
    rng = np.random.default_rng(seed)
    sample = times[rng.integers(0, len(times), size=(n_boot, len(times)))]
    vals = sample.mean(axis=1) if stat == "mean" else np.percentile(sample, float(stat), axis=1)
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value of two samples of run times."""
    from scipy.stats import mannwhitneyu

    if np.array_equal(np.unique(a), np.unique(b)) and len(np.unique(a)) == 1:
        return 1.0  # identical constant samples: scipy would warn and return nan
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def _stat_value(t: TargetResult, metric: str) -> float | None:
    s = t.latency_ms
    if metric in LATENCY_STATS:
        if s is None:
            return None
        return {"latency_p50": s.p50, "latency_p90": s.p90, "latency_p99": s.p99, "latency_mean": s.mean}[metric]
    if metric == "throughput":
        return t.throughput_items_s
    if metric == "memory":
        return t.memory_increase_mb
    if metric == "load_time":
        return t.load_ms
    return None


def _ci(t: TargetResult, metric: str, times: np.ndarray | None) -> tuple[float, float] | None:
    stat = LATENCY_STATS.get("latency_p50" if metric == "throughput" else metric)
    if stat is None:
        return None
    if stat == 50.0 and t.latency_ms is not None and t.latency_ms.ci95:
        ci = t.latency_ms.ci95
        if metric == "throughput":  # items/s = batch * 1000 / p50: the interval flips
            return (1e3 * t.batch / ci[1], 1e3 * t.batch / ci[0]) if ci[0] > 0 else None
        return (float(ci[0]), float(ci[1]))
    if times is None:
        return None
    return bootstrap_ci(times, stat)


def _rel(a: float | None, b: float | None) -> tuple[float | None, float | None]:
    if a is None or b is None:
        return None, None
    return b - a, ((b - a) / abs(a) if a != 0 else (0.0 if b == a else math.copysign(math.inf, b - a)))


def _timing_delta(
    metric: str, ta: TargetResult, tb: TargetResult, alpha: float, min_effect: float, single_process_min_effect: float
) -> MetricDelta:
    a, b = _stat_value(ta, metric), _stat_value(tb, metric)
    delta, rel = _rel(a, b)
    unit = {"throughput": "items/s", "memory": "MB", "load_time": "ms"}.get(metric, "ms")
    d = MetricDelta(metric=metric, unit=unit, a=a, b=b, delta=delta, rel=rel)
    d.noisy = bool((ta.latency_ms and ta.latency_ms.noisy) or (tb.latency_ms and tb.latency_ms.noisy))
    if a is None or b is None:
        d.verdict = "missing"
        return d
    if metric in ("memory", "load_time"):
        # One figure per process (a median over processes): nothing to test it against.
        d.verdict = _direction_word(metric, delta) + " (one figure per process, not tested)"
        return d
    xa = np.asarray(ta.times_ms, dtype=float) if ta.times_ms else None
    xb = np.asarray(tb.times_ms, dtype=float) if tb.times_ms else None
    d.ci_a, d.ci_b = _ci(ta, metric, xa), _ci(tb, metric, xb)
    if xa is not None and xb is not None and len(xa) > 1 and len(xb) > 1:
        d.p_value = mann_whitney_p(xa, xb)
    if metric in TAIL_STATS:
        # Tails and the mean move between two processes timing the same model far more than
        # the median (the quickstart's 11 us model run twice: p90 -29%, mean -42%, median
        # unchanged; one 1 ms stall in 200 runs moves its mean by 45%). Shown, and gated if
        # asked, but not judged real or noise.
        d.verdict = _direction_word(metric, delta) + " (tail statistic: not judged, see the median)"
        return d
    if ta.how != "measured" or tb.how != "measured":
        d.verdict = _direction_word(metric, delta) + f" ({ta.how if ta.how != 'measured' else tb.how}: not tested)"
        return d
    sa, sb = ta.latency_ms, tb.latency_ms
    if sa is None or sb is None:
        d.verdict = _direction_word(metric, delta) + " (no latency statistics: not tested)"
        return d
    d.repeats = (sa.repeats, sb.repeats)
    mde_known = sa.mde_rel is not None and sb.mde_rel is not None
    d.mde = max(sa.mde_rel, sb.mde_rel) if mde_known else None  # type: ignore[type-var]
    yard = yardstick_ratio_ci(ta, tb)
    if yard is not None:
        # Both runs timed the same yardstick beside the artifact: judge the artifact's time
        # relative to it, which the machine's state (a neighbour, a slower phase) moves alike.
        d.judged_by, d.raw_ratio = "yardstick", sb.p50 / sa.p50
        ratio, lo, hi = yard
        mde_known = sa.yardstick_mde is not None and sb.yardstick_mde is not None
        d.mde = max(sa.yardstick_mde, sb.yardstick_mde) if mde_known else None  # type: ignore[type-var]
    elif xa is None or xb is None:
        if not (sa.ci95 and sb.ci95):
            d.verdict = _direction_word(metric, delta) + " (no per-run times or CI: not tested)"
            return d
        # No runs kept (a board's summary): the CIs of the two medians must not overlap.
        lo, hi = sb.ci95[0] / sa.ci95[1], sb.ci95[1] / sa.ci95[0]
        ratio = sb.p50 / sa.p50
    else:
        ratio, lo, hi = ratio_ci(ta, tb)
    d.judged_by = d.judged_by or "median"
    # Throughput is batch * 1000 / p50: its ratio is the inverse of the latency's, and it is
    # judged by the latency's change so that both get the same verdict.
    d.ratio, d.ratio_ci = (1 / ratio, (1 / hi, 1 / lo)) if metric == "throughput" else (ratio, (lo, hi))
    d.tested = True
    d.significant = lo > 1.0 or hi < 1.0
    size = abs(ratio - 1.0)
    d.beyond_noise = bool(d.significant and not d.noisy and size >= (d.mde or 0.0)
                          and (mde_known or size >= single_process_min_effect))
    # Past the CI but not beyond the noise: the change shows, but the CI of a handful of
    # processes is too narrow to trust on its own (that is what the MDE is for).
    d.unclear = bool(d.significant and not d.beyond_noise and size >= min_effect)
    d.real = d.beyond_noise and size >= min_effect
    # The direction of the judged ratio (a yardstick judgement can disagree with the raw medians).
    word = _direction_word(metric, d.ratio - 1.0 if d.judged_by == "yardstick" else delta)
    detects = f"these runs detect changes above {100 * d.mde:.0f}%" if d.mde is not None else "MDE unknown"
    if d.judged_by == "yardstick":
        detects += ", relative to the machine yardstick"
    if d.real:
        d.verdict = word + (" (relative to the machine yardstick)" if d.judged_by == "yardstick" else "")
    elif d.unclear:
        d.verdict = f"unclear: {word} by {100 * size:.0f}%, but {_why_unclear(d, size, single_process_min_effect)}"
    elif not d.significant:
        d.verdict = f"no real change (within noise; {detects})"
    else:
        d.verdict = f"no real change (below {100 * min_effect:g}%)"
    return d


def _why_unclear(d: MetricDelta, size: float, single_process_min_effect: float) -> str:
    if d.noisy:
        return "a run was flagged noisy (see its noise reason): rerun on a quiet machine"
    if d.mde is not None and size < d.mde:
        return f"these runs can only detect changes above {100 * d.mde:.0f}%"
    return (f"a single-process run cannot tell this from noise (MDE unknown); real only above "
            f"{100 * single_process_min_effect:g}%")


def _latency_change(d: MetricDelta) -> float:
    """Size of the median latency's change behind a timing delta (throughput: the inverse ratio)."""
    if d.ratio is None:
        return abs(d.rel or 0.0)
    return abs((1 / d.ratio if d.metric == "throughput" else d.ratio) - 1.0)


def _direction_word(metric: str, delta: float | None) -> str:
    if not delta:
        return "same"
    if metric in LATENCY_STATS or metric == "load_time":
        return "slower" if delta > 0 else "faster"
    if metric in ("size", "zipped_size", "memory"):
        return "larger" if delta > 0 else "smaller"
    better = delta > 0 if metric in HIGHER_IS_BETTER else None
    word = "higher" if delta > 0 else "lower"
    return word if better is None else f"{word} ({'better' if better else 'worse'})"


def _artifact_deltas(a: ArtifactReport, b: ArtifactReport) -> list[MetricDelta]:
    out = []
    pairs: list[tuple[str, str, Any, Any]] = [
        ("accuracy", "", a.accuracy, b.accuracy),
        ("size", "bytes", a.size_bytes, b.size_bytes),
        ("zipped_size", "bytes", a.zipped_bytes, b.zipped_bytes),
    ]
    for k, v in a.metrics.items():
        if k != "accuracy" and isinstance(v, (int, float)) and not isinstance(v, bool):
            w = b.metrics.get(k)
            pairs.append((k, "", v, w if isinstance(w, (int, float)) and not isinstance(w, bool) else None))
    for name, unit, x, y in pairs:
        if x is None and y is None:
            continue
        delta, rel = _rel(None if x is None else float(x), None if y is None else float(y))
        d = MetricDelta(metric=name, unit=unit, a=x, b=y, delta=delta, rel=rel)
        d.verdict = "missing" if delta is None else _direction_word(name, delta)
        out.append(d)
    return out


def setting_of(t: TargetResult) -> str:
    return f"{t.target}, {t.threads} thread{'s' if t.threads != 1 else ''}, batch {t.batch}"


def compare_pair(
    ra: Report, rb: Report, label_a: str, label_b: str, alpha: float, min_effect: float, single_process_min_effect: float
) -> PairComparison:
    """Every matched artifact and timing setting of ``rb`` against ``ra``."""
    pair = PairComparison(a=label_a, b=label_b, rows=[])
    names_b = {x.name for x in rb.artifacts}
    pair.only_in_a = [x.name for x in ra.artifacts if x.name not in names_b]
    pair.only_in_b = [x.name for x in rb.artifacts if ra.artifact(x.name) is None]
    for r, label in ((ra, label_a), (rb, label_b)):
        if r.status != "ok":
            pair.notes.append(f"{label} is a {r.status} run" + (f": {r.error}" if r.error else ""))
    if ra.recipe.get("name") != rb.recipe.get("name"):
        pair.notes.append(f"different recipes: {ra.recipe.get('name')} and {rb.recipe.get('name')}")
    ha, hb = ra.env.get("cpu"), rb.env.get("cpu")
    if ha and hb and (ha != hb or ra.env.get("cores") != rb.env.get("cores")):
        pair.notes.append(f"different hosts: {ha} ({ra.env.get('cores')} cores) and {hb} ({rb.env.get('cores')} cores)")
    for art_a in ra.artifacts:
        art_b = rb.artifact(art_a.name)
        if art_b is None:
            continue
        pair.rows.append(ArtifactComparison(artifact=art_a.name, metrics=_artifact_deltas(art_a, art_b)))
        by_setting = {setting_of(t): t for t in art_b.targets if t.error is None}
        for ta in art_a.targets:
            tb = by_setting.get(setting_of(ta))
            if ta.error is not None or tb is None or (ta.latency_ms is None and tb.latency_ms is None):
                continue
            metrics = [_timing_delta(m, ta, tb, alpha, min_effect, single_process_min_effect) for m in TIMING_METRICS]
            pair.rows.append(ArtifactComparison(artifact=art_a.name, setting=setting_of(ta),
                                                metrics=[m for m in metrics if m.a is not None or m.b is not None]))
    return pair


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "bytes":
        return f"{v / 1e6:.3f} MB" if abs(v) >= 1e6 else f"{v / 1e3:.1f} kB"
    if unit == "items/s":
        return f"{v:,.0f}/s"
    if unit == "ms":
        return f"{v:.4g} ms"
    if unit == "MB":
        return f"{v:.1f} MB"
    return f"{v:.4f}"


def _fmt_change(d: MetricDelta) -> str:
    if d.delta is None:
        return "-"
    if d.unit in ("", None) and d.metric not in TIMING_METRICS:
        return f"{d.delta:+.4f}"
    if d.rel is None or math.isinf(d.rel):
        return f"{d.delta:+.4g}"
    if d.unit == "bytes" and d.delta and abs(d.rel) < 0.001:
        return f"{100 * d.rel:+.2f}% ({d.delta:+,.0f} B)"
    return f"{100 * d.rel:+.1f}%"


def apply_gates(comparison: Comparison, pairs_reports: list[tuple[Report, Report]], gates: list[Gate]) -> None:
    """Evaluate each gate on every pair; fill ``comparison.gates`` and ``passed``."""
    from compress.core.errors import InputFileError

    for gate in gates:
        res = GateResult(gate=gate.text, passed=True)
        for pair, (_, rb) in zip(comparison.pairs, pairs_reports):
            if rb.status != "ok":
                res.failures.append(f"{pair.b}: the run {rb.status}" + (f" ({rb.error})" if rb.error else ""))
            for row in pair.rows:
                for d in row.metrics:
                    if d.metric != gate.metric or d.a is None or d.b is None:
                        continue
                    res.checked += 1
                    if not gate.exceeded(d):
                        continue
                    where = f"{row.artifact}" + (f" ({row.setting})" if row.setting else "")
                    test = (f", B/A {d.ratio:.3f} [{d.ratio_ci[0]:.3f}, {d.ratio_ci[1]:.3f}]"
                            if d.ratio is not None and d.ratio_ci is not None else "")
                    line = (f"{pair.b} {where}: {gate.metric} {_fmt_change(d)} "
                            f"({_fmt_value(d.a, d.unit)} → {_fmt_value(d.b, d.unit)}{test})")
                    # A timing gate needs the change to be clear of the noise; the gate's own
                    # threshold stands in for min_effect.
                    if not d.tested or d.beyond_noise:
                        res.failures.append(line)
                    elif not d.significant:
                        res.let_pass.append(line + ": within noise")
                    else:
                        line += f": unclear, {_why_unclear(d, _latency_change(d), comparison.single_process_min_effect)}"
                        (res.failures if comparison.strict else res.let_pass).append(
                            line + (" (--strict)" if comparison.strict else ""))
        if res.checked == 0 and not res.failures:
            known = sorted({d.metric for p in comparison.pairs for r in p.rows for d in r.metrics if d.a is not None})
            raise InputFileError(f"--fail-on {gate.text}: no compared artifact has the metric {gate.metric!r} "
                                 f"(metrics present: {', '.join(known) or 'none'})")
        res.passed = not res.failures
        comparison.gates.append(res)
    comparison.passed = all(g.passed for g in comparison.gates)


def compare_reports(
    paths: list[Path],
    gates: list[str] | None = None,
    alpha: float = 0.01,
    min_effect: float = 0.05,
    single_process_min_effect: float = 0.5,
    strict: bool = False,
) -> Comparison:
    """Compare each report after the first against the first.

    Args:
        paths: Two or more ``report.json`` files or run folders.
        gates: ``--fail-on`` expressions.
        alpha: Significance level of the Mann-Whitney test shown for information.
        min_effect: Smallest relative latency change reported as real (beyond both runs' MDE).
        single_process_min_effect: Smallest change called real when a report comes from a single
            process (MDE unknown); smaller ones past the CI are unclear. A noisy run's changes
            are unclear at any size.
        strict: Unclear latency changes past a gate's threshold fail it.

    Returns:
        The comparison, gates evaluated.
    """
    from compress.core.errors import InputFileError

    if len(paths) < 2:
        raise InputFileError("compare needs at least two reports or run folders")
    parsed_gates = [parse_gate(g) for g in gates or []]
    reports = [load_report(p) for p in paths]
    labels = [str(p) for p in paths]
    cmp = Comparison(reports=labels, alpha=alpha, min_effect=min_effect, single_process_min_effect=single_process_min_effect,
                     strict=strict, pairs=[])
    for rb, lb in zip(reports[1:], labels[1:]):
        cmp.pairs.append(compare_pair(reports[0], rb, labels[0], lb, alpha, min_effect, single_process_min_effect))
    apply_gates(cmp, [(reports[0], rb) for rb in reports[1:]], parsed_gates)
    return cmp


def render_markdown(cmp: Comparison) -> str:
    """The comparison as Markdown, fit for a pull-request comment."""
    lines = ["# edgepack compare", ""]
    letters = [chr(ord("A") + i) if i < 26 else f"R{i}" for i in range(len(cmp.reports))]
    for letter, path in zip(letters, cmp.reports):
        lines.append(f"- **{letter}**: `{path}`")
    rule = (f"A median latency change is *real* when the hierarchical-bootstrap 95% CI of the ratio B/A "
            f"(processes of both runs resampled, then their runs) excludes 1 and the change is at least the larger "
            f"minimum detectable effect (MDE) of the two runs and at least {100 * cmp.min_effect:g}%. A change past "
            f"the CI but below the MDE, any change when a run was flagged noisy, and one below "
            f"{100 * cmp.single_process_min_effect:g}% when a report comes from a single process (MDE unknown) is "
            f"*unclear*" + (" and fails a gate (--strict)." if cmp.strict else ", never a gate failure (--strict to fail).")
            + f" Mann-Whitney p on pooled runs is shown for information only (alpha {cmp.alpha:g})."
            + " When both runs timed the machine yardstick beside each artifact (bench.yardstick), the ratio judged is "
              "that of each run's latency over the yardstick's, which the machine's state moves alike; the raw "
              "medians are shown beside it.")
    lines += ["", rule, ""]
    for letter, pair in zip(letters[1:], cmp.pairs):
        lines += [f"## {letter} vs A", "", f"**Median latency: {latency_summary(pair)}**", ""]
        for note in pair.notes:
            lines.append(f"> note: {note}")
        if pair.notes:
            lines.append("")
        lines += ["| artifact | setting | metric | A | " + letter + " | change | verdict |", "|---|---|---|---|---|---|---|"]
        for row in pair.rows:
            for d in row.metrics:
                verdict = d.verdict + (" · noisy run" if d.noisy and d.metric in LATENCY_STATS else "")
                if d.ratio_ci is not None and d.ratio is not None and d.metric == "latency_p50":
                    procs = f", {d.repeats[0]} vs {d.repeats[1]} processes" if d.repeats else ""
                    how = (f" vs yardstick; raw medians {d.raw_ratio:.3f}" if d.judged_by == "yardstick"
                           and d.raw_ratio is not None else "")
                    verdict += f" (B/A {d.ratio:.3f} [{d.ratio_ci[0]:.3f}, {d.ratio_ci[1]:.3f}]{how}{procs})"
                elif d.p_value is not None and d.metric in LATENCY_STATS:
                    verdict += f" (p={d.p_value:.1e})"
                if d.real or d.unclear:
                    verdict = f"**{verdict}**"
                lines.append(f"| {row.artifact} | {row.setting or '-'} | {d.metric} | {_fmt_value(d.a, d.unit)} "
                             f"| {_fmt_value(d.b, d.unit)} | {_fmt_change(d)} | {verdict} |")
        if pair.only_in_a:
            lines.append(f"\nOnly in A: {', '.join(pair.only_in_a)}")
        if pair.only_in_b:
            lines.append(f"\nOnly in {letter}: {', '.join(pair.only_in_b)}")
        lines.append("")
    if cmp.gates:
        lines += ["## Gates", ""]
        for g in cmp.gates:
            lines.append(f"- {'✓ pass' if g.passed else '✗ FAIL'} `{g.gate}` ({g.checked} checked)")
            lines += [f"  - {f}" for f in g.failures]
            lines += [f"  - let pass: {f}" for f in g.let_pass]
        failed = [g.gate for g in cmp.gates if not g.passed]
        lines += ["", f"**{'FAILED: ' + ', '.join(failed) if failed else 'All gates passed.'}**"]
    return "\n".join(lines) + "\n"


def real_latency_changes(cmp: Comparison) -> list[tuple[str, str, MetricDelta]]:
    """(pair label, artifact/setting, delta) of every latency metric judged real."""
    out = []
    for pair in cmp.pairs:
        for row in pair.rows:
            for d in row.metrics:
                if d.metric in LATENCY_STATS and d.real:
                    out.append((pair.b, f"{row.artifact} ({row.setting})", d))
    return out


def latency_summary(pair: PairComparison) -> str:
    """One line on the median latencies of a pair: real changes, unclear ones, or no real change."""
    judged = [d for row in pair.rows for d in row.metrics if d.metric == "latency_p50" and d.tested]
    if not judged:
        return "not compared (no measured latency in both)"
    real = [d for d in judged if d.real]
    unclear = [d for d in judged if d.unclear]
    if not real and not unclear:
        return f"no real change ({len(judged)} compared)"
    parts = []
    if real:
        parts.append(f"{len(real)} real change{'s' if len(real) > 1 else ''}")
    if unclear:
        parts.append(f"{len(unclear)} unclear")
    return ", ".join(parts) + f" ({len(judged)} compared)"
