"""`compress drift`: have the inputs moved away from what a bundle's model was calibrated on?"""


import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli.root import _console, app, fail
from compress.core.errors import EdgepackError, InputFileError


@app.command("drift")
def drift_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle.zip (made by compress package)")],
    inputs: Annotated[Path, typer.Argument(help="new inputs .npz: one array per model input, named as the model "
                                                "names it (or x for a single input)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON")] = False,
    psi_threshold: Annotated[Optional[float], typer.Option("--psi-threshold", help="PSI above which a feature "
                                                           "drifted (default: the fingerprint's, 0.25)")] = None,
    ks_alpha: Annotated[Optional[float], typer.Option("--ks-alpha", help="level of the KS test, Bonferroni-"
                                                      "corrected over the features (default 0.01)")] = None,
    ks_threshold: Annotated[Optional[float], typer.Option("--ks-threshold", help="a fixed KS limit instead of "
                                                          "the critical value")] = None,
    key: Annotated[Optional[Path], typer.Option("--key", help="Ed25519 public key PEM: the bundle must be "
                                                "signed by it")] = None,
) -> None:
    """Compare new inputs, and the model's outputs on them, with the bundle's fingerprint.json (PSI and KS).

    Exit 0 no drift, 1 drift, 2 bad input (a bundle that fails verification, inputs that do not fit the model).
    """
    from rich.text import Text

    try:
        thresholds = _thresholds(psi_threshold, ks_alpha, ks_threshold)
        from bench.drift import describe, describe_class
        from export.bundle_drift import drift_of_bundle

        report = drift_of_bundle(bundle, inputs, thresholds, public_key=key)
    except EdgepackError as e:
        fail(e)
    code = 1 if report.verdict == "drift" else 0
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        raise typer.Exit(code)
    c = _console()
    for m in report.moved[:20]:
        c.print(Text(f"moved     {describe(m)}"), soft_wrap=True)
    if len(report.moved) > 20:
        c.print(Text(f"          ... and {len(report.moved) - 20} more (--json lists all)"))
    for m in report.classes:
        c.print(Text(f"class     {describe_class(m)}"), soft_wrap=True)
    for m in report.moderate[:5]:
        c.print(Text(f"moderate  {describe(m)}"), soft_wrap=True)
    for note in report.notes:
        c.print(Text.assemble(("note", "yellow"), f"      {note}"), soft_wrap=True)
    t = report.thresholds
    head = "DRIFT" if code else "no drift"
    c.print(Text(f"{head}: {len(report.moved)} of {len(report.checks)} distributions moved "
                 f"({report.samples} new samples vs {report.reference_samples} reference; PSI > {t['psi_drift']:g} "
                 f"or KS over its critical value)"), soft_wrap=True)
    raise typer.Exit(code)


def _thresholds(psi: Optional[float], alpha: Optional[float], ks: Optional[float]) -> dict[str, float]:
    """The thresholds the user set (the fingerprint's own fill in the rest)."""
    if psi is not None and not psi > 0:
        raise InputFileError(f"--psi-threshold must be > 0 (got {psi})")
    if alpha is not None and not 0 < alpha < 1:
        raise InputFileError(f"--ks-alpha must be between 0 and 1 (got {alpha})")
    if ks is not None and not 0 < ks <= 1:
        raise InputFileError(f"--ks-threshold must be in (0, 1] (got {ks})")
    given = {"psi_drift": psi, "ks_alpha": alpha, "ks_threshold": ks}
    return {k: v for k, v in given.items() if v is not None}
