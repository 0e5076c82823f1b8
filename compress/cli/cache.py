"""``compress cache``: what the step cache holds, and making room."""


import json
from typing import Annotated

import typer

from compress.cli.root import _console, cache_app, fail
from compress.core.errors import EdgepackError, InputFileError


def _cache():  # noqa: ANN202  (the StepCache, its root from $EDGEPACK_CACHE)
    from compress.runner.stepcache import StepCache

    try:
        return StepCache()
    except ValueError as e:  # a bad $EDGEPACK_CACHE_MAX_BYTES
        raise InputFileError(str(e)) from None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@cache_app.command("ls")
def ls_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per entry")] = False,
) -> None:
    """List the cached steps, most recently used first, with their size and age."""
    try:
        cache = _cache()
        entries = cache.ls()
    except EdgepackError as e:
        fail(e)
    if as_json:
        for e in entries:
            typer.echo(json.dumps({"digest": e.digest, "kind": e.kind, "size_bytes": e.size_bytes,
                                   "created": e.created.isoformat(), "last_used": e.last_used.isoformat(),
                                   "complete": e.complete, "path": str(e.path)}))
        return
    total = sum(e.size_bytes for e in entries)
    typer.echo(f"step cache {cache.root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_size(total)} "
               f"(cap {_size(cache.max_bytes)})")
    for e in entries:
        state = "" if e.complete else "  (partial)"
        typer.echo(f"  {e.digest[:12]}  {e.kind:<14} {_size(e.size_bytes):>10}  used {e.last_used:%Y-%m-%d %H:%M}"
                   f"  made {e.created:%Y-%m-%d %H:%M}{state}")


@cache_app.command("prune")
def prune_cmd(
    older_than: Annotated[str, typer.Option("--older-than", help="remove entries not used for this long: 30d, 12h, 90m")],
) -> None:
    """Remove entries not used for a while (and partial ones a crash left)."""
    from compress.runner.cachefiles import parse_age

    try:
        age = parse_age(older_than)
    except ValueError as e:
        fail(InputFileError(f"--older-than {older_than!r}: {e}"))
    try:
        n, freed = _cache().prune(age)
    except EdgepackError as e:
        fail(e)
    _console().print(f"removed {n} entr{'y' if n == 1 else 'ies'}, {_size(freed)} freed")


@cache_app.command("clear")
def clear_cmd(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Remove every cached step and evaluation."""
    cache = _cache()
    if not yes and not typer.confirm(f"remove everything under {cache.root}?", default=False):
        raise typer.Exit(1)
    from compress.runner.evalcache import EvalCache

    n, freed = cache.clear()
    evals = EvalCache(cache.root).clear()
    _console().print(f"removed {n} step entr{'y' if n == 1 else 'ies'} ({_size(freed)}) and {evals} evaluation(s)")
