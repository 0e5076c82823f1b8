"""The search loop: an Optuna study asked for trials, the executor running them, told their outcomes.

The study lives in ``search.db`` (SQLite) in the search folder, or in any Optuna RDB URL
(``search.storage``): a stopped search resumes from it (``--resume``) without redoing a
finished trial; trials a killed search left running are marked failed and asked again
with the same parameters. Objectives are the measured values of each trial's final
artifact; hard limits and fidelity gates reach the sampler as the trial's constraints
(``Trial.set_constraint``, <= 0 is met), so TPE and NSGA-II both steer towards feasible trials.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from compress.core.errors import MissingDependencyError
from compress.intake.search_spec import SearchSpec
from compress.search.space import describe, suggest, trial_data
from compress.search.trial import TrialJob, judge

STUDY_NAME = "edgepack-search"
OUTCOME = "edgepack_outcome"  # the user attribute holding a trial's outcome (JSON-able)
INTERRUPTED = "interrupted (the search stopped while it ran)"


@dataclass
class SearchSettings:
    """What one ``compress search`` invocation runs."""

    spec: SearchSpec
    recipe_path: Path
    base: dict[str, Any]  # the base recipe's raw data (with --set applied)
    folder: Path
    trials: int
    time_s: float | None
    executor: str
    workers: int | None = None
    address: str | None = None
    use_cache: bool = True
    resume: bool = False
    on_trial: Callable[[dict[str, Any], int, int], None] = field(default=lambda o, done, total: None)
    on_tick: Callable[[int, int, float], None] = field(default=lambda done, total, elapsed: None)
    on_results: Callable[[list[dict[str, Any]]], None] = field(default=lambda outcomes: None)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("optuna", "compress search", 'pip install "optuna"') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_sampler(spec: SearchSpec) -> Any:
    """TPE (default, multivariate) or NSGA-II, both with the constraints."""
    optuna = _optuna()
    if spec.sampler == "grid":  # the combinations are enqueued by open_study; none is left to chance
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    import warnings

    with warnings.catch_warnings():  # group= is marked experimental; it is what a conditional space needs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group: keys sampled only in some trials (quantize.calibration under static) are modelled
        # in the groups of trials that have them, not as missing values of one joint density
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, group=True,
                                          n_startup_trials=min(10, max(2, len(spec.space) + 1)))


def storage_url(spec: SearchSpec, folder: Path) -> str:
    return spec.storage or f"sqlite:///{(folder / 'search.db').resolve()}"


def open_study(spec: SearchSpec, folder: Path, base: dict[str, Any] | None = None) -> Any:
    """Create the study, or load it (``load_if_exists``) for a resumed or shared search.

    ``base`` (the base recipe's data) decides which grid values mean something (:func:`grid_order`).
    """
    optuna = _optuna()
    directions = list(spec.objectives.values())
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage_url(spec, folder), directions=directions,
                                sampler=make_sampler(spec), load_if_exists=True)
    if spec.sampler == "grid" and not study.get_trials(deepcopy=False):
        for params in grid_order(spec, base):
            study.enqueue_trial(params)
    return study


def grid_order(spec: SearchSpec, base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every distinct combination of the space once, shuffled by the seed (a cut-short grid still spans
    the space). Values that mean nothing given the others are left out (``quantize.calibration`` with
    ``quantize.method: fp16``, see :func:`compress.search.space.active`), so no two trials run the same recipe.

    Enqueued in the study itself (not a GridSampler, whose stop() needs Study.optimize), so a
    resumed or shared search continues the same grid.
    """
    import itertools
    import random

    from compress.search.space import active, grid_values

    keys = list(spec.space)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid_values(spec.space[k]) for k in keys))]
    random.Random(spec.seed).shuffle(combos)
    distinct: list[dict[str, Any]] = []
    for combo in combos:
        kept = active(combo, base)
        if kept not in distinct:
            distinct.append(kept)
    return distinct


