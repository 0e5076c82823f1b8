"""``compress shadow``: run a candidate beside a baseline on logged inputs, compare, time both, judge.

Each side is a run folder's artifact (``RUN_DIR:ARTIFACT``, its sha256 checked against the run's
report), a model file (``.onnx``/``.tflite``), or a bundle ``.zip`` (checked with
:func:`export.bundle_verify.verify_bundle` first, then its model is used). The comparison itself
is :mod:`bench.shadow`; this module finds the models, feeds them, times them in one
interleaved run on this machine and writes ``shadow.json``, ``shadow.md`` and ``worst.npz``.
"""

from __future__ import annotations

import posixpath
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.shadow import WORST_DEFAULT, Thresholds, compare_outputs, match_outputs, verdict, worst_samples
from compress.core.errors import InputFileError
from compress.core.fileio import sha256_file

MODEL_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}


@dataclass
class Side:
    """One model of the comparison.

    Attributes:
        role: ``baseline`` or ``candidate``.
        name: The artifact name (or the file's stem).
        path: The model file to run.
        format: onnx or tflite.
        source: Where it came from, in words.
        metadata: The run's metadata of the artifact (its input layout), when known.
    """

    role: str
    name: str
    path: Path
    format: str
    source: str
    sha256: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "path": str(self.path), "sha256": self.sha256,
                "source": self.source}


def _from_run(role: str, run_dir: Path, name: str) -> Side:
    from compress.core.report_schema import load_report

    report = load_report(run_dir)
    art = report.artifact(name)
    files = [a.name for a in report.artifacts if a.format in MODEL_SUFFIXES.values()]
    if art is None or art.format not in MODEL_SUFFIXES.values() or not art.path:
        raise InputFileError(f"{role} {run_dir}:{name}: no model artifact {name!r} in that run "
                             f"(it has: {', '.join(files) or 'none'})")
    path = Path(art.path) if Path(art.path).is_absolute() else run_dir / art.path
    if not path.is_file():
        raise InputFileError(f"{role} {run_dir}:{name}: its file {path} is missing")
    digest = sha256_file(path)
    if art.sha256 and digest != art.sha256:
        raise InputFileError(f"{role} {run_dir}:{name}: {path} changed since the run (sha256 {digest[:12]}..., "
                             f"the report says {art.sha256[:12]}...): refusing to test a file the run did not make")
    return Side(role, name, path, art.format, f"run {run_dir}, artifact {name} (sha256 checked)", digest,
                dict(art.metadata))


def _from_bundle(role: str, bundle: Path, tmp: Path) -> Side:
    import json

    from export.bundle_verify import verify_bundle

    res = verify_bundle(bundle)
    if not res.ok:
        raise InputFileError(f"{role} {bundle}: the bundle does not verify: " + "; ".join(res.problems[:5]))
    with zipfile.ZipFile(bundle) as zf:
        (manifest_name,) = [n for n in zf.namelist() if posixpath.basename(n) == "manifest.json"]
        manifest = json.loads(zf.read(manifest_name))
        prefix = manifest_name[: -len("manifest.json")]
        fmt = manifest["format"]
        path = tmp / f"{role}.{fmt}"  # our own name, never one taken from the zip
        path.write_bytes(zf.read(prefix + manifest["model_file"]))
    digest = sha256_file(path)
    if digest != manifest["files"][manifest["model_file"]]:
        raise InputFileError(f"{role} {bundle}: the model changed while it was read")
    name = manifest.get("name") or bundle.stem
    return Side(role, str(name), path, fmt, f"bundle {bundle} (verified)", digest)


