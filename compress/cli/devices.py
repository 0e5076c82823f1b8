"""``compress devices``: list targets and profiles, check one, set up aarch64, calibrate estimates."""


import json
from pathlib import Path
from typing import Annotated, Any

import typer

from compress.cli.root import _console, devices_app, fail
from compress.core.console import styled
from compress.core.errors import EdgepackError, TargetError


def _bench_config(recipe: Path | None) -> Any:
    if recipe is None:
        return None
    from compress.intake.recipe_io import parse_recipe

    return parse_recipe(recipe).recipe.bench


def _tiny_onnx(path: Path) -> Path:
    """A two-node float model, to prove a runtime loads and computes on a target."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "check", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@devices_app.command("list")
def list_cmd(
    recipe: Annotated[Path | None, typer.Option("--recipe", help="also list the recipe's ssh and adb devices")] = None,
) -> None:
    """Show the targets and the device profiles."""
    from rich.table import Table

    from devices.emulated import root_dir, root_info
    from devices.estimate import efficiencies_for, list_profiles, load_profile

    try:
        bench = _bench_config(recipe)
    except EdgepackError as e:
        fail(e)
    table = Table(title="targets")
    for col in ("target", "how", "what"):
        table.add_column(col)
    table.add_row("local", "measured", "this machine, each artifact in a fresh process")
    for name, spec in (getattr(bench, "ssh", None) or {}).items():
        table.add_row(f"ssh:{name}", "measured", f"{spec.user}@{spec.host}:{spec.port}")
    adb = getattr(bench, "adb", None) or {}
    for name, spec in adb.items():
        table.add_row(f"adb:{name}", "measured", f"Android {spec.serial or '(the only device)'} via {spec.adb_host}:{spec.adb_port}")
    if not adb:
        table.add_row("adb", "measured", "the only Android device the adb server lists (needs benchmark binaries)")
    info = root_info()
    table.add_row("emulated:aarch64", "emulated", "parity on aarch64 under qemu-user, no latency; root "
                  + (f"ready at {root_dir()}" if info else "missing: run `compress devices setup aarch64`"))
    for name in list_profiles():
        try:
            prof = load_profile(name)
            cal = efficiencies_for(prof)
        except EdgepackError as e:
            table.add_row(f"estimate:{name}", "estimated", styled("[red]{}[/red]", e))
            continue
        how = "own calibration" if not cal["transfer"] else f"borrows {cal['fitted_on']}'s calibration"
        table.add_row(f"estimate:{name}", "estimated", f"{prof.description}; {how}")
    _console().print(table)


@devices_app.command("check")
def check_cmd(
    target: Annotated[str, typer.Argument(help="local, ssh:NAME, adb[:NAME], emulated:aarch64 or estimate:PROFILE")],
    recipe: Annotated[Path | None, typer.Option("--recipe", help="recipe whose bench.ssh / bench.adb define the device")] = None,
) -> None:
    """Check that a target is reachable and its runtimes load; print its facts."""
    import tempfile

    import numpy as np

    from devices.names import parse_target  # here, not at import: `compress --help` loads no layer below
    from devices.targets import make_target

    console = _console()
    try:
        bench = _bench_config(recipe)
        t = make_target(target, bench)
        facts = t.describe()
        console.print(json.dumps(facts, indent=2, default=str))
        if parse_target(target).kind in ("emulated", "local", "ssh"):
            with tempfile.TemporaryDirectory(prefix="edgepack-check-") as tmp:
                model = _tiny_onnx(Path(tmp) / "check.onnx")
                x = [np.linspace(-2, 2, 24, dtype=np.float32).reshape(3, 8)]
                if target.startswith("ssh"):
                    from compress.core.types import BenchSpec

                    res = t.benchmark(model, BenchSpec(warmup=1, max_warmup=10, runs=3), x)
                    ok = bool(res.parity and res.parity.passed)
                else:
                    from devices.crosscheck import host_outputs

                    got = t.run(model, x)
                    ok = bool(np.allclose(got[0], host_outputs(model, x)[0], atol=1e-5))
            if not ok:
                raise TargetError(target, "the check model computed different outputs there than here")
            console.print(f"{target}: ok (onnxruntime loads and computes the same outputs as here)")
        else:
            console.print(f"{target}: ok")
    except EdgepackError as e:
        fail(e)


@devices_app.command("setup")
def setup_cmd(
    arch: Annotated[str, typer.Argument(help="aarch64")],
    force: Annotated[bool, typer.Option("--force", help="rebuild even if the root exists")] = False,
) -> None:
    """Build the cached emulation root (arm64 Python + aarch64 onnxruntime and LiteRT wheels)."""
    from devices.emulated import setup_root

    try:
        info = setup_root(arch, force=force, log=lambda m: _console().print(m))
    except EdgepackError as e:
        fail(e)
    _console().print(json.dumps(info, indent=2))


@devices_app.command("calibrate")
def calibrate_cmd(
    reports: Annotated[list[Path], typer.Argument(help="report.json files or run folders with measured latencies")],
    profile: Annotated[str | None, typer.Option("--profile", help="the device profile those runs measured "
                                                   "(default: local runs calibrate 'host')")] = None,
) -> None:
    """Fit the estimator's efficiencies from saved benchmark reports."""
    from devices.estimate import calibrate

    console = _console()
    try:
        cal = calibrate(list(reports), profile, log=lambda m: console.print(m))
    except EdgepackError as e:
        fail(e)
    for f in cal["fit"]:
        console.print(f"  {f['what']}: measured {f['measured_ms']:.3f} ms, fitted {f['fitted_ms']:.3f} ms")
    console.print(f"calibrated {cal['profile']} from {cal['samples']} measurements (rms log error "
                  f"{cal['rms_log_error']:.3f}); saved to {cal['path']}")
    console.print("efficiencies: " + ", ".join(f"{k} {v:.3g}" for k, v in cal["params"].items()))
