"""`compress package` and `compress verify`: mobile bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compress.cli import _console, app, fail
from compress.errors import EdgepackError, InputFileError


@app.command("package")
def package_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (holding report.json)")],
    artifact: Annotated[str, typer.Option("--artifact", "-a", help="artifact name from the report, e.g. tflite-int8")],
    platform: Annotated[str, typer.Option("--platform", "-p", help="android | ios | generic")] = "generic",
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle.zip to write")] = Path("bundle.zip"),
    golden: Annotated[int, typer.Option(help="number of golden test vectors")] = 4,
    force: Annotated[bool, typer.Option("--force", help="bundle even from a failed run or a failed parity check")] = False,
) -> None:
    """Package one artifact of a run as a bundle an app can ship."""
    if platform not in ("android", "ios", "generic"):
        fail(InputFileError(f"--platform must be android, ios or generic (got {platform!r})"))
    from compress.outputs import check_output_file
    from export.bundle import package_run

    try:
        check_output_file(out, "--out")
        info = package_run(run_dir, artifact, platform, out, golden=golden, force=force)  # type: ignore[arg-type]
    except EdgepackError as e:
        fail(e)
    _console().print(f"bundle {info['path']}: {len(info['files'])} files under {info['prefix']}")


@app.command("verify")
def verify_cmd(bundle: Annotated[Path, typer.Argument(help="bundle.zip")]) -> None:
    """Check a bundle: safe paths, checksums, the model loads, golden vectors reproduce."""
    from export.bundle import verify_bundle

    try:
        res = verify_bundle(bundle)
    except EdgepackError as e:
        fail(e)
    c = _console()
    for line in res.checked:
        c.print(f"ok  {line}")
    if not res.ok:
        err = _console(stderr=True)
        for p in res.problems:
            err.print(f"[red]FAIL[/red] {p}", markup=True)
        raise typer.Exit(1)
    c.print(f"{bundle}: verified")
