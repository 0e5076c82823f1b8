"""``compress shadow``: a candidate model beside the baseline on logged inputs, with a verdict for CI."""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli.root import _console, app, fail
from compress.core.errors import EdgepackError, InputFileError

_SIDE = "RUN_DIR:ARTIFACT (checked against the run's report), a .onnx/.tflite file, or a bundle .zip (verified)"


def _share(value: Optional[float], option: str) -> Optional[float]:
    if value is not None and not 0 <= value <= 1:
        fail(InputFileError(f"{option} {value}: expected a share between 0 and 1"))
    return value


@app.command("shadow")
def shadow_cmd(
    baseline: Annotated[str, typer.Argument(help=f"the model in production: {_SIDE}")],
    candidate: Annotated[str, typer.Argument(help=f"the model to test: {_SIDE}")],
    inputs: Annotated[Path, typer.Option("--inputs", help="logged inputs .npz: x (or x0, x1..., x_<input>, or the "
                                         "model's input names), optional labels y")],
    labels: Annotated[Optional[str], typer.Option("--labels", help="labels.npy, labels.npz (its y) or "
                                                  "labels.npz:KEY; default: y in --inputs")] = None,
    max_flip_rate: Annotated[float, typer.Option("--max-flip-rate", help="largest share of changed decisions, "
                                                 "per output")] = 0.01,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(
        "--max-accuracy-drop", help="largest accuracy drop against the labels (off by default)")] = None,
    max_ece_increase: Annotated[Optional[float], typer.Option(
        "--max-ece-increase", help="largest ECE increase against the labels (off by default)")] = None,
    max_confidence_shift: Annotated[Optional[float], typer.Option(
        "--max-confidence-shift", help="largest mean |p_candidate - p_baseline| for the baseline's decision "
                                       "(off by default)")] = None,
    max_rel_error: Annotated[Optional[float], typer.Option(
        "--max-rel-error", help="largest mean relative error of an output without decisions (off by default)")] = None,
    task: Annotated[str, typer.Option("--task", help="classification (the first output decides) or regression")
                    ] = "classification",
    worst: Annotated[int, typer.Option("--worst", min=1, max=10_000, help="worst inputs kept in worst.npz")] = 20,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="time both here, interleaved")] = True,
    runs: Annotated[int, typer.Option("--runs", min=1, help="timed runs per process")] = 100,
    repeats: Annotated[int, typer.Option("--repeats", min=1, max=100, help="interleaved rounds of fresh "
                                         "processes")] = 3,
    out: Annotated[Path, typer.Option("--out", help="folder for shadow.json, shadow.md, worst.npz")] = Path("shadow"),
    json_out: Annotated[bool, typer.Option("--json", help="print shadow.json instead of the summary")] = False,
) -> None:
    """Shadow-test CANDIDATE against BASELINE on logged inputs: agreement, flips, calibration, latency, verdict.

    Exit 0 when every threshold holds, 1 when one fails, 2 on bad input.
    """
    from bench.shadow import Thresholds, summary_line
    from compress.cli.outputs import check_output_dir
    from compress.runner.shadow import ShadowOptions, run_shadow

    if task not in ("classification", "regression"):
        fail(InputFileError(f"--task {task!r}: use classification or regression"))
    thresholds = Thresholds(
        max_flip_rate=_share(max_flip_rate, "--max-flip-rate"),
        max_accuracy_drop=_share(max_accuracy_drop, "--max-accuracy-drop"),
        max_ece_increase=_share(max_ece_increase, "--max-ece-increase"),
        max_confidence_shift=_share(max_confidence_shift, "--max-confidence-shift"),
        max_rel_error=max_rel_error,
    )
    err = _console(stderr=True)
    try:
        check_output_dir(out, "--out")
        opts = ShadowOptions(inputs=inputs, labels=labels, thresholds=thresholds, task=task, worst=worst,
                             latency=latency, runs=runs, repeats=repeats)
        result = run_shadow(baseline, candidate, opts, out, log=lambda m: err.print(m, highlight=False, markup=False))
    except EdgepackError as e:
        fail(e)
    if json_out:
        import json

        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        typer.echo(summary_line(result))
        for reason in result["verdict"]["reasons"]:
            typer.echo(f"  {reason}")
        for note in [result.get("outputs_matched_note"), *result.get("notes", [])]:
            if note:
                typer.echo(f"  note: {note}")
        w = result["worst"]["indices"]
        typer.echo(f"  worst inputs: {', '.join(map(str, w[:10])) or 'none'}{' ...' if len(w) > 10 else ''} "
                   f"({out / 'worst.npz'})")
        lat = result.get("latency")
        if lat:
            sides = [f"{r} p50 {lat[r]['p50_ms']:.4g} ms" for r in ("baseline", "candidate") if "p50_ms" in lat.get(r, {})]
            typer.echo(f"  latency (measured, local, {lat.get('device', '?')}, {lat['repeats']} x {lat['runs']} runs "
                       f"interleaved): {', '.join(sides)}")
        typer.echo(f"  details: {out / 'shadow.md'}, {out / 'shadow.json'}")
    if not result["verdict"]["passed"]:
        raise typer.Exit(1)
