"""``compress bench`` (a model file, no recipe) and ``compress compare`` (reports, with CI gates)."""


import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from compress.cli.root import app, fail
from compress.cli.shapes import bench_shapes, onnx_dim_names, parse_shapes
from compress.core.errors import EdgepackError, InputFileError


def _random_inputs(inputs: list[dict[str, Any]], used: dict[str, list[int]], rows: int) -> list[Any]:
    """Random inputs of ``rows`` samples in the shapes used (quantized TFLite inputs: floats)."""
    from compress.intake.data import synthetic_inputs
    from compress.intake.recipe import InputSpec

    specs = []
    for i in inputs:
        shape = used[i["name"]]
        dtype = "float32" if i.get("quantization") else i["dtype"]
        specs.append(InputSpec.model_construct(name=i["name"], shape=shape, dtype=dtype,
                                               batch_axis=0 if shape else None, dynamic={}))
    return synthetic_inputs(specs, rows).x


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
    shapes: dict[str, list[int]] | None = None,
    repeats: int = 3,
) -> Any:
    """Benchmark one model file on one target; return a Report like a recipe run's.

    Args:
        shapes: ``--shape`` sizes by input name (batch first), for a model with dynamic
            dimensions and no data; the shapes used are logged either way.
    """
    import datetime as dt
    import hashlib

    import numpy as np

    from bench.accuracy import task_metrics
    from bench.agent import num_samples
    from compress.core.report_schema import ArtifactReport, Report
    from compress.runner.report import tool_versions
    from compress.runner.run import environment
    from devices.targets import make_target
    from compress.core.types import BenchSpec

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
    if shapes and data:
        raise InputFileError("--shape and --data: the data gives the shapes; pass one of them")
    xs, y, shown = _bench_inputs(model, fmt, inputs, data, shapes or {}, max(batches), log or (lambda _m: None))
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
    from types import SimpleNamespace

    from compress.runner.benchmarks import benchmark_interleaved, results_and_errors
    from compress.core.errors import TargetsFailed

    # the same harness as a recipe run: `repeats` fresh processes per latency, pooled, with a
    # hierarchical CI and the minimum detectable effect
    specs = [BenchSpec(threads=t, warmup=warmup, runs=runs, batch=b, cpus=cpus) for t in threads for b in batches]
    item = SimpleNamespace(name=art.name, format=fmt, path=model, parent=None)
    results = benchmark_interleaved([item], [(target_name, target)], specs, repeats, lambda _a: xs,
                                    log or (lambda _m: None))
    by_artifact, failures = results_and_errors([item], results)
    if failures:
        raise TargetsFailed(failures)
    art.targets.extend(by_artifact.get(art.name, []))
    return Report(
        tool={"name": "edgepack", **tool_versions()},
        recipe={"name": f"bench:{model.name}", "path": None, "hash": art.sha256[:16]},
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        env=environment(),
        task={"kind": kind} if kind else {},
        data={"source": str(data) if data else "random inputs", "eval": num_samples(xs) if data and xs else None,
              "inputs": shown},
        artifacts=[art],
    )


def _bench_inputs(model: Path, fmt: str, inputs: list[dict[str, Any]] | None, data: Path | None,
                  shapes: dict[str, list[int]], rows: int, log: Any) -> tuple[list[Any] | None, Any, str | None]:
    """The inputs to time (None: the target generates them in the model's own fixed shapes), the
    labels, and the shape of one request per input as logged (``x=1x3x224x224``)."""
    import numpy as np

    from compress.intake.data import load_npz_data

    xs, y = load_npz_data(data, inputs) if data else (None, None)
    shown = None
    if xs is None and inputs is not None:
        used = bench_shapes(inputs, shapes, onnx_dim_names(model))
        shown = ", ".join(f"{n}={'x'.join(map(str, s)) or 'scalar'}" for n, s in used.items())
        log(f"inputs (random): {shown}")
        if any(s != [1 if k == 0 and d <= 0 else d for k, d in enumerate(i["shape"])]
               for i, s in zip(inputs, used.values())) or shapes:
            xs = _random_inputs(inputs, used, rows)
    elif xs is not None:
        from bench.agent import batch_axes_of

        per = [[1 if k == ax else d for k, d in enumerate(np.shape(a))] for a, ax in zip(xs, batch_axes_of(xs))]
        names = [i["name"] for i in inputs] if inputs is not None else [f"x{k}" for k in range(len(xs))]
        shown = ", ".join(f"{n}={'x'.join(map(str, s)) or 'scalar'}" for n, s in zip(names, per))
        log(f"inputs (data): {shown}")
    if data and xs is not None and inputs is not None:
        from compress.intake.data import input_mismatches

        # a TFLite session quantizes float inputs itself, so only ONNX dtypes must match exactly
        wrong = input_mismatches([(i["shape"], i["dtype"] if fmt == "onnx" else None) for i in inputs], xs)
        if wrong:
            raise InputFileError(f"{data}: does not fit {model.name}: " + "; ".join(wrong))
    return xs, y, shown