def resolve_side(role: str, text: str, tmp: Path) -> Side:
    """A model file, a bundle .zip, or ``RUN_DIR:ARTIFACT``.

    Raises:
        InputFileError: Nothing usable there (exit 2), with what was expected.
    """
    path = Path(text)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            return _from_bundle(role, path, tmp)
        if suffix in MODEL_SUFFIXES:
            return Side(role, path.stem, path, MODEL_SUFFIXES[suffix], f"file {path}", sha256_file(path))
        raise InputFileError(f"{role} {text}: expected a .onnx or .tflite model, a bundle .zip, or RUN_DIR:ARTIFACT")
    run, sep, name = text.rpartition(":")
    if sep and run and name and Path(run).is_dir():
        return _from_run(role, Path(run), name)
    if path.is_dir():
        raise InputFileError(f"{role} {text}: a run folder needs the artifact too: {text}:ARTIFACT "
                             "(names are in its report.json)")
    raise InputFileError(f"{role} {text}: not found (a .onnx/.tflite file, a bundle .zip, or RUN_DIR:ARTIFACT)")


def open_side(side: Side) -> Any:
    from bench.runtime import open_model
    from compress.core.errors import MissingDependencyError

    try:
        return open_model(side.path)
    except MissingDependencyError:
        raise
    except Exception as e:  # noqa: BLE001  (the runtime's own words say what is wrong with the file)
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputFileError(f"{side.role} {side.path}: not a valid {side.format} model "
                             f"({type(e).__name__}: {first[:200]})") from e


def side_inputs(side: Side, session: Any, inputs: Path, fallback: list[np.ndarray] | None = None
                ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The logged inputs as this side's model takes them, and the labels ``y`` the file holds.

    Arrays are matched to the model's inputs as ``compress bench --data`` does (``x``,
    ``x0``...; ``x_<input>``; the input names); when they name the other model's inputs,
    ``fallback`` (those arrays, by position) is used. NCHW inputs become NHWC for a run's
    channels-last TFLite artifact.
    """
    from compress.intake.data import input_mismatches, load_npz_data

    try:
        xs, y = load_npz_data(inputs, list(session.inputs))
    except InputFileError:
        if fallback is None or len(fallback) != len(session.inputs):
            raise
        xs, y = fallback, None
    if side.metadata.get("channels_last_inputs"):
        from export.tflite import to_model_layout

        xs = to_model_layout(side.metadata, xs)
    # a TFLite session quantizes float inputs itself, so only ONNX dtypes must match exactly
    wrong = input_mismatches([(i["shape"], i["dtype"] if side.format == "onnx" else None) for i in session.inputs], xs)
    if wrong:
        raise InputFileError(f"{inputs}: does not fit the {side.role} {side.path.name}: " + "; ".join(wrong))
    return xs, y


def read_labels(spec: str, n: int, what: str = "--labels") -> np.ndarray:
    """``labels.npy``, ``labels.npz`` (its ``y`` or only array) or ``labels.npz:KEY``; ``n`` labels expected.

    ``what`` names the option or recipe key in messages.
    """
    path, _, key = spec.rpartition(":") if spec.count(":") and not Path(spec).is_file() else (spec, "", "")
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{what} {spec}: file not found")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001  (numpy's words say what is wrong with the file)
        raise InputFileError(f"{what} {spec}: not a readable .npy/.npz file ({type(e).__name__})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            pick = key or ("y" if "y" in names else (names[0] if len(names) == 1 else ""))
            if pick not in names:
                raise InputFileError(f"{what} {spec}: name the array as FILE.npz:KEY (it holds {', '.join(names)})")
            y = loaded[pick]
    else:
        y = loaded
    if np.ndim(y) == 0 or len(y) != n:
        raise InputFileError(f"{what} {spec}: {np.size(y)} labels for {n} logged samples")
    return class_labels(y, f"{what} {spec}")


def class_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as class indices; anything else (fractions, NaN, text) is refused, naming ``where``."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not (np.isfinite(y).all() and np.array_equal(y, np.round(y)))):
        raise InputFileError(f"{where}: labels must be class indices (got {y.dtype} values)")
    return y.astype(np.int64)


def measure_latency(sides: list[Side], feeds: dict[str, list[np.ndarray]], runs: int, repeats: int,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Both models on this machine, in one interleaved run: round r times baseline, then candidate."""
    from types import SimpleNamespace

    from compress.core.types import BenchSpec
    from compress.runner.benchmarks import benchmark_interleaved
    from devices.local import LocalTarget

    items = [SimpleNamespace(name=s.role, format=s.format, path=s.path, parent=None) for s in sides]
    spec = BenchSpec(threads=1, warmup=10, runs=runs, batch=1)
    results = benchmark_interleaved(items, [("local", LocalTarget())], [spec], repeats, lambda a: feeds[a.name],
                                    log, parent_of=lambda a: "baseline" if a.name == "candidate" else None)
    out: dict[str, Any] = {"how": "measured", "target": "local", "threads": 1, "batch": 1, "runs": runs,
                           "repeats": repeats, "interleaved": True}
    for (role, _t, _th, _b), res in results.items():
        out["device"] = res.device
        if res.error or res.latency_ms is None:
            out[role] = {"error": res.error or "no latency"}
            continue
        s = res.latency_ms
        out[role] = {"p50_ms": s.p50, "ci95_ms": list(s.ci95), "p90_ms": s.p90, "runs": s.runs,
                     "noisy": bool(s.noisy)}
        if res.details.get("speedup_vs_parent"):
            out["speedup"] = res.details["speedup_vs_parent"]
    return out


