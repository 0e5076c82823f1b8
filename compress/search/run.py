"""``compress search``: check the space, run the trials with progress, write the results.

The search folder (``runs/<name>/search-<time>-<id>/`` unless given) holds ``search.db``,
``trials/NNNN/`` (one ordinary run folder per trial), the gate's lock files and the result
files of :mod:`compress.search.results`.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from pathlib import Path
from typing import Any

from compress.core.errors import InputFileError, RecipeError
from compress.core.fileio import atomic_write_text
from compress.intake.recipe_io import RecipeSource
from compress.intake.search_spec import SearchSpec
from compress.search.driver import SearchSettings, log_line, run_search
from compress.search.results import write_results
from compress.search.space import base_data, grid_size, space_problems

SETTINGS_FILE = "search.json"


def default_folder(source: RecipeSource) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / source.recipe.name / f"search-{stamp}-{secrets.token_hex(3)}"


def search_spec_of(source: RecipeSource) -> SearchSpec:
    if source.recipe.search is None:
        raise RecipeError([source.problem((), "no search section: add search: {space: ..., objectives: ..., "
                                              "constraints: ...} (see docs/search.md)")])
    return source.recipe.search


def check_resume(folder: Path) -> dict[str, Any]:
    """What the search in ``folder`` was started with (its ``search.json``).

    Raises:
        InputFileError: Not a search folder.
    """
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise InputFileError(f"--resume {folder}: not a search folder (no {SETTINGS_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputFileError(f"--resume {folder}: {SETTINGS_FILE} is unreadable ({e})") from None


def search(source: RecipeSource, overrides: list[str], folder: Path | None = None, trials: int | None = None,
           executor: str | None = None, address: str | None = None, workers: int | None = None,
           resume: Path | None = None, use_cache: bool = True, console: Any = None) -> dict[str, Any]:
    """Run (or resume) the search a recipe's ``search:`` section describes; return the summary.

    Raises:
        RecipeError: No search section, or a value of the space makes an invalid recipe (exit 2).
        InputFileError: ``--resume`` names no search folder.
        MissingDependencyError: optuna, or ray for the ray executor, is missing.
    """
    spec = search_spec_of(source)
    if resume is not None:
        earlier = check_resume(resume)
        folder = resume
        overrides = list(earlier.get("overrides") or []) + [o for o in overrides if o not in earlier.get("overrides", [])]
    base = base_data(source, overrides)
    problems = space_problems(source, spec, base)
    if problems:
        raise source.error(problems)
    folder = folder or default_folder(source)
    folder.mkdir(parents=True, exist_ok=True)
    total = trials or spec.budget.trials
    settings = SearchSettings(spec=spec, recipe_path=source.path.resolve() if source.path else Path("recipe.yaml"),
                              base=base, folder=folder, trials=total, time_s=spec.budget.time,
                              executor=executor or spec.executor, workers=workers or spec.workers,
                              address=address or spec.ray.address, use_cache=use_cache, resume=resume is not None)
    atomic_write_text(folder / SETTINGS_FILE, json.dumps({
        "recipe": str(settings.recipe_path), "overrides": overrides, "trials": total,
        "executor": settings.executor, "target": spec.target, "storage": spec.storage or "search.db"}, indent=2))
    say = console.print if console is not None else (lambda *a, **k: None)
    size = grid_size(spec, base)
    say(f"search folder: {folder}  ({total} trials on {spec.target}, executor {settings.executor}"
        + (f", {size} distinct configurations" if size is not None else "") + ")", markup=False)
    from compress.runner.run import environment

    env = environment()
    settings.on_results = lambda outcomes: write_results(folder, outcomes, spec, env)
    outcomes = _run_with_progress(settings, console)
    summary = write_results(folder, outcomes, spec, env)
    if summary["best"] is not None:
        say(f"best feasible trial {summary['best']}: {folder / 'best.recipe.yaml'}", markup=False)
    else:
        say("no trial met every limit. " + (summary["closest_miss_text"] or "no trial was measured"), markup=False)
    say(f"results: {folder / 'search.md'}, {folder / 'search.html'}, {folder / 'trials.csv'}", markup=False)
    summary["folder"] = str(folder)
    return summary


def _run_with_progress(settings: SearchSettings, console: Any) -> list[dict[str, Any]]:
    """Run the search; with a console, one line per trial and a bar with the time budget."""
    if console is None:
        return run_search(settings)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    budget = settings.time_s
    with Progress(TextColumn("[bold]search[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[left]}"), console=console, transient=False) as progress:
        task = progress.add_task("search", total=settings.trials, left="")
        start = time.monotonic()

        def left() -> str:
            if budget is None:
                return ""
            rest = max(0.0, budget - (time.monotonic() - start))
            return f"time budget left {int(rest // 3600)}:{int(rest % 3600 // 60):02d}:{int(rest % 60):02d}"

        def on_trial(outcome: dict[str, Any], done: int, total: int) -> None:
            progress.console.print(log_line(outcome), markup=False, highlight=False)
            progress.update(task, completed=done, left=left())

        def on_tick(done: int, total: int, elapsed: float) -> None:
            progress.update(task, completed=done, left=left())

        settings.on_trial = on_trial
        settings.on_tick = on_tick
        return run_search(settings)
