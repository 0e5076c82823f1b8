"""``compress bench`` (a model file, no recipe) and ``compress compare`` (reports, with CI gates)."""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from compress.cli import app, fail
from compress.errors import EdgepackError, InputFileError


def load_npz_data(path: Path) -> tuple[list[Any], Any]:
    """Inputs (``x`` or ``x0``, ``x1``...) and optional labels ``y`` of an .npz file."""
    import numpy as np

    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    try:
        with np.load(path) as z:
            files = list(z.files)
            if "x" in files:
                xs = [z["x"]]
            else:
                keys = sorted((k for k in files if k[:1] == "x" and k[1:].isdigit()), key=lambda k: int(k[1:]))
                xs = [z[k] for k in keys]
            y = z["y"] if "y" in files else None
    except (OSError, ValueError) as e:
        raise InputFileError(f"{path}: not a readable .npz ({e})") from e
    if not xs:
        raise InputFileError(f"{path}: no inputs: expected an array 'x' (or x0, x1, ... for several inputs); has {files}")
    from compress.data import check_numeric_array

    for i, x in enumerate(xs):
        check_numeric_array(x, f"{path}: x" + (str(i) if len(xs) > 1 else ""))
    if y is not None:
        check_numeric_array(y, f"{path}: y")
    n = len(xs[0])
    if any(len(x) != n for x in xs) or (y is not None and len(y) != n):
        raise InputFileError(f"{path}: inputs and labels have different numbers of rows")
    xs = [x.astype(np.float32) if x.dtype == np.float64 else x for x in xs]
    return xs, y


def guess_precision(path: Path) -> str:
    """int8, fp16 or fp32, from the operators and tensor types in the file."""
    try:
        if path.suffix == ".onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            ops = {n.op_type for n in model.graph.node}
            if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
                return "int8"
            if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
                return "fp16"
            return "fp32"
        from bench.agent import _tflite_interpreter_class

        cls, _, _ = _tflite_interpreter_class()
        types = {str(d["dtype"]) for d in cls(model_path=str(path)).get_tensor_details()}
        if any("int8" in t for t in types):
            return "int8"
        return "fp16" if any("float16" in t for t in types) else "fp32"
    except Exception:  # noqa: BLE001  (a guess for the label only; the benchmark reports real failures)
        return "unknown"


def bench_report(
    model: Path,
    target_name: str,
    threads: list[int],
    batches: list[int],
    runs: int,
    warmup: int,
    cpus: tuple[int, ...] | None,
    data: Path | None,
    task: str,
    name: str | None,
    log: Any = None,
) -> Any:
    """Benchmark one model file on one target; return a Report like a recipe run's."""
    import numpy as np

    from bench.accuracy import task_metrics
    from bench.report import ArtifactReport, Report
    from compress.runner import environment, tool_versions
    from devices.base import BenchSpec, make_target

    fmt = {".onnx": "onnx", ".tflite": "tflite"}.get(model.suffix.lower())
    if fmt is None:
        raise InputFileError(f"{model}: expected a .onnx or .tflite file")
    if not model.is_file():
        raise InputFileError(f"{model}: file not found")
    target = make_target(target_name)
    if fmt not in target.formats:
        raise InputFileError(f"target {target_name} cannot run {fmt} models (it runs {', '.join(target.formats)})")
    if cpus is not None and target_name == "local":
        _check_cpus(cpus)
    inputs = _model_inputs(model, fmt)
    xs, y = load_npz_data(data) if data else (None, None)
    if xs is not None and inputs is not None:
        from compress.data import input_mismatches

        # a TFLite session quantizes float inputs itself, so only ONNX dtypes must match exactly
        wrong = input_mismatches([(i["shape"], i["dtype"] if fmt == "onnx" else None) for i in inputs], xs)
        if wrong:
            raise InputFileError(f"{data}: does not fit {model.name}: " + "; ".join(wrong))
    art = ArtifactReport(name=name or model.stem, format=fmt, path=str(model), size_bytes=model.stat().st_size,
                         sha256=hashlib.sha256(model.read_bytes()).hexdigest(), precision=guess_precision(model),
                         parent=None, step="compress bench")
    kind: str | None = None
    if xs is not None and y is not None:
        outputs = target.run(model, xs)[0]
        kind = task
        if kind == "auto":
            kind = "classification" if np.issubdtype(y.dtype, np.integer) and outputs.ndim == 2 and outputs.shape[1] > 1 \
                else "regression"
        art.metrics = task_metrics(kind, outputs, y)
        art.accuracy = art.metrics.get("accuracy")
    for t in threads:
        for b in batches:
            if log:
                log(f"bench {art.name} on {target_name} ({t} thread{'s' if t > 1 else ''}, batch {b})")
            spec = BenchSpec(threads=t, warmup=warmup, runs=runs, batch=b, cpus=cpus)
            art.targets.append(target.benchmark(model, spec, xs))
    return Report(
        tool={"name": "edgepack", **tool_versions()},
        recipe={"name": f"bench:{model.name}", "path": None, "hash": art.sha256[:16]},
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        env=environment(),
        task={"kind": kind} if kind else {},
        data={"source": str(data) if data else "random inputs", "eval": len(xs[0]) if xs else None},
        artifacts=[art],
    )