def outcomes_of(study: Any) -> list[dict[str, Any]]:
    """Every finished trial's outcome, in trial order (interrupted ones left out)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        o = t.user_attrs.get(OUTCOME)
        if o is not None and o.get("reason") != INTERRUPTED:
            out.append(o)
    return sorted(out, key=lambda o: o["number"])


def _requeue_interrupted(study: Any) -> int:
    """Mark trials a killed search left running as failed and ask their parameters again."""
    optuna = _optuna()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna.trial.Trial(study, t._trial_id).set_user_attr(
            OUTCOME, {"number": t.number, "params": t.params, "status": "failed", "reason": INTERRUPTED})
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(t.params, skip_if_exists=False)
        n += 1
    return n


def tell(study: Any, trial: Any, outcome: dict[str, Any], spec: SearchSpec) -> None:
    """Record one outcome: objective values and constraints when measured, failed otherwise."""
    optuna = _optuna()
    judge(outcome, spec.constraints)
    values = [((outcome.get("metrics") or {}).get(m) or {}).get("value") for m in spec.objectives]
    trial.set_user_attr(OUTCOME, _jsonable(outcome))
    if outcome.get("status") == "failed" or any(v is None for v in values):
        if outcome.get("status") != "failed":
            outcome.update(status="failed", reason="missing " + ", ".join(
                m for m, v in zip(spec.objectives, values) if v is None))
            trial.set_user_attr(OUTCOME, _jsonable(outcome))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for name, miss in (outcome.get("violations") or {}).items():
        trial.set_constraint(name, 1e9 if miss is None else miss)
    trial.set_constraint("fidelity_gate", 1.0 if outcome.get("gate_reasons") else 0.0)
    study.tell(trial, values)


def _jsonable(obj: Any) -> Any:
    """Floats that JSON can hold (inf and nan become None)."""
    return json.loads(json.dumps(obj, default=str).replace("Infinity", "null").replace("NaN", "null"))


def run_search(s: SearchSettings) -> list[dict[str, Any]]:
    """Run trials until the budget is spent; return every finished trial's outcome.

    Raises:
        MissingDependencyError: optuna (or ray for ``executor: ray``) is not installed.
    """
    from compress.search.executors import make_executor

    study = open_study(s.spec, s.folder, s.base)
    if s.resume:
        _requeue_interrupted(study)
    done = len(outcomes_of(study))
    if s.spec.sampler == "grid":
        from compress.search.space import grid_size

        s.trials = min(s.trials, grid_size(s.spec, s.base) or s.trials)  # every combination once, then stop
    start = time.monotonic()
    executor = make_executor(s.executor, s.workers, s.address)
    asked: dict[int, Any] = {}
    try:
        while True:
            elapsed = time.monotonic() - start
            in_time = s.time_s is None or elapsed < s.time_s
            while in_time and done + len(asked) < s.trials and executor.pending() < executor.workers:
                trial = study.ask()
                params = suggest(trial, s.spec, s.base)
                job = TrialJob(number=trial.number, params=params,
                               data=trial_data(s.base, params, s.spec.target), recipe_path=str(s.recipe_path),
                               run_dir=str(s.folder / "trials" / f"{trial.number:04d}"), gate_dir=str(s.folder),
                               use_cache=s.use_cache)
                asked[trial.number] = trial
                executor.submit(job)
            if executor.pending() == 0:
                break
            s.on_tick(done, s.trials, elapsed)
            job, outcome = executor.next_done()
            tell(study, asked.pop(job.number), outcome, s.spec)
            done += 1
            s.on_trial(outcome, done, s.trials)
            s.on_results(outcomes_of(study))  # the tables stay current: a stopped search still shows its trials
    except BaseException:
        for number, trial in asked.items():  # tell the study they were cut short; a resume asks them again
            try:
                trial.set_user_attr(OUTCOME, {"number": number, "params": trial.params, "status": "failed",
                                              "reason": INTERRUPTED})
                study.tell(trial, state=_optuna().trial.TrialState.FAIL, skip_if_finished=True)
                study.enqueue_trial(trial.params, skip_if_exists=False)
            except Exception:  # the storage may be what failed
                pass
        raise
    finally:
        executor.close()
    return outcomes_of(study)


def log_line(outcome: dict[str, Any]) -> str:
    """One line per trial: its parameters, its metrics (with the latency's CI), feasible or why not."""
    m = outcome.get("metrics") or {}
    parts = [f"trial {outcome['number']:>3}", describe(outcome.get("params") or {})]
    lat = m.get("latency_ms")
    if lat:
        ci = lat.get("ci95")
        parts.append(f"p50 {lat['value']:.4g} ms" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
                     + (" noisy" if lat.get("noisy") else ""))
    if m.get("accuracy"):
        parts.append(f"acc {m['accuracy']['value']:.4f}")
    if m.get("size_mb"):
        parts.append(f"{m['size_mb']['value']:.3g} MB")
    steps = outcome.get("steps") or []
    if steps:
        parts.append(f"{sum(1 for x in steps if x['cached'])}/{len(steps)} steps cached")
    status = outcome.get("status", "?")
    parts.append(status if status == "feasible" else f"{status}: {outcome.get('reason', '')}")
    return "  ".join(parts)


