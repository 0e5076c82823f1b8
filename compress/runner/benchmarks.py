"""The benchmark schedule of a run: every measured latency from several fresh processes,
artifacts interleaved, and speed-ups over the parent with their own CI.

For each target and timing setting, round ``r`` of ``repeats`` runs one process per artifact
(A B C, A B C, ...), never all of A then all of B, so a drift in machine state (frequency,
a neighbour's load) hits every artifact alike. The processes of one artifact are then merged
(:func:`bench.repeats.merge_results`). Targets that do not measure (estimated, emulated) run
once per artifact and setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from compress.core.progress import ProgressFn, no_progress
from compress.core.report_schema import TargetResult
from bench.repeats import merge_results, ratio_ci
from compress.core.errors import EdgepackError, TargetsFailed
from compress.core.types import BenchSpec

Key = tuple[str, str, int, int]  # artifact name, target name, threads, batch


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _failed(tname: str, how: str, spec: BenchSpec, error: str) -> TargetResult:
    return TargetResult(target=tname, how=how, device="-", threads=spec.threads, batch=spec.batch,  # type: ignore[arg-type]
                        error=error)


def _log_result(log: Callable[[str], None], name: str, res: TargetResult) -> None:
    s = res.latency_ms
    if res.error is not None:
        log(f"  {name}: {res.error}")
        return
    if s is None:
        return
    if res.how != "measured":
        log(f"  {name}: p50 {s.p50:.4g} ms ({res.how})")
        return
    mde = "detects changes above " + (f"{100 * s.mde_rel:.0f}%" if s.mde_rel is not None else "? (one process)")
    if s.yardstick_mde is not None:
        mde += f" ({100 * s.yardstick_mde:.0f}% relative to the machine yardstick)"
    speed = res.details.get("speedup_vs_parent")
    vs = (f", {speed['speedup']:.2f}x vs {speed['parent']} [{speed['ci95'][0]:.2f}, {speed['ci95'][1]:.2f}]"
          if speed else "")
    log(f"  {name}: p50 {s.p50:.4g} ms [{s.ci95[0]:.4g}, {s.ci95[1]:.4g}] ({res.how}, "
        f"{_plural(s.repeats, 'process')} x {s.runs // max(1, s.repeats)} runs, {mde}{vs}"
        + (f"; noisy: {s.noise_reason}" if s.noisy else "") + ")")


def speedup_vs_parent(child: TargetResult, parent: TargetResult, parent_name: str) -> dict[str, Any] | None:
    """``parent p50 / child p50`` of two interleaved results, with a paired hierarchical CI.

    Processes of the same round are paired (they ran side by side); the CI resamples rounds,
    then runs within each process. None when either has no latency.
    """
    if child.latency_ms is None or parent.latency_ms is None or child.error or parent.error:
        return None
    # ratio_ci(child, parent) is parent / child: how many times faster the child is.
    ratio, lo, hi = ratio_ci(child, parent, paired=True)
    return {"parent": parent_name, "speedup": round(ratio, 4), "ci95": [round(lo, 4), round(hi, 4)],
            "repeats": min(child.latency_ms.repeats, parent.latency_ms.repeats),
            "method": "ratio of interleaved medians, paired hierarchical bootstrap"}


def benchmark_interleaved(
    files: Sequence[Any],
    targets: Sequence[tuple[str, Any]],
    settings: Sequence[BenchSpec] | Mapping[str, Sequence[BenchSpec]],
    repeats: int,
    inputs_of: Callable[[Any], list[np.ndarray] | None],
    log: Callable[[str], None] = lambda _m: None,
    parent_of: Callable[[Any], str | None] | None = None,
    max_repeats: int | None = None,
    target_mde: float = 0.10,
    progress: ProgressFn = no_progress,
) -> dict[Key, TargetResult]:
    """Time every artifact on every target and setting, in interleaved rounds of fresh processes.

    Args:
        files: Artifacts with a ``name``, ``format``, ``path`` and ``parent`` (the lineage).
        targets: (name, target) pairs; a target answers ``formats``, ``how`` and ``benchmark``.
        settings: Timing settings for every target, or per target name.
        repeats: Fresh processes per measured latency (targets that do not measure run once).
        inputs_of: The inputs an artifact takes (in its own layout), or None for random inputs.
        max_repeats: More rounds, up to this many, while a measured latency's minimum detectable
            effect is above ``target_mde`` (the yardstick ratio's when it has one, see
            :mod:`bench.yardstick`); None or at most ``repeats``: exactly ``repeats`` rounds.
        target_mde: See ``max_repeats``.
        log: Progress lines.
        progress: A bar per target and setting over its processes (``ctx.progress``'s kind).
        parent_of: The name of the artifact a speed-up is measured against (default: ``parent``).

    Returns:
        One merged result per (artifact name, target name, threads, batch), in the order
        artifact, target, setting. A target that fails for an artifact gives a result with
        ``error`` set (the first process's failure; later rounds skip it). Each artifact
        whose parent was timed on the same target and setting has ``details["speedup_vs_parent"]``.
    """
    results: dict[Key, list[TargetResult]] = {}
    merges: dict[Key, tuple[int, TargetResult]] = {}  # merged after how many processes: the bootstraps take a while
    inputs: dict[str, Any] = {}
    max_rounds = max(repeats, max_repeats or 0) if repeats > 1 else repeats
    for tname, target in targets:
        specs = list(settings[tname] if isinstance(settings, Mapping) else settings)
        arts = [a for a in files if a.format in target.formats]
        rounds = repeats if target.how == "measured" else 1
        for spec in specs:
            where = (f"on {tname} ({_plural(spec.threads, 'thread')}, batch {spec.batch})"
                     + (f", {rounds} interleaved rounds" if rounds > 1 else ""))
            log(f"bench {', '.join(a.name for a in arts)} {where}")
            with progress(f"benchmark {where}", rounds * len(arts)) as advance:
                _rounds(arts, tname, target, spec, rounds, max_rounds, target_mde, results, merges, inputs, inputs_of,
                        log, advance)
    merged = {key: _merged(key, parts, merges) for key, parts in results.items()}
    _add_speedups(files, merged, parent_of)
    order = {a.name: i for i, a in enumerate(files)}
    out = dict(sorted(merged.items(), key=lambda kv: order.get(kv[0][0], len(order))))
    for key, res in out.items():
        _log_result(log, f"{key[0]} on {key[1]} ({_plural(key[2], 'thread')}, batch {key[3]})", res)
    return out


def _rounds(arts: Sequence[Any], tname: str, target: Any, spec: BenchSpec, rounds: int, max_rounds: int,
            target_mde: float, results: dict[Key, list[TargetResult]], merges: dict[Key, tuple[int, TargetResult]],
            inputs: dict[str, Any], inputs_of: Callable[[Any], Any], log: Callable[[str], None],
            advance: Any) -> None:
    """The interleaved rounds of one target and setting: ``rounds``, then more while imprecise."""
    r = 0
    while r < rounds or (target.how == "measured" and r < max_rounds
                         and _imprecise(results, arts, tname, spec, target_mde, log, r, max_rounds, merges)):
        r += 1
        for art in arts:
            key = (art.name, tname, spec.threads, spec.batch)
            done = results.setdefault(key, [])
            if done and all(x.error is not None for x in done):
                continue  # failed in its first process: a broken model or target, not bad luck
            if art.name not in inputs:
                inputs[art.name] = inputs_of(art)
            if rounds > 1:
                log(f"  {art.name} process {r}/{max(rounds, r)}")
            try:
                done.append(target.benchmark(art.path, spec, inputs[art.name]))
            except EdgepackError as e:
                done.append(_failed(tname, target.how, spec, str(e)))
            advance(1, note=f"{art.name}, round {r}", total=max(rounds, r) * len(arts))


def _merged(key: Key, parts: list[TargetResult], merges: dict[Key, tuple[int, TargetResult]]) -> TargetResult:
    """``merge_results(parts)``, once for the same processes (the last round's check already merged them)."""
    done = merges.get(key)
    if done is None or done[0] != len(parts):
        done = (len(parts), merge_results(parts))
        merges[key] = done
    return done[1]


def _imprecise(results: dict[Key, list[TargetResult]], arts: Sequence[Any], tname: str, spec: BenchSpec,
               target_mde: float, log: Callable[[str], None], done: int, most: int,
               merges: dict[Key, tuple[int, TargetResult]] | None = None) -> bool:
    """Whether a latency of this target and setting still has an MDE above ``target_mde``.

    A latency whose processes all failed, or that is flagged noisy (more processes do not make a
    busy machine quiet), does not ask for more rounds.
    """
    worst: tuple[float, str] | None = None
    for art in arts:
        key = (art.name, tname, spec.threads, spec.batch)
        parts = results.get(key, [])
        ok = [x for x in parts if x.error is None]
        if len(ok) < 2:
            continue
        # the merge the run keeps, when no process failed (else one without the failures)
        s = (_merged(key, parts, merges if merges is not None else {}) if len(ok) == len(parts) else merge_results(ok)).latency_ms
        if s is None or s.noisy:
            continue
        mde = s.yardstick_mde if s.yardstick_mde is not None else s.mde_rel
        if mde is not None and mde > target_mde and (worst is None or mde > worst[0]):
            worst = (mde, art.name)
    if worst is not None:
        log(f"  {worst[1]} can only detect changes above {100 * worst[0]:.0f}% after {done} rounds "
            f"(target {100 * target_mde:.0f}%): round {done + 1} of at most {most}")
    return worst is not None


def _add_speedups(files: Sequence[Any], merged: dict[Key, TargetResult],
                  parent_of: Callable[[Any], str | None] | None = None) -> None:
    for art in files:
        parent = parent_of(art) if parent_of is not None else getattr(art, "parent", None)
        if not parent:
            continue
        for (name, tname, threads, batch), res in merged.items():
            if name != art.name or res.how != "measured":
                continue
            pres = merged.get((parent, tname, threads, batch))
            if pres is None:
                continue
            speed = speedup_vs_parent(res, pres, parent)
            if speed is not None:
                res.details["speedup_vs_parent"] = speed


def results_and_errors(files: Sequence[Any], results: dict[Key, TargetResult]) -> tuple[dict[str, list[TargetResult]], list[str]]:
    """The merged results grouped by artifact name (in ``results``' order) and every failure message."""
    by_art: dict[str, list[TargetResult]] = {a.name: [] for a in files}
    errors = []
    for (name, *_), res in results.items():
        by_art.setdefault(name, []).append(res)
        if res.error is not None:
            errors.append(res.error)
    return by_art, errors


class BenchmarkingMixin:
    """Runner methods: timing every file artifact on every target."""

    def benchmark_all(self) -> None:
        """Time every ONNX/TFLite artifact on every target: ``bench.repeats`` fresh processes per
        latency, artifacts interleaved (A B C A B C ...), speed-ups over the parent with their CI."""
        from devices.targets import make_target
        from compress.core.types import BenchSpec

        b = self.recipe.bench
        files = [a for a in self.state.artifacts if a.format in ("onnx", "tflite") and a.path is not None]
        errors: list[str] = []
        targets, settings = [], {}
        for tname in b.targets:
            try:
                target = make_target(tname, b)
            except EdgepackError as e:
                errors.append(str(e))
                continue
            batches = list(b.batch_sizes)
            if tname == "local" and self.recipe.tradeoff is not None and self.recipe.tradeoff.cloud.batch not in batches:
                batches.append(self.recipe.tradeoff.cloud.batch)  # the cloud side's server time
            targets.append((tname, target))
            settings[tname] = [BenchSpec(threads=threads, warmup=b.warmup, runs=b.runs, batch=batch, yardstick=b.yardstick)
                               for threads in b.threads for batch in batches]
        results = benchmark_interleaved(files, targets, settings, b.repeats, self.model_inputs, self.log,
                                        parent_of=self.timed_parent, max_repeats=b.max_repeats, target_mde=b.target_mde,
                                        progress=self.progress)
        by_artifact, failures = results_and_errors(files, results)
        for art in files:
            self.state.targets.setdefault(art.name, []).extend(by_artifact.get(art.name, []))
        errors += failures
        if errors:
            raise TargetsFailed(errors)