def shadow_result(baseline: Side, candidate: Side, base_outs: list[np.ndarray], cand_outs: list[np.ndarray],
                  names: tuple[list[str], list[str]], task: str, labels: np.ndarray | None,
                  thresholds: Thresholds, worst_n: int = WORST_DEFAULT, specs: list[Any] | None = None
                  ) -> tuple[dict[str, Any], np.ndarray, list[np.ndarray]]:
    """Measures, verdict and the worst samples of two models' outputs on the same inputs.

    ``specs`` (what each output is) are resolved from the baseline's outputs and ``task`` when not given.

    Returns:
        The result, the worst samples' indices, and the candidate's outputs in the baseline's order.

    Raises:
        InputFileError: The models' outputs cannot be compared (count or shape).
    """
    from bench.outputs import resolve_outputs

    try:
        order, how = match_outputs(*names)
        cand_outs = [cand_outs[i] for i in order]
        specs = specs or resolve_outputs(base_outs, None, task, names=names[0])
        primary = next((s.index for s in specs if s.decision in ("argmax", "threshold")), None)
        measures, flips, divergence = compare_outputs(base_outs, cand_outs, specs,
                                                      {primary: labels} if labels is not None and primary is not None
                                                      else None)
    except ValueError as e:
        raise InputFileError(f"{baseline.name} vs {candidate.name}: {e}") from e
    worst = worst_samples(flips, divergence, worst_n)
    n = len(flips)
    notes = []
    if thresholds.max_flip_rate and n < 3 / thresholds.max_flip_rate:
        # the rule of three: with no flip in n samples, the 95% upper bound of the flip rate is about 3/n
        notes.append(f"{n} samples: even no flip at all only shows a flip rate below {3 / n:.3g} (95%, rule of "
                     f"three), above the limit {thresholds.max_flip_rate:g}; log at least "
                     f"{int(np.ceil(3 / thresholds.max_flip_rate))} inputs")
    result = {
        "baseline": baseline.describe(), "candidate": candidate.describe(),
        "outputs_matched_by": how,
        "outputs_matched_note": (None if how == "name" else
                                 "output names differ between the models: matched by position "
                                 f"({', '.join(f'{a} = {b}' for a, b in zip(names[0], names[1]))})"),
        "outputs": measures,
        "notes": notes,
        "thresholds": thresholds.as_dict(),
        "verdict": verdict(measures, thresholds),
        "worst": {"indices": worst.tolist(), "flipped_outputs": flips[worst].tolist(),
                  "divergence": divergence[worst].tolist(),
                  "ranked_by": "outputs whose decision flipped (desc), then summed divergence (desc): "
                               "KL(p_baseline || p_candidate) per decision output, mean |c - b| / std(b) otherwise"},
    }
    return result, worst, cand_outs


