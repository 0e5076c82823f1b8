"""``compress search``: the fastest model within the recipe's budgets, found by measured trials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from compress.cli.root import _console, app, fail
from compress.core.errors import EdgepackError


@app.command("search")
def search_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe.yaml with a search: section")],
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="trials in all (default "
                                                                          "search.budget.trials)")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local or ray (default search.executor)")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (default "
                                                                     "search.ray.address, then $RAY_ADDRESS)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="trials trained at once")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="search folder (default "
                                                                   "runs/NAME/search-TIME-ID)")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="continue the search in this folder: "
                                                                   "finished trials are kept, not rerun")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a value of the base recipe: "
                                                                    "path.to.key=value")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="trials share no step through the step cache")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Search distillation width, prune ratio, quantization method and calibration (any dotted
    recipe parameter) for the fastest model that meets the hard limits, by latency measured on
    the search target. Writes trials.csv/json, search.md/html and best.recipe.yaml. Exit 1 when
    no trial is feasible and the recipe says search.require: true; 2 for a bad recipe or space.
    """
    from compress.core.errors import InputFileError
    from compress.intake.recipe_io import parse_recipe

    try:
        if executor not in (None, "local", "ray"):
            raise InputFileError(f"--executor {executor!r}: use local or ray")
        if resume is not None and out is not None and out.resolve() != resume.resolve():
            raise InputFileError(f"--resume {resume} and --out {out}: a resumed search continues in its own folder")
        if no_cache and (executor or "") == "ray":
            raise InputFileError("--no-cache with --executor ray: the driver measures what the Ray tasks made "
                                 "through the step cache")
        source = parse_recipe(recipe, set_ or [])
        from compress.search.run import search

        kind: Literal["local", "ray"] | None = executor  # type: ignore[assignment]
        summary = search(source, set_ or [], out, trials, kind, address, workers, resume, not no_cache,
                         None if quiet else _console())
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted; finished trials are in the study: continue with --resume FOLDER")
        raise typer.Exit(130)
    except EdgepackError as e:
        fail(e)
    if summary["best"] is None and source.recipe.search is not None and source.recipe.search.require:
        raise typer.Exit(1)