def _model_inputs(model: Path, fmt: str) -> list[dict[str, Any]] | None:
    """The model's inputs, read by opening it here: a corrupt file is a wrong input, not a failed target."""
    from bench.runtime import open_model
    from compress.core.errors import MissingDependencyError

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
    data: Annotated[Path | None, typer.Option("--data", help=".npz with x (or x0, x1..., or x_<input>) and optional labels y")] = None,
    shape: Annotated[list[str] | None, typer.Option(
        "--shape", help="NAME=1x3x224x224: an input's shape for random inputs, needed for each dynamic size other "
                   "than the batch (never guessed); repeatable")] = None,
    threads: Annotated[list[int] | None, typer.Option("--threads", min=1, help="repeat for several")] = None,
    batch: Annotated[list[int] | None, typer.Option("--batch", min=1, help="items per run; repeat for several")] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="timed runs in each process")] = 200,
    repeats: Annotated[int, typer.Option("--repeats", min=1, max=100,
                                         help="fresh processes per latency (between-process variance in the CI)")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="minimum warmup runs (goes on until stable)")] = 20,
    target: Annotated[str, typer.Option("--target", help="local, ssh:NAME, emulated:aarch64, estimate:PROFILE")] = "local",
    cpus: Annotated[str | None, typer.Option("--cpus", help="pin to these CPUs, e.g. 0 or 0-1")] = None,
    task: Annotated[str, typer.Option("--task", help="auto, classification or regression (with labels in --data)")] = "auto",
    name: Annotated[str | None, typer.Option("--name", help="artifact name in the report (default: file stem)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report JSON here")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report here")] = None,
) -> None:
    """Benchmark a model file without a recipe (fresh process, warmup until stable, every run kept).

    Without --data, inputs are random in the model's own shapes (batch 1); a dynamic size other
    than the batch (an image's height and width) must be given with --shape: latency depends on
    it, so it is never guessed. The shapes timed are printed and kept in the report.
    """
    from bench.report import render_markdown
    from compress.core.console import make_console
    from compress.core.fileio import atomic_write_text

    if task not in ("auto", "classification", "regression"):
        fail(InputFileError(f"--task {task!r}: use auto, classification or regression"))
    err = make_console(stderr=True)
    from compress.cli.outputs import check_output_file

    try:
        for path, option in ((json_out, "--json"), (html_out, "--html")):
            if path is not None:
                check_output_file(path, option)
        report = bench_report(model, target, threads or [1], batch or [1], runs, warmup, _parse_cpus(cpus), data, task,
                              name, log=err.print, shapes=parse_shapes(shape or []), repeats=repeats)
    except EdgepackError as e:
        fail(e)
    sys.stdout.write(render_markdown(report))
    if json_out:
        atomic_write_text(json_out, report.model_dump_json(indent=2))
        err.print(f"report: {json_out}")
    if html_out:
        from bench.html import render_html

        atomic_write_text(html_out, render_html(report))
        err.print(f"html: {html_out}")


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
    alpha: Annotated[float, typer.Option("--alpha", min=1e-9, max=0.5,
                                         help="Mann-Whitney significance level (shown for information)")] = 0.01,
    min_effect: Annotated[str, typer.Option("--min-effect", help="smallest latency change called real")] = "5%",
    single_process_min_effect: Annotated[str, typer.Option(
        "--single-process-min-effect", "--noisy-min-effect",
        help="smallest change called real for a single-process report (MDE unknown); "
             "a noisy run's changes are unclear at any size")] = "50%",
    strict: Annotated[bool, typer.Option(
        "--strict", help="an unclear latency change (noisy or single-process run) past a gate fails it")] = False,
) -> None:
    """Compare runs: deltas of accuracy, size and latency, whether each latency change is real; gates exit 1.

    Real: the CI of B/A (processes resampled) excludes 1 and the change beats both runs' MDE. Noisy: unclear.
    """
    from bench.compare import compare_reports, render_markdown
    from compress.core.fileio import atomic_write_text

    if fmt not in ("md", "json"):
        fail(InputFileError(f"--format {fmt!r}: use md or json"))
    from compress.cli.outputs import check_output_file

    try:
        if out is not None:
            check_output_file(out, "--out")
        cmp = compare_reports(reports, fail_on or [], alpha=alpha, min_effect=_parse_effect(min_effect, "--min-effect"),
                              single_process_min_effect=_parse_effect(single_process_min_effect,
                                                                      "--single-process-min-effect"), strict=strict)
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
