"""The ``compress`` command.

``compress RECIPE`` runs a recipe; the subcommands validate, describe and compare.
Errors the user can fix are printed as one readable message with a non-zero exit code,
never as a traceback.

``compress --help`` must start at once: this module and the command modules import only
typer and the kernel at module level; rich, pydantic, numpy, yaml and everything else are
imported inside the commands. Help is plain click formatting (``rich_markup_mode=None``):
typer's rich help alone costs several times Python's own start-up.
"""


import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from compress.core.console import make_console, styled
from compress.core.errors import EdgepackError

if TYPE_CHECKING:
    import click


class _DefaultRun(TyperGroup):
    """``compress recipe.yaml`` means ``compress run recipe.yaml``."""

    def resolve_command(self, ctx: "click.Context", args: list[str]):  # type: ignore[override]
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: "click.Context", args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


PROG = "compress"

app = typer.Typer(
    cls=_DefaultRun,
    add_completion=True,
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress a trained PyTorch model, export it to ONNX and TFLite, and measure it on devices.\n\n"
    "Run a recipe with: compress RECIPE.yaml",
)
devices_app = typer.Typer(help="Benchmark targets: list, check, set up, calibrate.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(devices_app, name="devices")
cache_app = typer.Typer(help="The step cache ($EDGEPACK_CACHE, default ~/.cache/edgepack): ls, prune, clear.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")


def version_text() -> str:
    """``edgepack X.Y.Z`` from the installed package's metadata (the source's own version if not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"edgepack {version('edgepack')}"
    except PackageNotFoundError:
        import compress

        return f"edgepack {compress.__version__} (not installed: version of the source tree)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    # a plain bool: typer coerces it without pydantic, so `compress devices --help` stays light
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print edgepack's version and exit.")] = False,
) -> None:
    """Compress a trained PyTorch model, export it to ONNX and TFLite, and measure it on devices.

    Run a recipe with: compress RECIPE.yaml
    """


def _console(stderr: bool = False):  # noqa: ANN202  (a rich Console, imported lazily)
    """A console that prints strings verbatim: user text is never markup or emoji."""
    return make_console(stderr=stderr)


def fail(err: EdgepackError) -> None:
    """Print a user error and exit with its code (its text is not markup: it may quote a board or a file)."""
    _console(stderr=True).print(styled("[red]error:[/red] {}", err.user_message()), soft_wrap=True)
    raise typer.Exit(err.exit_code)


def _resume_folder(folder: Path, out: Optional[Path], no_cache: bool) -> Path:
    """The run folder ``--resume`` names, checked: an edgepack run folder, and the cache on."""
    from compress.core.errors import InputFileError

    if no_cache:
        raise InputFileError("--resume takes finished steps from the step cache: it cannot be used with --no-cache")
    if out is not None and out.resolve() != folder.resolve():
        raise InputFileError(f"--resume {folder} and --out {out}: a resumed run continues in its own folder; "
                             "give one of them")
    if not folder.is_dir():
        raise InputFileError(f"--resume {folder}: no such run folder")
    if not (folder / "recipe.resolved.yaml").is_file() and not (folder / "log.txt").is_file():
        raise InputFileError(f"--resume {folder}: not an edgepack run folder (no recipe.resolved.yaml or log.txt)")
    return folder


@app.command("run")
def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe.yaml")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="run folder (default runs/NAME/TIME-ID)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a value: path.to.key=value")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="run every step (the step cache is neither read "
                                                               "nor written)")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="continue an interrupted or failed run in its "
                                                                    "folder: finished steps come from the step cache")] = None,
) -> None:
    """Run a recipe end to end and write the report.

    Each step's result is kept in the step cache (``$EDGEPACK_CACHE``, default
    ``~/.cache/edgepack``): a rerun, or a run that shares steps with an earlier one, takes them
    from there (marked ``cached`` in the report and the log); latencies are always measured.
    One run at a time writes into a run folder: a second run into a folder in use is refused
    (exit 2, naming the pid of the run that holds it) and touches nothing. A full disk or a
    read-only folder fails the run (exit 1, the message names the file and the cause).
    """
    from compress.intake.recipe_io import parse_recipe

    try:
        source = parse_recipe(recipe, set_ or [])
        if source.recipe.search is not None:  # a recipe with a search: section is a search
            from compress.cli.search import search_cmd

            if not quiet:
                _console().print("this recipe has a search: section: running the search "
                                 "(compress search RECIPE takes --trials, --executor, --workers)", markup=False)
            search_cmd(recipe, trials=None, executor=None, address=None, workers=None, out=out, resume=resume,
                       set_=set_, no_cache=no_cache, quiet=quiet)
            return
        if resume is not None:
            out = _resume_folder(resume, out, no_cache)
    except EdgepackError as e:
        fail(e)
    from compress.cli.outputs import check_output_dir
    from compress.runner.folder import RunFolderBusy
    from compress.runner.run import Runner

    console = None if quiet else _console()
    runner = Runner(source, out, console, use_cache=not no_cache)
    existed = runner.run_dir.exists()
    try:
        check_output_dir(runner.run_dir, "--out" if out is not None else "run folder")
    except EdgepackError as e:
        fail(e)
    try:
        report = runner.run()
    except KeyboardInterrupt:
        _console(stderr=True).print(f"interrupted; what finished is in {runner.run_dir}")
        raise typer.Exit(130)
    except RunFolderBusy as e:  # the folder is another run's: leave it alone
        fail(e)
    except EdgepackError as e:
        if (runner.run_dir / "report.json").is_file():
            _console(stderr=True).print(f"run folder (with what finished): {runner.run_dir}")
        elif not existed:
            _remove_unstarted_run(runner.run_dir)
        fail(e)
    except Exception as e:  # a bug of ours: say so plainly, keep the traceback in the log
        log = runner.run_dir / "log.txt"
        try:
            import traceback

            with open(log, "a", encoding="utf-8") as f:
                f.write(traceback.format_exc())
        except OSError:
            pass
        _console(stderr=True).print(f"internal error: {type(e).__name__}: {e}\nthe traceback is in {log}; please report it")
        raise typer.Exit(1)
    c = _console()
    c.print(f"report: {runner.run_dir / 'report.md'}")
    if report.status == "degraded":
        warn = source.recipe.gate == "warn"
        _console(stderr=True).print(styled(f"[{'yellow' if warn else 'red'}]degraded:[/] {{}}", report.error or "")
                                    + ("" if warn else "; see the report's gate reasons (gate: warn accepts them)"))
        if not warn:
            raise typer.Exit(1)
    failed_goal = any(s.details.get("goal_met") is False and s.details.get("require_goal") for s in report.steps)
    if failed_goal:
        raise typer.Exit(1)


def _remove_unstarted_run(run_dir: Path) -> None:
    """Remove the run folder of a run that failed before its first step (bad model or data).

    Only the runner's own bookkeeping is there then; leaving it would look like a run. The
    folder is removed only under its lock (a run that started into it meanwhile keeps it).
    """
    import shutil

    from compress.runner.folder import LOCK_NAME, RunFolderLock

    bookkeeping = {"log.txt", "env.json", "recipe.resolved.yaml", LOCK_NAME}
    try:
        with RunFolderLock(run_dir):
            if run_dir.is_dir() and all(p.name in bookkeeping for p in run_dir.iterdir()):
                shutil.rmtree(run_dir, ignore_errors=True)
    except EdgepackError:
        pass


@app.command("validate")
def validate_cmd(recipe: Annotated[Path, typer.Argument(help="recipe.yaml")]) -> None:
    """Check a recipe; print every problem with file:line and dotted path."""
    from compress.intake.recipe_io import parse_recipe

    try:
        parse_recipe(recipe)
    except EdgepackError as e:
        fail(e)
    _console().print(f"{recipe}: ok")


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the recipe format (for editors: ``compress schema > recipe.schema.json``)."""
    import json

    from compress.intake.recipe_io import recipe_schema

    sys.stdout.write(json.dumps(recipe_schema(), indent=2) + "\n")


def main() -> None:
    """Console-script entry point."""
    try:
        # one program name however it was started (``python -m compress`` too): completion's
        # ``_COMPRESS_COMPLETE`` variable and the usage line follow it
        app(prog_name=PROG)
        code: Any = 0
    except SystemExit as e:
        code = e.code
    except EdgepackError as e:  # errors raised outside a command's own handling
        _console(stderr=True).print(f"error: {e.user_message()}")
        code = e.exit_code
    exit_now(code)


def exit_now(code: Any) -> None:
    """End the process once the command is done, without the interpreter's teardown.

    Python's own exit frees every module and object one by one: 0.5-1 s with torch, onnx and
    onnxscript loaded (measured on a 2-core EPYC), paid by every command. What the exit must
    still do is done first: threads that are not daemons are waited for, exit handlers run
    (the local benchmark server is closed, logs are shut down) and both output streams are
    flushed; then the process ends with ``code``. ``EDGEPACK_FAST_EXIT=0`` exits the usual way.
    """
    import os

    if os.environ.get("EDGEPACK_FAST_EXIT", "1") == "0":
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")  # what sys.exit does with a message
        code = 1
    import atexit
    import threading

    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``compress ... | head``): nothing more to write
            pass
    os._exit(code or 0)