def worst_arrays(xs: list[np.ndarray], input_names: list[str], base_outs: list[np.ndarray],
                 cand_outs: list[np.ndarray], worst: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """What ``worst.npz`` holds: the worst samples' inputs (``x_<input>``), both outputs, indices, labels."""
    from bench.agent import batch_axes_of

    arrays: dict[str, np.ndarray] = {"indices": worst.astype(np.int64)}
    for name, a, ax in zip(input_names, xs, batch_axes_of(xs)):
        arrays[f"x_{name}"] = np.take(a, worst, axis=ax) if ax is not None else np.asarray(a)
    for k, (b, c) in enumerate(zip(base_outs, cand_outs)):
        arrays[f"baseline_{k}"], arrays[f"candidate_{k}"] = np.asarray(b)[worst], np.asarray(c)[worst]
    if labels is not None:
        arrays["y"] = labels[worst]
    return arrays


def write_results(out: Path, result: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[Path]:
    """``shadow.json``, ``shadow.md`` and ``worst.npz`` in ``out``, each written atomically."""
    import json

    from bench.shadow_report import render_shadow_markdown
    from compress.core.fileio import atomic_write_text, atomic_write_with

    result["worst"]["file"] = "worst.npz"
    markdown = render_shadow_markdown(result)  # before any file: a rendering error leaves none
    out.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would add .npz to a temp name
            np.savez_compressed(f, **arrays)

    atomic_write_with(out / "worst.npz", save)
    atomic_write_text(out / "shadow.md", markdown)
    atomic_write_text(out / "shadow.json", json.dumps(result, indent=2) + "\n")
    return [out / "shadow.json", out / "shadow.md", out / "worst.npz"]


@dataclass(frozen=True)
class ShadowOptions:
    """What ``compress shadow`` was asked for (see its help)."""

    inputs: Path
    labels: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    task: str = "classification"
    worst: int = WORST_DEFAULT
    latency: bool = True
    runs: int = 100
    repeats: int = 3


def run_shadow(baseline_text: str, candidate_text: str, opts: ShadowOptions, out: Path,
               log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Resolve both sides, run them on the logged inputs, compare, time, judge, write the files.

    Returns:
        The result written to ``out/shadow.json`` (``verdict.passed`` says whether it passed).

    Raises:
        InputFileError: A side, the inputs or the labels are unusable (exit 2).
    """
    from bench.runtime import predict

    if not opts.inputs.is_file():
        raise InputFileError(f"--inputs {opts.inputs}: file not found")
    with tempfile.TemporaryDirectory(prefix="edgepack-shadow-") as tmp:
        sides = [resolve_side("baseline", baseline_text, Path(tmp)), resolve_side("candidate", candidate_text, Path(tmp))]
        sessions = [open_side(s) for s in sides]
        xb, y = side_inputs(sides[0], sessions[0], opts.inputs)
        xc, _ = side_inputs(sides[1], sessions[1], opts.inputs, fallback=xb)
        from bench.agent import num_samples

        n = num_samples(xb)
        labels = (read_labels(opts.labels, n) if opts.labels
                  else class_labels(y, f"{opts.inputs}: y") if y is not None and opts.task == "classification" else None)
        log(f"shadow: {sides[0].name} ({sides[0].format}) vs {sides[1].name} ({sides[1].format}) on {n} logged inputs"
            + (", with labels" if labels is not None else ""))
        outs = [predict(sessions[0], xb), predict(sessions[1], xc)]
        for side, o in zip(sides, outs):
            if side.metadata.get("channels_last_outputs"):
                from export.tflite import from_model_layout

                o[:] = from_model_layout(side.metadata, o)
        names = ([o["name"] for o in sessions[0].outputs], [o["name"] for o in sessions[1].outputs])
        result, worst, outs[1] = shadow_result(sides[0], sides[1], outs[0], outs[1], names, opts.task, labels,
                                               opts.thresholds, opts.worst)
        result["inputs"] = {"file": str(opts.inputs), "samples": n,
                            "labels": opts.labels or ("y in the inputs file" if labels is not None else None)}
        result["latency"] = (measure_latency(sides, {"baseline": xb, "candidate": xc}, opts.runs, opts.repeats, log)
                             if opts.latency else None)
        input_names = [i["name"] for i in sessions[0].inputs]
        write_results(out, result, worst_arrays(xb, input_names, outs[0], outs[1], worst, labels))
    return result