def _model_inputs(model: Path, fmt: str) -> list[dict[str, Any]] | None:
    """The model's inputs, read by opening it here: a corrupt file is a wrong input, not a failed target."""
    from bench.runtime import open_model
    from compress.errors import MissingDependencyError

    try:
        return list(open_model(model).inputs)
    except MissingDependencyError:
        return None  # no runtime here; the target says what it makes of the file
    except Exception as e:  # noqa: BLE001  (the runtime's own words say what is wrong with the file)
        lines = str(e).strip().splitlines()
        kind = "ONNX" if fmt == "onnx" else "TFLite"
        raise InputFileError(f"{model}: not a valid {kind} model ({type(e).__name__}: {lines[0] if lines else ''})") from e


def _check_cpus(cpus: tuple[int, ...]) -> None:
    import os

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise InputFileError(f"--cpus: no CPU {bad[0]} here; this process may use CPUs "
                             + ", ".join(str(c) for c in allowed))


def _parse_cpus(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        cpus: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        return tuple(cpus)
    except ValueError:
        raise InputFileError(f"--cpus {text!r}: expected a list like 0,1 or 0-3") from None


@app.command("bench")
def bench_cmd(
    model: Annotated[Path, typer.Argument(help="MODEL.onnx or MODEL.tflite")],
    data: Annotated[Path | None, typer.Option("--data", help=".npz with x (or x0, x1...) and optional labels y")] = None,
    threads: Annotated[list[int] | None, typer.Option("--threads", min=1, help="repeat for several")] = None,
    batch: Annotated[list[int] | None, typer.Option("--batch", min=1, help="items per run; repeat for several")] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="timed runs")] = 200,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="minimum warmup runs (goes on until stable)")] = 20,
    target: Annotated[str, typer.Option("--target", help="local, ssh:NAME, emulated:aarch64, estimate:PROFILE")] = "local",
    cpus: Annotated[str | None, typer.Option("--cpus", help="pin to these CPUs, e.g. 0 or 0-1")] = None,
    task: Annotated[str, typer.Option("--task", help="auto, classification or regression (with labels in --data)")] = "auto",
    name: Annotated[str | None, typer.Option("--name", help="artifact name in the report (default: file stem)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report JSON here")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report here")] = None,
) -> None:
    """Benchmark a model file without a recipe (fresh process, warmup until stable, every run kept)."""
    from rich.console import Console

    from bench.report import render_markdown
    from compress.artifact import atomic_write_text

    if task not in ("auto", "classification", "regression"):
        fail(InputFileError(f"--task {task!r}: use auto, classification or regression"))
    err = Console(stderr=True, highlight=False)
    from compress.outputs import check_output_file

    try:
        for path, option in ((json_out, "--json"), (html_out, "--html")):
            if path is not None:
                check_output_file(path, option)
        report = bench_report(model, target, threads or [1], batch or [1], runs, warmup, _parse_cpus(cpus), data, task,
                              name, log=lambda m: err.print(m, markup=False))
    except EdgepackError as e:
        fail(e)
    sys.stdout.write(render_markdown(report))
    if json_out:
        atomic_write_text(json_out, report.model_dump_json(indent=2))
        err.print(f"report: {json_out}", markup=False)
    if html_out:
        from bench.html import render_html

        atomic_write_text(html_out, render_html(report))
        err.print(f"html: {html_out}", markup=False)


def _parse_effect(text: str, option: str) -> float:
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = -1.0
    if value < 0:
        raise InputFileError(f"{option} {text!r}: expected a share like 5% or 0.05")
    return value


@app.command("compare")
def compare_cmd(
    reports: Annotated[list[Path], typer.Argument(help="two or more report.json files or run folders; the first is A")],
    fail_on: Annotated[list[str] | None, typer.Option(
        "--fail-on", help="gate METRIC:+N% or METRIC:-N, e.g. latency_p50:+5% accuracy:-0.005 size:+10%")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md or json")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="write here instead of stdout")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=1e-9, max=0.5, help="Mann-Whitney significance level")] = 0.01,
    min_effect: Annotated[str, typer.Option("--min-effect", help="smallest latency change called real")] = "5%",
    noisy_min_effect: Annotated[str, typer.Option(
        "--noisy-min-effect", help="the same when a run was flagged noisy (busy machine)")] = "50%",
) -> None:
    """Compare runs: deltas of accuracy, size and latency, whether each latency change is real; gates exit 1."""
    from bench.compare import compare_reports, render_markdown
    from compress.artifact import atomic_write_text

    if fmt not in ("md", "json"):
        fail(InputFileError(f"--format {fmt!r}: use md or json"))
    from compress.outputs import check_output_file

    try:
        if out is not None:
            check_output_file(out, "--out")
        cmp = compare_reports(reports, fail_on or [], alpha=alpha, min_effect=_parse_effect(min_effect, "--min-effect"),
                              noisy_min_effect=_parse_effect(noisy_min_effect, "--noisy-min-effect"))
    except EdgepackError as e:
        fail(e)
    text = cmp.model_dump_json(indent=2) + "\n" if fmt == "json" else render_markdown(cmp)
    if out:
        atomic_write_text(out, text)
    else:
        sys.stdout.write(text)
    if not cmp.passed:
        failed = [g for g in cmp.gates if not g.passed]
        msg = "; ".join(f"{g.gate}: " + " | ".join(g.failures) for g in failed)
        typer.echo(f"gates failed: {msg}", err=True)
        raise typer.Exit(1)
